"""Paths over the shipped FIG. 1 topology: the links a copy crosses are the levels it must cross (§0041-0042)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaledist.topology import Topology
from scaledist.topology_schema import load_topology

ROOT = Path(__file__).resolve().parent.parent
MB = 10**6


@pytest.fixture(scope="module")
def fig1() -> Topology:
    return load_topology(ROOT / "topologies" / "patent-fig1.yaml")


@pytest.fixture(scope="module")
def small() -> Topology:
    return load_topology(ROOT / "topologies" / "small.yaml")


def test_dc1_to_dc4_takes_the_lower_latency_trunks(fig1: Topology) -> None:
    # T1 + T3E = 100 + 15 ms beats T2N + T3W = 100 + 45 ms (FIG. 5C)
    assert fig1.path("Slave1", "Slave452") == (
        "slave/Slave1/up",
        "rack/R1/up",
        "dc/DC1/up",
        "trunk/T1",
        "trunk/T3E",
        "dc/DC4/down",
        "rack/R139/down",
        "slave/Slave452/down",
    )
    assert fig1.trunk_path("DC1", "DC4") == ("T1", "T3E")
    assert fig1.latency("Slave1", "Slave452") == pytest.approx(0.115)
    other = fig1.trunks["T2N"].latency + fig1.trunks["T3W"].latency
    assert other == pytest.approx(0.145) and other > fig1.latency("Slave1", "Slave452")
    assert all(link in fig1.links for link in fig1.path("Slave1", "Slave452") or ())
    assert fig1.bottleneck("Slave1", "Slave452") == 25 * MB  # T1


def test_same_rack_is_two_links(fig1: Topology) -> None:
    assert fig1.path("Slave1", "Slave2") == ("slave/Slave1/up", "slave/Slave2/down")
    assert fig1.latency("Slave1", "Slave2") == 0.0


def test_same_datacenter_other_rack_is_four_links(fig1: Topology) -> None:
    assert fig1.path("Slave1", "Slave17") == ("slave/Slave1/up", "rack/R1/up", "rack/R2/down", "slave/Slave17/down")


def test_trunks_are_one_way(fig1: Topology) -> None:
    # no trunk leaves DC4 in FIG. 5C
    assert fig1.trunk_path("DC4", "DC1") is None
    assert fig1.path("Slave452", "Slave1") is None
    assert fig1.distance("Slave452", "Slave1") is None
    assert fig1.bottleneck("Slave452", "Slave1") == 0.0
    assert fig1.resources_of_path("Slave452", "Slave1") == ()
    # DC2 reaches DC1 only through DC3: T4 then T2S (35 + 50 ms)
    assert fig1.trunk_path("DC2", "DC1") == ("T4", "T2S")
    assert fig1.latency("Slave134", "Slave1") == pytest.approx(0.085)


def test_distance_grows_with_the_levels_crossed(fig1: Topology) -> None:
    same_rack = fig1.distance("Slave1", "Slave2")
    same_dc = fig1.distance("Slave1", "Slave17")
    other_dc = fig1.distance("Slave1", "Slave134")
    assert same_rack is not None and same_dc is not None and other_dc is not None
    assert same_rack < same_dc < other_dc
    # farther datacenter (more trunk latency) is farther still
    far = fig1.distance("Slave1", "Slave452")
    assert far is not None and far > other_dc


def test_resources_of_path(fig1: Topology) -> None:
    assert fig1.resources_of_path("Slave1", "Slave452") == (
        "Slave1", "R1", "DC1", "T1", "T3E", "DC4", "R139", "Slave452",
    )  # fmt: skip
    assert fig1.resources_of_path("Slave1", "Slave2") == ("Slave1", "Slave2")
    assert fig1.resources_of_path("Slave35", "Slave135") == ("Slave35", "R34", "R35", "Slave135")


def test_small_prefers_the_two_hop_route(small: Topology) -> None:
    # DC1 -> DC3: T1 + T3 = 15 ms beats the direct T2 at 20 ms
    assert small.trunk_path("DC1", "DC3") == ("T1", "T3")
    assert small.trunk_path("DC2", "DC1") == ("T4",)
    assert small.trunk_path("DC3", "DC1") is None
    path = small.path("dc1-r1-s1", "dc3-r4-s2")
    assert path is not None and len(path) == 8
    assert small.bottleneck("dc1-r1-s1", "dc3-r4-s2") == 20 * MB
