"""`scaledist-testbed run` for real: Mininet, shaped links, the real daemons; every file verified; nothing left behind.

Needs root and Mininet (CI has both); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.needs import why_no_testbed

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "topologies" / "small.yaml"
SMALL_SCENARIO = REPO / "topologies" / "small-scenario.yaml"


def _why_skip() -> str | None:
    return why_no_testbed()


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")

def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def machine_state() -> dict[str, object]:
    """What a run could leave behind: interfaces, namespaces, iptables rules (counters removed), processes."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True, check=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    rules = [re.sub(r"\[\d+:\d+\]", "", line) for line in rules.splitlines() if not line.startswith("#")]
    return {
        "links": set(re.findall(r"^\d+: ([^:@]+)", links, flags=re.M)),
        "netns": set(netns.split()),
        "iptables": rules,
        "procs": {p.pid: _cmdline(p) for p in psutil.process_iter()},
    }


def assert_nothing_left(before: dict[str, object], run_dir: Path) -> None:
    """Nothing of this run survives; interfaces of other runs going on at the same time are not ours to judge."""
    from testbed.cleanup import NAME_RE

    tag = json.loads((run_dir / "audit.json").read_text())["tag"]
    after = machine_state()

    def other_run(name: str) -> bool:
        m = NAME_RE.match(name)
        return bool(m and m.group(1) != tag)

    new_links = {n for n in after["links"] - before["links"] if not other_run(n)}  # type: ignore[operator]
    assert not new_links, f"interfaces left behind: {sorted(new_links)}"
    assert not [n for n in after["links"] if (m := NAME_RE.match(n)) and m.group(1) == tag]  # type: ignore[union-attr]
    assert after["netns"] == before["netns"]
    assert after["iptables"] == before["iptables"]
    ours = re.compile(rf"mininet:sd{tag}|{re.escape(str(run_dir))}")
    left = {pid: cmd for pid, cmd in after["procs"].items()  # type: ignore[union-attr]
            if ours.search(cmd) and before["procs"].get(pid) != cmd}  # type: ignore[union-attr]
    assert not left, f"processes left behind: {left}"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", *args]


def test_small_run_verifies_every_file_and_leaves_nothing(tmp_path: Path) -> None:
    before = machine_state()
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    r = subprocess.run(cli("run", str(SMALL), "--scenario", str(SMALL_SCENARIO), "--scale", "0.25",
                           "--timeout", "90", "--run-dir", str(run_dir), "--json"),
                       capture_output=True, text=True, cwd=REPO, timeout=150)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary == json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True
    assert summary["files_mismatched"] == 0
    # 9 non-generator slaves x (3 news files + the news FileSet file, 1 web file + the web FileSet file)
    assert summary["files_verified"] == 9 * (3 + 1 + 1 + 1)
    assert summary["slaves"] == 10
    assert summary["scale"] == 0.25 and summary["mode"] == "pull"
    assert summary["latency_method"] in ("netem", "nfqueue")
    assert set(summary["completion_s"]) == {"overall", "news", "web"}
    assert 0 < summary["completion_s"]["overall"] < elapsed
    for field in ("topology", "scenario", "daemons", "qdisc", "versions", "trunks"):
        assert summary[field], field
    daemons = summary["daemons"]
    assert daemons["slave"]["count"] == 10 and daemons["rm"]["count"] == 1 and daemons["master"]["count"] == 1
    for kind in ("rm", "master", "slave", "generator"):
        assert daemons[kind]["cpu_s"] > 0, kind
        assert daemons[kind]["peak_rss_mb"] > 5, kind
    # block data left DC1 over the trunks and was counted by their qdiscs
    directions = summary["trunk_directions"]  # the testbed's per-direction figures; "trunks" holds the verdicts
    trunk_bytes = sum(v["bytes"] or 0 for k, v in directions.items() if not k.endswith("/rev"))
    assert trunk_bytes > 2 * 2**20
    assert summary["qdisc"]["after"]["trunk/T1"]["bytes"] > summary["qdisc"]["before"]["trunk/T1"]["bytes"]
    t1 = directions["trunk/T1"]  # interface counters (per second) agree with the qdisc's (before/after)
    assert 0 < t1["sent_bytes"] <= t1["bytes"]
    assert t1["peak_over_budget"] < 1.25  # the 5 MB/s budget held (HTB burst allowance aside)
    assert (run_dir / "ledger.jsonl").stat().st_size > 0
    assert (run_dir / "audit.json").exists()
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {"rm.log", "M1.log", "G1.log", "dc3-r4-s2.log"} <= logs
    assert "listening on" in (run_dir / "logs" / "dc3-r4-s2.log").read_text()
    assert re.search(r"trunks MB/s T1 [0-9.]+/5\.00", r.stderr)  # live per-trunk rate vs budget
    assert_nothing_left(before, run_dir)


def test_sigint_mid_run_tears_down_and_records_incomplete(tmp_path: Path) -> None:
    before = machine_state()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli("run", str(SMALL), "--scenario", str(SMALL_SCENARIO), "--scale", "0.05",
                                "--timeout", "120", "--run-dir", str(run_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("t=") and "slaves complete" in line:  # daemons up, distribution under way
                break
            assert time.monotonic() < deadline, "".join(lines)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert proc.returncode == 128 + signal.SIGINT, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is False
    assert "SIGINT" in summary["error"]
    assert summary["completion_s"]["overall"] is None
    assert summary["daemons"]["slave"]["count"] == 10
    assert "INCOMPLETE" in output
    assert_nothing_left(before, run_dir)
