"""Data faults against real clusters: a full disk, a block rotting on disk, bytes damaged in flight, a clock step.

Each test runs real daemons (LocalCluster on loopback; the in-flight test on the Mininet testbed), injects the
fault the way a drill does, and checks that the fault really happened, that no damaged byte was ever
accepted (every file byte-identical to the generator's, every stored block verifying from disk), that the
distribution completed, and that nothing is left behind (mounts, iptables rules, processes).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scaledist import storage
from scaledist.core.blocks import cumulative_crc
from scaledist.local import LocalCluster
from testbed.faults.base import FAULTS, DrillContext, FaultSpecError
from testbed.faults.data import (
    BALLAST,
    FAKETIME_LIB,
    ClockStep,
    CorruptInFlight,
    CorruptOnDisk,
    DiskFull,
    diskfull_mounts,
    mounted,
)
from tests.needs import why_no_testbed

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "topologies" / "small.yaml"
SMALL_SCENARIO = ROOT / "topologies" / "small-scenario.yaml"
MiB = 1 << 20
# One big file generated over a few seconds, so faults land while blocks are still moving.
SLOW_SCENARIO = """
version: 1
name: slow-big-file
filesets:
  news:
    generation_rate: {rate}
    files:
      - {{id: big, size: 24MiB}}
  web:
    files:
      - {{id: page, size: 1MiB}}
