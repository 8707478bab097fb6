"""`scaledist-testbed bench`: ScaleDist and the baselines, one after another, each on a freshly built network.

A result means little alone: the bench runs ScaleDist as built (``run_testbed``), BitTorrent (opentracker +
libtorrent) and central pull (HTTP from the generator's host) on the very same emulated network and
scenario, prints the fluid lower bound (``results.bound``) beside every result, and saves a table, one run
folder per system, ``bench.json`` and two plots (completion over time; bytes per trunk).

Figures are computed the same way for every system from what the testbed measured:
- completion: seconds until every slave holds the final version of every file of its filesets, verified;
- bytes over each trunk: qdisc bytes of both directions (baselines route data either way);
- trunk efficiency: those bytes over all trunks / the bytes each datacenter had to receive across trunks
  (every file version once per datacenter that needs it), i.e. IP bytes with headers and ACKs;
- trunk drops: qdisc drops of both directions of every trunk;
- epochs over budget: trunk-direction epochs (the topology's epoch) whose rate exceeded budget x 1.05
  (ScaleDist: from its per-epoch interface counters, epochs.jsonl; baselines: from the 1 s samples);
- CPU s: user+system seconds of every process the system ran (daemons; tracker, clients, servers).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from results.bound import Bound, as_dict, describe, file_versions, fluid_bound, needed_bytes
from testbed.baselines import OVER_BUDGET, ROUTINGS, run_baseline, scaled_scenario
from testbed.run import Plan, RunError, run_testbed

SYSTEMS = ("scaledist", "bittorrent", "central")
_PROGRESS = re.compile(r"t=\s*([\d.]+)s\s+(.*?)(?:\|\||$)")
_FILESET = re.compile(r"(\S+) (\d+)/(\d+) slaves complete")


class _Tee(io.TextIOBase):
    """stdout that is also kept, so ScaleDist's progress lines give its completion curve."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.lines: list[str] = []
        self._buf = ""

    def write(self, s: str) -> int:
        self.out.write(s)
        self._buf += s
        *done, self._buf = self._buf.split("\n")
        self.lines += done
        return len(s)

    def flush(self) -> None:
        self.out.flush()


def _scaledist_progress(lines: list[str]) -> list[tuple[float, int]]:
    out = []
    for line in lines:
        m = _PROGRESS.search(line)
        if m and "slaves complete" in m.group(2):
            out.append((float(m.group(1)), sum(int(c) for _, c, _ in _FILESET.findall(m.group(2)))))
    return out


def _epochs_over(rdir: Path, plan: Plan) -> int | None:
    """ScaleDist's trunk-direction epochs over budget x OVER_BUDGET, from its per-epoch interface counters."""
    path = rdir / "epochs.jsonl"
    if not path.exists():
        return None
    topo = plan.topology
    over = 0
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        span = float(rec["t_end"]) - float(rec["t_start"])
        if span <= 0:
            continue
        for link, st in rec["links"].items():
            if link.startswith("trunk/") and st.get("bytes", 0) / span > topo.links[link].capacity * OVER_BUDGET:
                over += 1
    return over


def run_system(name: str, plan: Plan, rdir: Path, *, timeout: float, latency: str, routing: str,
               log: Callable[[str], None]) -> dict[str, Any]:
    """One system on a fresh network; returns its summary (plus 'progress' and 'epochs_over_budget')."""
    if name == "scaledist":
        tee = _Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            run_testbed(plan, timeout=timeout, latency=latency, run_dir=rdir)
        summary = json.loads((rdir / "summary.json").read_text())
        summary["progress"] = _scaledist_progress(tee.lines)
        summary["epochs_over_budget"] = _epochs_over(rdir, plan)
        return summary
    if name == "bittorrent":
        from testbed.baselines.bittorrent import BitTorrent

        system: Any = BitTorrent()
    elif name == "central":
        from testbed.baselines.central import Central

        system = Central()
    else:
        raise RunError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    summary = run_baseline(system, plan, run_dir=rdir, latency=latency, timeout=timeout, routing=routing, log=log)
    summary["epochs_over_budget"] = sum(v["epochs_over_budget"] or 0 for v in summary["trunk_directions"].values())
    return summary


