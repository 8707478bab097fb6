"""`scaledist-testbed`: run an experiment on the emulated network, check its links, report, clean up.

Bad input (a missing or inconsistent topology or scenario, a scale that makes a
link slower than 8 kbit/s, not root, no Mininet) ends with one line naming the
file, key and reason and exit code 2, before anything is built.
"""

from __future__ import annotations

import argparse
import sys

from scaledist.cli import positive_seconds, scale_arg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaledist-testbed", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def latency_opt(q: argparse.ArgumentParser) -> None:
        q.add_argument("--latency", choices=("auto", "netem", "nfqueue"), default="auto",
                       help="how trunk latency is emulated: netem where the kernel has it, else the NFQUEUE "
                            "delay line (default auto)")

    r = sub.add_parser("run", help="build the network, run the daemons in it, distribute, verify, tear down")
    r.add_argument("topology", help="topology YAML file, e.g. topologies/patent-fig1.yaml")
    r.add_argument("--scenario", help="scenario YAML (default: a built-in scenario per fileset)")
    r.add_argument("--scale", type=scale_arg, default=None,
                   help="multiply bandwidths and sizes (default 'auto': blocks of at most 1 MiB)")
    r.add_argument("--timeout", type=positive_seconds, default=600.0, help="give up after this many seconds (600)")
    r.add_argument("--mode", choices=("pull", "push"), default="pull", help="pull (default) or push, §0132")
    latency_opt(r)
    r.add_argument("--run-dir", help="run folder (default results/runs/<topology>-<UTC stamp>)")
    r.add_argument("--keep-data", action="store_true",
                   help="keep the slaves' data directories in the run folder (default: removed once verified)")
    r.add_argument("--json", action="store_true", help="last stdout line: summary.json as one JSON object")

    v = sub.add_parser("verify-links", help="measure every shaped link's bandwidth and latency against the topology")
    v.add_argument("topology", help="topology YAML file")
    v.add_argument("--scale", type=scale_arg, default=None, help="as for run (default 'auto')")
    latency_opt(v)

    sub.add_parser("clean", help="remove what a killed run left behind (interfaces, namespaces, rules, processes)")

    b = sub.add_parser("bench", help="ScaleDist, BitTorrent and central pull on the same network, against the bound")
    b.add_argument("topology", help="topology YAML file")
    b.add_argument("--scenario", help="scenario YAML (default: a built-in scenario per fileset)")
    b.add_argument("--scale", type=scale_arg, default=None, help="as for run (default 'auto')")
    b.add_argument("--timeout", type=positive_seconds, default=600.0, help="per system, seconds (600)")
    b.add_argument("--systems", default="scaledist,bittorrent,central",
                   help="comma-separated, in order (default scaledist,bittorrent,central)")
    b.add_argument("--baseline-routing", choices=("main", "data"), default="data",
                   help="data (default): the baselines' bulk packets take the trunks' primary directions like "
                        "ScaleDist's block data, so the systems are judged and not the routes; main: they route "
                        "like any other application (ACK/control routes: the trunks' slow reverse directions)")
    latency_opt(b)
    b.add_argument("--out", help="bench folder (default results/runs/bench-<topology>-<UTC stamp>)")

    dr = sub.add_parser("drill", help="failure-injection drill(s): break things mid-distribution, repair, verify")
    dr.add_argument("drill_file", nargs="?", help="drill YAML, e.g. testbed/drills/trunk-down.yaml")
    dr.add_argument("--all", action="store_true", help="run the standard drill set (testbed/drills/*.yaml), one "
                    "line each, then drills_passed=N drills_total=M")
    dr.add_argument("--short", action="store_true", help="with --all: only the drills marked ci: true")
    dr.add_argument("--run-dir", help="run folder (default results/runs/drill-<name>-<UTC stamp>; with --all the "
                    "folder holding one run folder per drill)")
    dr.add_argument("--timeout", type=positive_seconds, default=None, help="override the drill's timeout")
    dr.add_argument("--json", action="store_true", help="last stdout line: the drill's result as one JSON object")

    rep = sub.add_parser("report", help="(re)write a run folder's report: summary.json, CSVs, plots, report.html")
    rep.add_argument("run_dir", help="run folder, e.g. results/runs/small-20260101T000000Z")
    c = sub.add_parser("compare", help="two runs side by side: a table, and overlaid plots in a folder")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--out", help="folder for the overlaid plots (default: next to RUN_A, compare-<A>--<B>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scaledist.scenario import ScenarioError
    from scaledist.topology_schema import TopologyError
    from scaledist.units import UnitError
    from testbed.addressing import TestbedError
    from testbed.run import RunError

    try:
        return dispatch(args)
    except (TopologyError, ScenarioError, UnitError, RunError, TestbedError) as e:
        text = str(e)
        prefix = "" if text.startswith(f"scaledist-testbed {args.command}") else f"scaledist-testbed {args.command}: "
        print(prefix + text, file=sys.stderr)
        return 2


def dispatch(args: argparse.Namespace) -> int:
    from testbed import run

    if args.command == "run":
        plan = run.plan_run(args.topology, args.scenario, args.scale)
        return run.run_testbed(plan, timeout=args.timeout, mode=args.mode, latency=args.latency,
                               run_dir=args.run_dir, as_json=args.json, keep_data=args.keep_data)
    if args.command == "verify-links":
        plan = run.plan_run(args.topology, None, args.scale, command="verify-links")
        print(f"scale {plan.scale:g}{' (default)' if plan.scale_chosen else ''}", flush=True)
        from testbed.verify import verify_links

        result = verify_links(plan.topology_path, scale=plan.scale, latency=args.latency, log=print)
        return 0 if verify_ok(result) else 1
    if args.command == "drill":
        return drill_command(args)
    if args.command == "bench":
        from testbed.bench import bench

        plan = run.plan_run(args.topology, args.scenario, args.scale, command="bench")
        return bench(plan, systems=tuple(x for x in args.systems.split(",") if x), timeout=args.timeout,
                     latency=args.latency, routing=args.baseline_routing, out_dir=args.out)
    if args.command == "clean":
        run.check_machine("clean", mininet=False)
        from testbed.cleanup import clean

        removed = clean(log=print)  # prints one line per thing removed, or that there was nothing
        if removed:
            print(f"clean: removed {len(removed)} leftover{'s' if len(removed) != 1 else ''}")
        return 0
    if args.command in ("report", "compare"):
        from pathlib import Path

        for d in (args.run_dir,) if args.command == "report" else (args.run_a, args.run_b):
            if not (Path(d) / "summary.json").is_file():
                raise run.RunError(f"{d}: not a run folder (no summary.json)")
        if args.command == "compare":
            from results.compare import compare

            compare(args.run_a, args.run_b, args.out)
            return 0
        from results.report import verdict_line, write_report

        a = write_report(args.run_dir)
        for n in a["notes"]:
            print(f"note: {n}")
        print(verdict_line(a))
        return 0
    raise AssertionError(args.command)


def drill_command(args: argparse.Namespace) -> int:
    """`drill FILE` runs one drill; `drill --all [--short]` the standard set, one line per drill."""
    import json
    from pathlib import Path

    from scaledist.topology_schema import SpecError
    from testbed import drill
    from testbed.faults.base import FaultSpecError
    from testbed.run import RunError

    if args.all == bool(args.drill_file):
        raise RunError("give a drill file or --all (not both)")
    if args.all:
        return drill.run_all(drill.drill_files(), short=args.short, base_dir=Path(args.run_dir) if args.run_dir
                             else None)
    try:
        rc, result = drill.run_drill(args.drill_file, run_dir=args.run_dir, timeout=args.timeout,
                                     as_json=args.json)
    except (SpecError, FaultSpecError) as e:  # a drill file's mistake: one line, exit 2, nothing built
        raise RunError(str(e)) from None
    print(drill.verdict_line(result), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(result, default=str), flush=True)
    return rc


MAX_BW_ERROR_PCT = 5.0
MAX_LATENCY_ERROR_MS = 2.0


def verify_ok(result: object) -> bool:
    """The accuracy targets: every link's bandwidth within 5 % and latency within 2 ms of the topology."""
    bw = getattr(result, "max_bw_error_pct", None)
    lat = getattr(result, "max_latency_error_ms", None)
    if bw is None or lat is None:
        return bool(getattr(result, "ok", False))
    return bw <= MAX_BW_ERROR_PCT and lat <= MAX_LATENCY_ERROR_MS


if __name__ == "__main__":
    sys.exit(main())
