"""Control traffic over the trunks' reverse directions (patent §0042-0043), for real on the emulated network.

topologies/small.yaml with ``control: trunks``: no management network, so every slave report travels the
data network.  DC3 has no trunk of its own toward DC1 (it "sends to nobody"), so its slaves' reports to
master M1 in DC1 can only go back along the reverse directions of the trunks that feed DC3: T3/rev to DC2,
then T1/rev to DC1 -- the reverse of ``trunk_path(DC1, DC3) == (T1, T3)``.  The run goes through
``testbed.run.run_testbed`` with a network whose DC1 border router counts, per DC3 slave, the TCP packets
addressed to M1's control port and on which interface they arrived; every file must verify byte for byte.

Needs root and Mininet; skipped with the reason otherwise.  About 30 s.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scaledist.cluster import CONTROL_PORT
from scaledist.topology_schema import load_topology
from tests.test_testbed_run import SMALL, SMALL_SCENARIO, _why_skip, assert_nothing_left, machine_state

pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")

SCALE = 0.25
COMMENT = "scaledist-test-control"


def small_trunks(tmp_path: Path) -> Path:
    """topologies/small.yaml with ``control: trunks`` instead of its management network."""
    text, n = re.subn(r"^control: \w+$", "control: trunks", SMALL.read_text(), flags=re.M)
    assert n == 1, "topologies/small.yaml no longer has one top-level 'control:' line"
    path = tmp_path / "small-trunks.yaml"
    path.write_text(text)
    return path


def _ns(pid: int, *argv: str) -> str:
    r = subprocess.run(["mnexec", "-a", str(pid), *argv], capture_output=True, text=True, timeout=10, check=False)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr.strip()}"
    return r.stdout


def counting_network(seen: dict[str, Any]) -> type:
    """EmulatedNetwork whose DC1 router counts control packets from each DC3 slave to M1 (per arrival interface).

    The counting rules have no target (they only count) and live in the router's namespace, which the
    network deletes; their counters are read in stop(), before the teardown.
    """
    from testbed.network import EmulatedNetwork

    class CountingNetwork(EmulatedNetwork):
        def start(self) -> None:
            super().start()
            topo = self.topology
            links = self.links()
            router = links["trunk/T1"].node  # T1 starts in DC1: its reverse direction arrives on that interface
            assert self.node_roles()[router] == "router:DC1"
            seen["router"], seen["t1_if"] = router, links["trunk/T1"].intf
            seen["t2_if"] = links["trunk/T2"].intf  # DC1's other way toward DC3 (T2/rev is not on the path)
            seen["routes"] = self.routes()
            seen["mgmt"] = {i: self.mgmt_ip(i) for i in [topo.resource_manager.id, *topo.masters, *topo.slaves]}
            pid = self.net[router].pid
            master = self.ip("M1")
            for s in sorted(x for x in topo.slaves if topo.slaves[x].dc == "DC3"):
                for where, extra in (("any", []), ("T1", ["-i", seen["t1_if"]]), ("T2", ["-i", seen["t2_if"]])):
                    _ns(pid, "iptables", "-w", "-A", "FORWARD", "-s", self.ip(s), "-d", master, *extra, "-p", "tcp",
                        "--dport", str(CONTROL_PORT), "-m", "comment", "--comment", f"{COMMENT} {s} {where}")

        def stop(self) -> None:
            if self.running and "router" in seen:
                try:
                    saved = _ns(self.net[seen["router"]].pid, "iptables-save", "-c", "-t", "filter")
                    counts = {}
                    for line in saved.splitlines():
                        m = re.match(rf'\[(\d+):(\d+)\] .*--comment "{COMMENT} (\S+) (\S+)"', line)
                        if m:
                            counts[(m.group(3), m.group(4))] = (int(m.group(1)), int(m.group(2)))
                    seen["counts"] = counts
                except Exception as e:  # recorded; the test fails on it, the teardown still runs
                    seen["counts_error"] = repr(e)
            super().stop()

    return CountingNetwork


def test_control_over_trunk_reverse_directions(tmp_path: Path) -> None:
    from testbed.run import plan_run, run_testbed

    topology_path = small_trunks(tmp_path)
    topo = load_topology(topology_path)  # the topology validation accepts it (check_control_paths)
    assert topo.control == "trunks"
    assert topo.trunk_path("DC3", "DC1") is None and topo.trunk_path("DC1", "DC3") == ("T1", "T3")
    dc3 = sorted(s for s in topo.slaves if topo.slaves[s].dc == "DC3")
    assert dc3 == ["dc3-r4-s1", "dc3-r4-s2"]

    before = machine_state()
    run_dir = tmp_path / "run"
    seen: dict[str, Any] = {}
    rc = run_testbed(plan_run(topology_path, SMALL_SCENARIO, SCALE), timeout=90, run_dir=run_dir, as_json=True,
                     network_factory=counting_network(seen))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert rc == 0, summary.get("error")
    assert summary["completed"] is True
    assert summary["files_mismatched"] == 0
    assert summary["files_verified"] == 9 * (3 + 1 + 1 + 1)  # 9 non-generator slaves x 6 files, as in small.yaml

    # no management network anywhere: not in the network, not in the cluster file the daemons read
    assert seen["mgmt"] and all(v is None for v in seen["mgmt"].values())
    cluster = json.loads((run_dir / "cluster.json").read_text())
    assert cluster["management"] == {}
    assert not any(role == "management" for role in json.loads((run_dir / "audit.json").read_text())["nodes"].values())
    # the routes the kernel had: control from DC3 back over T3/rev then T1/rev, data out over T1 then T3
    assert seen["routes"]["main"]["DC3->DC1"] == ["trunk/T3/rev", "trunk/T1/rev"]
    assert seen["routes"]["data"]["DC1->DC3"] == ["trunk/T1", "trunk/T3"]

    # every DC3 slave's control connections to M1 reached DC1's router, all of them over T1's reverse direction
    assert "counts_error" not in seen, seen.get("counts_error")
    counts = seen["counts"]
    print(f"DC1 router, TCP to M1:{CONTROL_PORT} from DC3 slaves (packets, bytes): {counts}")
    for s in dc3:
        packets, nbytes = counts[(s, "any")]
        assert packets > 10, f"{s}: only {packets} control packets reached DC1"
        assert counts[(s, "T1")] == (packets, nbytes), f"{s}: some control arrived elsewhere than T1/rev"
        assert counts[(s, "T2")] == (0, 0)
    # the reverse directions on the way carried them (and the ACKs of the data); T2/rev is on no path here
    q = summary["qdisc"]  # HTB class counters of every shaped link direction, before and after the daemons ran
    grew = {link: q["after"][link]["bytes"] - q["before"][link]["bytes"]
            for link in ("trunk/T1/rev", "trunk/T3/rev", "trunk/T2/rev")}
    print(f"reverse-direction bytes during the run: {grew}")
    assert grew["trunk/T3/rev"] >= sum(counts[(s, "T1")][1] for s in dc3)
    assert grew["trunk/T1/rev"] >= sum(counts[(s, "T1")][1] for s in dc3)
    # and the master acted on what they reported: it instructed transfers to both DC3 slaves
    master_log = (run_dir / "logs" / "M1.log").read_text()
    for s in dc3:
        assert re.search(rf"instruct pull \S+ \S+ \S+->{s} ", master_log), s
    assert_nothing_left(before, run_dir)