"""

pytestmark = pytest.mark.integration

NOT_ROOT = "needs root (mounts a tmpfs); run as root, e.g. in CI"


def _why_no_testbed() -> str | None:
    return why_no_testbed("netfilterqueue", "scapy.layers.inet")


def slow_cluster(tmp_path: Path, rate: str = "8MB/s", **kw: object) -> LocalCluster:
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(SLOW_SCENARIO.format(rate=rate))
    return LocalCluster(SMALL, scenario, scale=1.0, run_dir=tmp_path / "run", log=lambda s: None, **kw)  # type: ignore[arg-type]


def ctx_of(lc: LocalCluster) -> DrillContext:
    return DrillContext(net=None, cluster=lc, topology=lc.topology, run_dir=lc.run_dir, log=lambda s: None)


def blocks_held(lc: LocalCluster, slave: str, fileset: str = "news", file_id: str = "big") -> int:
    st = storage.BlockStore(lc.data_dir(slave), lc.topology.block_size).stored(fileset, file_id)
    return st.blocks if st else 0


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_no_bad_block_anywhere(lc: LocalCluster) -> None:
    """0 corrupt blocks accepted: every block every slave holds verifies from disk, every file matches."""
    v = lc.verify()
    assert v.files_mismatched == 0, v.mismatches
    assert v.files_verified == 9 * 4  # 9 slaves besides the generator's x (big, page, 2 FileSet files)
    for d in (lc.run_dir / "data").iterdir():
        assert storage.BlockStore(d, lc.topology.block_size).recover(verify=True) == [], d.name


def log_of(lc: LocalCluster, ident: str) -> str:
    return (lc.run_dir / "logs" / f"{ident}.log").read_text(errors="replace")


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    mounts = set(diskfull_mounts())
    yield
    assert set(diskfull_mounts()) == mounts, "a disk_full tmpfs is still mounted"
    me = psutil.Process(os.getpid())
    assert [c.cmdline() for c in me.children(recursive=True) if c.is_running()] == []


# --- registry and specs ------------------------------------------------------------------------------------


def test_kinds_are_registered_and_specs_checked() -> None:
    assert {"disk_full", "corrupt_on_disk", "corrupt_in_flight", "clock_step"} <= set(FAULTS)
    f = FAULTS["disk_full"].from_spec({"slave": "s1", "leave": "64KiB"}, "drill.yaml: faults[0]")
    assert isinstance(f, DiskFull) and f.leave == 64 * 1024
    c = FAULTS["clock_step"].from_spec({"slave": "s1", "step": "-30s"}, "x")
    assert isinstance(c, ClockStep) and c.step == -30.0
    assert FAULTS["clock_step"].from_spec({"daemon": "M1", "step": 30}, "x").target == "M1"  # type: ignore[attr-defined]
    i = FAULTS["corrupt_in_flight"].from_spec({"link": "trunk/T1", "count": 3}, "x")
    assert isinstance(i, CorruptInFlight) and i.trunk == "T1" and i.probability == 1.0 and i.count == 3
    for kind, params, key in [
        ("disk_full", {}, "slave"),
        ("disk_full", {"slave": "s1", "leave": "lots"}, "leave"),
        ("corrupt_on_disk", {"slave": "s1", "block": -1}, "block"),
        ("corrupt_in_flight", {"trunk": "T1", "slave": "s1", "count": 1}, "exactly one"),
        ("corrupt_in_flight", {"trunk": "T1", "probability": 2}, "probability"),
        ("clock_step", {"slave": "s1", "step": 0}, "step"),
        ("clock_step", {"slave": "s1", "step": 30, "colour": 1}, "colour"),
    ]:
        with pytest.raises(FaultSpecError, match=key):
            FAULTS[kind].from_spec(params, "drill.yaml: faults[3]")


# --- storage: the pieces the faults lean on -------------------------------------------------------------------


def _write(store: storage.BlockStore, n: int, bs: int) -> list[bytes]:
    blocks = [bytes([i + 1]) * bs for i in range(n)]
    for i, b in enumerate(blocks):
        store.generate_block("fs", "f", 1, b, i == n - 1)
    return blocks


def _flip(store: storage.BlockStore, index: int, bs: int) -> None:
    path = store.data_path("fs", "f", 1)
    with open(path, "r+b") as f:
        f.seek(index * bs + 7)
        b = f.read(1)
        f.seek(index * bs + 7)
        f.write(bytes([b[0] ^ 0x01]))


def test_bad_block_is_cut_with_everything_after_it_and_good_blocks_are_kept(tmp_path: Path) -> None:
    bs = 4096
    store = storage.BlockStore(tmp_path, bs)
    blocks = _write(store, 5, bs)
    assert store.discard_from("fs", "f", 1, 2) == store.stored("fs", "f")  # block 2 verifies: nothing cut
    assert store.stored("fs", "f").blocks == 5  # type: ignore[union-attr]
    _flip(store, 2, bs)
    with pytest.raises(storage.CorruptBlock):
        store.read_block("fs", "f", 1, 2)
    assert store.read_block("fs", "f", 1, 3)[0] == blocks[3]  # later blocks verify on their own (chained records)
    assert store.first_bad_block("fs", "f", 1) == 2
    left = store.discard_from("fs", "f", 1, 2)
    assert left is not None and (left.blocks, left.size, left.complete) == (2, 2 * bs, False)
    assert left.last_crc == cumulative_crc(blocks[1], cumulative_crc(blocks[0], 0))
    assert store.first_bad_block("fs", "f", 1) is None
    assert store.data_path("fs", "f", 1).stat().st_size == 2 * bs
    # the rest can be appended again, as a re-fetch does
    for i in range(2, 5):
        st = store.append_block("fs", "f", 1, i, blocks[i], cumulative_crc(blocks[i], left.last_crc), left.last_crc,
                                i == 4)
        left = st
    assert store.stored("fs", "f").complete and store.recover() == []  # type: ignore[union-attr]
    _flip(store, 0, bs)
    assert store.discard_from("fs", "f", 1, 0) is None  # nothing verifiable left: the version is gone
    assert not store.data_path("fs", "f", 1).exists()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    d = tmp_path / "disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "scaledist-diskfull", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_enospc_refuses_the_block_gives_the_space_back_and_recovers(tiny_tmpfs: Path) -> None:
    bs = 64 * 1024
    store = storage.BlockStore(tiny_tmpfs, bs)
    block = os.urandom(bs)
    crc = cumulative_crc(block, 0)
    ballast = tiny_tmpfs / BALLAST
    with open(ballast, "wb") as f:
        free = os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize
        os.posix_fallocate(f.fileno(), 0, free - bs // 2)  # room for half a block
    with pytest.raises(storage.StorageFull) as exc:
        store.append_block("fs", "f", 1, 0, block, crc, 0, False)
    assert exc.value.blame == "receiver" and "No space left" in str(exc.value)
    assert store.stored("fs", "f") is None  # nothing visible ...
    assert store.data_path("fs", "f", 1).stat().st_size == 0  # ... and the partial write was given back
    ballast.unlink()
    st = store.append_block("fs", "f", 1, 0, block, crc, 0, False)
    assert st.blocks == 1 and store.recover() == [] and store.read_block("fs", "f", 1, 0)[0] == block


# --- corrupt_on_disk ------------------------------------------------------------------------------------------


def test_corrupt_block_on_a_source_is_found_cut_and_fetched_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALEDIST_SCRUB_INTERVAL", "1")  # the daemons inherit it: a bad copy nobody reads is found too
    victim = "dc2-r3-s1"  # relays into its rack: others pull from it
    with slow_cluster(tmp_path) as lc:
        ctx = ctx_of(lc)
        lc.start()
        wait_for(lambda: blocks_held(lc, victim) >= 6, 60, f"{victim} to hold 6 blocks")
        fault = CorruptOnDisk(victim, "news/big", 2)
        fault.inject(ctx)
        with pytest.raises(storage.CorruptBlock):  # really damaged on disk
            storage.BlockStore(lc.data_dir(victim), lc.topology.block_size).read_block("news", "big", 1, 2)
        ok, _ = lc.wait(90, show=False)
        fault.repair(ctx)
        assert ok, lc.progress().line()
        notes = fault.notes()
    print(f"corrupt_on_disk: {notes}")
    assert notes["bytes_flipped"] > 0 and notes["block"] == 2
    assert notes["detected"] >= 1 and set(notes["found_by"]) <= {"read", "scrub"}
    assert "cut to 2 blocks, fetching the rest again" in log_of(lc, victim)
    # it fetched block 2 again from someone, after the cut
    assert re.search(r"got \S+ news/big@1#2 \d+B from", log_of(lc, victim).split("cut to 2 blocks")[1])
    assert_no_bad_block_anywhere(lc)


def test_a_source_never_serves_a_block_that_went_bad_and_fetches_it_again(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The verify-on-read path alone (scrub off): a peer asks for the bad block over the real protocol."""
    import asyncio

    from scaledist import netio
    from scaledist.messages import BlockGet, BlockHeader
    from scaledist.wire import Codec

    monkeypatch.setenv("SCALEDIST_SCRUB_INTERVAL", "0")
    victim, peer = "dc2-r3-s1", "dc2-r3-s2"
    with slow_cluster(tmp_path, rate="24MB/s") as lc:
        lc.start()
        ok, _ = lc.wait(60, show=False)
        assert ok, lc.progress().line()
        fault = CorruptOnDisk(victim, "news/big", 5)
        fault.inject(ctx_of(lc))
        ep = lc.cluster.endpoint(victim)

        async def ask() -> object:
            conn = await netio.connect(ep.host, ep.data, Codec(lc.cluster.key, peer), timeout=5.0)
            try:
                await conn.send(BlockGet(transfer_id="probe-1", fileset="news", file_id="big", version=1, block=5,
                                         rate=1e7, window=0))
                return (await conn.recv(timeout=10.0)).msg
            finally:
                await conn.close()

        reply = asyncio.run(ask())
        assert isinstance(reply, BlockHeader) and not reply.ok and "read back from disk" in reply.reason
        wait_for(lambda: "found by read); cut to 5 blocks" in log_of(lc, victim), 10, "the cut")
        wait_for(lambda: lc.progress().filesets["news"][0] == 10, 60, f"{victim} to fetch blocks 5.. again")
    assert fault.notes()["found_by"] == ["read"]
    assert_no_bad_block_anywhere(lc)


