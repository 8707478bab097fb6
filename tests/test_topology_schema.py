"""Topology files: the shipped ones load with the patent's values; every mistake names file, line, key and reason."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from scaledist.topology_schema import SpecError, TopologyError, load_topology, load_topology_text

ROOT = Path(__file__).resolve().parent.parent
FIG1 = ROOT / "topologies" / "patent-fig1.yaml"
SMALL = ROOT / "topologies" / "small.yaml"
MB = 10**6
MiB = 2**20

# Block style throughout, so every key sits on its own line and line numbers mean something.
BASE = """\
version: 1
name: t
block_size: 1MiB
epoch: 1s
report_interval: 2s
priorities:
  - name: P1
    weight: 1
  - name: P2
    weight: 2
  - name: P3
    weight: 3
defaults:
  slave:
    inbound: 40MB/s
    outbound: 40MB/s
  rack:
    inbound: 100MB/s
    outbound: 100MB/s
datacenters:
  - id: DC1
    inbound: 100MB/s
    outbound: 100MB/s
    racks:
      - id: R1
        slaves:
          - id: s1
            filesets: [news, web]
          - count: 2
            prefix: r1-s
            filesets: [news, web]
  - id: DC2
    inbound: 100MB/s
    outbound: 100MB/s
    racks:
      - id: R2
        slaves:
          - id: s2
            filesets: [news]
trunks:
  - id: T1
    from: DC1
    to: DC2
    bandwidth: 20MB/s
    reverse_bandwidth: 2MB/s
    latency: 10ms
resource_manager:
  id: rm
  rack: R1
masters:
  - id: M1
    rack: R1
    filesets: [news, web]
generators:
  - id: G1
    slave: s1
    filesets: [news, web]
filesets:
  - id: news
    priority: P3
  - id: web
    priority: P2
