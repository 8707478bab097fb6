"""Epoch arithmetic and FIG. 9 allocation, alone and as the resource manager applies it."""

from __future__ import annotations

import pytest

from scaledist.core.epochs import OPEN, allocate, epoch_index, epoch_start, epoch_total
from scaledist.core.resource_manager import ResourceManager
from scaledist.messages import CopyRequest, Grant
from scaledist.topology import Priority
from tests.builders import MB, make_topology

P = {i: Priority(f"P{i}", i, float(i)) for i in range(1, 6)}


def one_rack(**kw: object):
    """Three slaves in one rack, slave links 500 MB/s, epoch 2 s: 1000 MB per link per epoch."""
    args: dict[str, object] = {
        "slave_bw": 500 * MB,
        "filesets": {"f1": "P1", "f2": "P2", "f3": "P3", "f4": "P4"},
        "block_size": 128 * MB,
    }
    args.update(kw)
    return make_topology({"DC1": {"R1": 3}}, [], **args)  # type: ignore[arg-type]


def req(tid: str, fileset: str, size: int, sources: tuple[str, ...] = ("R1-s1",), dst: str = "R1-s2") -> CopyRequest:
    return CopyRequest(tid, "M1", dst, sources, fileset, "file", 1, 0, size)


def pools(rm: ResourceManager, link: str) -> dict[str, dict[str, float]]:
    return rm.snapshot()["links"][link]["pools"]  # type: ignore[index,return-value]


# --- pure functions ------------------------------------------------------------


def test_epoch_index_and_start_agree_at_boundaries() -> None:
    assert epoch_index(0.0, 0.0, 2.0) == 0
    assert epoch_index(1.999, 0.0, 2.0) == 0
    assert epoch_index(2.0, 0.0, 2.0) == 1
    assert epoch_index(10.5, 10.0, 2.0) == 0
    assert epoch_start(3, 10.0, 2.0) == 16.0
    # float-unfriendly length: the index never disagrees with epoch_start
    for k in range(1, 200):
        now = k * 0.1
        i = epoch_index(now, 0.0, 0.1)
        assert epoch_start(i, 0.0, 0.1) <= now < epoch_start(i + 1, 0.0, 0.1)


def test_patent_split_2_of_5_of_1000mb() -> None:
    """§0150: P2 (weight 2) and P3 (weight 3) share 1000 MB as 400 MB and 600 MB."""
    assert allocate(1000 * MB, [P[2], P[3]]) == {"P2": 400 * MB, "P3": 600 * MB}


def test_no_flags_gives_one_open_pool() -> None:
    assert allocate(1000 * MB, []) == {OPEN: 1000 * MB}


def test_split_is_exact_in_integers() -> None:
    for total in (0, 1, 7, 999_999_999, 1000 * MB + 1):
        shares = allocate(total, [P[1], P[2], P[3], P[4], P[5]])
        assert sum(shares.values()) == total
        assert all(v >= 0 for v in shares.values())
    # 1/3 vs 2/3 of 10 bytes: 3.33 and 6.67 -> 3 and 7
    assert allocate(10, [P[1], P[2]]) == {"P1": 3, "P2": 7}


def test_zero_weights_split_equally() -> None:
    z = [Priority("A", 1, 0.0), Priority("B", 2, 0.0)]
    assert allocate(10, z) == {"A": 5, "B": 5}


def test_negative_total_rejected() -> None:
    with pytest.raises(ValueError):
        allocate(-1, [P[1]])


def test_epoch_total_is_capacity_times_length() -> None:
    assert epoch_total(500 * MB, 2.0) == 1000 * MB
    assert epoch_total(0.4, 2.0) == 0


# --- FIG. 9 inside the resource manager --------------------------------------


