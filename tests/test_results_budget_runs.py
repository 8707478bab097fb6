"""The trunk-budget verdict on real runs: a resource manager told twice what a trunk carries is caught
(FAIL), and a budget honestly adjusted for declared cross traffic on the same trunk holds (PASS, §0114).

Needs root and Mininet (CI has both); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import why_no_testbed

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "topologies" / "small.yaml"
T1 = "{id: T1, from: DC1, to: DC2, bandwidth: 20MB/s, reverse_bandwidth: 2MB/s, latency: 10ms}"


# Enough data, in several files at once, that several blocks cross T1 together and the resource manager
# books as much of T1 as it believes it has.
LOAD = """version: 1
name: t1-load
filesets:
  news:
    files:
      - {id: a, size: 16MiB}
      - {id: b, size: 16MiB}
      - {id: c, size: 16MiB}
  web:
    files:
      - {id: w, size: 8MiB}
"""


def _why_skip() -> str | None:
    return why_no_testbed()


def run(tmp_path: Path, t1: str, cross: str = "") -> dict[str, object]:
    text = SMALL.read_text()
    assert T1 in text
    topo = tmp_path / "small-t1.yaml"
    topo.write_text(text.replace(T1, t1))
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(LOAD + cross)
    rdir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(topo), "--scenario", str(scenario),
                        "--scale", "0.25", "--run-dir", str(rdir), "--timeout", "180", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.stdout.strip(), p.stderr[-3000:]
    summary = json.loads((rdir / "summary.json").read_text())
    assert summary["completed"] and summary["files_mismatched"] == 0, p.stderr[-3000:]
    return summary


@pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")
def test_a_budget_twice_what_the_trunk_carries_is_reported_fail(tmp_path: Path) -> None:
    s = run(tmp_path, T1.replace("latency: 10ms}", "latency: 10ms, budget: 40MB/s}"))
    t1 = s["trunks"]["T1"]  # type: ignore[index]
    assert t1["verdict"] == "FAIL", json.dumps(t1)
    assert t1["grants_over_physical"] > 0 and "faster than the trunk carries" in t1["reason"], t1
    for tid in ("T3",):  # the other loaded trunk keeps its honest budget: PASS
        assert s["trunks"][tid]["verdict"] == "PASS", s["trunks"][tid]  # type: ignore[index]


@pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")
def test_a_budget_adjusted_for_declared_cross_traffic_holds(tmp_path: Path) -> None:
    cross = "cross_traffic:\n  - {link: trunk/T1, rate: 5MB/s, start: 0s, duration: 30s}\n"
    s = run(tmp_path, T1.replace("latency: 10ms}", "latency: 10ms, budget: 14MB/s}"), cross)
    t1 = s["trunks"]["T1"]  # type: ignore[index]
    assert t1["verdict"] == "PASS", json.dumps(t1)
    assert t1["epochs_over_budget"] == 0 and t1["drops"] == 0 and t1["grants_over_physical"] == 0, t1
    assert t1["reserved_bytes"] > 0
    assert t1["cross_bytes"] > 0.8 * 5e6 * 0.25 * 10, t1  # the cross traffic ran (and was seen) for 10 s or more