def row(name: str, s: Mapping[str, Any], plan: Plan, bound: Bound, needed: int, timeout: float) -> dict[str, Any]:
    """The table's figures for one system, computed alike for all (module docstring)."""
    dirs = s.get("trunk_directions") or {}
    per_trunk = {t: sum((dirs.get(link) or {}).get("bytes") or 0 for link in (f"trunk/{t}", f"trunk/{t}/rev"))
                 for t in sorted(plan.topology.trunks)}
    drops = sum((d or {}).get("drops") or 0 for d in dirs.values())
    done = s.get("completion_s", {}).get("overall") if s.get("completed") else None
    total_pairs = sum(len(plan.topology.slaves[x].filesets) for x in plan.topology.slaves)
    return {
        "system": name,
        "completed": bool(s.get("completed")),
        "completion_s": done,
        "completion_or_timeout_s": done if done is not None else float(timeout),
        "ratio_to_bound": round(done / bound.seconds, 3) if done is not None and bound.seconds else None,
        "trunk_bytes": per_trunk,
        "trunk_efficiency": round(sum(per_trunk.values()) / needed, 4) if needed else None,
        "trunk_drops": drops,
        "epochs_over_budget": s.get("epochs_over_budget"),
        "cpu_s": ((s.get("daemons") or {}).get("all") or {}).get("cpu_s"),
        "files_verified": s.get("files_verified"),
        "files_mismatched": s.get("files_mismatched"),
        "progress": s.get("progress") or [],
        "pairs": total_pairs,
        "error": s.get("error", ""),
        "run_dir": s.get("run_dir"),
        "own_trunk_efficiency": s.get("trunk_efficiency"),
    }


