"""The emulated network (testbed/network.py): built from small.yaml, measured, torn down, cleaned after a crash.

Needs root and Mininet; skips with the reason otherwise.  One network (small.yaml at
scale 0.1, real trunk latency) serves most tests; the flows are short Python TCP
streams run inside the Mininet hosts.  Rates are judged on the wire (HTB class
byte counters over the measuring window) and as TCP goodput.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from scaledist.cluster import DATA_PORT
from scaledist.topology_schema import load_topology
from testbed import shaping
from testbed.addressing import TestbedError, plan

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "topologies" / "small.yaml"
SCALE = 0.1

try:
    import mininet.net  # noqa: F401

    HAVE_MININET = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_MININET = False

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not HAVE_MININET,
    reason="needs root and Mininet (network namespaces, Linux bridges, tc); run as root with .venv/bin/python",
)

FLOW = textwrap.dedent(
    """
    import json, socket, sys, time
    mode, args = sys.argv[1], sys.argv[2:]

    def listener(port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(1)
        print("ready", flush=True)
        return s.accept()[0]

    def send_for(c, secs):
        buf, end = b"x" * 65536, time.monotonic() + secs
        while time.monotonic() < end:
            c.sendall(buf)
        c.close()

    def receive(c, warm):
        t0 = time.monotonic()
        total, marks = 0, []
        while True:
            d = c.recv(262144)
            if not d:
                break
            total += len(d)
            marks.append((time.monotonic() - t0, total))
        w = [m for m in marks if m[0] >= warm]
        rate = (w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0]) if len(w) > 1 and w[-1][0] > w[0][0] else 0.0
        print(json.dumps({"bytes": total, "goodput": rate, "window": [w[0][0], w[-1][0]] if w else None}))

    if mode == "serve-send":
        send_for(listener(int(args[0])), float(args[1]))
    elif mode == "serve-recv":
        receive(listener(int(args[0])), float(args[1]))
    elif mode == "connect-recv":
        receive(socket.create_connection((args[0], int(args[1])), timeout=20), float(args[2]))
    elif mode == "connect-send":
        send_for(socket.create_connection((args[0], int(args[1])), timeout=20), float(args[2]))
    elif mode == "echo":
        c = listener(int(args[0]))
        while (d := c.recv(64)):
            c.sendall(d)
    elif mode == "rtt":
        c = socket.create_connection((args[0], int(args[1])), timeout=20)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(int(args[2])):
            t = time.monotonic()
            c.sendall(b"p")
            c.recv(64)
            rtts.append(time.monotonic() - t)
        print(json.dumps({"min": min(rtts), "max": max(rtts)}))
    """
)


# --- snapshots of the machine, to prove a run leaves nothing behind -------------------------------------


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln}


def _netns() -> set[str]:
    return set(subprocess.run(["ip", "netns"], capture_output=True, text=True, check=False).stdout.split())


def _iptables() -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    return sorted(re.sub(r"\[\d+:\d+\]", "", ln) for ln in out.splitlines() if not ln.startswith("#"))


def _our_processes(tag: str, run_dir: Path | None = None) -> list[str]:
    """Mininet shells of run ``tag`` and delay-line workers writing into ``run_dir`` (other runs may be live)."""
    workers = rf"|testbed\.delayline worker --stats {re.escape(str(run_dir))}/" if run_dir else ""
    pat = re.compile(rf"mininet:sd{tag}[hrbdm]{workers}")
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pat.search(cmd) and int(pid) != os.getpid():
            found.append(f"{pid} {cmd.strip()}")
    return found


def _children() -> list[str]:
    import psutil

    return [f"{p.pid} {' '.join(p.cmdline())}" for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _bridge_nf() -> str:
    return Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip()


def _snapshot() -> dict[str, Any]:
    return {"links": _links(), "netns": _netns(), "iptables": _iptables()}


def _assert_nothing_left(before: dict[str, Any], tag: str, run_dir: Path | None = None) -> None:
    after = _snapshot()
    new_links = after["links"] - before["links"]
    ours = {n for n in new_links if n.startswith(f"sd{tag}")}
    assert not ours, f"interfaces of run {tag} left behind: {sorted(ours)}"
    # other testbed runs (tags) may be building concurrently on a shared machine; anything else is ours to explain
    foreign = {n for n in new_links if not re.match(r"^sd[a-z0-9]{2}[hrbdm]", n)}
    assert not foreign, f"new interfaces after teardown: {sorted(foreign)}"
    assert after["netns"] - before["netns"] == set(), "network namespace entries left behind"
    assert after["iptables"] == before["iptables"], "root iptables changed"
    assert not _our_processes(tag, run_dir), f"processes left behind: {_our_processes(tag, run_dir)}"


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from testbed.network import EmulatedNetwork

    tmp = tmp_path_factory.mktemp("testbed-network")
    flow = tmp / "flow.py"
    flow.write_text(FLOW)
    from testbed import cleanup

    before = _snapshot()
    nf_before = _bridge_nf()
    others = cleanup.live_tags()  # other testbed runs on this machine share the bridge-nf sysctls
    dmesg_before = _dmesg()
    topo = load_topology(SMALL).scaled(SCALE)
    lines: list[str] = []
    net = EmulatedNetwork(topo, run_dir=tmp / "run", latency="auto", log=lines.append)
    net.start()
    w = {"net": net, "topo": topo, "flow": flow, "before": before, "nf_before": nf_before,
         "dmesg_before": dmesg_before, "log": lines, "tag": net._tag, "others": others}
    try:
        yield w
    finally:
        net.stop()


def _dmesg() -> list[str] | None:
    r = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    return r.stdout.splitlines() if r.returncode == 0 else None


def _start(w: Any, ident: str, *args: object) -> subprocess.Popen[str]:
    p = w["net"].host(ident).popen([sys.executable, str(w["flow"]), *map(str, args)], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if args[0] in ("serve-send", "serve-recv", "echo"):
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    return p


def _finish(p: subprocess.Popen[str], timeout: float = 30) -> dict[str, Any] | None:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out) if out.strip() else None


# --- tests without root --------------------------------------------------------------------------------


def test_rate_below_8kbit_is_refused_naming_the_link() -> None:
    with pytest.raises(TestbedError, match="trunk/T9/rev"):
        shaping.plan_link("trunk/T9/rev", 999.0, rtt=0.01)
    cfg = shaping.plan_link("trunk/T1", 2_000_000, rtt=0.02)
    assert cfg.queue_bytes == max(2 * 2_000_000 * 0.02, 20 * 1514)
    assert 1514 <= cfg.quantum <= 60000 and cfg.burst >= 4 * 1514


def test_address_plan_is_deterministic_and_disjoint() -> None:
    topo = load_topology(SMALL)
    p1, p2 = plan(topo), plan(topo)
    assert p1 == p2
    addrs = [str(a.ip) for a in p1.hosts.values()] + [str(a.ip) for a in p1.router.values()]
    addrs += [str(a.ip) for pair in p1.trunks.values() for a in pair] + [str(a.ip) for a in p1.mgmt.values()]
    assert len(addrs) == len(set(addrs))
    for ident, addr in p1.hosts.items():
        assert addr.network == p1.dc_subnet[p1.host_dc[ident]]


def test_inconsistent_routes_are_refused() -> None:
    """A table whose next router disagrees with trunk_path must be caught by the walk (here: forced)."""
    from testbed.network import DATA_TABLE, EmulatedNetwork, _Hop

    topo = load_topology(SMALL)
    net = EmulatedNetwork(topo, run_dir=Path("/nonexistent"), latency="none")
    tables = net._route_tables()
    net._walk_all(lambda dc, table, dst: tables[(dc, table)].get(dst), "planned")  # the real plan passes
    tables[("DC2", DATA_TABLE)]["DC3"] = _Hop("trunk/T4", "DC1")  # DC2 would send DC1->DC3 data back to DC1
    with pytest.raises(TestbedError, match="trunk_path"):
        net._walk_all(lambda dc, table, dst: tables[(dc, table)].get(dst), "planned")


# --- tests on one live network --------------------------------------------------------------------------


@needs_root
def test_network_is_up_with_every_link_shaped(world: Any) -> None:
    net, topo = world["net"], world["topo"]
    assert net.latency_method in ("netem", "nfqueue")
    assert set(net.links()) == set(topo.links)
    for link_id, sl in net.links().items():
        assert sl.rate == pytest.approx(topo.links[link_id].capacity, abs=1)
        if link_id.startswith("trunk/"):
            assert sl.delay == topo.trunks[link_id.split("/")[1]].latency
            assert sl.queue_bytes >= 2 * sl.rate * 2 * sl.delay
        assert len(sl.intf) <= 15
    assert _bridge_nf() == "0", "bridged frames must skip the root iptables during the run"
    assert net.ip("G1") == net.ip("dc1-r1-s1") and net.host("G1") is net.host("dc1-r1-s1")
    assert net.mgmt_ip("M1") is not None and net.mgmt_ip("M1") != net.ip("M1")


@needs_root
def test_htb_has_our_quantum_and_no_kernel_warning(world: Any) -> None:
    net = world["net"]
    for link_id, sl in net.links().items():
        cmd = ["tc", "-s", "-d", "class", "show", "dev", sl.intf]
        if sl.pid is not None:
            cmd = ["mnexec", "-a", str(sl.pid), *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        quantum = shaping.plan_link(link_id, sl.rate, rtt=0.01).quantum
        assert f"quantum {quantum} " in out, (link_id, out)
        qd = ["tc", "qdisc", "show", "dev", sl.intf]
        qout = subprocess.run(["mnexec", "-a", str(sl.pid), *qd] if sl.pid else qd, capture_output=True,
                              text=True, check=True).stdout
        assert "qdisc htb 1: root" in qout
        assert f"limit {sl.queue_bytes}b" in qout or "netem" in qout, qout
    after = _dmesg()
    if after is not None and world["dmesg_before"] is not None:
        new = after[len(world["dmesg_before"]):]
        assert not [ln for ln in new if "quantum" in ln and "htb" in ln.lower()], new


@needs_root
def test_slave_in_dc1_reaches_dc2_and_dc3_over_tcp_with_trunk_latency(world: Any) -> None:
    net, topo = world["net"], world["topo"]
    for dst, port in (("dc2-r3-s1", 5301), ("dc3-r4-s1", 5302)):
        echo = _start(world, dst, "echo", port)
        try:
            res = _finish(_start(world, "dc1-r1-s3", "rtt", net.ip(dst), port, 5))
        finally:
            echo.kill()
            echo.wait()
        assert res is not None
        # unmarked traffic: main table both ways
        there = net.routes()["main"][f"DC1->{topo.slaves[dst].dc}"]
        back = net.routes()["main"][f"{topo.slaves[dst].dc}->DC1"]
        rtt = sum(topo.trunks[h.split("/")[1]].latency for h in [*there, *back])
        print(f"DC1 -> {dst}: app-level rtt min {res['min'] * 1e3:.1f} ms, trunk latency both ways {rtt * 1e3:.0f} ms")
        assert res["min"] >= 0.95 * rtt, f"{dst}: rtt {res['min'] * 1e3:.1f} ms < trunk latency {rtt * 1e3:.0f} ms"
        assert res["min"] <= rtt + 0.030, f"{dst}: rtt {res['min'] * 1e3:.1f} ms, expected ~{rtt * 1e3:.0f} ms"


@needs_root
def test_data_route_dc1_to_dc3_follows_trunk_path_hop_by_hop_and_by_counters(world: Any) -> None:
    net, topo = world["net"], world["topo"]
    path = topo.trunk_path("DC1", "DC3")
    assert path == ("T1", "T3")  # small.yaml: 10 ms + 5 ms beats T2's 20 ms
    assert net.routes()["data"]["DC1->DC3"] == [f"trunk/{t}" for t in path]
    # independent of the testbed's own walk: ask each router's kernel which way marked packets to 10.3/16 go
    p = plan(topo)
    here, hops = "DC1", []
    while here != "DC3":
        router = net.net[net._router[here]]
        out = router.cmd(f"ip route get {net.ip('dc3-r4-s2')} mark 1")
        gw = re.search(r"via (\S+)", out).group(1)
        nxt = p.router_of(gw)
        trunk = next(t for t, (a, b) in p.trunks.items() if str(b.ip) == gw or str(a.ip) == gw)
        hops.append(trunk)
        here = nxt
    assert tuple(hops) == path
    # counters: a pull-style flow (server's sport 7101) in DC1 -> client in DC3
    before = net.qdisc_stats()
    srv = _start(world, "dc1-r2-s1", "serve-send", DATA_PORT, 1.5)
    got = _finish(_start(world, "dc3-r4-s2", "connect-recv", net.ip("dc1-r2-s1"), DATA_PORT, 0.2))
    _finish(srv)
    after = net.qdisc_stats()
    delta = {k: after[k]["bytes"] - before[k]["bytes"] for k in after}
    pkts = {k: after[k]["packets"] - before[k]["packets"] for k in after}
    assert got is not None and got["bytes"] > 500_000
    for t in ("T1", "T3"):
        assert delta[f"trunk/{t}"] >= got["bytes"], (t, delta)
        assert pkts[f"trunk/{t}/rev"] >= pkts[f"trunk/{t}"] / 4, f"ACKs of {t} not on {t}/rev"
    assert delta["trunk/T2"] < 0.01 * got["bytes"] and delta["trunk/T2/rev"] < 0.01 * got["bytes"]
    assert delta["trunk/T4"] < 0.01 * got["bytes"]
    for link in topo.path("dc1-r2-s1", "dc3-r4-s2") or ():
        assert delta[link] >= got["bytes"], (link, delta[link])


def _stats_at(net: Any, link: str) -> tuple[dict[str, int], float]:
    """One link's counters and the moment they were read: the middle of the call (qdisc_stats() takes
    a good fraction of a second, more on a busy machine, which would otherwise bend the rate)."""
    a = time.monotonic()
    stats = net.qdisc_stats()[link]
    return stats, (a + time.monotonic()) / 2


@needs_root
def test_asymmetric_trunk_measured_both_ways(world: Any) -> None:
    """T1: 20 MB/s primary, 2 MB/s reverse (x0.1): a TCP stream each way, within 10 %."""
    net, topo = world["net"], world["topo"]
    t1 = topo.trunks["T1"]
    secs, warm = 5.0, 1.5
    results = {}
    # primary: block data DC1 -> DC2 (server sport 7101, marked -> table data -> T1)
    for direction in ("primary", "reverse"):
        link = "trunk/T1" if direction == "primary" else "trunk/T1/rev"
        configured = t1.bandwidth if direction == "primary" else t1.reverse_bandwidth
        if direction == "primary":
            srv = _start(world, "dc1-r1-s2", "serve-send", DATA_PORT, secs)
            cli = _start(world, "dc2-r3-s2", "connect-recv", net.ip("dc1-r1-s2"), DATA_PORT, warm)
        else:  # unmarked stream DC2 -> DC1: main table -> reverse of trunk_path(DC1, DC2) = T1/rev
            srv = _start(world, "dc1-r1-s2", "serve-recv", 5201, warm)
            cli = _start(world, "dc2-r3-s2", "connect-send", net.ip("dc1-r1-s2"), 5201, secs)
        time.sleep(warm)
        s0, t0 = _stats_at(net, link)
        time.sleep(secs - warm - 1.0)
        s1, t1_ = _stats_at(net, link)
        res = [_finish(cli), _finish(srv)]
        goodput = next(r for r in res if r)["goodput"]
        wire = (s1["bytes"] - s0["bytes"]) / (t1_ - t0)
        results[direction] = (configured, wire, goodput, s1["drops"] - s0["drops"])
    world["asym"] = results
    for direction, (configured, wire, goodput, drops) in results.items():
        print(f"T1 {direction}: configured {configured / 1e3:.0f} kB/s, wire {wire / 1e3:.1f} kB/s, "
              f"goodput {goodput / 1e3:.1f} kB/s, drops {drops}")
    for direction, (configured, wire, goodput, _drops) in results.items():
        assert wire == pytest.approx(configured, rel=0.10), f"{direction}: wire {wire:.0f} B/s vs {configured:.0f}"
        assert goodput == pytest.approx(configured, rel=0.10), f"{direction}: goodput {goodput:.0f} vs {configured:.0f}"


@needs_root
def test_qdisc_stats_and_audit_cover_every_link(world: Any) -> None:
    net, topo = world["net"], world["topo"]
    stats = net.qdisc_stats()
    assert set(stats) == set(topo.links)
    for link, s in stats.items():
        assert set(s) >= {"bytes", "packets", "drops", "overlimits", "backlog", "requeues"}, link
        assert all(isinstance(v, int) and v >= 0 for v in s.values()), (link, s)
    audit = net.audit()
    assert audit["kernel"] == os.uname().release
    assert audit["latency_method"] == net.latency_method
    for intf, off in audit["offloads"].items():
        assert off == {"tso": "off", "gso": "off", "gro": "off"} or set(off.values()) <= {"off", "off [fixed]"}, intf
    for link, q in audit["qdisc"].items():
        assert q["kernel"]["rate"] == q["planned"]["rate"] and q["kernel"]["quantum"] == q["planned"]["quantum"], link
    assert audit["sysctls"]["root"]["net.bridge.bridge-nf-call-iptables"] == "0"
    if not world["others"]:  # with another run live, the value saved is the one that run found
        assert audit["sysctls"]["bridge_nf_saved"]["net.bridge.bridge-nf-call-iptables"] == world["nf_before"]


@needs_root
def test_stop_leaves_nothing_and_is_idempotent(world: Any) -> None:
    net = world["net"]
    net.stop()
    net.stop()
    _assert_nothing_left(world["before"], world["tag"], world["net"].run_dir)
    from testbed import cleanup

    # the last run to stop restores the machine's value (known only if no other run was live at our start)
    if not cleanup.live_tags() and not world["others"]:
        assert _bridge_nf() == world["nf_before"]
    assert not _children(), _children()


# --- hardware in the loop and crash recovery (their own small networks) -----------------------------------


@needs_root
def test_hardware_in_the_loop_interface_is_borrowed_not_deleted(tmp_path: Path) -> None:
    from testbed.network import EmulatedNetwork

    subprocess.run(["ip", "link", "add", "hilt0", "type", "veth", "peer", "name", "hilt1"], check=True)
    try:
        with pytest.raises(TestbedError, match="management network"):  # its reports could not reach M1
            EmulatedNetwork(load_topology(SMALL).scaled(SCALE), run_dir=tmp_path, latency="none",
                            log=lambda _s: None, hil={"dc1-r2-s2": "hilt0"}).start()
        topo = dataclasses.replace(load_topology(SMALL).scaled(SCALE), control="trunks")
        net = EmulatedNetwork(topo, run_dir=tmp_path, latency="none", log=lambda _s: None,
                              hil={"dc1-r2-s2": "hilt0"})
        with net:
            master = Path("/sys/class/net/hilt0/master").resolve().name
            assert master == net._rack_bridge["R2"]
            assert "slave/dc1-r2-s2/up" not in net.links() and "slave/dc1-r2-s2/down" in net.links()
            assert set(net.qdisc_stats()) == set(topo.links)
            assert net.mgmt_ip("dc1-r2-s2") is None and net.ip("dc1-r2-s2").startswith("10.1.2.")
            with pytest.raises(TestbedError, match="hardware in the loop"):
                net.host("dc1-r2-s2")
        assert Path("/sys/class/net/hilt0").exists(), "the borrowed interface was deleted"
        assert not Path("/sys/class/net/hilt0/master").exists()
        assert "htb" not in subprocess.run(["tc", "qdisc", "show", "dev", "hilt0"], capture_output=True,
                                           text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "link", "del", "hilt0"], check=False, capture_output=True)


CRASH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from scaledist.topology_schema import load_topology
    from testbed.network import EmulatedNetwork
    topo = load_topology(sys.argv[1]).scaled(float(sys.argv[2]))
    net = EmulatedNetwork(topo, run_dir=Path(sys.argv[3]), latency="auto", log=lambda s: None)
    net.start()
    print(net._tag, flush=True)
    time.sleep(600)
    """
)