# --- disk_full ------------------------------------------------------------------------------------------------


def test_disk_full_refuses_blocks_without_crashing_and_recovers_after_repair(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    prepared, late = "dc2-r3-s1", "dc3-r4-s1"  # one with the pre-start hook, one moved onto a tmpfs at injection
    lc = slow_cluster(tmp_path, rate="6MB/s")
    ctx = ctx_of(lc)
    faults = [DiskFull(prepared), DiskFull(late, leave=MiB // 2)]
    try:
        faults[0].prepare(ctx)
        assert mounted(lc.data_dir(prepared))
        lc.start()
        wait_for(lambda: blocks_held(lc, prepared) >= 2 and blocks_held(lc, late) >= 2, 60, "2 blocks each")
        for f in faults:
            f.inject(ctx)
        had = {s: blocks_held(lc, s) for s in (prepared, late)}
        # the restarted one may wait out a copy the master granted before its restart (10 s deadline)
        for s in (prepared, late):
            wait_for(lambda s=s: "failed: cannot store: disk full" in log_of(lc, s), 20, f"{s} to refuse a block")
        for s in (prepared, late):
            assert lc.procs[s].poll() is None, f"{s} died on a full disk"
            assert blocks_held(lc, s) <= had[s] + 1, f"{s} kept storing on a full disk"  # one in flight may fit
        for f in faults:
            f.repair(ctx)
            assert not (lc.data_dir(f.slave) / BALLAST).exists()
        ok, _ = lc.wait(90, show=False)
        assert ok, lc.progress().line()
    finally:
        lc.close()
        for f in faults:
            f.finish(ctx)
    notes = [f.notes() for f in faults]
    print(f"disk_full: {notes}")
    assert [n["mounted_by"] for n in notes] == ["prepare", "restart at injection"]
    for n in notes:
        assert n["ballast_bytes"] > 0 and n["free_bytes_after_fill"] <= n["leave"]
        assert n["refused_disk_full"] + n["enospc_writes"] > 0, n
    master = log_of(lc, "M1")
    for s in (prepared, late):  # each blamed itself for what it could not store (§0089)
        assert re.search(rf"copy \S+ \S+->{s} failed \(receiver\): cannot store: disk full", master), s
    assert f"health {prepared} failed" not in master  # short and paced: not taken out of service for minutes
    assert not any(mounted(lc.data_dir(s)) for s in (prepared, late))
    assert not lc.data_dir(late).with_name(late + ".disk").exists()
    assert_no_bad_block_anywhere(lc)  # the data came back to the run folder intact


# --- clock_step -----------------------------------------------------------------------------------------------


def _stamps(text: str) -> list[float]:
    out = []
    for line in text.splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) ", line)
        if m:
            out.append(int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)))
    return out


@pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="needs libfaketime (apt-get install faketime)")
def test_clock_steps_inside_the_skew_window_change_nothing(tmp_path: Path) -> None:
    with slow_cluster(tmp_path, rate="4MB/s", report_interval=0.5) as lc:
        ctx = ctx_of(lc)
        ahead, behind = ClockStep("dc2-r3-s1", 30.0), ClockStep("M1", -30.0)
        behind.prepare(ctx)
        lc.start()
        time.sleep(1.0)
        ahead.inject(ctx)  # not prepared: restarted under libfaketime
        behind.inject(ctx)
        time.sleep(2.0)
        ahead.repair(ctx)
        behind.repair(ctx)
        ok, _ = lc.wait(90, show=False)
        assert ok, lc.progress().line()
    notes = [ahead.notes(), behind.notes()]
    print(f"clock_step: {notes}")
    assert [n["started_under_faketime_by"] for n in notes] == ["restart at injection", "prepare"]
    assert all(n["messages_rejected_for_time"] == 0 for n in notes)
    # the daemons' own clocks really jumped: their log stamps (time.time()) went ~30 s forward/back and returned
    # (a jump between two log lines is 30 s less the time between them, hence 15)
    for ident, sign in (("dc2-r3-s1", 1), ("M1", -1)):
        t = _stamps(log_of(lc, ident))
        jumps = [b - a for a, b in itertools.pairwise(t)]
        assert any(sign * j > 15 for j in jumps), f"{ident}: no step of ~{sign * 30:+d} s in its log"
        assert any(-sign * j > 15 for j in jumps), f"{ident}: clock never stepped back"
    assert_no_bad_block_anywhere(lc)


@pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="needs libfaketime (apt-get install faketime)")
def test_clock_step_beyond_the_skew_window_cuts_the_host_off_until_stepped_back(tmp_path: Path) -> None:
    victim = "dc2-r3-s1"
    with slow_cluster(tmp_path, rate="4MB/s", report_interval=0.5) as lc:
        ctx = ctx_of(lc)
        fault = ClockStep(victim, 300.0)
        fault.prepare(ctx)
        lc.start()
        time.sleep(1.0)
        fault.inject(ctx)
        time.sleep(2.0)
        stepped = fault.notes()
        fault.repair(ctx)
        mark = len(log_of(lc, victim))
        wait_for(lambda: "reachable again" in log_of(lc, victim)[mark:], 15, f"{victim}'s reports accepted again")
    after = fault.notes()
    print(f"clock_step +300 s: while stepped {stepped}; after {after}")
    assert stepped["rejected_by_log"].get("M1", 0) > 0  # the master refused its reports: "from the future"
    assert stepped["rejected_by_log"].get(victim, 0) > 0  # it refused the master's instructions: "stale"
    assert "message from the future" in log_of(lc, "M1")
    assert lc.procs[victim].returncode in (0, -15)  # it did not crash; it was stopped by close()


