"""End to end: real daemons as processes on loopback, real files, byte-for-byte verification."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from scaledist import storage
from scaledist.core.ledger import read_ledger
from scaledist.local import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "topologies" / "small.yaml"
SMALL_SCENARIO = ROOT / "topologies" / "small-scenario.yaml"

pytestmark = pytest.mark.integration


def scaledist(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaledist", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def no_daemons_left(run_dir: Path) -> list[str]:
    left = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(run_dir) in cmd and "scaledist" in cmd:
            left.append(cmd)
    return left


def test_local_small_distributes_everything_byte_identical(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = scaledist("local", str(SMALL), "--scenario", str(SMALL_SCENARIO), "--json", "--run-dir", str(run_dir),
                  "--timeout", "180")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["completed"] is True
    assert summary["slaves"] == 10
    assert summary["files_mismatched"] == 0
    # news: 3 files + its FileSet file; web: 1 file + its FileSet file; 9 slaves besides the generator's.
    assert summary["files_verified"] == 9 * (4 + 2)
    assert set(summary["completion_s"]) == {"news", "web"}
    # Something crossed every datacenter boundary the topology has a trunk for, and the ledger says so.
    ledger = read_ledger(run_dir / "ledger.jsonl")
    grants = [rec for rec in ledger if rec.kind == "grant"]
    assert grants, "no grant in the ledger"
    trunk_links = {rec.link for rec in grants if rec.link and rec.link.startswith("trunk/")}
    assert trunk_links, "no copy crossed a trunk"
    assert not any(link.endswith("/rev") for link in trunk_links), "data reserved on a reverse direction"
    # The update made a second version of one news file; every slave holds only the newest.
    store = storage.BlockStore(run_dir / "data" / "dc2-r3-s1", 1 << 20)
    versions = {fid: st.version for fid, st in store.files("news").items()}
    assert max(versions.values()) >= 2, versions
    assert no_daemons_left(run_dir) == []


def test_local_push_mode(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = scaledist("local", str(SMALL), "--scenario", str(SMALL_SCENARIO), "--mode", "push", "--json",
                  "--run-dir", str(run_dir), "--timeout", "180")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["completed"] and summary["files_mismatched"] == 0
    assert any("got (push)" in p.read_text() for p in (run_dir / "logs").glob("*.log"))


SLOW_SCENARIO = """
version: 1
name: slow-big-file
filesets:
  news:
    generation_rate: 8MB/s
    files:
      - {id: big, size: 24MiB}
  web:
    files:
      - {id: page, size: 1MiB}
"""


def blocks_held(run_dir: Path, slave: str) -> int:
    st = storage.BlockStore(run_dir / "data" / slave, 1 << 20).stored("news", "big")
    return st.blocks if st else 0


def test_slave_killed_mid_transfer_restarts_with_its_blocks(tmp_path: Path) -> None:
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(SLOW_SCENARIO)
    victim = "dc2-r3-s2"
    with LocalCluster(SMALL, scenario, scale=1.0, run_dir=tmp_path / "run", log=lambda s: None) as lc:
        lc.start()
        deadline = time.monotonic() + 60
        while blocks_held(lc.run_dir, victim) < 3:
            assert time.monotonic() < deadline, "victim never got 3 blocks"
            time.sleep(0.02)
        lc.kill(victim, signal.SIGKILL)
        had = blocks_held(lc.run_dir, victim)
        assert 3 <= had < 24
        time.sleep(1.0)
        lc.start_daemon(victim)
        ok, _ = lc.wait(timeout=120, show=False)
        assert ok, lc.progress().line()
        ver = lc.verify()
    assert ver.files_mismatched == 0, ver.mismatches
    assert ver.files_verified > 0
    log = (tmp_path / "run" / "logs" / f"{victim}.log").read_text()
    assert log.count("listening on") == 2
    # Every block on every slave still verifies from disk: nothing corrupt was kept.
    for d in (tmp_path / "run" / "data").iterdir():
        assert storage.BlockStore(d, 1 << 20).recover(verify=True) == [], d.name


def test_replaced_master_rebuilds_from_slave_reports(tmp_path: Path) -> None:
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(SLOW_SCENARIO)
    with LocalCluster(SMALL, scenario, scale=1.0, run_dir=tmp_path / "run", report_interval=0.5,
                      log=lambda s: None) as lc:
        lc.start()
        deadline = time.monotonic() + 60
        while blocks_held(lc.run_dir, "dc3-r4-s1") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        lc.kill("M1", signal.SIGKILL)
        time.sleep(0.5)
        lc.start_daemon("M1")  # a new, empty master (§0155)
        ok, _ = lc.wait(timeout=120, show=False)
        assert ok, lc.progress().line()
        assert lc.verify().files_mismatched == 0
    log = (tmp_path / "run" / "logs" / "M1.log").read_text()
    assert log.count("starts empty") == 2


def test_bad_topology_is_refused_with_file_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.read_text().replace("from: DC1", "from: DC9", 1))
    r = scaledist("local", str(bad), "--run-dir", str(tmp_path / "run"), timeout=60)
    assert r.returncode == 2
    assert "bad.yaml" in r.stderr and "DC9" in r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_cli_arguments() -> None:
    r = scaledist("local", str(SMALL), "--scale", "-1", timeout=60)
    assert r.returncode == 2 and "scale" in r.stderr
    r = scaledist("local", "/nonexistent/topo.yaml", timeout=60)
    assert r.returncode == 2 and "/nonexistent/topo.yaml" in r.stderr


def test_daemon_refuses_unknown_identity(tmp_path: Path) -> None:
    with LocalCluster(SMALL, SMALL_SCENARIO, run_dir=tmp_path / "run", log=lambda s: None) as lc:
        r = scaledist("slave", str(SMALL), "--id", "nobody", "--cluster", str(lc.cluster_path), "--data-dir",
                      str(tmp_path / "d"), timeout=60)
    assert r.returncode == 2 and "nobody" in r.stderr


@pytest.fixture(autouse=True)
def _no_leftover_children() -> object:
    yield
    me = psutil.Process(os.getpid())
    assert [c.cmdline() for c in me.children(recursive=True) if c.is_running()] == []
