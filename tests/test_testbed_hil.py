"""Hardware in the loop for real: a slave daemon outside Mininet joins a run through a veth on its rack bridge.

The "physical host" is a network namespace made with ``ip netns add`` (Mininet knows nothing of it),
joined to the emulated network by a veth pair: one end inside it, the other left in the root namespace
and handed to ``EmulatedNetwork(hil={slave: veth})``, which enslaves it to the slave's rack bridge.  The
far end gets the address the network planned for that slave and a default route to its datacenter's
border router, exactly what an operator would configure on a real machine.  Every other daemon runs in
its Mininet host; the hardware slave is a plain ``python -m scaledist slave`` started with
``ip netns exec``, reading the same cluster file.  The run must end with that slave holding every file
byte for byte, and its blocks must have crossed the veth (interface and HTB counters).

The topology is topologies/small.yaml with ``control: trunks`` (scaled 0.25): a host attached by a
single interface has no leg on a management network, so under ``control: management`` its reports would
go to the master's 172.31/16 management address, which no border router routes (see the report).

Needs root and Mininet; skipped with the reason otherwise.  About 40 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from testbed.addressing import TestbedError
from tests.test_testbed_run import SMALL, SMALL_SCENARIO, _why_skip, machine_state

pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")

SCALE = 0.25
HIL_SLAVE = "dc3-r4-s2"  # DC3: its blocks cross T1 and T3, its reports go back over T3/rev and T1/rev
TIMEOUT = 75.0


def _sh(*argv: str) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr.strip()}"
    return r.stdout


def _counters(ifname: str) -> dict[str, int]:
    base = Path("/sys/class/net") / ifname / "statistics"
    return {k: int((base / k).read_text()) for k in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")}


def small_with_control(tmp_path: Path, control: str) -> Path:
    """topologies/small.yaml with its ``control:`` line replaced, written to tmp_path."""
    text = SMALL.read_text()
    new, n = re.subn(r"^control: \w+$", f"control: {control}", text, flags=re.M)
    assert n == 1, "topologies/small.yaml no longer has one top-level 'control:' line"
    path = tmp_path / f"small-{control}.yaml"
    path.write_text(new)
    return path


@contextlib.contextmanager
def physical_host() -> Iterator[tuple[str, str, str]]:
    """A namespace outside Mininet and a veth: (namespace, root-side name, far-side name); removed afterwards."""
    tag = f"{os.getpid() % 100000}"
    ns, root_if, far_if = f"hiltest{tag}", f"hilr{tag}", f"hilp{tag}"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "add", root_if, "type", "veth", "peer", "name", far_if, "netns", ns)
        yield ns, root_if, far_if
    finally:
        remove_physical_host(ns, root_if)


def remove_physical_host(ns: str, root_if: str) -> None:
    """Kill whatever still runs in the namespace, delete it (and with it the far end), then the root end."""
    if Path(f"/run/netns/{ns}").exists():
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    if Path(f"/sys/class/net/{root_if}").exists():
        subprocess.run(["ip", "link", "del", root_if], capture_output=True, check=False)


def configure_far_end(net: Any, ns: str, far_if: str) -> None:
    """What an operator does on the physical host: address, default route, and its own uplink shaped."""
    from pyroute2 import NetNS

    from testbed import shaping
    from testbed.network import HOST_CC

    addr = net.plan.hosts[HIL_SLAVE]
    gateway = net.plan.router[net.plan.host_dc[HIL_SLAVE]].ip
    assert str(addr.ip) == net.ip(HIL_SLAVE)
    _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1", f"net.ipv4.tcp_congestion_control={HOST_CC}")
    _sh("ip", "-n", ns, "link", "set", "lo", "up")
    _sh("ip", "-n", ns, "link", "set", far_if, "up")
    _sh("ip", "-n", ns, "addr", "add", addr.with_prefixlen, "dev", far_if)
    _sh("ip", "-n", ns, "route", "add", "default", "via", str(gateway))
    _sh("ip", "netns", "exec", ns, "ethtool", "-K", far_if, "tso", "off", "gso", "off", "gro", "off")
    up = net.topology.links[f"slave/{HIL_SLAVE}/up"]
    cfg = shaping.plan_link(up.id, float(up.physical or up.capacity), rtt=shaping.MIN_RTT)
    ipr = NetNS(ns)
    try:
        shaping.install(ipr, far_if, cfg)
    finally:
        ipr.close()


def make_cluster(net: Any, ns: str, topology_path: Path, run_dir: Path) -> Any:
    """LocalCluster with the emulated daemons in Mininet hosts and the hardware slave in ``ns``."""
    from scaledist.cluster import Endpoint
    from scaledist.local import LocalCluster, die_with_parent
    from testbed.run import connect_in_netns

    class HilCluster(LocalCluster):
        def spawn_here(self, ident: str, cmd: list[str], logf: IO[bytes]) -> subprocess.Popen[bytes]:
            kw: dict[str, Any] = {"stdout": logf, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL,
                                  "preexec_fn": die_with_parent}
            if ident == HIL_SLAVE:  # `ip netns exec` execs the daemon itself: the Popen pid is the slave's
                return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True, **kw)
            return net.host(ident).popen(cmd, **kw)

        def probe(self, addr: tuple[str, int]) -> Any:
            """From the daemon's own namespace, where its address lives."""
            return connect_in_netns(self.procs[owner[addr[0]]].pid, addr)

    t = net.topology
    idents = [t.resource_manager.id, *t.masters, *t.slaves, *t.generators]
    endpoints = {i: Endpoint(net.ip(i)) for i in idents}
    management = {i: m for i in idents if (m := net.mgmt_ip(i))}
    owner = {management.get(i) or net.ip(i): i for i in [t.resource_manager.id, *t.masters, *t.slaves]}
    lc = HilCluster(topology_path, SMALL_SCENARIO, scale=SCALE, run_dir=run_dir,
                    log=print, endpoints=endpoints, management=management,
                    spawn=lambda i, c, f: lc.spawn_here(i, c, f))
    return lc


