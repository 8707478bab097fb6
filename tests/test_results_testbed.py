"""A real `scaledist-testbed run` ends in its report: a verdict per trunk, CSVs, plots, report.html.

Needs root and Mininet (CI has both); skipped with the reason otherwise.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import why_no_testbed

REPO = Path(__file__).resolve().parents[1]


def _why_skip() -> str | None:
    return why_no_testbed()


@pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")
def test_small_run_ends_in_a_report_with_a_verdict_per_trunk(tmp_path: Path) -> None:
    rdir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(REPO / "topologies" / "small.yaml"),
                        "--scenario", str(REPO / "topologies" / "small-scenario.yaml"), "--scale", "0.25",
                        "--run-dir", str(rdir), "--timeout", "180", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "report " in p.stderr and "trunks: T1 " in p.stderr  # the verdict line, before the run's last line
    last = json.loads(p.stdout.strip().splitlines()[-1])
    summary = json.loads((rdir / "summary.json").read_text())
    assert last["trunks"] == summary["trunks"]  # --json prints the enriched summary
    assert summary["completed"] and summary["latency_method"] in ("netem", "nfqueue")
    assert set(summary["trunks"]) == {"T1", "T2", "T3", "T4"}
    for tid, t in summary["trunks"].items():
        assert t["verdict"] in ("PASS", "FAIL"), (tid, t)
        assert t["reason"] and t["epochs_measured"] > 0, (tid, t)
    # small.yaml routes DC1's copies over T1 and T2/T3: something crossed, and it was reserved
    busy = [t for t in summary["trunks"].values() if t["reserved_bytes"]]
    assert busy and all(t["measured_bytes"] for t in busy)
    assert summary["trunk_efficiency"] is not None and summary["measurement_cpu_s"] is not None
    assert "trunk/T1" in summary["trunk_directions"]
    html = (rdir / "report.html").read_text()
    assert html.index("Trunk budgets") < html.index("Plots") < html.index("Filesets") < html.index("Settings")
    with (rdir / "epochs.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) > 0
    pngs = list((rdir / "plots").glob("*.png"))
    assert {"map.png", "trunk_T1.png", "completion_news.png"} <= {x.name for x in pngs}
    assert all(x.stat().st_size > 1000 for x in pngs)
