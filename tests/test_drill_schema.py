"""Drill files: the standard set loads, mistakes are refused with file:line: key, and the timeline and
corrupt-block counting read real daemon records (no root needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from scaledist import storage
from scaledist.local import LocalCluster
from testbed.cli import main as cli_main
from testbed.drill import (
    DRILLS_DIR,
    DrillError,
    DrillRunner,
    FaultRecord,
    MasterLogs,
    corrupt_blocks,
    drill_files,
    drill_is_short,
    fault_timeline,
    load_drill,
    verdict_line,
)
from testbed.faults.base import FAULTS, DrillContext, FaultSpecError

REPO = Path(__file__).resolve().parent.parent
NET = DRILLS_DIR / "net" / "drill.yaml"
SCENARIO = DRILLS_DIR / "net" / "drill-scenario.yaml"
OUR_KINDS = {"trunk_down", "trunk_degraded", "link_loss", "link_flap", "host_cut", "slave_kill", "master_replace",
             "rm_restart"}
DATA_KINDS = {"disk_full", "corrupt_on_disk", "corrupt_in_flight", "clock_step"}


def write(tmp_path: Path, body: str, name: str = "d.yaml") -> Path:
    p = tmp_path / name
    p.write_text(f"version: 1\nname: t\ntopology: {NET}\nscenario: {SCENARIO}\n" + body)
    return p


def test_standard_set_covers_every_fault_kind_and_loads() -> None:
    files = drill_files()
    kinds = set()
    for f in files:
        text = f.read_text()
        kinds |= {k for k in OUR_KINDS | DATA_KINDS if f"kind: {k}" in text}
        if all(k in FAULTS for k in DATA_KINDS) or not any(f"kind: {k}" in text for k in DATA_KINDS):
            d = load_drill(f)
            assert d.faults and d.topology.health.time_unit < 60  # drill topologies carry fast health counters
    assert kinds == OUR_KINDS | DATA_KINDS
    assert set(FAULTS) >= OUR_KINDS
    short = [f.stem for f in files if drill_is_short(f)]
    assert 0 < len(short) < len(files)  # CI runs some, not all


def test_schedule_and_parameters_are_read(tmp_path: Path) -> None:
    p = write(tmp_path, """faults:
  - kind: trunk_degraded
    trunk: T1
    bandwidth: 20%
    latency_add: 40ms
    at: 3s
    repair_at: 9s
  - kind: link_loss
    link: trunk/T2/rev
    loss: 0.05
    when: {fileset: web, done: 50%}
    repair_after: 4s
    expect: {marked_failed: true, back_within: 12s}
