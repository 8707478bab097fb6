"""Scenario files: the shipped ones load; mistakes name file, line, key and reason; scaling keeps proportions."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from scaledist.scenario import (
    FilePlan,
    FilesetPlan,
    Scenario,
    ScenarioError,
    UpdatePlan,
    default_scenario,
    load_scenario,
    load_scenario_text,
)
from scaledist.topology import Topology
from scaledist.topology_schema import SpecError, load_topology

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"
MiB = 2**20
KiB = 2**10
MB = 10**6

BASE = """\
version: 1
name: s
filesets:
  news:
    generation_rate: 50MB/s
    files:
      - id: index-a
        size: 3MiB
      - id: index-b
        size: 1MiB
        start: 2s
    updates:
      - at: 3s
        file: index-b
        size: 2MiB
  web:
    files:
      - id: web-a
        size: 512KiB
"""


@pytest.fixture(scope="module")
def small() -> Topology:
    return load_topology(TOPOLOGIES / "small.yaml")


@pytest.fixture(scope="module")
def fig1() -> Topology:
    return load_topology(TOPOLOGIES / "patent-fig1.yaml")


def edit(*pairs: tuple[str, str]) -> str:
    text = BASE
    for old, new in pairs:
        assert text.count(old) == 1, f"edit target {old!r} must occur exactly once"
        text = text.replace(old, new)
    return text


def start_line(text: str, needle: str) -> int:
    assert text.count(needle) == 1, f"{needle!r} occurs {text.count(needle)} times"
    return text[: text.index(needle)].count("\n") + 1


def test_base_text(small: Topology) -> None:
    sc = load_scenario_text(BASE, small, source="s.yaml")
    assert sc.name == "s"
    news = sc.filesets["news"]
    assert news.files == (FilePlan("index-a", 3 * MiB, 0.0), FilePlan("index-b", MiB, 2.0))
    assert news.updates == (UpdatePlan(3.0, "index-b", 2 * MiB),)
    assert news.generation_rate == 50 * MB
    assert sc.filesets["web"] == FilesetPlan((FilePlan("web-a", 512 * KiB, 0.0),), (), None)
    assert sc.total_bytes() == 3 * MiB + MiB + 2 * MiB + 512 * KiB


def test_small_scenario(small: Topology) -> None:
    sc = load_scenario(TOPOLOGIES / "small-scenario.yaml", small)
    news = sc.filesets["news"]
    assert [f.size for f in news.files] == [3 * MiB, 6 * MiB + 512 * KiB, 512 * KiB]
    blocks = [math.ceil(f.size / small.block_size) for f in news.files]
    assert blocks == [3, 7, 1]
    assert [(u.at, u.file) for u in news.updates] == [(0.5, news.files[0].id)]
    assert [f.size for f in sc.filesets["web"].files] == [2 * MiB]


def test_default_scenario_file(fig1: Topology) -> None:
    sc = load_scenario(str(TOPOLOGIES / "default-scenario.yaml"), fig1)
    assert sorted(f.size for f in sc.filesets["news"].files) == [256 * MiB, 640 * MiB]
    assert [f.size for f in sc.filesets["images"].files] == [192 * MiB]
    assert sum(len(p.updates) for p in sc.filesets.values()) == 1
    assert sc.filesets["news"].generation_rate == 100 * MB


def test_scaled_keeps_ratios_and_times(small: Topology) -> None:
    sc = load_scenario_text(BASE, small)
    half = sc.scaled(0.5)
    assert [f.size for f in half.filesets["news"].files] == [3 * MiB // 2, MiB // 2]
    assert [f.start for f in half.filesets["news"].files] == [0.0, 2.0]
    assert half.filesets["news"].updates == (UpdatePlan(3.0, "index-b", MiB),)
    assert half.filesets["news"].generation_rate == 25 * MB
    assert half.filesets["web"].generation_rate is None
    assert half.total_bytes() == sc.total_bytes() // 2
    tiny = sc.scaled(1e-9)
    assert all(f.size == 1 for p in tiny.filesets.values() for f in p.files)  # never below one byte
    assert sc.filesets["news"].files[0].size == 3 * MiB  # the original is untouched
    with pytest.raises(ValueError):
        sc.scaled(0)


def test_plans_are_frozen(small: Topology) -> None:
    sc = load_scenario_text(BASE, small)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.filesets["news"].files[0].size = 1  # type: ignore[misc]


def test_default_scenario_exercises_many_blocks_and_an_update(small: Topology, fig1: Topology) -> None:
    for topo in (small, fig1):
        sc = default_scenario(topo)
        assert isinstance(sc, Scenario)
        assert set(sc.filesets) == set(topo.filesets)
        for fs, plan in sc.filesets.items():
            blocks = [math.ceil(f.size / topo.block_size) for f in plan.files]
            assert blocks == [2, 6, 1] and max(blocks) > 5
            assert len(plan.updates) == 1
            update = plan.updates[0]
            assert update.at == 0.0 and update.file == plan.files[0].id
            assert update.size % topo.block_size != 0  # a partial last block
            assert fs not in {f.id for f in plan.files}


CASES: list[tuple[str, list[tuple[str, str]], str, str, str]] = [
    ("version", [("version: 1", "version: 3")], "version", "version: 3", "unsupported version 3"),
    ("unknown fileset", [("  web:\n", "  wbe:\n")], "filesets.wbe", "  wbe:",
     "unknown fileset 'wbe': topology small has news, web (did you mean 'web'?)"),
    ("bad file id", [("id: web-a", "id: web/a")], "filesets.web.files[0].id", "web/a", "invalid id 'web/a'"),
    ("duplicate file id", [("id: index-b", "id: index-a")], "filesets.news.files[1].id",
     "- id: index-a\n        size: 1MiB",
     "duplicate file id 'index-a'"),
    ("file id across filesets", [("id: web-a", "id: index-a")], "filesets.web.files[0].id",
     "- id: index-a\n        size: 512",
     "already a file of fileset news at line 7"),
    ("file id is fileset id", [("id: web-a", "id: web")], "filesets.web.files[0].id", "id: web\n",
     "taken by the FileSet file of fileset web"),
    ("dot-dot file id", [("id: web-a", "id: web..a")], "filesets.web.files[0].id", "web..a", "no '..'"),
    ("zero size", [("size: 512KiB", "size: 0")], "filesets.web.files[0].size", "size: 0", "size must be > 0, got 0"),
    ("negative start", [("start: 2s", "start: -2s")], "filesets.news.files[1].start", "start: -2s",
     "start must be >= 0, got -2s"),
    ("negative at", [("at: 3s", "at: -1s")], "filesets.news.updates[0].at", "at: -1s", "at must be >= 0"),
    ("update unknown file", [("file: index-b", "file: index-c")], "filesets.news.updates[0].file", "index-c",
     "update of unknown file 'index-c': fileset news has index-a, index-b"),
    ("update before start", [("at: 3s", "at: 1s")], "filesets.news.updates[0].at", "at: 1s",
     "update at 1s comes before file index-b starts at 2s"),
    ("update size", [("size: 2MiB", "size: 0B")], "filesets.news.updates[0].size", "size: 0B", "size must be > 0"),
    ("zero rate", [("generation_rate: 50MB/s", "generation_rate: 0")], "filesets.news.generation_rate",
     "generation_rate", "generation_rate must be > 0, got 0"),
    ("typo", [("    updates:", "    update:")], "filesets.news.update", "update:",
     "unknown key 'update' (did you mean 'updates'?)"),
    ("typo in file", [("        start: 2s", "        strat: 2s")], "filesets.news.files[1].strat", "strat",
     "unknown key 'strat' (did you mean 'start'?)"),
    ("missing size", [("      - id: web-a\n        size: 512KiB\n", "      - id: web-a\n")],
     "filesets.web.files[0].size", "- id: web-a", "required key is missing"),
    ("no files", [("  web:\n    files:\n      - id: web-a\n        size: 512KiB\n", "  web:\n    files: []\n")],
     "filesets.web.files", "files: []", "the list must not be empty"),
    ("bad name", [("name: s", "name: a b")], "name", "name: a b", "invalid id 'a b'"),
    ("duplicate fileset", [("  web:\n", "  news:\n")], "filesets.news", "  news:\n    files", "duplicate key 'news'"),
]  # fmt: skip


@pytest.mark.parametrize(("edits", "key", "needle", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_errors_name_key_line_and_reason(
    small: Topology, edits: list[tuple[str, str]], key: str, needle: str, reason: str
) -> None:
    text = edit(*edits)
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, small, source="s.yaml")
    e = info.value
    assert isinstance(e, SpecError)
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert e.line == start_line(text, needle), str(e)
    assert str(e) == f"s.yaml:{e.line}: {key}: {e.reason}"


def test_yaml_syntax_error(small: Topology) -> None:
    text = edit(("size: 3MiB", "size: [3MiB"))
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, small, source="s.yaml")
    assert info.value.reason.startswith("YAML syntax error")
    assert info.value.line is not None and info.value.line >= start_line(text, "[3MiB")


def test_missing_file(tmp_path: Path, small: Topology) -> None:
    missing = tmp_path / "gone.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(missing, small)
    assert str(info.value) == f"{missing}: scenario file not found"


def test_scenario_checked_against_its_topology(fig1: Topology) -> None:
    # small-scenario names fileset 'web', which patent-fig1 does not have
    with pytest.raises(ScenarioError) as info:
        load_scenario(TOPOLOGIES / "small-scenario.yaml", fig1)
    assert info.value.key == "filesets.web"
    assert "unknown fileset 'web'" in info.value.reason