@needs_root
def test_clean_removes_everything_after_a_crashed_run(tmp_path: Path) -> None:
    from testbed import cleanup

    before = _snapshot()
    nf_before = _bridge_nf()
    others = cleanup.live_tags()
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    child = subprocess.Popen([sys.executable, str(script), str(SMALL), str(SCALE), str(tmp_path / "run")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             start_new_session=True)
    try:
        assert child.stdout is not None
        tag = child.stdout.readline().strip()
        assert re.fullmatch(r"[a-z0-9]{2}", tag), child.stderr.read() if child.stderr else ""
        assert any(n.startswith(f"sd{tag}") for n in _links())
        assert _our_processes(tag)
        os.kill(child.pid, signal.SIGKILL)  # the crash: no stop(), no atexit
        child.wait(timeout=10)
        assert any(n.startswith(f"sd{tag}") for n in _links()), "the crash should leave the network behind"
        # only=: other people's runs may be live (or dead) on a shared machine; leave them to their owners
        lines = cleanup.clean(log=lambda _s: None, only={tag})
        assert any("deleted" in ln for ln in lines) and any("killed" in ln for ln in lines), lines
        _assert_nothing_left(before, tag, tmp_path / "run")
        if not cleanup.live_tags() and not others:
            assert _bridge_nf() == nf_before
        assert not (cleanup.REGISTRY / f"{tag}.json").exists()
        again = cleanup.clean(log=lambda _s: None, only={tag})  # safe when nothing is left
        assert not [ln for ln in again if tag in ln], again
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


@needs_root
def test_ctrl_c_during_start_still_tears_down(tmp_path: Path) -> None:
    from testbed import cleanup
    from testbed.network import EmulatedNetwork

    before = _snapshot()
    topo = load_topology(SMALL).scaled(SCALE)
    lines: list[str] = []
    net = EmulatedNetwork(topo, run_dir=tmp_path / "run", latency="auto", log=lines.append)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, float(os.environ.get("SD_TEST_INTERRUPT_AT", "0.4")))  # mid-build
    try:
        with pytest.raises(KeyboardInterrupt):
            net.start()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert net._tag, "interrupted before anything was built; the test proves nothing"
    assert any("tearing down" in ln for ln in lines), lines
    _assert_nothing_left(before, net._tag, tmp_path / "run")
    assert not (cleanup.REGISTRY / f"{net._tag}.json").exists()
    net.stop()  # still idempotent


@needs_root
def test_cleanup_never_targets_the_callers_namespace() -> None:
    """Only Mininet shells of ours may be killed in our own namespace; never a whole namespace with eth0 in it."""
    from testbed import cleanup

    own = os.stat("/proc/self/ns/net").st_ino
    for pid, why in cleanup.find_processes(lambda _t: True).items():
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ino == own:
            assert why.startswith("Mininet shell"), (pid, why)