""")
    d = load_drill(p)
    a, b = d.faults
    assert (a.trigger.at, a.repair_at, a.repair_after) == (3.0, 9.0, None)
    assert a.fault.fraction == pytest.approx(0.2) and a.fault.extra_latency == pytest.approx(0.04)
    assert (b.trigger.fileset, b.trigger.done, b.repair_after) == ("web", 0.5, 4.0)
    assert b.fault.probability == pytest.approx(0.05) and b.fault.target == "trunk/T2/rev"
    assert b.expect == {"marked_failed": True, "back_within": 12.0}


@pytest.mark.parametrize(("body", "where", "says"), [
    ("faults:\n  - {kind: trunk_down, trunk: T1, at: 1s}\nsettel: 3s\n", ":7: settel", "did you mean 'settle'"),
    ("faults:\n  - {kind: trunk_dwn, trunk: T1, at: 1s}\n", ":6: faults[0].kind", "not registered"),
    ("faults:\n  - {kind: trunk_down, trunk: T9, at: 1s}\n", ":6: faults[0]", "unknown trunk 'T9'"),
    ("faults:\n  - {kind: trunk_down, trunk: T1}\n", ":6: faults[0].at", "required key is missing"),
    ("faults:\n  - {kind: trunk_down, trunk: T1, at: 1s, when: {fileset: news, done: 5%}}\n", ":6: faults[0].when",
     "not both"),
    ("faults:\n  - {kind: trunk_down, trunk: T1, when: {fileset: nws, done: 5%}}\n", "faults[0].when.fileset",
     "did you mean 'news'"),
    ("faults:\n  - {kind: trunk_down, trunk: T1, when: {fileset: news, done: 150%}}\n", "faults[0].when.done",
     "between 0% and 100%"),
    ("faults:\n  - {kind: trunk_down, trunk: T1, at: 5s, repair_at: 2s}\n", "faults[0].repair_at", "comes before"),
    ("faults:\n  - {kind: trunk_down, trunk: T1, at: 5s}\n  - {kind: trunk_down, trunk: T1, at: 9s}\n",
     ":7: faults[1]", "two faults are called"),
    ("faults:\n  - {kind: slave_kill, slave: nobody, at: 1s}\n", "faults[0]", "is not a slave"),
    ("faults:\n  - {kind: host_cut, host: M1, at: 1s, expect: {detect: 3s}}\n", "faults[0].expect.detect",
     "unknown key"),
    ("faults:\n  - {kind: link_loss, link: rack/R1/up, loss: 5%, at: 1s}\n", "faults[0].link", "bridged"),
    ("faults: []\n", "faults", "must not be empty"),
])
def test_mistakes_name_file_line_and_key(tmp_path: Path, body: str, where: str, says: str) -> None:
    p = write(tmp_path, body)
    with pytest.raises((DrillError, FaultSpecError)) as e:
        load_drill(p)
    text = str(e.value)
    assert text.startswith(str(p)), text
    assert where in text and says in text, text


def test_fault_parameters_are_checked_by_the_fault(tmp_path: Path) -> None:
    p = write(tmp_path, "faults:\n  - {kind: link_flap, trunk: T1, down: 5s, period: 4s, at: 1s}\n")
    with pytest.raises(FaultSpecError, match=r"d\.yaml:6: faults\[0\]\.down: must be shorter than period"):
        load_drill(p)
    p = write(tmp_path, "faults:\n  - {kind: trunk_degraded, trunk: T1, at: 1s}\n")
    with pytest.raises(FaultSpecError, match="give bandwidth"):
        load_drill(p)


def test_cli_refuses_bad_drill_before_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "faults:\n  - {kind: trunk_down, trunk: T7, at: 1s}\n")
    assert cli_main(["drill", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaledist-testbed drill: ") and "unknown trunk 'T7'" in err and str(p) in err
    assert cli_main(["drill"]) == 2
    assert "give a drill file or --all" in capsys.readouterr().err


def _log(path: Path, master: str, lines: list[tuple[float, str]]) -> None:
    with path.open("a") as f:
        for t, text in lines:
            stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
            f.write(f"{stamp} master {master} {text}\n")


def test_timeline_from_master_log_and_ledger(tmp_path: Path) -> None:
    d = load_drill(DRILLS_DIR / "trunk-down.yaml")
    runner = DrillRunner(d)
    (tmp_path / "logs").mkdir()
    runner.ctx = DrillContext(net=None, cluster=None, topology=d.topology, run_dir=tmp_path)
    t0 = time.time() - 100
    runner.t0_wall, runner.t0_mono = t0, 5000.0
    inj, rep = t0 + 10, t0 + 20
    r = FaultRecord(d.faults[0], injected_wall=inj, injected_mono=5010.0, repaired_wall=rep, repaired_mono=5020.0,
                    progress_at_inject={"news": 0.3, "web": 0.5})
    bs = d.topology.block_size
    _log(tmp_path / "logs" / "M1.log", "M1", [
        (t0 + 5, "health T2 failed failures=4 attempts=9"),  # an earlier episode: not this fault's
        (t0 + 6, "health T2 in-service"),
        (t0 + 8, "instruct pull M1.x.1 news/news-docs@1#3 dc1-r1-s1->dc3-r4-s1 rate=0.5MB/s"),
        (inj + 1.5, "failure M1.x.1 reported by dc3-r4-s1: blame=other cannot reach dc1-r1-s1"),
        (inj + 2.0, "health DC1 failed failures=4 attempts=7"),
        (inj + 2.25, "health T2 failed failures=4 attempts=2"),
        (inj + 3, "instruct pull M1.x.2 news/news-docs@1#3 dc2-r3-s1->dc3-r4-s1 rate=0.5MB/s"),
        (rep + 4.5, "health T2 in-service"),
        (rep + 40, "instruct pull M1.x.3 news/news-docs@1#3 dc2-r3-s1->dc3-r4-s1 rate=0.5MB/s"),  # outside
    ])
    (tmp_path / "ledger.jsonl").write_text(json.dumps(
        {"kind": "grant", "t": 5008.0, "transfer_id": "M1.x.1", "bytes": bs - 7, "link": "slave/a/up"}) + "\n")
    from testbed.drill import Ledger

    t = fault_timeline(r, MasterLogs(tmp_path / "logs", ["M1"], t0), Ledger(tmp_path / "ledger.jsonl"), runner,
                       final=True)
    assert t["detect_s"] == pytest.approx(2.25, abs=0.002) and t["failures_at_mark"] == 4
    assert t["first_failure_s"] == pytest.approx(11.5, abs=0.002)
    assert t["back_after_repair_s"] == pytest.approx(4.5, abs=0.002)
    assert t["blocks_resent"] == 1 and t["bytes_resent"] == bs - 7  # the granted bytes of the failed attempt
    assert t["also_marked_failed"] == {"DC1": pytest.approx(2.0, abs=0.002)}
    assert t["verdict"] == "PASS" and t["settled"]
    assert "detect 2.2s" in verdict_line({"name": "x", "verdict": "PASS", "faults": [t]})

    # never back after the repair: a problem, and the run must keep waiting (not settled)
    (tmp_path / "logs" / "M1.log").write_text("")
    _log(tmp_path / "logs" / "M1.log", "M1", [(inj + 2, "health T2 failed failures=5 attempts=2")])
    t = fault_timeline(r, MasterLogs(tmp_path / "logs", ["M1"], t0), Ledger(tmp_path / "ledger.jsonl"), runner,
                       final=True)
    assert not t["settled"] and t["verdict"] == "FAIL"
    assert any("not back in service" in p for p in t["problems"])


def test_master_replace_resume_is_timed_from_listening(tmp_path: Path) -> None:
    d = load_drill(DRILLS_DIR / "master-replace.yaml")
    runner = DrillRunner(d)
    (tmp_path / "logs").mkdir()
    runner.ctx = DrillContext(net=None, cluster=None, topology=d.topology, run_dir=tmp_path)
    t0 = time.time() - 100
    runner.t0_wall, runner.t0_mono = t0, 100.0
    r = FaultRecord(d.faults[0], injected_wall=t0 + 10, injected_mono=110.0, repair_started_wall=t0 + 11,
                    repaired_wall=t0 + 12, repaired_mono=112.0, progress_at_inject={"news": 0.3})
    limit = 2 * d.topology.report_interval
    _log(tmp_path / "logs" / "M1.log", "M1", [
        (t0 + 11.8, "listening on 1.2.3.4:7100; filesets news,web; mode pull; incarnation abc"),
        (t0 + 11.8 + limit + 0.5, "instruct pull M1.abc.1 news/news@2#0 dc1-r1-s1->dc2-r3-s1 rate=1MB/s"),
    ])
    from testbed.drill import Ledger

    t = fault_timeline(r, MasterLogs(tmp_path / "logs", ["M1"], t0), Ledger(tmp_path / "none"), runner, final=True)
    assert t["resumed_after_s"] == pytest.approx(limit + 0.5, abs=0.002)
    assert t["verdict"] == "FAIL" and "two report periods" in t["problems"][0]


def test_corrupt_blocks_counts_differing_blocks_only(tmp_path: Path) -> None:
    lc = LocalCluster(NET, SCENARIO, scale=1.0, run_dir=tmp_path / "run")
    bs = lc.topology.block_size
    data = bytes(range(256)) * (bs // 256) * 2 + b"tail"
    gen, other, third = "dc1-r1-s1", "dc2-r3-s1", "dc3-r4-s1"
    for s in (gen, other, third):
        st = storage.BlockStore(lc.data_dir(s), bs)
        for i in range(3):
            st.generate_block("news", "news-docs", 1, data[i * bs:(i + 1) * bs], final=i == 2)
    lc.manifest_path("G1").write_text(json.dumps({"generator": "G1", "slave": gen, "done": True, "filesets": {
        "news": {"files": {"news-docs": {"version": 1, "size": len(data)}}}}}))
    assert corrupt_blocks(lc) == {"blocks": 0, "where": []}
    path = storage.BlockStore(lc.data_dir(other), bs).data_path("news", "news-docs", 1)
    raw = bytearray(path.read_bytes())
    raw[bs + 5] ^= 0xFF  # the second block of one slave's copy
    path.write_bytes(bytes(raw))
    got = corrupt_blocks(lc)
    assert got["blocks"] == 1 and got["where"] == [f"{other}: news/news-docs@1#1"]