def table(rows: list[dict[str, Any]], bound: Bound, trunks: list[str]) -> str:
    head = ["system", "completion s", "x bound", *[f"{t} MB" for t in trunks], "trunk eff", "drops",
            "epochs>budget", "CPU s"]
    lines = [f"bound: {describe(bound)}", " | ".join(head)]
    for r in rows:
        comp = f"{r['completion_s']:.1f}" if r["completion_s"] is not None else \
            f">{r['completion_or_timeout_s']:.0f} ({r['error'] or 'incomplete'})"
        ratio = f"{r['ratio_to_bound']:.2f}" if r["ratio_to_bound"] is not None else \
            f">{r['completion_or_timeout_s'] / bound.seconds:.2f}"
        cells = [r["system"], comp, ratio, *[f"{r['trunk_bytes'][t] / 1e6:.1f}" for t in trunks],
                 f"{r['trunk_efficiency']:.2f}" if r["trunk_efficiency"] is not None else "-",
                 str(r["trunk_drops"]), str(r["epochs_over_budget"]), f"{r['cpu_s'] or 0:.1f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def verdict_line(rows: list[dict[str, Any]], bound: Bound) -> str:
    """Completion-time ratios; an incomplete system counts with its timeout (so the ratio is an upper bound)."""
    by = {r["system"]: r for r in rows}
    sd = by.get("scaledist")
    if sd is None:
        return ""

    def ratio(other: str) -> str:
        o = by.get(other)
        if o is None:
            return "nan"
        return f"{sd['completion_or_timeout_s'] / o['completion_or_timeout_s']:.3f}"

    vs_bound = f"{sd['completion_or_timeout_s'] / bound.seconds:.3f}" if bound.seconds else "nan"
    return f"scaledist_vs_bound={vs_bound} scaledist_vs_bittorrent={ratio('bittorrent')} " \
           f"scaledist_vs_central={ratio('central')}"


def plots(rows: list[dict[str, Any]], bound: Bound, trunks: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in rows:
        pts = r["progress"]
        if pts:
            ax.step([p[0] for p in pts], [p[1] / r["pairs"] for p in pts], where="post", label=r["system"])
    ax.axvline(bound.seconds, color="black", ls="--", lw=1, label=f"fluid bound {bound.seconds:.1f}s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("slave x fileset pairs holding\nthe newest versions (fraction)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("completion over time")
    fig.tight_layout()
    paths.append(out / "completion.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(len(trunks))], [r["trunk_bytes"][t] / 1e6 for t in trunks], width,
               label=r["system"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(trunks))], trunks)
    ax.set_ylabel("MB over the trunk (both directions)")
    ax.set_title("bytes per trunk")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "trunk_bytes.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def bench(plan: Plan, *, systems: tuple[str, ...] = SYSTEMS, timeout: float = 600.0, latency: str = "auto",
          routing: str = "data", out_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> int:
    """Runs every system, prints and saves the table; returns 0 when every system's run completed."""
    if routing not in ROUTINGS:
        raise RunError(f"--baseline-routing must be one of {', '.join(ROUTINGS)}")
    for name in systems:
        if name not in SYSTEMS:
            raise RunError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    say: Callable[[str], None] = log or (lambda s: print(s, flush=True))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(out_dir) if out_dir else Path("results/runs") / f"bench-{plan.topology.name}-{stamp}"
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        raise RunError(f"bench folder {out} already exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    scenario = scaled_scenario(plan)
    bound = fluid_bound(plan.topology, scenario)
    primary = fluid_bound(plan.topology, scenario, primary_only=True)  # trunks' primary directions only
    needed = sum(needed_bytes(plan.topology, file_versions(scenario)).values())
    trunks = sorted(plan.topology.trunks)
    say(f"bench {plan.topology.name}: systems {', '.join(systems)}; scale {plan.scale:g}; {describe(bound)}; "
        f"folder {out}")
    rows = []
    for i, name in enumerate(systems, 1):
        say(f"=== [{i}/{len(systems)}] {name} (bound {bound.seconds:.1f}s) ===")
        t = time.monotonic()
        s = run_system(name, plan, out / name, timeout=timeout, latency=latency, routing=routing, log=say)
        r = row(name, s, plan, bound, needed, timeout)
        rows.append(r)
        comp = f"{r['completion_s']:.1f}s" if r["completion_s"] is not None else "incomplete"
        say(f"=== {name}: {comp} (x{r['ratio_to_bound'] or float('nan'):.2f} the bound {bound.seconds:.1f}s), "
            f"trunk efficiency {r['trunk_efficiency']}, drops {r['trunk_drops']}; {time.monotonic() - t:.0f}s wall")
    text = table(rows, bound, trunks)
    line = verdict_line(rows, bound)
    incomplete = [r["system"] for r in rows if not r["completed"]]
    notes = [f"{n} did not complete within {timeout:g}s: its time counts as {timeout:g}s (ratios are bounds)"
             for n in incomplete]
    notes.append(f"baseline routing: {routing}")
    sd = next((r for r in rows if r["system"] == "scaledist"), None)
    notes.append(f"bound over the trunks' primary directions only (where bulk data goes): {describe(primary)}"
                 + (f"; scaledist x{sd['completion_or_timeout_s'] / primary.seconds:.2f} of it"
                    if sd and primary.seconds else ""))
    (out / "table.txt").write_text(text + "\n" + "\n".join(f"note: {n}" for n in notes) + "\n" + line + "\n")
    (out / "bench.json").write_text(json.dumps({
        "topology": str(plan.topology_path), "scenario": str(plan.scenario_path), "scale": plan.scale,
        "bound": as_dict(bound), "bound_primary_directions": as_dict(primary),
        "needed_bytes": needed, "routing": routing, "timeout_s": timeout,
        "rows": rows, "notes": notes, "verdict": line}, indent=1) + "\n")
    try:
        plots(rows, bound, trunks, out)
    except Exception as e:  # the table stands without its plots
        say(f"warning: plots failed: {type(e).__name__}: {e}")
    print(text, flush=True)
    for n in notes:
        print(f"note: {n}", flush=True)
    print(line, flush=True)
    return 0 if not incomplete else 1
