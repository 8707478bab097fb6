"""A real testbed run measured: epochs.jsonl for every link direction, trunk captures matched to the ledger,
declared cross traffic seen on its trunk, a trunk budget reserved against while the physical bandwidth is shaped.

Needs root and Mininet (CI has both); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from scaledist.core.ledger import read_ledger
from scaledist.topology_schema import load_topology
from tests.test_testbed_run import _why_skip, assert_nothing_left, machine_state

pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")

REPO = Path(__file__).resolve().parents[1]
T1 = "  - {id: T1, from: DC1, to: DC2, bandwidth: 20MB/s, reverse_bandwidth: 2MB/s, latency: 10ms}"
SCALE = 0.25
CROSS_RATE, CROSS_START, CROSS_DURATION = 1e6, 1.0, 3.0  # on trunk/T2, which the scenario's copies do not use


def test_run_is_measured_per_epoch_per_flow_with_cross_traffic_and_a_budget(tmp_path: Path) -> None:
    topo_text = (REPO / "topologies" / "small.yaml").read_text()
    assert T1 in topo_text
    topo_path = tmp_path / "small-budget.yaml"
    topo_path.write_text(topo_text.replace(T1, T1.replace("latency: 10ms}", "latency: 10ms, budget: 10MB/s}")))
    scen_path = tmp_path / "scenario.yaml"
    scen_path.write_text((REPO / "topologies" / "small-scenario.yaml").read_text() + (
        f"cross_traffic:\n  - {{link: trunk/T2, rate: {CROSS_RATE / 1e6:g}MB/s, start: {CROSS_START:g}s, "
        f"duration: {CROSS_DURATION:g}s}}\n"))
    before = machine_state()
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(topo_path), "--scenario", str(scen_path),
                        "--scale", str(SCALE), "--timeout", "90", "--run-dir", str(run_dir), "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    topo = load_topology(topo_path).scaled(SCALE)
    ledger = read_ledger(run_dir / "ledger.jsonl")
    reserved: dict[str, int] = defaultdict(int)
    for rec in ledger:
        if rec.kind in ("grant", "carry") and rec.link:
            reserved[rec.link] += rec.bytes

    # the budget is what the resource manager reserved against; the physical bandwidth is what HTB shapes
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["qdisc"]["trunk/T1"]["planned"]["rate"] == round(topo.links["trunk/T1"].physical)  # 5 MB/s
    t1_rates = [rec.rate for rec in ledger if rec.kind == "grant" and rec.link == "trunk/T1"]
    assert t1_rates and max(t1_rates) <= topo.links["trunk/T1"].capacity + 1  # 2.5 MB/s

    # epochs.jsonl: consecutive epochs, every link direction, bytes where the ledger reserved
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert len(epochs) >= 3
    assert [e["epoch"] for e in epochs] == list(range(epochs[0]["epoch"], epochs[0]["epoch"] + len(epochs)))
    assert epochs[0]["epoch"] == 0 and epochs[-1]["partial"] is True
    for e in epochs:
        assert set(e["links"]) == set(topo.links), e["epoch"]
        for link, c in e["links"].items():
            assert {"bytes", "packets", "qdisc_bytes", "drops", "overlimits", "backlog"} <= set(c), link
    total = {link: sum(e["links"][link]["bytes"] for e in epochs) for link in topo.links}
    trunks_used = [link for link in reserved if link.startswith("trunk/")]
    assert "trunk/T1" in trunks_used
    for link in trunks_used:
        assert total[link] >= reserved[link], link  # wire bytes carry headers on top of the reserved payload
        assert total[link] < 1.15 * reserved[link] + 50_000, link

    # flows.json: every data flow on a trunk matched to a ledger transfer, almost nothing unreserved
    flows = json.loads((run_dir / "flows.json").read_text())
    for link in trunks_used:
        tid = link.split("/")[1]
        t = flows["trunks"][tid]
        assert t["capture_drops"] == 0, tid
        assert t["transfers"] > 0 and t["unmatched_tcp"] == [], (tid, t["unmatched_tcp"])
        assert all(f["in_ledger"] and f["reserved_bytes_on_this_trunk"] > 0 for f in t["flows"]), tid
        assert t["data_payload_bytes"] >= 0.95 * reserved[link], tid
        assert t["unreserved_bytes"] - t["unreserved"]["cross"] < 0.01 * t["primary_bytes"], tid
        assert t["reserved_transfers_not_seen_count"] <= 0.05 * t["transfers"], tid

    # cross traffic: sent at its rate in its window, seen on trunk/T2 by the capture and by the counters
    cross = json.loads((run_dir / "crossload.json").read_text())["loads"]
    [load] = cross
    sent = load["send"]["ip_bytes"]
    want = CROSS_RATE * SCALE * CROSS_DURATION
    assert abs(sent - want) < 0.1 * want, load
    assert abs(load["send"]["t_start"] - CROSS_START) < 0.5, load
    t2 = flows["trunks"]["T2"]
    assert t2["unreserved"]["cross"] == sent  # every datagram crossed trunk/T2, nothing else reserved there
    assert sent <= total["trunk/T2"] < sent * 1.1
    busiest = max(epochs, key=lambda e: e["links"]["trunk/T2"]["bytes"])
    assert CROSS_START - 1 <= busiest["t_start"] <= CROSS_START + CROSS_DURATION

    m = json.loads((run_dir / "measurement.json").read_text())
    assert m["epoch_origin"]["source"] == "rm StatusQuery" and m["errors"] == []
    assert all(c["dropped_by_kernel"] == 0 for c in m["capture"].values())
    assert 0 < m["cpu_s"] < 5.0, m["cpu"]
    assert m["sampler"]["lateness_ms_p50"] < 50, m["sampler"]
    assert_nothing_left(before, run_dir)