# --- corrupt_in_flight ----------------------------------------------------------------------------------------


@pytest.mark.skipif(_why_no_testbed() is not None, reason=_why_no_testbed() or "")
def test_bytes_corrupted_on_a_trunk_are_rejected_blamed_and_fetched_again(tmp_path: Path) -> None:
    from scaledist.cluster import Endpoint
    from scaledist.topology_schema import load_topology
    from testbed.network import EmulatedNetwork
    from testbed.run import TestbedCluster
    from tests.test_testbed_run import assert_nothing_left, machine_state

    scale = 0.25
    before = machine_state()
    run_dir = tmp_path / "run"
    topo = load_topology(SMALL).scaled(scale)
    net = EmulatedNetwork(topo, run_dir=run_dir, latency="auto", log=lambda s: None)
    lc: TestbedCluster | None = None
    fault = CorruptInFlight(trunk="T1", probability=0.02, count=4, seed=7)  # the far router's FORWARD
    at_host = CorruptInFlight(slave="dc3-r4-s2", probability=0.02, count=2, seed=3)  # the slave's INPUT
    try:
        net.start()
        (run_dir / "audit.json").write_text(json.dumps({"tag": net.audit()["tag"]}))  # for assert_nothing_left
        idents = [topo.resource_manager.id, *topo.masters, *topo.slaves, *topo.generators]
        mgmt = {i: m for i in idents if (m := net.mgmt_ip(i))} if topo.control == "management" else None
        lc = TestbedCluster(net, SMALL, SMALL_SCENARIO, scale=scale, run_dir=run_dir, log=lambda s: None,
                            endpoints={i: Endpoint(net.ip(i)) for i in idents}, management=mgmt)
        ctx = DrillContext(net=net, cluster=lc, topology=lc.topology, run_dir=run_dir, log=lambda s: None)
        fault.inject(ctx)
        at_host.inject(ctx)
        assert fault.queue != at_host.queue
        lc.start()
        ok, _ = lc.wait(90, show=False)
        for f, node in ((fault, net.net[net.links()["trunk/T1/rev"].node]), (at_host, net.host("dc3-r4-s2"))):
            f.repair(ctx)
            rules = node.popen(["iptables-save"], stdout=subprocess.PIPE).communicate()[0].decode()
            assert "scaledist-corrupt" not in rules
            f.repair(ctx)  # idempotent
        assert ok, lc.progress().line()
    finally:
        for f in (fault, at_host):  # no-ops once repaired; after a failure they remove what was installed
            f.repair(None)  # type: ignore[arg-type]
        if lc is not None:
            lc.close()
        net.stop()
    assert lc is not None
    notes, host_notes = fault.notes(), at_host.notes()
    logs = {p.stem: p.read_text(errors="replace") for p in (run_dir / "logs").glob("*.log")}
    rejected = [ln for name, text in logs.items() if name in topo.slaves for ln in text.splitlines()
                if "checksum mismatch, block discarded" in ln or "bad HMAC" in ln]
    print(f"corrupt_in_flight: {notes}; {host_notes}; {len(rejected)} transfers rejected by receivers")
    assert notes["packets_corrupted"] == 4 and notes["data_packets"] > notes["packets_corrupted"]
    assert host_notes["packets_corrupted"] == 2 and host_notes["data_packets"] > 2
    assert 2 <= len(rejected) <= notes["packets_corrupted"] + host_notes["packets_corrupted"]
    behind_t1 = {s for s in topo.slaves if topo.slaves[s].dc in ("DC2", "DC3")}  # T1 feeds DC2 (and on to DC3)
    assert {ln.split()[2] for ln in rejected} <= behind_t1
    assert any(ln.split()[2] == "dc3-r4-s2" for ln in rejected)
    # the master blamed the path, not the receiver (§0089), and every block was fetched again
    master = logs["M1"]
    assert re.search(r"failed \(other\): (checksum mismatch|transfer from)", master)
    assert "failed (receiver): checksum" not in master
    v = lc.verify()
    assert v.files_mismatched == 0 and v.files_verified == 9 * 6, v.mismatches
    for d in (run_dir / "data").iterdir():
        assert storage.BlockStore(d, lc.topology.block_size).recover(verify=True) == [], d.name
    assert not [p for p in psutil.process_iter(["cmdline"]) if "corrupt_worker" in " ".join(p.info["cmdline"] or [])]
    assert_nothing_left(before, run_dir)