def test_rm_allocates_400_600_from_previous_epoch_flags() -> None:
    rm = ResourceManager(one_rack())
    assert isinstance(rm.request(0.0, req("a", "f2", 10 * MB)), Grant)
    rm.release(0.0, "a")
    assert isinstance(rm.request(0.0, req("b", "f3", 10 * MB)), Grant)
    rm.release(0.0, "b")
    before = rm.snapshot()["links"]["slave/R1-s1/up"]  # type: ignore[index]
    assert before["requested"] == ["P2", "P3"]
    assert list(before["pools"]) == [OPEN]
    rm.take_ledger()
    rm.tick(2.0)
    assert rm.epoch == 1
    for link in ("slave/R1-s1/up", "slave/R1-s2/down"):
        got = pools(rm, link)
        assert {k: v["allocated"] for k, v in got.items()} == {"P2": 400 * MB, "P3": 600 * MB}
        assert {k: v["remaining"] for k, v in got.items()} == {"P2": 400 * MB, "P3": 600 * MB}
        assert rm.snapshot()["links"][link]["past"] == ["P2", "P3"]  # type: ignore[index]
    alloc = [r for r in rm.take_ledger() if r.kind == "allocate"]
    assert sorted((r.link, r.priority, r.bytes, r.epoch, r.t) for r in alloc) == [
        ("slave/R1-s1/up", "P2", 400 * MB, 1, 2.0),
        ("slave/R1-s1/up", "P3", 600 * MB, 1, 2.0),
        ("slave/R1-s2/down", "P2", 400 * MB, 1, 2.0),
        ("slave/R1-s2/down", "P3", 600 * MB, 1, 2.0),
    ]


def test_idle_epoch_returns_link_to_open_pool() -> None:
    """Flags of epoch 0 shape epoch 1; an epoch with no request leaves epoch 2 open again."""
    rm = ResourceManager(one_rack())
    rm.request(0.0, req("a", "f2", 10 * MB))
    rm.release(0.0, "a")
    rm.tick(2.0)
    assert list(pools(rm, "slave/R1-s1/up")) == ["P2"]
    assert pools(rm, "slave/R1-s1/up")["P2"]["allocated"] == 1000 * MB  # the only flagged priority gets it all
    rm.tick(4.0)
    assert "slave/R1-s1/up" not in rm.snapshot()["links"]  # type: ignore[operator]
    g = rm.request(4.5, req("b", "f1", 10 * MB))  # P1 would have no pool under a P2-only table
    assert isinstance(g, Grant) and g.epoch == 2
    assert list(pools(rm, "slave/R1-s1/up")) == [OPEN]
    assert rm.snapshot()["links"]["slave/R1-s1/up"]["past"] == []  # type: ignore[index]


def test_skipped_epochs_give_open_pool_without_flags() -> None:
    rm = ResourceManager(one_rack())
    rm.request(0.0, req("a", "f2", 10 * MB))
    rm.release(0.0, "a")
    rm.take_ledger()
    g = rm.request(20.0, req("b", "f1", 10 * MB))
    assert isinstance(g, Grant) and g.epoch == 10
    assert list(pools(rm, "slave/R1-s1/up")) == [OPEN]
    # only epoch 1 saw a non-empty past table, so only it wrote allocate records
    assert {r.epoch for r in rm.take_ledger() if r.kind == "allocate"} == {1}


def test_first_request_on_idle_link_uses_open_pool() -> None:
    rm = ResourceManager(one_rack())
    g = rm.request(0.0, req("a", "f1", 100 * MB))
    assert isinstance(g, Grant)
    assert g.priority == "P1"
    p = pools(rm, "slave/R1-s1/up")
    assert p == {OPEN: {"allocated": 1000 * MB, "remaining": 900 * MB, "rate_in_use": 500 * MB}}
    recs = [r for r in rm.take_ledger() if r.kind == "grant"]
    assert {r.priority for r in recs} == {OPEN}


def test_epoch_start_offset() -> None:
    rm = ResourceManager(one_rack(), start=100.0, epoch=5.0)
    assert rm.epoch_length == 5.0
    g = rm.request(112.0, req("a", "f2", 10 * MB))
    assert isinstance(g, Grant) and g.epoch == 2


def test_bad_epoch_length_rejected() -> None:
    with pytest.raises(ValueError):
        ResourceManager(one_rack(), epoch=0.0)
    with pytest.raises(ValueError):
        ResourceManager(one_rack(), min_rate_fraction=1.5)
