"""`scaledist` command line: the four daemons, `local` and `status`.

Bad input (a missing or broken topology, scenario or cluster file, a bad
identity) ends with one line naming what is wrong and exit code 2; no daemon
starts half-configured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from scaledist.cluster import ClusterError
from scaledist.units import UnitError


def scale_arg(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a number or 'auto', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"scale must be > 0, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaledist", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def daemon(name: str, help_: str) -> argparse.ArgumentParser:
        d = sub.add_parser(name, help=help_)
        d.add_argument("topology", help="topology YAML file")
        d.add_argument("--id", required=True, help="this daemon's identity in the topology")
        d.add_argument("--cluster", required=True, help="cluster file (addresses, key) written by the launcher")
        return d

    rm = daemon("rm", "run the resource manager")
    rm.add_argument("--ledger", required=True, help="reservation ledger, JSON lines (appended)")
    daemon("master", "run a master")
    sl = daemon("slave", "run a slave")
    sl.add_argument("--data-dir", required=True, help="where this slave stores data and checksum files")
    gen = daemon("generator", "run a generator")
    gen.add_argument("--scenario", required=True, help="scenario YAML: files, sizes, start times, updates")
    gen.add_argument("--data-dir", required=True, help="storage shared with the generator's slave")
    gen.add_argument("--manifest", required=True, help="JSON written at the end: what was generated")

    lo = sub.add_parser("local", help="run everything as processes on loopback, distribute, verify, clean up")
    lo.add_argument("topology", help="topology YAML file, e.g. topologies/patent-fig1.yaml")
    lo.add_argument("--scenario", help="scenario YAML (default: a built-in scenario per fileset)")
    lo.add_argument("--scale", type=scale_arg, default=None,
                    help="multiply bandwidths and sizes (default 'auto': blocks of at most 1 MiB)")
    lo.add_argument("--timeout", type=positive_seconds, default=600.0, help="give up after this many seconds")
    lo.add_argument("--mode", choices=("pull", "push"), default="pull", help="pull (default) or push, §0132")
    lo.add_argument("--run-dir", help="folder for logs, ledger, data (default results/runs/local-...)")
    lo.add_argument("--json", action="store_true", help="last stdout line: one JSON summary")

    st = sub.add_parser("status", help="progress per fileset and slave; reservations per link")
    st.add_argument("--cluster", required=True, help="cluster file of a running system")
    st.add_argument("--json", action="store_true", help="print the raw status as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scaledist.scenario import ScenarioError
    from scaledist.topology_schema import TopologyError

    try:
        return dispatch(args)
    except (TopologyError, ScenarioError, ClusterError, UnitError) as e:
        print(f"scaledist {args.command}: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"scaledist {args.command}: no such file: {e.filename}", file=sys.stderr)
        return 2


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "local":
        from scaledist.local import run_local

        return run_local(args.topology, args.scenario, args.scale, args.timeout, args.mode, args.run_dir, args.json)
    if args.command == "status":
        from scaledist.status import show_status

        return asyncio.run(show_status(args.cluster, args.json))

    from scaledist.daemons.common import load_context

    ctx = load_context(args.command, args.topology, args.cluster, args.id)
    known = {
        "rm": {ctx.topology.resource_manager.id},
        "master": set(ctx.topology.masters),
        "slave": set(ctx.topology.slaves),
        "generator": set(ctx.topology.generators),
    }[args.command]
    if args.id not in known:
        print(f"scaledist {args.command}: --id {args.id!r} is not a {args.command} in {args.topology} "
              f"(known: {', '.join(sorted(known)[:10])})", file=sys.stderr)
        return 2
    if args.command == "rm":
        from scaledist.daemons import rm

        return rm.main(ctx, args.ledger)
    if args.command == "master":
        from scaledist.daemons import master

        return master.main(ctx)
    if args.command == "slave":
        from scaledist.daemons import slave

        return slave.main(ctx, args.data_dir)
    from scaledist.daemons import generator
    from scaledist.scenario import load_scenario
    from scaledist.topology_schema import load_topology

    base = load_topology(args.topology)
    scenario = load_scenario(args.scenario, base)
    if ctx.cluster.scale != 1.0:  # by the block size's own factor, so files keep their block boundaries
        scenario = scenario.scaled(ctx.topology.block_size / base.block_size)
    return generator.main(ctx, scenario, args.data_dir, args.manifest)


if __name__ == "__main__":
    sys.exit(main())
