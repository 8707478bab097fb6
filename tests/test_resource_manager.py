"""The patent's worked examples (§0139-0142, §0150-0152) replayed against the resource manager core."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from scaledist.core.epochs import OPEN
from scaledist.core.ledger import LedgerRecord, encode_jsonl, read_ledger, reserved_bytes
from scaledist.core.resource_manager import MAX_REASON, ResourceManager
from scaledist.messages import CopyRequest, Denial, Grant
from scaledist.topology import Topology
from tests.builders import MB, make_topology, patent_fig1

S1UP, S2DOWN, S3UP = "slave/R1-s1/up", "slave/R1-s2/down", "slave/R1-s3/up"


def one_rack(n: int = 4) -> Topology:
    """Slaves R1-s1..n in one rack; slave links 500 MB/s, epoch 2 s -> 1000 MB per link per epoch."""
    return make_topology(
        {"DC1": {"R1": n}},
        [],
        slave_bw=500 * MB,
        filesets={"f1": "P1", "f2": "P2", "f3": "P3", "f4": "P4"},
        block_size=128 * MB,
    )


_ids = itertools.count()


def req(
    fileset: str, size: int, sources: tuple[str, ...] = ("R1-s1",), dst: str = "R1-s2", tid: str = ""
) -> CopyRequest:
    return CopyRequest(tid or f"t{next(_ids)}", "M1", dst, sources, fileset, "file", 1, 0, size)


def grant(rm: ResourceManager, now: float, r: CopyRequest, release: bool = False) -> Grant:
    g = rm.request(now, r)
    assert isinstance(g, Grant), g
    if release:
        assert rm.release(now, r.transfer_id)
    return g


def flag(rm: ResourceManager, now: float, src: str, dst: str, *filesets: str) -> None:
    """Request (and release) 1 MB per fileset so those priorities are flagged on the path this epoch."""
    for fs in filesets:
        d = rm.request(now, req(fs, 1 * MB, (src,), dst))
        if isinstance(d, Grant):
            rm.release(now, d.transfer_id)


def pool(rm: ResourceManager, link: str, name: str) -> dict[str, float]:
    return rm.snapshot()["links"][link]["pools"][name]  # type: ignore[index]


def link(rm: ResourceManager, link_id: str) -> dict[str, object]:
    return rm.snapshot()["links"][link_id]  # type: ignore[index]


def p2_p3_epoch(n: int = 4) -> ResourceManager:
    """An RM in epoch 1 (t = 2 s) whose s1 -> s2 links have P2 = 400 MB and P3 = 600 MB (§0150)."""
    rm = ResourceManager(one_rack(n))
    flag(rm, 0.0, "R1-s1", "R1-s2", "f2", "f3")
    rm.tick(2.0)
    assert pool(rm, S1UP, "P2")["allocated"] == 400 * MB
    rm.take_ledger()
    return rm


# --- §0151: five 90 MB P2 requests against 400 MB --------------------------------


def test_fifth_90mb_request_denied_for_bytes() -> None:
    rm = p2_p3_epoch()
    for _ in range(4):
        g = grant(rm, 2.0, req("f2", 90 * MB), release=True)  # released: rate is not what limits
        assert g.priority == "P2"
    assert pool(rm, S1UP, "P2")["remaining"] == 40 * MB
    assert pool(rm, S2DOWN, "P2")["remaining"] == 40 * MB
    d = rm.request(2.0, req("f2", 90 * MB))
    assert isinstance(d, Denial)
    assert "bytes" in d.reason and f"{40 * MB} B left, needs {90 * MB}" in d.reason
    assert pool(rm, S1UP, "P2")["remaining"] == 40 * MB
    assert pool(rm, S1UP, "P3")["remaining"] == 600 * MB  # P2 never borrows from P3


# --- §0140: 54 MB from 300 MB leaves 246 MB ---------------------------------------


def test_54mb_from_300mb_leaves_246mb_on_every_link() -> None:
    rm = p2_p3_epoch()
    grant(rm, 2.0, req("f2", 50 * MB), release=True)
    grant(rm, 2.0, req("f2", 50 * MB), release=True)
    assert pool(rm, S1UP, "P2")["remaining"] == 300 * MB
    grant(rm, 2.0, req("f2", 54 * MB), release=True)
    assert pool(rm, S1UP, "P2")["remaining"] == 246 * MB
    assert pool(rm, S2DOWN, "P2")["remaining"] == 246 * MB


# --- §0139: 32 MB left < 54 MB needed -> next source, then fail --------------------


def test_insufficient_bytes_tries_next_source_then_fails() -> None:
    rm = ResourceManager(one_rack())
    flag(rm, 0.0, "R1-s1", "R1-s2", "f2", "f3")
    flag(rm, 0.0, "R1-s3", "R1-s2", "f2", "f3")
    rm.tick(2.0)
    for size in (100, 100, 100, 68):  # leave 32 MB of P2 on s1's uplink
        grant(rm, 2.0, req("f2", size * MB, ("R1-s1",), "R1-s4"), release=True)
    assert pool(rm, S1UP, "P2")["remaining"] == 32 * MB
    g = grant(rm, 2.0, req("f2", 54 * MB, ("R1-s1", "R1-s3")), release=True)
    assert g.source == "R1-s3"
    assert pool(rm, S1UP, "P2")["remaining"] == 32 * MB  # the failed source reserved nothing
    assert pool(rm, S3UP, "P2")["remaining"] == 346 * MB
    assert pool(rm, S2DOWN, "P2")["remaining"] == 346 * MB
    for size in (100, 100, 100, 14):
        grant(rm, 2.0, req("f2", size * MB, ("R1-s3",), "R1-s4"), release=True)
    assert pool(rm, S3UP, "P2")["remaining"] == 32 * MB
    rm.take_ledger()
    d = rm.request(2.0, req("f2", 54 * MB, ("R1-s1", "R1-s3")))
    assert isinstance(d, Denial)
    parts = d.reason.split("; ")
    assert [p.split(":")[0] for p in parts] == ["R1-s1", "R1-s3"]
    assert all(f"{32 * MB} B left, needs {54 * MB}" in p for p in parts)
    (rec,) = rm.take_ledger()
    assert (rec.kind, rec.link, rec.source, rec.granted, rec.priority) == ("deny", S3UP, "R1-s3", False, "P2")
    assert rec.reason == d.reason


# --- §0152: a late 64 MB request, 20 MB now, 44 MB at the next epoch start ----------


def late_request(rm: ResourceManager) -> Grant:
    grant(rm, 3.0, req("f3", 10 * MB), release=True)  # P3 flagged in epoch 1 too
    g = grant(rm, 3.9, req("f2", 64 * MB, tid="late"))
    assert g.rate == 200 * MB  # the P2 pool's 400 MB / 2 s
    return g


def test_late_request_carries_44mb_into_next_epoch() -> None:
    rm = p2_p3_epoch()
    late_request(rm)
    grants = [r for r in rm.take_ledger() if r.kind == "grant" and r.transfer_id == "late"]
    assert [(r.link, r.bytes, r.priority) for r in grants] == [(S1UP, 20 * MB, "P2"), (S2DOWN, 20 * MB, "P2")]
    rm.tick(4.0)
    for lid in (S1UP, S2DOWN):
        p2 = pool(rm, lid, "P2")
        assert p2["allocated"] == 400 * MB
        assert p2["remaining"] == 356 * MB
        assert p2["rate_in_use"] == 200 * MB
    carries = [r for r in rm.take_ledger() if r.kind == "carry"]
    assert [(r.link, r.bytes, r.epoch, r.t, r.reason) for r in carries] == [
        (S1UP, 44 * MB, 2, 4.0, ""),
        (S2DOWN, 44 * MB, 2, 4.0, ""),
    ]
    rm.tick(6.0)  # nothing left to carry
    assert not [r for r in rm.take_ledger() if r.kind == "carry"]
    assert rm.release(6.0, "late")
    assert link(rm, S1UP)["rate_in_use"] == 0.0


def test_release_stops_future_carries() -> None:
    rm = p2_p3_epoch()
    late_request(rm)
    assert rm.release(3.95, "late")
    rm.tick(4.0)
    assert pool(rm, S1UP, "P2")["remaining"] == 400 * MB
    assert not [r for r in rm.take_ledger() if r.kind == "carry"]
    assert rm.release(4.0, "late") is False  # already gone: ignored


def test_carry_after_a_capacity_cut_below_the_running_rate_is_clamped() -> None:
    rm = ResourceManager(one_rack())
    g = grant(rm, 1.9, req("f2", 128 * MB))
    assert g.rate == 500 * MB  # open pool: the whole link
    rm.set_capacity(1.95, S1UP, 10 * MB)  # next epoch: 20 MB on s1's uplink
    rm.take_ledger()
    rm.tick(2.0)
    carries = [r for r in rm.take_ledger() if r.kind == "carry"]
    up = [r for r in carries if r.link == S1UP]
    assert sum(r.bytes for r in up) == 20 * MB  # never beyond capacity x epoch
    assert any(r.reason == f"clamped: {58 * MB} B found no room on the link" for r in up)
    down = [r for r in carries if r.link == S2DOWN]
    assert [(r.bytes, r.reason) for r in down] == [(78 * MB, "")]
    assert pool(rm, S1UP, "P2")["remaining"] == 0


def test_a_carry_larger_than_its_pool_spills_into_the_other_pools() -> None:
    """A running P1 copy keeps its 500 MB/s into an epoch where P1 was allotted only 1/5 of the link:
    the ledger must reserve every byte it will send, taking the rest from the other pools."""
    t = make_topology({"DC1": {"R1": 4}}, [], slave_bw=500 * MB, filesets={"f1": "P1", "f4": "P4"},
                      block_size=2000 * MB)
    rm = ResourceManager(t)
    g = grant(rm, 1.0, req("f1", 2000 * MB))
    assert g.rate == 500 * MB
    flag(rm, 1.5, "R1-s1", "R1-s2", "f4")  # denied (no rate left) but flags P4 on the same links
    rm.take_ledger()
    rm.tick(2.0)
    up = [r for r in rm.take_ledger() if r.kind == "carry" and r.link == S1UP]
    assert sum(r.bytes for r in up) == 1000 * MB  # 500 MB/s x 2 s: all of it reserved
    assert [(r.priority, r.bytes) for r in up] == [("P1", 200 * MB), ("P4", 800 * MB)]
    assert up[1].reason == "spilled from P1"
    assert pool(rm, S1UP, "P1")["remaining"] == 0 and pool(rm, S1UP, "P4")["remaining"] == 0


# --- §0141 / §0142: downgrade, never upgrade ----------------------------------------


def test_p4_downgraded_to_p3_when_p3_is_highest_allocated() -> None:
    rm = ResourceManager(one_rack())
    flag(rm, 0.0, "R1-s1", "R1-s2", "f1", "f2", "f3")
    rm.tick(2.0)
    rm.take_ledger()
    g = grant(rm, 2.0, req("f4", 64 * MB))
    assert g.priority == "P4"  # the request's priority; the pool is in the ledger
    recs = [r for r in rm.take_ledger() if r.kind == "grant"]
    assert [(r.link, r.priority) for r in recs] == [(S1UP, "P3"), (S2DOWN, "P3")]
    assert pool(rm, S1UP, "P3")["remaining"] == 500 * MB - 64 * MB  # weights 1:2:3 of 1000 MB
    assert pool(rm, S1UP, "P2")["remaining"] == pool(rm, S1UP, "P2")["allocated"]


def test_p4_on_next_source_uses_its_own_pool() -> None:
    rm = ResourceManager(one_rack())
    flag(rm, 0.0, "R1-s1", "R1-s2", "f1", "f3")  # link A (s1 up): P1, P3
    flag(rm, 0.0, "R1-s3", "R1-s2", "f4")  # link B (s3 up): P4
    rm.set_capacity(0.0, S1UP, 50 * MB)  # epoch 1: 100 MB on link A -> P1 25 MB, P3 75 MB
    rm.tick(2.0)
    assert pool(rm, S1UP, "P3")["allocated"] == 75 * MB
    grant(rm, 2.0, req("f3", 30 * MB, ("R1-s1",), "R1-s4"), release=True)
    rm.take_ledger()
    g = grant(rm, 2.0, req("f4", 64 * MB, ("R1-s1", "R1-s3")))
    assert g.source == "R1-s3" and g.priority == "P4"
    recs = [r for r in rm.take_ledger() if r.kind == "grant"]
    assert [(r.link, r.priority) for r in recs] == [(S3UP, "P4"), ("slave/R1-s2/down", "P4")]
    assert pool(rm, S1UP, "P3")["remaining"] == 45 * MB  # tried (downgraded to P3), not enough, untouched
    assert "P4" in link(rm, S1UP)["requested"]  # type: ignore[operator]


def test_p1_never_upgraded() -> None:
    rm = p2_p3_epoch()
    d = rm.request(2.0, req("f1", 10 * MB))
    assert isinstance(d, Denial)
    assert "no pool" in d.reason and "never upgraded" in d.reason
    assert pool(rm, S1UP, "P2")["remaining"] == 400 * MB
    assert pool(rm, S1UP, "P3")["remaining"] == 600 * MB
    (rec,) = rm.take_ledger()
    assert (rec.kind, rec.link, rec.priority, rec.bytes) == ("deny", S1UP, "P1", 10 * MB)


def test_fileset_file_gets_fileset_file_priority() -> None:
    rm = ResourceManager(one_rack())
    r = CopyRequest("ff", "M1", "R1-s2", ("R1-s1",), "f1", "FILESET", 1, 0, MB, fileset_file=True)
    g = grant(rm, 0.0, r)
    assert g.priority == "P5"


# --- flags (§0140, §0153) ---------------------------------------------------------


def test_denied_requests_flag_every_link_of_every_evaluated_path() -> None:
    rm = ResourceManager(one_rack())
    flag(rm, 0.0, "R1-s1", "R1-s2", "f2")
    rm.tick(2.0)  # s1 up and s2 down: P2 only
    d = rm.request(2.0, req("f1", 10 * MB, ("R1-s1", "R1-s3")))
    # s1 fails at its first link (no pool); s3's path has open pools but s2 down has only P2
    assert isinstance(d, Denial)
    for lid in (S1UP, S2DOWN, S3UP):
        assert "P1" in link(rm, lid)["requested"]  # type: ignore[operator]
    rm.tick(4.0)
    assert link(rm, S1UP)["past"] == ["P1"]
    assert link(rm, S2DOWN)["past"] == ["P1"]
    assert link(rm, S3UP)["past"] == ["P1"]
    assert list(link(rm, S1UP)["pools"]) == ["P1"]  # type: ignore[arg-type]


def test_rate_denial_flags_too() -> None:
    rm = ResourceManager(one_rack())
    grant(rm, 0.0, req("f2", 10 * MB))  # holds the whole open-pool rate
    d = rm.request(0.0, req("f3", 10 * MB))
    assert isinstance(d, Denial) and "rate" in d.reason
    assert link(rm, S1UP)["requested"] == ["P2", "P3"]


# --- rate -----------------------------------------------------------------------------


def test_min_rate_fraction_of_the_pool() -> None:
    rm = p2_p3_epoch()
    g3 = grant(rm, 2.0, req("f3", 10 * MB))
    assert g3.rate == 300 * MB  # P3's 600 MB / 2 s
    rm.set_capacity(2.0, S1UP, 340 * MB)  # 40 MB/s free < 0.25 x 200 MB/s
    d = rm.request(2.0, req("f2", 10 * MB))
    assert isinstance(d, Denial) and f"{S1UP} has 40000000 B/s free for P2, needs >= 50000000" in d.reason
    rm.set_capacity(2.0, S1UP, 360 * MB)  # 60 MB/s free >= 50 MB/s
    g2 = grant(rm, 2.0, req("f2", 10 * MB))
    assert g2.rate == pytest.approx(60 * MB)
    assert link(rm, S1UP)["rate_in_use"] == pytest.approx(360 * MB)


def test_concurrent_requests_share_pool_rate() -> None:
    rm = p2_p3_epoch()
    grant(rm, 2.0, req("f2", 10 * MB))  # 200 MB/s: all of P2's rate
    d = rm.request(2.0, req("f2", 10 * MB))
    assert isinstance(d, Denial) and "rate" in d.reason
    g = grant(rm, 2.0, req("f3", 10 * MB))
    assert g.rate == 300 * MB


# --- paths ------------------------------------------------------------------------------


def test_multi_link_path_reserves_on_every_link() -> None:
    topo = patent_fig1()
    rm = ResourceManager(topo)
    g = grant(rm, 0.0, req("news", 64 * MB, ("R11-s1",), "R21-s1"))
    path = (
        "slave/R11-s1/up", "rack/R11/up", "dc/DC1/up", "trunk/T1", "dc/DC2/down", "rack/R21/down", "slave/R21-s1/down",
    )
    assert g.path == path
    assert g.rate == 25 * MB  # the trunk is the bottleneck
    assert g.window == int(2 * 25 * MB * 0.2)  # RTT = 2 x 100 ms
    assert g.expires_at == pytest.approx(3 * 64 / 25 + 2 * 2.0)
    recs = [r for r in rm.take_ledger() if r.kind == "grant"]
    assert [(r.link, r.bytes, r.priority) for r in recs] == [(lid, 50 * MB, OPEN) for lid in path]
    snap = rm.snapshot()["links"]
    for lid in path:
        cap = topo.links[lid].capacity
        assert snap[lid]["rate_in_use"] == 25 * MB  # type: ignore[index]
        assert snap[lid]["pools"][OPEN]["remaining"] == int(cap * 2) - 50 * MB  # type: ignore[index]
    rm.tick(2.0)
    carries = [r for r in rm.take_ledger() if r.kind == "carry"]
    assert [(r.link, r.bytes, r.priority) for r in carries] == [(lid, 14 * MB, "P3") for lid in path]
    assert set(reserved_bytes(recs + carries)) == {(0, lid) for lid in path} | {(1, lid) for lid in path}


def test_source_without_primary_path_is_skipped() -> None:
    rm = ResourceManager(patent_fig1())  # DC4 has no outgoing trunk
    g = grant(rm, 0.0, req("news", 10 * MB, ("R41-s1", "R12-s1"), "R11-s1"))
    assert g.source == "R12-s1"
    assert "slave/R41-s1/up" not in rm.snapshot()["links"]  # type: ignore[operator]
    rm.take_ledger()
    d = rm.request(0.0, req("news", 10 * MB, ("R41-s1", "R42-s2"), "R11-s1"))
    assert isinstance(d, Denial)
    assert d.reason == "R41-s1: no primary-direction path; R42-s2: no primary-direction path"
    (rec,) = rm.take_ledger()
    assert rec.kind == "deny" and rec.link is None


def test_source_equal_to_destination_fails_that_source() -> None:
    rm = ResourceManager(one_rack())
    g = grant(rm, 0.0, req("f2", MB, ("R1-s2", "R1-s1")))
    assert g.source == "R1-s1"


def test_window_bounds() -> None:
    rm = ResourceManager(one_rack())
    assert grant(rm, 0.0, req("f2", MB)).window == 65536  # no latency inside a rack
    big = make_topology(
        {"DC1": {"R1": 1}, "DC2": {"R2": 1}},
        [("T1", "DC1", "DC2", 10_000 * MB, 1 * MB, 0.1)],
        slave_bw=10_000 * MB, rack_bw=10_000 * MB, dc_bw=10_000 * MB,
    )
    rm2 = ResourceManager(big)
    assert grant(rm2, 0.0, req("news", MB, ("R1-s1",), "R2-s1")).window == 64 * 2**20


def test_denial_reason_is_bounded() -> None:
    rm = ResourceManager(patent_fig1())
    d = rm.request(0.0, req("news", MB, ("R41-s1",) * 64, "R11-s1"))
    assert isinstance(d, Denial)
    assert len(d.reason) == MAX_REASON and d.reason.endswith("...") and "\n" not in d.reason


# --- capacity, expiry, release --------------------------------------------------------


def test_set_capacity_now_for_rate_next_epoch_for_pools() -> None:
    rm = ResourceManager(one_rack())
    grant(rm, 0.0, req("f2", 10 * MB), release=True)
    before = rm.snapshot()
    for bad_link, bad_bw in (("slave/nope/up", 1.0), (S1UP, 0.0), (S1UP, -5.0), (S1UP, float("nan"))):
        with pytest.raises(ValueError):
            rm.set_capacity(0.5, bad_link, bad_bw)
    assert rm.snapshot() == before
    rm.set_capacity(0.5, S1UP, 100 * MB)
    assert pool(rm, S1UP, OPEN)["allocated"] == 1000 * MB  # this epoch's pools stand
    g = grant(rm, 0.5, req("f2", 10 * MB), release=True)
    assert g.rate == 100 * MB  # but the rate check sees it at once
    rm.tick(2.0)
    assert pool(rm, S1UP, "P2")["allocated"] == 200 * MB
    assert link(rm, S1UP)["capacity"] == 100 * MB
    rm.tick(10.0)  # idle: still shown, with its adjusted capacity
    assert link(rm, S1UP)["pools"] == {OPEN: {"allocated": 200 * MB, "remaining": 200 * MB, "rate_in_use": 0.0}}


def test_unreleased_grant_expires() -> None:
    rm = ResourceManager(one_rack())
    g = grant(rm, 0.0, req("f2", 64 * MB, tid="x"))
    assert g.expires_at == pytest.approx(3 * 64 / 500 + 4.0)
    rm.tick(g.expires_at - 0.01)
    assert rm.active_transfers == 1
    rm.take_ledger()
    rm.request(g.expires_at, req("f2", MB, ("R1-s3",), "R1-s4"))  # any call lets it lapse
    assert rm.active_transfers == 1  # only the new one
    exp = [r for r in rm.take_ledger() if r.kind == "expire"]
    assert len(exp) == 1 and exp[0].transfer_id == "x" and exp[0].t == g.expires_at and exp[0].reason == "lapsed"
    assert exp[0].epoch == 2
    assert link(rm, S1UP)["rate_in_use"] == 0.0
    assert rm.release(g.expires_at, "x") is False


def test_release_frees_rate_and_records() -> None:
    rm = ResourceManager(one_rack())
    grant(rm, 0.0, req("f2", 10 * MB, tid="a"))
    assert link(rm, S1UP)["rate_in_use"] == 500 * MB
    rm.take_ledger()
    assert rm.release(0.1, "a", ok=False)
    assert link(rm, S1UP)["rate_in_use"] == 0.0
    assert pool(rm, S1UP, OPEN)["remaining"] == 990 * MB  # reserved bytes stay reserved
    (rec,) = rm.take_ledger()
    assert (rec.kind, rec.granted, rec.reason, rec.bytes) == ("release", False, "failed", 10 * MB)
    assert rm.release(0.1, "a") is False
    grant(rm, 0.2, req("f2", 10 * MB, tid="a"))  # the id may be reused once released


# --- invalid requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"fileset": "nope"}, "unknown fileset"),
        ({"destination": "nope"}, "unknown destination"),
        ({"sources": ("R1-s1", "ghost")}, "unknown source"),
        ({"sources": ()}, "no sources"),
        ({"sources": ("R1-s1",) * 65}, "65 sources"),
        ({"size": 0}, "size 0"),
        ({"size": -1}, "size -1"),
        ({"size": 128 * MB + 1}, "size"),
        ({"transfer_id": "busy"}, "already active"),
        ({"transfer_id": ""}, "empty transfer_id"),
    ],
)
def test_invalid_requests_change_nothing(change: dict[str, object], expect: str) -> None:
    rm = p2_p3_epoch()
    grant(rm, 2.0, req("f3", 10 * MB, ("R1-s3",), "R1-s4", tid="busy"))
    rm.tick(2.5)
    before = rm.snapshot()
    rm.take_ledger()
    fields = {
        "transfer_id": "new", "master": "M1", "destination": "R1-s2", "sources": ("R1-s1",),
        "fileset": "f2", "file_id": "file", "version": 1, "block": 0, "size": 10 * MB,
    }
    fields.update(change)
    d = rm.request(2.5, CopyRequest(**fields))  # type: ignore[arg-type]
    assert isinstance(d, Denial)
    assert d.reason.startswith("invalid request") and expect in d.reason
    assert rm.snapshot() == before
    assert rm.take_ledger() == []


# --- ledger -----------------------------------------------------------------------------


def test_ledger_round_trip_tolerates_torn_last_line(tmp_path: Path) -> None:
    rm = p2_p3_epoch()
    late_request(rm)
    rm.tick(4.0)
    recs = rm.take_ledger()
    assert {r.kind for r in recs} >= {"grant", "carry", "allocate", "release"}
    f = tmp_path / "ledger.jsonl"
    data = encode_jsonl(recs)
    f.write_bytes(data)
    assert read_ledger(f) == recs
    f.write_bytes(data + data.splitlines(keepends=True)[0][:40])  # killed mid-write
    assert read_ledger(f) == recs
    lines = data.splitlines(keepends=True)
    f.write_bytes(lines[0] + b"{garbage\n" + b"".join(lines[1:]))
    with pytest.raises(ValueError, match="line 2"):
        read_ledger(f)


def test_reserved_bytes_sums_grant_and_carry_only() -> None:
    def rec(kind: str, epoch: int, link_id: str | None, n: int) -> LedgerRecord:
        return LedgerRecord(kind, epoch, 0.0, link_id, "P2", n, 0.0, "t", "a", "b", "fs", "f", 0, True)  # type: ignore[arg-type]

    recs = [
        rec("grant", 1, "L", 10), rec("carry", 1, "L", 5), rec("grant", 2, "L", 7),
        rec("allocate", 1, "L", 1000), rec("deny", 1, "L", 99), rec("release", 1, None, 3),
    ]
    assert reserved_bytes(recs) == {(1, "L"): 15, (2, "L"): 7}


def test_every_granted_path_is_the_topology_path() -> None:
    """The RM reuses path() per rack pair; it must still reserve exactly the path the packets take."""
    topo = patent_fig1()
    for src in topo.slaves:
        for dst in topo.slaves:
            out = ResourceManager(topo).request(0.0, req("news", MB, (src,), dst))
            expected = topo.path(src, dst)
            if expected is None:
                assert isinstance(out, Denial)
            else:
                assert isinstance(out, Grant) and out.path == expected
                assert out.window == max(65536, int(2 * out.rate * 2 * topo.latency(src, dst)))


def test_running_transfer_without_a_pool_is_charged_to_the_lowest() -> None:
    """A P1 copy still carrying into an epoch that allocates only P3 keeps running, charged to P3."""
    rm = ResourceManager(one_rack())
    flag(rm, 0.0, "R1-s1", "R1-s2", "f1")
    rm.set_capacity(0.0, S1UP, 10 * MB)  # epoch 1: P1 gets all 20 MB, 10 MB/s
    rm.tick(2.0)
    g = grant(rm, 3.9, req("f1", 64 * MB, tid="slow"))
    assert g.rate == 10 * MB
    rm.tick(4.0)  # epoch 2: carries 20 MB from P1
    flag(rm, 4.0, "R1-s1", "R1-s2", "f3")  # only P3 is requested in epoch 2
    rm.take_ledger()
    rm.tick(6.0)
    carries = [r for r in rm.take_ledger() if r.kind == "carry" and r.link == S1UP]
    assert [(r.priority, r.bytes, r.epoch) for r in carries] == [("P3", 20 * MB, 3)]
    assert list(link(rm, S1UP)["pools"]) == ["P3"]  # type: ignore[arg-type]
    assert pool(rm, S1UP, "P3")["rate_in_use"] == 10 * MB
    assert rm.release(6.0, "slow")
    assert pool(rm, S1UP, "P3")["rate_in_use"] == 0.0


# --- when to ask again -------------------------------------------------------------------


def test_denial_for_bytes_says_retry_at_the_next_epoch_start() -> None:
    rm = p2_p3_epoch()  # epoch 2 s, this one [2, 4)
    for _ in range(4):
        grant(rm, 2.0, req("f2", 90 * MB), release=True)
    d = rm.request(3.0, req("f2", 90 * MB))
    assert isinstance(d, Denial) and "bytes" in d.reason
    assert d.retry_in == pytest.approx(1.0)


def test_denial_for_rate_says_retry_when_the_running_transfer_should_end() -> None:
    rm = p2_p3_epoch()
    g = grant(rm, 2.0, req("f2", 20 * MB))  # all of P2's 200 MB/s: 20 MB ends 0.1 s later
    assert g.rate == 200 * MB
    d = rm.request(2.02, req("f2", 10 * MB))
    assert isinstance(d, Denial) and "rate" in d.reason
    assert d.retry_in == pytest.approx(0.08, abs=1e-6)
    assert rm.release(2.05, g.transfer_id)
    assert isinstance(rm.request(2.05, req("f2", 10 * MB)), Grant)  # released early: room at once


def test_a_late_transfer_sets_the_floor_not_a_storm() -> None:
    rm = p2_p3_epoch()
    grant(rm, 2.0, req("f2", 20 * MB))
    d = rm.request(3.5, req("f2", 10 * MB))  # it should have ended at 2.1 s and has not been released
    assert isinstance(d, Denial) and d.retry_in == pytest.approx(0.05)