def test_hardware_slave_outside_mininet_gets_every_file(tmp_path: Path) -> None:
    from scaledist.topology_schema import load_topology
    from testbed.network import EmulatedNetwork
    from tests.test_testbed_run import assert_nothing_left

    before = machine_state()
    topology_path = small_with_control(tmp_path, "trunks")
    topo = load_topology(topology_path).scaled(SCALE)
    run_dir = tmp_path / "run"
    lc = None
    with physical_host() as (ns, root_if, far_if):
        net = EmulatedNetwork(topo, run_dir=run_dir, hil={HIL_SLAVE: root_if}, log=print)
        try:
            net.start()
            (run_dir / "audit.json").write_text(json.dumps({"tag": net.audit()["tag"]}))  # for assert_nothing_left
            rack = f"rack:{topo.slaves[HIL_SLAVE].rack}"
            rack_bridge = next(n for n, role in net.node_roles().items() if role == rack)
            assert Path(f"/sys/class/net/{root_if}/master").resolve().name == rack_bridge
            with pytest.raises(TestbedError, match="hardware in the loop"):
                net.host(HIL_SLAVE)  # no Mininet host: its daemon runs on the "machine"
            assert net.mgmt_ip(HIL_SLAVE) is None
            assert net.links()[f"slave/{HIL_SLAVE}/down"].intf == root_if  # the rack port's HTB is on our veth
            configure_far_end(net, ns, far_if)

            lc = make_cluster(net, ns, topology_path, run_dir)
            assert lc.cluster.management == {}  # control: trunks: every control message on the data network
            q0, c0 = net.qdisc_stats(), _counters(root_if)
            t0 = time.monotonic()
            lc.start()
            hil = lc.procs[HIL_SLAVE]
            assert os.stat(f"/proc/{hil.pid}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
            completed, done_at = lc.wait(TIMEOUT, show=False)
            elapsed = time.monotonic() - t0
            q1, c1 = net.qdisc_stats(), _counters(root_if)
            assert hil.poll() is None, "the hardware slave died during the run"
        finally:
            if lc is not None:
                lc.close()
            net.stop()
        assert lc is not None
        # the network gave the borrowed interface back: still there, off the bridge, its HTB removed
        assert Path(f"/sys/class/net/{root_if}").exists()
        assert not Path(f"/sys/class/net/{root_if}/master").exists()
        assert "htb" not in _sh("tc", "qdisc", "show", "dev", root_if)
        v = lc.verify()
        tx, rx = c1["tx_bytes"] - c0["tx_bytes"], c1["rx_bytes"] - c0["rx_bytes"]
        print(f"HIL run: completed={completed} in {elapsed:.1f}s {done_at}; {root_if} tx {tx} B rx {rx} B; "
              f"{v.files_verified} files verified, {v.files_mismatched} mismatched")
        assert completed, f"not complete within {TIMEOUT}s: {done_at}"
        assert v.files_mismatched == 0, v.mismatches
        # 9 non-generator slaves x (3 news files + the news FileSet file, 1 web file + the web FileSet file)
        assert v.files_verified == 9 * 6

        # the hardware slave's files are among those verified byte for byte; they came through the veth:
        # at least as many bytes left the rack bridge toward it, counted by the interface and by the HTB
        expected = lc.expected()
        wanted = sum(size for fs in topo.slaves[HIL_SLAVE].filesets for _, size in expected[fs].values())
        assert wanted > 3 * 2**20  # 3.25 MiB of files at scale 0.25, plus the FileSet files
        assert tx >= wanted, f"only {tx} B crossed {root_if} toward the hardware slave; it holds {wanted} B"
        down = f"slave/{HIL_SLAVE}/down"
        assert q1[down]["bytes"] - q0[down]["bytes"] >= wanted
        assert q1[down]["packets"] - q0[down]["packets"] > wanted / 1500
        assert rx > 0  # its requests, ACKs and reports went back the same way
        log = (run_dir / "logs" / f"{HIL_SLAVE}.log").read_text()
        assert f"listening on {net.ip(HIL_SLAVE)}:" in log
        assert re.search(r"^.*got \S+ news/news-docs@\d+#\d+", log, flags=re.M), log[-2000:]
        master_log = (run_dir / "logs" / "M1.log").read_text()
        assert re.search(rf"instruct pull \S+ .*->{HIL_SLAVE} ", master_log)  # the master heard its reports
        assert hil.wait(timeout=5) is not None
    assert not Path(f"/run/netns/{ns}").exists() and not Path(f"/sys/class/net/{root_if}").exists()
    assert_nothing_left(before, run_dir)
