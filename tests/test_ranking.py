"""FIG. 8 source ranking, replaying the patent's examples (§0143-0147)."""

from __future__ import annotations

from scaledist.core.ranking import Candidate, RankWeights, rank_sources, score
from tests.builders import make_topology, patent_fig1

KB = 1000


def fixed_distance(table: dict[str, float | None]):
    return lambda src, dst: table[src]


TOPO = make_topology(block_size=64 * KB)


def test_distance_five_beats_ten() -> None:
    """§0143: B at distance 5 ranks ahead of C at distance 10."""
    ranked = rank_sources(
        TOPO, "A", [Candidate("C", 0), Candidate("B", 0)], None, {}, distance=fixed_distance({"B": 5, "C": 10})
    )
    assert ranked == ["B", "C"]


def test_last_copied_from_loses_to_an_otherwise_equal_source() -> None:
    """§0144 entropy: the destination's last source goes second."""
    d = fixed_distance({"B": 4, "C": 4})
    assert rank_sources(TOPO, "A", [Candidate("B", 0), Candidate("C", 0)], "B", {}, distance=d) == ["C", "B"]
    assert rank_sources(TOPO, "A", [Candidate("B", 0), Candidate("C", 0)], "C", {}, distance=d) == ["B", "C"]


def test_one_outbound_beats_three() -> None:
    """§0145 idleness."""
    d = fixed_distance({"B": 4, "C": 4})
    ranked = rank_sources(TOPO, "A", [Candidate("C", 0), Candidate("B", 0)], None, {"B": 1, "C": 3}, distance=d)
    assert ranked == ["B", "C"]


def test_fifty_kb_held_beats_one_hundred() -> None:
    """§0147: the source with less of the file (but enough) is preferred."""
    d = fixed_distance({"B": 4, "C": 4})
    ranked = rank_sources(TOPO, "A", [Candidate("C", 100 * KB), Candidate("B", 50 * KB)], None, {}, distance=d)
    assert ranked == ["B", "C"]
    # what the destination holds shifts both equally and keeps the order
    ranked = rank_sources(
        TOPO, "A", [Candidate("C", 100 * KB, 20 * KB), Candidate("B", 50 * KB, 20 * KB)], None, {}, distance=d
    )
    assert ranked == ["B", "C"]


def test_overload_penalty_outweighs_distance() -> None:
    """§0146: above the threshold a near source drops behind a far one."""
    d = fixed_distance({"B": 2, "C": 30})
    w = RankWeights(overload_threshold=4)
    assert rank_sources(TOPO, "A", [Candidate("B", 0), Candidate("C", 0)], None, {"B": 4}, w, distance=d) == ["B", "C"]
    assert rank_sources(TOPO, "A", [Candidate("B", 0), Candidate("C", 0)], None, {"B": 5}, w, distance=d) == ["C", "B"]


def test_ties_broken_by_slave_id_and_unreachable_dropped() -> None:
    d = fixed_distance({"Z": 4, "B": 4, "M": 4, "X": None})
    cands = [Candidate(s, 0) for s in ("Z", "X", "M", "B", "B")]
    assert rank_sources(TOPO, "A", cands, None, {}, distance=d) == ["B", "M", "Z"]


def test_destination_is_never_its_own_source() -> None:
    d = fixed_distance({"A": 0, "B": 4})
    assert rank_sources(TOPO, "A", [Candidate("A", 0), Candidate("B", 0)], None, {}, distance=d) == ["B"]


def test_real_topology_distances_rack_datacenter_trunk() -> None:
    """Same rack (2 links) < same datacenter (4) < across T1 (7 links + 100 ms = 17)."""
    topo = make_topology()
    cands = [Candidate(s, 0) for s in ("R2-s1", "R1-s2")]
    assert rank_sources(topo, "R1-s1", cands, None, {}) == ["R1-s2", "R2-s1"]
    assert rank_sources(topo, "R3-s1", [Candidate("R1-s1", 0), Candidate("R3-s2", 0)], None, {}) == ["R3-s2", "R1-s1"]
    s = score(topo, "R3-s1", Candidate("R1-s1", 0), None, {})
    assert s is not None and s.distance == 17.0


def test_no_primary_path_means_no_candidate() -> None:
    """T1 runs DC1 -> DC2 only: a DC2 slave cannot send to DC1 (trunks carry data in primary direction)."""
    topo = make_topology()
    assert rank_sources(topo, "R1-s1", [Candidate("R3-s1", 0), Candidate("R3-s2", 0)], None, {}) == []
    assert score(topo, "R1-s1", Candidate("R3-s1", 0), None, {}) is None
    assert rank_sources(topo, "R3-s1", [Candidate("R1-s1", 0)], None, {}) == ["R1-s1"]


def test_composite_is_the_weighted_sum() -> None:
    topo = patent_fig1()
    w = RankWeights(distance=1.0, entropy=2.0, idleness=1.0, data=0.5)
    bs = topo.block_size
    s = score(topo, "R11-s1", Candidate("R12-s1", 3 * bs, bs), "R12-s1", {"R12-s1": 2}, w)
    assert s is not None
    assert (s.distance, s.entropy, s.idleness, s.data) == (4.0, 1.0, 2.0, 2.0)
    assert s.composite == 4.0 + 2.0 + 2.0 + 1.0
    # zero weights switch criteria off
    flat = RankWeights(distance=0.0, entropy=0.0, idleness=0.0, data=0.0)
    cands = [Candidate("R22-s1", 0), Candidate("R12-s1", 0)]
    assert rank_sources(topo, "R11-s1", cands, None, {}, flat) == ["R12-s1", "R22-s1"]  # by id
