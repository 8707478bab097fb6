"""``scaledist-testbed compare RUN_A RUN_B``: two runs side by side, as a table and as overlaid plots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from results.analyse import analyse


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value in A, value in B) for everything both runs can be compared on."""
    out: list[tuple[str, str, str]] = []

    def add(name: str, fa: Callable[[Mapping[str, Any]], Any]) -> None:
        def get(r: Mapping[str, Any]) -> Any:
            try:
                return fa(r)
            except (KeyError, TypeError, AttributeError):
                return None
        out.append((name, _fmt(get(a)), _fmt(get(b))))

    for k in ("topology_name", "scale", "latency_method", "mode", "completed", "seconds", "files_verified",
              "files_mismatched"):
        add(k, lambda r, k=k: r["settings"][k])
    add("trunk_efficiency", lambda r: r["trunk_efficiency"])
    add("trunk_efficiency_reserved", lambda r: r["trunk_efficiency_reserved"])
    add("measurement_cpu_s", lambda r: r["measurement_cpu_s"])
    add("daemons cpu_s", lambda r: r["daemons"]["all"]["cpu_s"])
    for tid in sorted(set(a["trunks"]) | set(b["trunks"])):
        add(f"{tid} verdict", lambda r, t=tid: r["trunks"][t]["verdict"])
        add(f"{tid} max_epoch_utilisation", lambda r, t=tid: r["trunks"][t]["max_epoch_utilisation"])
        add(f"{tid} epochs_over_budget", lambda r, t=tid: r["trunks"][t]["epochs_over_budget"])
        add(f"{tid} drops", lambda r, t=tid: r["trunks"][t]["drops"])
        add(f"{tid} measured MB", lambda r, t=tid: r["trunks"][t]["measured_bytes"] / 1e6)
        add(f"{tid} reserved MB", lambda r, t=tid: r["trunks"][t]["reserved_bytes"] / 1e6)
    for fs in sorted(set(a["completion"]) | set(b["completion"])):
        add(f"{fs} completion_s", lambda r, f=fs: r["completion"][f]["completion_s"])
        add(f"{fs} slaves complete", lambda r, f=fs: f"{r['completion'][f]['complete']}/{r['completion'][f]['slaves']}")
    for link in sorted(set(a["priority_shares"]) | set(b["priority_shares"])):
        prios = sorted(set(a["priority_shares"].get(link, {}).get("priorities", {}))
                       | set(b["priority_shares"].get(link, {}).get("priorities", {})))
        for p in prios:
            add(f"{link} {p} share (weight)",
                lambda r, lk=link, p=p: "{:.1%} ({:.1%})".format(
                    r["priority_shares"][lk]["priorities"][p]["measured_share"],
                    r["priority_shares"][lk]["priorities"][p]["weight_share"]))
    return out


def table(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    rs = [("", str(a["id"]), str(b["id"])), *rows(a, b)]
    w = [max(len(r[i]) for r in rs) for i in range(3)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}" for r in rs]
    lines.insert(1, "-" * (w[0] + w[1] + w[2] + 4))
    return "\n".join(lines)


def compare(run_a: str | Path, run_b: str | Path, out_dir: str | Path | None = None,
            log: Callable[[str], None] = print) -> Path:
    """Prints the table, writes overlaid plots into ``out_dir`` (default: results/runs/compare-<A>--<B>)."""
    from results.plots import overlay_plots

    a, b = analyse(run_a), analyse(run_b)
    log(table(a, b))
    out = Path(out_dir) if out_dir else Path(run_a).resolve().parent / f"compare-{a['id']}--{b['id']}"
    out.mkdir(parents=True, exist_ok=True)
    paths = overlay_plots([(f"A {a['id']}", a), (f"B {b['id']}", b)], out)
    (out / "table.txt").write_text(table(a, b) + "\n")
    log(f"overlaid plots ({len(paths)}) and table.txt in {out}")
    return out
