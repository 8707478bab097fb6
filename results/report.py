"""Write a run folder's report: enriched ``summary.json``, ``links.csv``, ``epochs.csv``, plots, ``report.html``.

``write_report`` is what ``scaledist-testbed report RUN_DIR`` and the end of ``scaledist-testbed run`` call;
it can be run again at any time (the testbed's own fields are kept, its per-direction trunk figures move
to ``trunk_directions`` so ``trunks`` can hold the per-trunk verdicts).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from results.analyse import analyse, load_run, testbed_trunks

LINK_FIELDS = ["link", "kind", "budget_bytes_per_s", "physical_bytes_per_s", "reserved_bytes", "measured_bytes",
               "drops", "max_backlog", "epochs_measured", "max_epoch_utilisation", "epochs_over_budget", "verdict",
               "reason"]
EPOCH_FIELDS = ["epoch", "t", "link", "reserved_bytes", "measured_bytes", "drops", "backlog"]
SUMMARY_KEYS = ("trunks", "trunk_efficiency", "trunk_efficiency_basis", "trunk_efficiency_reserved",
                "trunk_efficiency_wire", "trunk_bytes", "trunk_reserved_bytes", "needed_bytes", "needed_per_datacenter",
                "priority_shares", "daemons", "measurement_cpu_s")


def _csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def enriched_summary(summary: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    out = dict(summary)
    directions = testbed_trunks(summary)
    if directions:
        out["trunk_directions"] = directions
    for k in SUMMARY_KEYS:
        out[k] = a.get(k)
    out["report"] = {"html": "report.html", "links_csv": "links.csv", "epochs_csv": "epochs.csv",
                     "plots": "plots/", "rules": a["rules"]["text"], "notes": a["notes"], "inputs": a["inputs"]}
    return out


def write_report(run_dir: str | Path, topology: Any = None) -> dict[str, Any]:
    """Analyses ``run_dir`` and writes every report file into it; returns the analysis (see ``analyse``)."""
    from results import html, plots  # matplotlib only when a report is drawn

    rdir = Path(run_dir).resolve()
    run = load_run(rdir, topology)
    a = analyse(rdir, topology)
    summary = enriched_summary(run.summary, a)
    (rdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    _csv(rdir / "links.csv", LINK_FIELDS, list(a["links"].values()))
    _csv(rdir / "epochs.csv", EPOCH_FIELDS, a["epochs"])
    pdir = rdir / "plots"
    pdir.mkdir(exist_ok=True)
    for old in pdir.glob("*.png"):  # a re-run must not leave plots of links that are gone
        old.unlink()
    drawn = plots.all_plots(a, pdir, run.topology)
    (rdir / "report.html").write_text(html.render(a, drawn, rdir))
    a["plots"] = [str(p) for ps in drawn.values() for p in ps]
    return a


def verdict_line(a: dict[str, Any]) -> str:
    """One line for the terminal: each trunk's verdict, efficiency and where the report is."""
    parts = [f"{tid} {t['verdict']}" for tid, t in a["trunks"].items()]
    eff = a.get("trunk_efficiency")
    return (f"trunks: {', '.join(parts) or 'none'}; trunk_efficiency "
            f"{'n/a' if eff is None else f'{eff:.3f}'}; report {Path(a['run_dir']) / 'report.html'}")


def report_after_run(run_dir: str | Path, out: Callable[[str], None]) -> dict[str, Any] | None:
    """For ``scaledist-testbed run``: write the report, print its verdict line; never raises."""
    try:
        a = write_report(run_dir)
    except Exception as e:
        out(f"warning: report not written: {type(e).__name__}: {e}")
        return None
    out(verdict_line(a))
    for n in a["notes"]:
        out(f"report note: {n}")
    return json.loads((Path(run_dir) / "summary.json").read_text())
