"""The fluid lower bound on topologies small enough to compute by hand."""

from __future__ import annotations

import pytest

from results.bound import file_versions, fluid_bound, max_flow, needed_bytes
from scaledist.scenario import FilePlan, FilesetPlan, Scenario, UpdatePlan
from tests.builders import MB, make_topology


def one_file(size: int, start: float = 0.0, rate: float | None = None, updates: tuple[UpdatePlan, ...] = ()
             ) -> Scenario:
    return Scenario("t", {"news": FilesetPlan((FilePlan("f", size, start),), updates, rate)})


def test_max_flow_takes_parallel_paths_and_the_narrowest_link_of_each() -> None:
    edges = [("s", "a", 5.0), ("a", "t", 3.0), ("s", "b", 2.0), ("b", "t", 4.0), ("a", "b", 10.0)]
    assert max_flow(edges, "s", "t") == pytest.approx(7.0)  # s->a->t 3, s->a->b->t 2, s->b->t 2


def test_trunk_cut_binds_when_the_trunk_is_the_narrowest() -> None:
    # DC1 (generator) -> DC2 over a 10 MB/s trunk with a 1 MB/s reverse direction
    topo = make_topology({"DC1": {"R1": 2}, "DC2": {"R2": 2}}, [("T1", "DC1", "DC2", 10 * MB, 1 * MB, 0.05)])
    b = fluid_bound(topo, one_file(100 * MB))
    assert b.binding == "dc_cut:DC2"
    assert b.seconds == pytest.approx(100 / 10)  # the reverse direction does not lead into DC2
    assert b.terms["slowest_download:R1-s2"] == pytest.approx(100 / 100)
    assert b.terms["source_upload:R1-s1"] == pytest.approx(100 / 100)
    assert b.terms["total_upload"] == pytest.approx(3 * 100 / (4 * 100))


def test_cut_counts_relays_and_reverse_directions() -> None:
    # into DC2: T1 directly (10) and DC1->DC3->DC2 (min(20, 4) = 4 through T2's reverse direction);
    # T1's reverse direction leaves DC2, so it does not count
    topo = make_topology({"DC1": {"R1": 1}, "DC2": {"R2": 1}, "DC3": {"R3": 1}},
                         [("T1", "DC1", "DC2", 10 * MB, 1 * MB, 0.01), ("T3", "DC1", "DC3", 20 * MB, 1 * MB, 0.01),
                          ("T2", "DC2", "DC3", 8 * MB, 4 * MB, 0.01)])
    b = fluid_bound(topo, one_file(70 * MB))
    assert b.terms["dc_cut:DC2"] == pytest.approx(70 / (10 + 4))
    assert b.binding == "dc_cut:DC2"
    primary = fluid_bound(topo, one_file(70 * MB), primary_only=True)  # data only on primary directions
    assert primary.terms["dc_cut:DC2"] == pytest.approx(70 / 10)


def test_slow_source_uplink_binds() -> None:
    topo = make_topology({"DC1": {"R1": 3}}, [], slave_bw=10 * MB).with_capacity("slave/R1-s1/up", 1 * MB)
    b = fluid_bound(topo, one_file(20 * MB))
    assert b.binding == "source_upload:R1-s1"
    assert b.seconds == pytest.approx(20.0)


def test_only_final_versions_count_and_release_time_adds_to_what_is_left() -> None:
    topo = make_topology({"DC1": {"R1": 1}, "DC2": {"R2": 1}}, [("T1", "DC1", "DC2", 10 * MB, 1 * MB, 0.05)])
    sc = one_file(50 * MB, updates=(UpdatePlan(30.0, "f", 40 * MB),))
    b = fluid_bound(topo, sc)
    assert b.terms["dc_cut:DC2"] == pytest.approx(4.0)  # 40 MB, the superseded 50 MB need not move
    assert b.seconds == pytest.approx(30.0 + 4.0)
    assert b.binding.startswith("release:30s+")


def test_generation_rate_writes_files_one_after_the_other() -> None:
    sc = Scenario("t", {"news": FilesetPlan((FilePlan("a", 10 * MB), FilePlan("b", 20 * MB)), (), 5 * MB)})
    v = {x.file_id: x for x in file_versions(sc)}
    assert (v["a"].start, v["a"].ready) == pytest.approx((0.0, 2.0))
    assert (v["b"].start, v["b"].ready) == pytest.approx((2.0, 6.0))
    topo = make_topology({"DC1": {"R1": 2}}, [])
    assert fluid_bound(topo, sc).binding == "release:news/b@1 generated"


def test_needed_bytes_every_version_once_per_datacenter_without_a_generator() -> None:
    topo = make_topology({"DC1": {"R1": 2}, "DC2": {"R2": 3}, "DC3": {"R3": 1}},
                         [("T1", "DC1", "DC2", 10 * MB, 1 * MB, 0.05), ("T2", "DC1", "DC3", 10 * MB, 1 * MB, 0.05)])
    sc = one_file(5 * MB, updates=(UpdatePlan(1.0, "f", 7 * MB),))
    assert needed_bytes(topo, file_versions(sc)) == {"DC2": 12 * MB, "DC3": 12 * MB}


def test_scaling_topology_and_scenario_together_keeps_the_bound() -> None:
    topo = make_topology({"DC1": {"R1": 2}, "DC2": {"R2": 2}}, [("T1", "DC1", "DC2", 10 * MB, 1 * MB, 0.05)])
    sc = one_file(64 * MB)
    assert fluid_bound(topo.scaled(1 / 64), sc.scaled(1 / 64)).seconds == pytest.approx(
        fluid_bound(topo, sc).seconds, rel=1e-6)
