"""Failure-injection drills for real: Mininet, the real daemons, real faults; the short standard drills pass,
their timelines are measured, and nothing is left behind (also after Ctrl-C in the middle of a fault).

Needs root and Mininet (CI has both); skipped with the reason otherwise.  About 3-4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.drill import DRILLS_DIR, drill_files, drill_is_short
from tests.test_testbed_run import _why_skip, assert_nothing_left, machine_state

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", *args]


def test_short_drills_pass_with_measured_timelines(tmp_path: Path) -> None:
    short = [p.stem for p in drill_files() if drill_is_short(p)]
    assert short, "no drill is marked ci: true"
    before = machine_state()
    r = subprocess.run(cli("drill", "--all", "--short", "--run-dir", str(tmp_path)), cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f"drills_passed={len(short)} drills_total={len(short)}", r.stdout + r.stderr[-2000:]
    assert r.returncode == 0
    assert [ln.split()[1].rstrip(":") for ln in lines[:-1]] == short
    assert all(ln.startswith("PASS ") for ln in lines[:-1]), r.stdout
    for name in short:
        rdir = tmp_path / name
        d = json.loads((rdir / "drill.json").read_text())
        assert d["verdict"] == "PASS" and d["completed"] and d["files_mismatched"] == 0, d["reasons"]
        assert d["corrupt_blocks_accepted"] == 0 and d["files_verified"] > 0
        summary = json.loads((rdir / "summary.json").read_text())
        assert summary["drill"]["verdict"] == "PASS"
        assert "<h2 id='drill'>" in (rdir / "report.html").read_text()
        assert (rdir / "drill.csv").read_text().count("\n") == 1 + len(d["faults"])
        for f in d["faults"]:
            assert f["injected_s"] is not None and f["repaired_s"] > f["injected_s"]
            assert f["injected_monotonic"] and f["injected_wall"]  # both clocks recorded
            assert min(f["progress_at_inject"].values()) < 1.0  # mid-distribution, not after it
            if f["resources"]:  # a dead trunk or slave: marked failed, back in service, times measured
                assert f["detect_s"] is not None and f["detect_s"] > 0
                if f["failures_at_mark"] is not None:  # by failure counts (else by liveness: a silent slave)
                    assert f["failures_at_mark"] >= d["health"]["failure_threshold"]
                assert f["back_in_service_s"] is not None
            if f["kind"] == "disk_full":  # a real ENOSPC (or a pull refused for want of room), seen by the slave
                assert f["notes"]["enospc_writes"] + f["notes"]["refused_disk_full"] > 0, f["notes"]
                assert f["notes"]["mounted_by"] == "before the network"  # shared by the host and the testbed
            if f["kind"] == "corrupt_on_disk":  # the rotted block was found (on read or by the scrub) and healed
                assert f["notes"]["bytes_flipped"] > 0 and f["notes"]["detected"] >= 1, f["notes"]
            if f["kind"] == "master_replace":
                assert f["resumed_after_s"] <= 2 * d["report_interval_s"]
            if f["kind"] == "rm_restart":
                assert f["resumed_after_s"] <= d["epoch_s"]
        assert_nothing_left(before, rdir)


def test_ctrl_c_during_a_fault_repairs_and_leaves_nothing(tmp_path: Path) -> None:
    drill = tmp_path / "cut.yaml"
    drill.write_text(f"""version: 1
name: ctrl-c
topology: {DRILLS_DIR / 'net' / 'drill.yaml'}
scenario: {DRILLS_DIR / 'net' / 'drill-scenario.yaml'}
faults:
  - {{kind: trunk_down, trunk: T1, at: 1s, repair_after: 60s}}
  - {{kind: link_loss, link: trunk/T2, loss: 10%, at: 1s, repair_after: 60s}}
  - {{kind: slave_kill, slave: dc3-r4-s2, at: 1s, repair_after: 60s}}
""")
    rdir = tmp_path / "run"
    before = machine_state()
    proc = subprocess.Popen(cli("drill", str(drill), "--run-dir", str(rdir)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    injected = 0
    for line in proc.stdout:
        out.append(line)
        injected += line.startswith("drill: injected")
        if injected == 3:
            break
        assert time.monotonic() < deadline, "".join(out)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(out) + rest
    assert proc.returncode == 128 + signal.SIGINT, text[-3000:]
    for name in ("trunk_down T1", "link_loss trunk/T2", "slave_kill dc3-r4-s2"):
        assert f"drill: repaired {name}" in text and "(teardown)" in text, text[-3000:]
    d = json.loads((rdir / "drill.json").read_text())
    assert d["verdict"] == "FAIL" and any("interrupted" in r for r in d["reasons"])
    loss = next(f for f in d["faults"] if f["kind"] == "link_loss")
    assert loss["notes"]["loss"] == pytest.approx(0.1)
    assert_nothing_left(before, rdir)