"""


def edit(*pairs: tuple[str, str]) -> str:
    text = BASE
    for old, new in pairs:
        assert text.count(old) == 1, f"edit target {old!r} must occur exactly once"
        text = text.replace(old, new)
    return text


def line_of(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} found on lines {hits}"
    return hits[0]


def start_line(text: str, needle: str) -> int:
    """Line on which the one occurrence of ``needle`` (maybe spanning lines) starts."""
    assert text.count(needle) == 1, f"{needle!r} occurs {text.count(needle)} times"
    return text[: text.index(needle)].count("\n") + 1


def error_of(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology_text(text, source="t.yaml")
    return info.value


# --- the shipped files ---------------------------------------------------


def test_base_text_is_valid() -> None:
    topo = load_topology_text(BASE, source="t.yaml")
    assert topo.source == "t.yaml"
    assert set(topo.slaves) == {"s1", "r1-s1", "r1-s2", "s2"}
    assert topo.slaves["r1-s2"].inbound == 40 * MB  # from defaults
    assert topo.slaves["s2"].dc == "DC2"
    assert topo.fileset_file_priority == "P3"  # highest by default
    assert topo.filesets["web"].master == "M1"
    assert topo.trunks["T1"].latency == pytest.approx(0.010)
    assert topo.block_size == MiB and topo.epoch == 1.0 and topo.report_interval == 2.0
    assert topo.extra["version"] == 1


def test_patent_fig1_loads_with_fig5c_values() -> None:
    topo = load_topology(FIG1)
    assert topo.source == str(FIG1)
    assert topo.name == "patent-fig1"
    trunks = {t.id: (t.start, t.end, t.bandwidth / MB, round(t.latency * 1000, 6)) for t in topo.trunks.values()}
    assert trunks == {
        "T1": ("DC1", "DC2", 25, 100),
        "T2N": ("DC1", "DC3", 50, 100),
        "T2S": ("DC3", "DC1", 100, 50),
        "T3W": ("DC3", "DC4", 30, 45),
        "T3E": ("DC2", "DC4", 30, 15),
        "T4": ("DC2", "DC3", 30, 35),
    }
    assert all(t.reverse_bandwidth == 5 * MB for t in topo.trunks.values())
    assert {d: (dc.inbound / MB, dc.outbound / MB) for d, dc in topo.datacenters.items()} == {
        "DC1": (500, 500), "DC2": (500, 500), "DC3": (500, 500), "DC4": (400, 400),
    }  # fmt: skip
    assert (topo.racks["R34"].inbound, topo.racks["R34"].outbound) == (250 * MB, 250 * MB)
    assert topo.racks["R1"].inbound == 300 * MB and topo.racks["R35"].dc == "DC2"
    assert (topo.slaves["Slave35"].inbound, topo.slaves["Slave35"].outbound) == (70 * MB, 70 * MB)
    assert topo.slaves["Slave1"].inbound == 100 * MB
    assert len(topo.slaves) == 24
    for dc in topo.datacenters:
        racks = [r for r in topo.racks.values() if r.dc == dc]
        assert len(racks) == 2
        assert all(sum(1 for s in topo.slaves.values() if s.rack == r.id) == 3 for r in racks)
    assert (topo.block_size, topo.epoch, topo.report_interval, topo.control) == (64 * MiB, 2.0, 30.0, "management")
    assert [(p.name, p.level, p.weight) for p in topo.priorities] == [(f"P{i}", i, i) for i in range(1, 6)]
    assert topo.fileset_file_priority == "P5"
    assert topo.filesets["news"].priority == "P3" and topo.filesets["images"].priority == "P2"
    m1 = topo.masters[topo.filesets["news"].master]
    assert m1.rack == "R2" and topo.racks[m1.rack].dc == "DC1"  # Master1 in Rack 2 (FIG. 1)
    assert topo.racks[topo.masters[topo.filesets["images"].master].rack].dc == "DC2"
    assert {g.filesets for g in topo.generators.values()} == {("news",), ("images",)}
    assert all(topo.slaves[g.slave].dc == "DC1" for g in topo.generators.values())
    assert topo.racks[topo.resource_manager.rack].dc == "DC1"


def test_small_loads() -> None:
    topo = load_topology(SMALL)
    assert len(topo.datacenters) == 3 and len(topo.slaves) == 10
    per_rack = {r: sum(1 for s in topo.slaves.values() if s.rack == r) for r in topo.racks}
    racks = sorted((topo.racks[r].dc, n) for r, n in per_rack.items())
    assert racks == [("DC1", 2), ("DC1", 3), ("DC2", 3), ("DC3", 2)]
    assert (topo.block_size, topo.epoch, topo.report_interval) == (MiB, 1.0, 2.0)
    assert all(s.inbound == s.outbound == 40 * MB for s in topo.slaves.values())
    assert all(r.inbound == r.outbound == 100 * MB for r in topo.racks.values())
    assert all(d.inbound == d.outbound == 100 * MB for d in topo.datacenters.values())
    trunks = {t.id: (t.start, t.end, t.bandwidth / MB, round(t.latency * 1000, 6)) for t in topo.trunks.values()}
    assert trunks == {
        "T1": ("DC1", "DC2", 20, 10), "T2": ("DC1", "DC3", 10, 20),
        "T3": ("DC2", "DC3", 20, 5), "T4": ("DC2", "DC1", 10, 10),
    }  # fmt: skip
    assert all(t.reverse_bandwidth == 2 * MB for t in topo.trunks.values())
    assert {f.master for f in topo.filesets.values()} == {"M1"}
    assert all(s.filesets == ("news", "web") for s in topo.slaves.values())
    assert topo.slaves[topo.generators["G1"].slave].dc == "DC1"


def test_scaled_keeps_ratios() -> None:
    topo = load_topology(FIG1)
    small = topo.scaled(0.01)
    for tid, t in topo.trunks.items():
        assert small.trunks[tid].bandwidth / t.bandwidth == pytest.approx(0.01)
        assert small.trunks[tid].latency == t.latency
    ratio = small.trunks["T2S"].bandwidth / small.trunks["T1"].bandwidth
    assert ratio == pytest.approx(4.0)
    assert small.slaves["Slave35"].inbound / small.slaves["Slave1"].inbound == pytest.approx(0.7)
    assert small.block_size / topo.block_size == pytest.approx(0.01, rel=0.01)
    assert small.scale == pytest.approx(0.01)


def test_explicit_levels_sort_priorities() -> None:
    text = edit(("  - name: P1\n    weight: 1\n", "  - name: P1\n    weight: 1\n    level: 7\n"))
    topo = load_topology_text(text)
    assert [p.name for p in topo.priorities] == ["P2", "P3", "P1"]
    assert topo.fileset_file_priority == "P1"


def test_error_shape_and_pickle() -> None:
    e = error_of(edit(("    bandwidth: 20MB/s", "    bandwidth: 0")))
    assert isinstance(e, SpecError) and isinstance(e, ValueError)
    assert (e.source, e.key, e.reason) == ("t.yaml", "trunks[0].bandwidth", "bandwidth must be > 0, got 0")
    assert e.line == line_of(BASE, "bandwidth: 20MB/s")
    assert str(e) == f"t.yaml:{e.line}: trunks[0].bandwidth: bandwidth must be > 0, got 0"
    again = pickle.loads(pickle.dumps(e))
    assert (again.source, again.line, again.key, again.reason) == (e.source, e.line, e.key, e.reason)


# --- one case per rule: (edits, key, text on the expected line, reason fragment) ---------------

M2_WEB = "generators:\n", "  - id: M2\n    rack: R1\n    filesets: [web]\ngenerators:\n"
M1_TO_R3 = "    rack: R1\n    filesets: [news, web]\ngen", "    rack: R3\n    filesets: [news, web]\ngen"
DC3_EMPTY = "trunks:\n", "  - id: DC3\n    inbound: 1MB/s\n    outbound: 1MB/s\n    racks:\n      - id: R3\ntrunks:\n"

CASES: list[tuple[str, list[tuple[str, str]], str, str, str]] = [
    ("version", [("version: 1", "version: 2")], "version", "version: 2", "unsupported version 2"),
    ("bandwidth zero", [("    bandwidth: 20MB/s", "    bandwidth: 0")], "trunks[0].bandwidth", "bandwidth: 0",
     "bandwidth must be > 0, got 0"),
    ("negative default", [("    inbound: 40MB/s", "    inbound: -40MB/s")], "defaults.slave.inbound", "-40MB/s",
     "bandwidth must be > 0, got -40MB/s"),
    ("zero reverse", [("reverse_bandwidth: 2MB/s", "reverse_bandwidth: 0MB/s")], "trunks[0].reverse_bandwidth",
     "reverse_bandwidth", "must be > 0, got 0MB/s"),
    ("dc bandwidth", [("  - id: DC2\n    inbound: 100MB/s", "  - id: DC2\n    inbound: 0")],
     "datacenters[1].inbound", "inbound: 0", "bandwidth must be > 0, got 0"),
    ("bad unit", [("    bandwidth: 20MB/s", "    bandwidth: 20furlongs")], "trunks[0].bandwidth", "furlongs",
     "unknown bandwidth unit"),
    ("negative latency", [("latency: 10ms", "latency: -5ms")], "trunks[0].latency", "latency", "latency must be >= 0"),
    ("small block", [("block_size: 1MiB", "block_size: 1KiB")], "block_size", "block_size",
     "block_size must be >= 4096 bytes, got 1KiB"),
    ("zero epoch", [("epoch: 1s", "epoch: 0s")], "epoch", "epoch", "epoch must be > 0, got 0s"),
    ("zero report", [("report_interval: 2s", "report_interval: 0")], "report_interval", "report_interval",
     "report_interval must be > 0"),
    ("trunk unknown end", [("    to: DC2", "    to: DC9")], "trunks[0].to", "to: DC9",
     "unknown datacenter 'DC9'"),
    ("trunk loop", [("    to: DC2", "    to: DC1")], "trunks[0].to", "to: DC1", "'from' and 'to' must differ"),
    ("id shared across kinds", [("  - id: M1", "  - id: DC1")], "masters[0].id", "- id: DC1\n    rack: R1",
     "duplicate id 'DC1': already used by datacenter datacenters[0].id at line 21"),
    ("duplicate slave", [("          - id: s2", "          - id: s1")], "datacenters[1].racks[0].slaves[0].id",
     "- id: s1\n            filesets: [news]\n", "duplicate id 's1'"),
    ("count collides", [("          - id: s2", "          - id: r1-s2")], "datacenters[1].racks[0].slaves[0].id",
     "- id: r1-s2", "already used by slave datacenters[0].racks[0].slaves[1].prefix at line 30"),
    ("invalid id", [("  id: rm", "  id: r/m")], "resource_manager.id", "r/m", "invalid id 'r/m'"),
    ("weight zero", [("    weight: 2", "    weight: 0")], "priorities[1].weight", "weight: 0",
     "weight must be > 0, got 0"),
    ("duplicate priority", [("  - name: P2", "  - name: P1")], "priorities[1].name", "- name: P1\n    weight: 2",
     "duplicate priority name 'P1'"),
    ("duplicate level", [("    weight: 3", "    weight: 3\n    level: 1")], "priorities[2].level", "level: 1",
     "duplicate priority level 1"),
    ("unknown priority", [("    priority: P2", "    priority: P9")], "filesets[1].priority", "P9",
     "unknown priority 'P9'"),
    ("fileset file priority", [("epoch: 1s", "epoch: 1s\nfileset_file_priority: P33")], "fileset_file_priority",
     "P33", "unknown priority 'P33' (did you mean 'P3'?)"),
    ("no master", [("    filesets: [news, web]\ngenerators", "    filesets: [news]\ngenerators")], "filesets[1].id",
     "id: web", "fileset 'web' is owned by no master"),
    ("two masters", [M2_WEB], "masters[1].filesets[0]", "filesets: [web]\n",
     "fileset 'web' is owned by both M1 and M2"),
    ("fileset twice", [("    filesets: [news, web]\ngenerators", "    filesets: [news, news]\ngenerators")],
     "masters[0].filesets[1]", "[news, news]", "fileset 'news' is listed twice"),
    ("master rack", [("    rack: R1\n    filesets", "    rack: R7\n    filesets")], "masters[0].rack", "R7",
     "unknown rack 'R7'"),
    ("generator slave", [("    slave: s1", "    slave: s9")], "generators[0].slave", "s9", "unknown slave 's9'"),
    ("slave fileset typo", [("            filesets: [news]", "            filesets: [nwes]")],
     "datacenters[1].racks[0].slaves[0].filesets[0]", "[nwes]", "unknown fileset 'nwes' (did you mean 'news'?)"),
    ("no generator", [("    slave: s1\n    filesets: [news, web]", "    slave: s1\n    filesets: [news]")],
     "filesets[1].id", "id: web", "fileset 'web' has no generator"),
    ("unreachable", [("    from: DC1\n    to: DC2", "    from: DC2\n    to: DC1")], "datacenters[1].id", "id: DC2",
     "datacenter DC2 holds slaves of fileset news but no trunk path in primary direction reaches it"
     " from generator G1 in DC1"),
    ("no trunks", [("trunks:\n  - id: T1\n    from: DC1\n    to: DC2\n    bandwidth: 20MB/s\n"
                    "    reverse_bandwidth: 2MB/s\n    latency: 10ms\n", "")], "datacenters[1].id", "id: DC2",
     "no trunk path in primary direction"),
    ("control over trunks", [("epoch: 1s", "epoch: 1s\ncontrol: trunks"), DC3_EMPTY, M1_TO_R3],
     "datacenters[0].id", "id: DC1", "cannot report to master M1 in DC3: no trunk path in either direction;"
     " use control: management"),
    ("control value", [("epoch: 1s", "epoch: 1s\ncontrol: trunk")], "control", "control: trunk",
     "control must be 'management' or 'trunks', got 'trunk' (did you mean 'trunks'?)"),
    ("count zero", [("count: 2", "count: 0")], "datacenters[0].racks[0].slaves[1].count", "count: 0",
     "count must be between 1 and 10000, got 0"),
    ("count too big", [("count: 2", "count: 10001")], "datacenters[0].racks[0].slaves[1].count", "count: 10001",
     "between 1 and 10000"),
    ("count not a number", [("count: 2", "count: two")], "datacenters[0].racks[0].slaves[1].count", "count: two",
     "expected a whole number, got 'two'"),
    ("id and count", [("          - id: s1\n", "          - id: s1\n            count: 3\n")],
     "datacenters[0].racks[0].slaves[0].count", "count: 3", "not both"),
    ("typo", [("    bandwidth: 20MB/s", "    bandwith: 20MB/s")], "trunks[0].bandwith", "bandwith",
     "unknown key 'bandwith' (did you mean 'bandwidth'?)"),
    ("top-level typo", [("report_interval: 2s", "report_interval: 2s\nepcoh: 2s")], "epcoh", "epcoh",
     "unknown key 'epcoh' (did you mean 'epoch'?)"),
    ("missing required", [("    latency: 10ms\n", "")], "trunks[0].latency", "  - id: T1", "required key is missing"),
    ("missing bandwidth", [("  slave:\n    inbound: 40MB/s\n", "  slave:\n")],
     "datacenters[0].racks[0].slaves[0].inbound", "- id: s1", "no defaults.slave.inbound given"),
    ("duplicate key", [("    bandwidth: 20MB/s", "    bandwidth: 20MB/s\n    bandwidth: 30MB/s")],
     "trunks[0].bandwidth", "30MB/s", "duplicate key 'bandwidth' (first at line"),
    ("wrong type", [("    racks:\n      - id: R2\n        slaves:\n          - id: s2\n            filesets: [news]\n",
                     "    racks: R2\n")],
     "datacenters[1].racks", "racks: R2", "expected a list, got 'R2'"),
]  # fmt: skip


@pytest.mark.parametrize(("edits", "key", "needle", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_errors_name_key_line_and_reason(edits: list[tuple[str, str]], key: str, needle: str, reason: str) -> None:
    text = edit(*edits)
    e = error_of(text)
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    expected_line = start_line(text, needle)
    assert e.line == expected_line, str(e)
    assert str(e) == f"t.yaml:{expected_line}: {key}: {e.reason}"


def test_control_over_trunks_accepted_when_connected() -> None:
    # DC2 has no trunk back to DC1, but reports ride T1's reverse direction
    topo = load_topology_text(edit(("epoch: 1s", "epoch: 1s\ncontrol: trunks")))
    assert topo.control == "trunks"


def test_control_over_trunks_checks_masters_reach_resource_manager() -> None:
    text = edit(
        ("epoch: 1s", "epoch: 1s\ncontrol: trunks"),
        DC3_EMPTY,
        ("  id: rm\n  rack: R1", "  id: rm\n  rack: R3"),
    )
    e = error_of(text)
    assert "master M1 in datacenter DC1 cannot reach the resource manager in DC3" in e.reason
    assert e.line == line_of(text, "- id: DC1")


def test_same_file_loads_with_management_control() -> None:
    text = edit(DC3_EMPTY, M1_TO_R3)
    assert load_topology_text(text).masters["M1"].rack == "R3"


def test_yaml_syntax_error_has_line() -> None:
    text = edit(("    to: DC2", "    to: [DC2"))
    e = error_of(text)
    assert e.reason.startswith("YAML syntax error")
    assert e.key == ""
    assert e.line is not None and e.line >= line_of(text, "to: [DC2")
    assert str(e).startswith(f"t.yaml:{e.line}: YAML syntax error")


def test_yaml_bad_indentation_line() -> None:
    text = edit(("    rack: R1\n    filesets: [news, web]\ngen", "    rack: R1\n   filesets: [news, web]\ngen"))
    e = error_of(text)
    assert e.reason.startswith("YAML syntax error")
    assert e.line == start_line(text, "   filesets: [news, web]\ngen")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as info:
        load_topology(missing)
    assert info.value.source == str(missing)
    assert info.value.line is None
    assert str(info.value) == f"{missing}: topology file not found"


def test_load_from_path_reports_the_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(edit(("latency: 10ms", "latency: -1s")))
    with pytest.raises(TopologyError) as info:
        load_topology(str(p))
    assert str(info.value).startswith(f"{p}:{line_of(p.read_text(), 'latency: -1s')}: trunks[0].latency: ")


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("", None, "the file is empty"),
        ("- 1\n- 2\n", 1, "expected a mapping, got a list"),
        ("name: x\n", 1, "required key is missing"),
        ("version: 1\n---\nversion: 1\n", 2, "YAML syntax error"),
    ],
)
def test_degenerate_documents(text: str, line: int | None, reason: str) -> None:
    e = error_of(text)
    assert e.line == line
    assert reason in e.reason


def test_yaml_merge_keys_own_values_win() -> None:
    text = edit(
        ("defaults:\n  slave:\n", "defaults:\n  slave: &fast\n"),
        ("          - id: s2\n", "          - id: s2\n            <<: *fast\n            inbound: 7MB/s\n"),
    )
    s2 = load_topology_text(text).slaves["s2"]
    assert (s2.inbound, s2.outbound) == (7 * MB, 40 * MB)


def test_extra_passes_through() -> None:
    topo = load_topology_text(edit(("epoch: 1s", "epoch: 1s\nextra:\n  testbed: {delay: nfqueue}")))
    assert topo.extra == {"testbed": {"delay": "nfqueue"}, "version": 1}


def test_health_section_sets_every_masters_thresholds() -> None:
    base = Path("topologies/small.yaml").read_text()
    topo = load_topology_text(base + "\nhealth:\n  failure_threshold: 4\n  recovery_threshold: 2\n  time_unit: 5s\n")
    assert (topo.health.failure_threshold, topo.health.recovery_threshold, topo.health.time_unit) == (4, 2, 5.0)
    assert topo.scaled(0.5).health == topo.health
    assert load_topology_text(base).health.failure_threshold == 50  # the patent's default


@pytest.mark.parametrize(("bad", "says"), [
    ("health:\n  failure_threshold: 0\n", "failure_threshold must be >= 1"),
    ("health:\n  failur: 3\n", "unknown key 'failur'"),
    ("health:\n  recovery_threshold: 9\n  failure_threshold: 5\n", "recovery_threshold"),
    ("health:\n  time_unit: soon\n", "time_unit"),
])
def test_health_section_errors_name_the_key(bad: str, says: str) -> None:
    base = Path("topologies/small.yaml").read_text()
    with pytest.raises(TopologyError, match=says):
        load_topology_text(base + "\n" + bad)


def test_scrub_interval_is_read_and_checked() -> None:
    base = Path("topologies/small.yaml").read_text()
    assert load_topology_text(base).scrub_interval == 60.0
    assert load_topology_text(base + "\nscrub_interval: 5s\n").scrub_interval == 5.0
    assert load_topology_text(base + "\nscrub_interval: 0s\n").scrub_interval == 0.0  # off
    with pytest.raises(TopologyError, match="scrub_interval"):
        load_topology_text(base + "\nscrub_interval: -1s\n")
