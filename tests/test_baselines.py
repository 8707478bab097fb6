"""Baselines (BitTorrent, central pull) for real on the emulated small network, plus their pure helpers.

The real runs need root, Mininet, opentracker and libtorrent; each is skipped with the reason when missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import psutil
import pytest

from results.bound import file_versions
from scaledist.daemons.generator import block_bytes
from testbed.baselines import publications, scaled_scenario, wanted, write_version
from testbed.baselines.bittorrent import MIN_PIECE, piece_size
from testbed.run import plan_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "topologies" / "small.yaml"
SCENARIO = """version: 1
name: baselines-test
filesets:
  news:
    files:
      - {id: news-index, size: 1MiB}
      - {id: news-docs, size: 1.5MiB}
    updates:
      - {at: 0.5s, file: news-index, size: 1.25MiB}
  web:
    files:
      - {id: web-index, size: 512KiB}
"""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    if importlib.util.find_spec("mininet") is None or shutil.which("mnexec") is None:
        return "needs Mininet (bash scripts/setup.sh installs it)"
    return None


def _scenario(tmp_path: Path) -> Path:
    p = tmp_path / "scenario.yaml"
    p.write_text(SCENARIO)
    return p


def test_publications_follow_the_generators_versions_and_bytes(tmp_path: Path) -> None:
    plan = plan_run(SMALL, _scenario(tmp_path), None, machine=False)
    pubs = publications(plan.topology, scaled_scenario(plan))
    assert [p.key for p in pubs] == ["news/news-index@1", "news/news-docs@1", "web/web-index@1",
                                     "news/news-index@2"]
    assert {p.source for p in pubs} == {"dc1-r1-s1"}
    assert pubs[-1].at == pytest.approx(0.5) and pubs[-1].version.final and not pubs[0].version.final
    v = pubs[1].version
    path = tmp_path / "f"
    sha = write_version(path, plan.topology, v)
    bs = plan.topology.block_size
    expect = b"".join(block_bytes(v.fileset, v.file_id, v.version, i, min(bs, v.size - i * bs))
                      for i in range(-(-v.size // bs)))
    assert path.read_bytes() == expect and sha == hashlib.sha256(expect).hexdigest()
    assert len(file_versions(scaled_scenario(plan))) == 4


def test_clients_want_only_the_newest_version_of_their_filesets() -> None:
    entries = [{"fileset": "news", "file": "a", "version": 1, "key": "news/a@1"},
               {"fileset": "web", "file": "w", "version": 1, "key": "web/w@1"},
               {"fileset": "news", "file": "a", "version": 2, "key": "news/a@2"}]
    assert {e["key"] for e in wanted(entries, {"news"}).values()} == {"news/a@2"}


def test_piece_size_is_a_power_of_two_within_bounds() -> None:
    for size in (1, 100_000, 3 << 20, 10 << 20, 1 << 30):
        p = piece_size(size, 1 << 20)
        assert p & (p - 1) == 0 and MIN_PIECE <= p <= 1 << 20
    assert piece_size(10 << 20, 1 << 20) == 128 * 1024


def _ours_running(tmp_path: Path) -> list[str]:
    left = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(tmp_path) in cmd:
            left.append(cmd)
    return left


@pytest.mark.parametrize("name", ["bittorrent", "central"])
def test_baseline_distributes_verifies_and_leaves_nothing(name: str, tmp_path: Path) -> None:
    why = _why_not()
    if why is None and name == "bittorrent":
        if shutil.which("opentracker") is None:
            why = "needs opentracker (apt-get install opentracker; scripts/setup.sh)"
        elif importlib.util.find_spec("libtorrent") is None:
            why = "needs libtorrent's Python bindings (python3-libtorrent; scripts/setup.sh)"
    if why:
        pytest.skip(why)
    from results.bound import fluid_bound, needed_bytes
    from testbed.bench import row, run_system

    plan = plan_run(SMALL, _scenario(tmp_path), None)
    routing = "data" if name == "bittorrent" else "main"  # both routings exercised: bulk on primary, or main table
    s = run_system(name, plan, tmp_path / name, timeout=90, latency="auto", routing=routing, log=lambda _: None)
    assert s["completed"], s["error"] or s["mismatches"]
    # 2 final news files and 1 web file on 9 slaves each (the generator's slave holds them already)
    assert (s["files_verified"], s["files_mismatched"]) == (27, 0)
    dirs = s["trunk_directions"]
    assert sum(d["bytes"] for d in dirs.values()) > s["needed_bytes"]  # the data crossed trunks, headers too
    assert s["completion_s"]["overall"] >= 0.5  # the update is published at 0.5 s
    done = s["done_s"]
    assert set(done) == set(plan.topology.slaves)
    assert all("news/news-index@2" in done[x] for x in plan.topology.slaves)
    assert _ours_running(tmp_path) == []
    assert not (tmp_path / name / "data").exists()  # removed once verified
    sc = scaled_scenario(plan)
    bound = fluid_bound(plan.topology, sc)
    r = row(name, s, plan, bound, sum(needed_bytes(plan.topology, file_versions(sc)).values()), 90)
    assert r["ratio_to_bound"] >= 1.0  # no system beats the fluid bound
    assert r["trunk_efficiency"] > 1.0
    assert r["progress"][-1][1] == r["pairs"]
