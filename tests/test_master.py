"""The master core driven by slave reports and resource-manager decisions (FIG. 6, 7A; §0086-0093, §0154-0155)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from msgspec import structs

from scaledist.core.health import HealthConfig
from scaledist.core.master import Master, MasterConfig
from scaledist.messages import CopyInstruction, CopyRequest, Denial, FileState, Grant, SlaveReport, TransferResult
from scaledist.topology import MasterSpec, Slave, Topology
from tests.builders import make_topology, patent_fig1

BS = 1000
FS = "news"


def topo(**kw) -> Topology:
    """DC1 {R1: 2, R2: 2}, DC2 {R3: 2}, trunk T1 DC1 -> DC2 only."""
    return make_topology(block_size=BS, **kw)


def row(fid: str, version: int = 1, size: int = 0, complete: bool = False, **kw) -> FileState:
    return FileState(fid, version, size, complete, **kw)


def fsfile(version: int, size: int = 500, complete: bool = True) -> FileState:
    return FileState("FileSet", version, size, complete, want_newest=True, fileset_file=True)


def report(slave: str, *rows: FileState, results: tuple[TransferResult, ...] = (), fileset: str = FS) -> SlaveReport:
    return SlaveReport(slave=slave, fileset=fileset, files=rows, results=results)


def grant(req: CopyRequest, source: str | None = None, rate: float = 1000.0) -> Grant:
    return Grant(
        transfer_id=req.transfer_id,
        source=source or req.sources[0],
        destination=req.destination,
        path=(),
        priority="P3",
        rate=rate,
        window=65536,
        epoch=1,
        expires_at=100.0,
    )


def master(t: Topology | None = None, **cfg) -> Master:
    return Master(t or topo(), "M1", MasterConfig(**cfg), incarnation="i1")


def only(reqs: list[CopyRequest]) -> CopyRequest:
    assert len(reqs) == 1, reqs
    return reqs[0]


def ok(tid: str, nbytes: int = BS) -> TransferResult:
    return TransferResult(tid, ok=True, bytes=nbytes, seconds=1.0)


def failed(tid: str, blame: str) -> TransferResult:
    return TransferResult(tid, ok=False, blame=blame)  # type: ignore[arg-type]


# --- starting empty, FileSet files first, FCFS -------------------------------


def test_new_master_starts_empty_and_schedules_nothing() -> None:
    m = master()
    assert m.next_requests(0.0) == []
    p = m.progress()[FS]
    assert p["slaves"] == 6 and p["reporting"] == 0 and p["complete"] == 0


def test_fileset_file_is_scheduled_first_and_ahead_of_earlier_data_needs() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", fsfile(2), row("d", 1, 3 * BS, True)))
    m.on_report(0.1, report("R2-s1", fsfile(2), row("d", 1, 0)))  # only a data need; reported first
    m.on_report(0.2, report("R1-s2", fsfile(1), row("d", 1, 0)))  # old FileSet version: want newest
    reqs = m.next_requests(1.0)
    assert [(r.destination, r.file_id, r.version, r.block, r.fileset_file) for r in reqs] == [
        ("R1-s2", "FileSet", 2, 0, True),
        ("R2-s1", "d", 1, 0, False),
    ]
    assert reqs[0].size == 500  # the only, final, block of a complete 500-byte FileSet file
    assert reqs[0].sources == ("R1-s1", "R2-s1")  # same rack first


def test_fileset_file_before_the_same_slaves_data_files() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", fsfile(2), row("d", 1, 3 * BS, True)))
    m.on_report(0.1, report("R1-s2", row("d", 1, 0), fsfile(1)))  # FileSet row listed last
    assert m.needs("R1-s2", FS) == [("FileSet", 2, 0), ("d", 1, 0)]
    req = only(m.next_requests(1.0))
    assert req.file_id == "FileSet" and req.fileset_file


def test_first_come_first_served_by_report_order() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    for i, s in enumerate(("R2-s2", "R1-s2", "R2-s1")):
        m.on_report(0.1 * (i + 1), report(s, row("d", 1, 0)))
    assert [r.destination for r in m.next_requests(1.0)] == ["R2-s2", "R1-s2", "R2-s1"]


def test_limit_and_one_outstanding_copy_per_destination() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True), row("e", 1, BS, True)))
    m.on_report(0.1, report("R1-s2", row("d", 1, 0), row("e", 1, 0)))
    m.on_report(0.2, report("R2-s1", row("d", 1, 0)))
    assert [r.destination for r in m.next_requests(1.0, limit=1)] == ["R1-s2"]
    assert [r.destination for r in m.next_requests(1.0)] == ["R2-s1"]
    assert m.next_requests(1.0) == []  # both wait for their copies


def test_two_inflight_copies_take_different_files() -> None:
    m = master(max_inflight_per_slave=2)
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True), row("e", 1, BS, True)))
    m.on_report(0.1, report("R1-s2", row("d", 1, 0), row("e", 1, 0)))
    reqs = m.next_requests(1.0)
    assert sorted((r.file_id, r.block) for r in reqs) == [("d", 0), ("e", 0)]
    assert m.next_requests(1.0) == []


# --- blocks and holders -----------------------------------------------------


def test_block_index_progresses_with_reports_and_last_block_is_short() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS + 500, True)))
    m.on_report(0.0, report("R1-s2", row("d", 1, 2 * BS)))
    req = only(m.next_requests(1.0))
    assert (req.block, req.size) == (2, BS)
    inst = m.on_decision(1.0, grant(req))
    assert isinstance(inst, CopyInstruction) and inst.block == 2 and inst.mode == "pull"
    rel = m.on_report(2.0, report("R1-s2", row("d", 1, 3 * BS), results=(ok(req.transfer_id),)))
    assert [(r.transfer_id, r.ok, r.bytes) for r in rel] == [(req.transfer_id, True, BS)]
    req2 = only(m.next_requests(2.0))
    assert (req2.block, req2.size) == (3, 500)
    m.on_decision(2.0, grant(req2))
    m.on_report(3.0, report("R1-s2", row("d", 1, 3 * BS + 500, True), results=(ok(req2.transfer_id, 500),)))
    assert m.next_requests(3.0) == []
    assert m.progress()[FS]["complete"] == 2


def test_holders_must_hold_the_whole_block() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", row("d", 1, 2 * BS)))  # blocks 0-1: not enough for block 2
    m.on_report(0.0, report("R2-s1", row("d", 1, 2 * BS + 300, True)))  # complete: holds the short block 2
    m.on_report(0.0, report("R2-s2", row("d", 1, 4 * BS)))  # a generator still writing: holds 0-3
    m.on_report(0.0, report("R1-s2", row("d", 1, 2 * BS)))
    req = only([r for r in m.next_requests(1.0) if r.destination == "R1-s2"])
    assert req.block == 2
    assert set(req.sources) == {"R2-s1", "R2-s2"}
    assert req.size == 300  # a holder is complete: the block's true length


def test_inconsistent_partial_row_is_skipped() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    m.on_report(0.0, report("R1-s2", row("d", 1, BS + 1)))  # partial block without the final flag
    assert m.needs("R1-s2", FS) == []
    assert m.next_requests(1.0) == []


def test_want_newest_data_row_fetches_block_zero_of_newer_version() -> None:
    m = master()
    m.on_report(0.0, report("R1-s2", row("d", 1, 3 * BS, True, want_newest=True)))
    m.on_report(0.1, report("R2-s1", row("d", 1, 3 * BS, True)))
    assert m.next_requests(1.0) == []
    m.on_report(2.0, report("R1-s1", row("d", 2, BS)))  # the generator's slave starts version 2
    req = only(m.next_requests(2.0))
    assert (req.destination, req.version, req.block, req.sources) == ("R1-s2", 2, 0, ("R1-s1",))
    # R2-s1 does not want the newest: it stays at version 1
    assert m.needs("R2-s1", FS) == []


def test_a_parked_destination_wakes_when_a_holder_appears() -> None:
    m = master()
    m.on_report(0.0, report("R1-s2", row("d", 1, BS)))
    assert m.next_requests(0.5) == []
    assert m.snapshot()["parked"] == 1
    m.on_report(1.0, report("R1-s1", row("d", 1, 2 * BS)))
    req = only(m.next_requests(1.0))
    assert (req.destination, req.block, req.sources) == ("R1-s2", 1, ("R1-s1",))


# --- topology: trunks, racks, tree ------------------------------------------


def test_sources_across_a_trunk_only_in_its_primary_direction() -> None:
    m = master()
    m.on_report(0.0, report("R3-s1", row("d", 1, 3 * BS, True)))  # DC2
    m.on_report(0.0, report("R1-s2", row("d", 1, 0)))  # DC1: T1 runs DC1 -> DC2 only
    assert m.next_requests(1.0) == []
    m.on_report(1.0, report("R2-s1", row("d", 1, 3 * BS, True)))  # DC1 holder
    req = only(m.next_requests(1.0))
    assert req.destination == "R1-s2" and req.sources == ("R2-s1",)
    m.on_report(1.5, report("R3-s2", row("d", 1, 0)))  # DC2 destination: same rack first, then across T1
    req = only(m.next_requests(1.5))
    assert req.destination == "R3-s2" and req.sources == ("R3-s1",)  # a usable local holder: no trunk fallback


def test_tree_sources_come_first_inside_a_datacenter() -> None:
    """With the tree on, the tree parent (another rack) is offered ahead of a nearer non-tree holder."""
    t = topo(dcs={"DC1": {"R1": 3, "R2": 3}}, trunks=[])
    held = {"R2-s1": 6, "R1-s1": 5, "R2-s2": 4, "R1-s2": 3, "R1-s3": 2, "R2-s3": 1}
    # tree by bytes held: R2-s1 / R1-s1 R2-s2 / R1-s2 R1-s3 R2-s3 ; R1-s3's parent is R1-s1 (index 4 -> 1)
    reports = [report(s, row("d", 1, n * BS)) for s, n in held.items()]

    def fed(tree: bool) -> Master:
        m = master(t, tree=tree, max_sources=8)
        for r in reports:
            m.on_report(0.0, r)
        return m

    def first_request(tree: bool) -> CopyRequest:
        return only([r for r in fed(tree).next_requests(1.0) if r.destination == "R1-s3"])

    assert fed(True).tree(FS, "DC1").tree_sources("R1-s3") == ("R1-s1", "R1-s2", "R2-s3")
    with_tree = first_request(True)
    assert with_tree.block == 2
    # tree sources holding block 2: parent R1-s1 (5 blocks) and peer R1-s2 (3); then other holders
    assert with_tree.sources[:2] == ("R1-s2", "R1-s1")
    assert set(with_tree.sources[2:]) == {"R2-s1", "R2-s2"}
    without = first_request(False)
    assert without.sources[0] == "R1-s2"  # same rack and just enough data
    assert set(without.sources) == {"R1-s2", "R1-s1", "R2-s1", "R2-s2"}


def test_tree_puts_parent_first_over_a_closer_holder() -> None:
    t = topo(dcs={"DC1": {"R1": 2, "R2": 2}}, trunks=[])
    m = master(t)
    m.on_report(0.0, report("R2-s1", row("d", 1, 9 * BS)))  # root
    m.on_report(0.0, report("R2-s2", row("d", 1, 8 * BS)))
    m.on_report(0.0, report("R1-s1", row("d", 1, 7 * BS)))
    m.on_report(0.0, report("R1-s2", row("d", 1, 6 * BS)))  # index 3: parent R2-s2, no level peer holds block 6
    req = only([r for r in m.next_requests(1.0) if r.destination == "R1-s2"])
    assert req.sources[0] == "R2-s2"  # tree parent, though R1-s1 is in the same rack
    assert req.sources[1:] == ("R1-s1", "R2-s1")
    m2 = master(t, tree=False)
    for s, n in (("R2-s1", 9), ("R2-s2", 8), ("R1-s1", 7), ("R1-s2", 6)):
        m2.on_report(0.0, report(s, row("d", 1, n * BS)))
    req2 = only([r for r in m2.next_requests(1.0) if r.destination == "R1-s2"])
    assert req2.sources[0] == "R1-s1"


def test_tree_is_refreshed_by_tick() -> None:
    t = topo(dcs={"DC1": {"R1": 3}}, trunks=[])
    m = master(t, tree_refresh=5.0)
    for s, n in (("R1-s1", 3), ("R1-s2", 2), ("R1-s3", 1)):
        m.on_report(0.0, report(s, row("d", 1, n * BS)))
    assert m.tree(FS, "DC1").order[0] == "R1-s1"
    m.on_report(1.0, report("R1-s3", row("d", 1, 9 * BS)))
    m.tick(1.0)
    assert m.tree(FS, "DC1").order[0] == "R1-s1"  # not yet refreshed
    m.tick(5.0)
    assert m.tree(FS, "DC1").order[0] == "R1-s3"


# --- one trunk copy of a block into a datacenter at a time ----------------------


def fig1(**cfg) -> Master:
    """FIG. 1 with the origin R11-s1 (DC1) holding d; T1 is the only way into DC2."""
    m = Master(replace(patent_fig1(), block_size=BS), "M1", MasterConfig(**cfg), incarnation="i1")
    m.on_report(0.0, report("R11-s1", row("d", 1, 3 * BS, True), fsfile(2)))
    return m


DC2 = ("R21-s1", "R21-s2", "R22-s1")


def dc_of(m: Master, slave: str) -> str:
    return m.topology.slaves[slave].dc


def crossing(m: Master, req: CopyRequest) -> bool:
    """The request offers a source outside the destination's datacenter."""
    return any(dc_of(m, s) != dc_of(m, req.destination) for s in req.sources)


def test_a_block_crosses_into_a_datacenter_once_then_spreads_inside_it() -> None:
    m = fig1(trunk_fallback=True)
    for s in (*DC2, "R31-s1"):
        m.on_report(0.1, report(s, row("d", 1, 0)))
    reqs = m.next_requests(1.0)
    # one copy of block 0 into DC2 and one into DC3; the other two DC2 slaves wait for it
    assert sorted(dc_of(m, r.destination) for r in reqs) == ["DC2", "DC3"]
    assert all(r.block == 0 and crossing(m, r) and set(r.sources) == {"R11-s1"} for r in reqs)
    first = next(r for r in reqs if dc_of(m, r.destination) == "DC2")
    assert m.snapshot()["trunk_parked"] == 2 and m.snapshot()["trunk_claims"] == 2
    assert m.next_requests(1.5) == []  # still in flight: nobody else crosses T1 for block 0
    assert m.on_decision(1.5, grant(first)) is not None
    assert m.next_requests(2.0) == []
    m.on_report(3.0, report(first.destination, row("d", 1, BS), results=(ok(first.transfer_id),)))
    reqs = m.next_requests(3.0)
    block0 = sorted((r for r in reqs if r.block == 0), key=lambda r: r.destination)
    others = sorted(set(DC2) - {first.destination})
    assert [r.destination for r in block0] == others
    assert all(r.sources[0] == first.destination for r in block0)  # the DC2 holder ranks first
    # remote holders stay behind as fallbacks, under the same rule: only one of the two lists has them
    assert [crossing(m, r) for r in block0].count(True) == 1
    assert all(not crossing(m, r) or r.sources[1:] == ("R11-s1",) for r in block0)
    block1 = only([r for r in reqs if r.block == 1])  # the new holder's next block crosses on its own
    assert block1.destination == first.destination and block1.sources == ("R11-s1",)
    assert m.snapshot()["trunk_parked"] == 0


@pytest.mark.parametrize("how", ["failed", "expired", "denied", "undecided"])
def test_when_the_crossing_copy_ends_without_the_block_another_destination_may_cross(how: str) -> None:
    m = fig1(min_transfer_timeout=10.0)
    for s in DC2:
        m.on_report(0.1, report(s, row("d", 1, 0)))
    req = only(m.next_requests(1.0))
    assert crossing(m, req)
    if how in ("failed", "expired"):
        assert m.on_decision(1.0, grant(req)) is not None
        if how == "failed":
            m.on_report(2.0, report(req.destination, row("d", 1, 0), results=(failed(req.transfer_id, "other"),)))
        else:
            assert len(m.tick(11.0)) == 1
    elif how == "denied":
        assert m.on_decision(1.0, Denial(req.transfer_id, "trunk full")) is None
    else:
        assert m.tick(11.0) == []  # no decision within the timeout: the request is dropped
    again = only(m.next_requests(12.0))  # one at a time still: the other two wait for this one
    assert crossing(m, again) and again.block == 0
    assert again.destination in DC2 and again.destination != req.destination  # a parked one goes first
    assert m.snapshot()["trunk_parked"] == 2 and m.snapshot()["trunk_claims"] == 1


@pytest.mark.parametrize("granted_local", [True, False])
def test_a_request_with_remote_fallbacks_holds_the_claim_until_granted_locally(granted_local: bool) -> None:
    m = fig1(retry_after=0.5, trunk_fallback=True)
    m.on_report(0.1, report("R21-s1", row("d", 1, BS)))  # a DC2 holder of block 0 (and no more)
    m.on_report(0.2, report("R21-s2", row("d", 1, 0)))
    m.on_report(0.3, report("R22-s1", row("d", 1, 0)))
    reqs = {r.destination: r for r in m.next_requests(1.0)}
    a, b = reqs["R21-s2"], reqs["R22-s1"]
    assert a.sources == ("R21-s1", "R11-s1")  # local first, one remote fallback: claims block 0 into DC2
    assert b.sources == ("R21-s1",)  # the claim is taken: local holders only
    m.on_decision(1.0, grant(a, source="R21-s1" if granted_local else "R11-s1"))
    m.on_decision(1.0, Denial(b.transfer_id, "R21-s1 busy"))
    retry = only(m.next_requests(1.5))
    assert retry.destination == "R22-s1"
    assert retry.sources == (("R21-s1", "R11-s1") if granted_local else ("R21-s1",))


def test_remote_holders_rank_behind_own_datacenter_holders() -> None:
    """A local holder with far more data than needed still comes before a remote holder with just enough."""

    def first_sources(one_trunk_copy: bool) -> tuple[str, ...]:
        # without the tree: R22-s2 would be a tree source, first anyway
        m = fig1(one_trunk_copy=one_trunk_copy, tree=False, trunk_fallback=True)
        m.on_report(0.0, report("R22-s2", row("d", 1, 60 * BS, True)))  # data score 30 outweighs T1's distance
        m.on_report(0.0, report("R11-s2", row("d", 1, BS)))
        m.on_report(0.1, report("R21-s1", row("d", 1, 0)))
        return next(r for r in m.next_requests(1.0) if r.destination == "R21-s1").sources

    assert first_sources(True) == ("R22-s2", "R11-s2", "R11-s1")
    assert first_sources(False)[0] == "R11-s2"  # FIG. 8's composite alone would send it across T1


def test_without_trunk_fallback_remote_holders_only_when_no_local_one_is_usable() -> None:
    m = fig1(trunk_fallback=False)
    m.on_report(0.1, report("R21-s1", row("d", 1, BS)))  # a DC2 holder of block 0 only
    m.on_report(0.2, report("R21-s2", row("d", 1, 0)))
    reqs = {r.destination: r for r in m.next_requests(1.0)}
    assert reqs["R21-s2"].sources == ("R21-s1",)  # no trunk while a DC2 holder is usable
    assert reqs["R21-s1"].sources == ("R11-s1",) and reqs["R21-s1"].block == 1  # none in DC2: across T1
    assert m.snapshot()["trunk_claims"] == 1
    m.on_report(0.3, report("R22-s1", row("d", 1, BS)))  # needs block 1 too: parked behind R21-s1's copy
    assert m.next_requests(1.5) == [] and m.snapshot()["trunk_parked"] == 1


def test_fileset_file_crosses_once_too() -> None:
    m = fig1()
    for s in DC2:
        m.on_report(0.1, report(s, fsfile(1)))
    req = only(m.next_requests(1.0))
    assert req.fileset_file and req.version == 2 and crossing(m, req)
    m.on_decision(1.0, grant(req))
    m.on_report(2.0, report(req.destination, fsfile(2), results=(ok(req.transfer_id, 500),)))
    reqs = [r for r in m.next_requests(2.0) if r.destination != req.destination]
    assert len(reqs) == 2 and all(r.fileset_file and r.sources[0] == req.destination for r in reqs)


def test_without_one_trunk_copy_every_destination_crosses() -> None:
    m = fig1(one_trunk_copy=False)
    for s in DC2:
        m.on_report(0.1, report(s, row("d", 1, 0)))
    reqs = m.next_requests(1.0)
    assert sorted(r.destination for r in reqs) == sorted(DC2)
    assert all(r.block == 0 and r.sources == ("R11-s1",) for r in reqs)
    assert m.snapshot()["trunk_claims"] == 0


# --- failures, health, liveness ---------------------------------------------


def one_copy(m: Master, now: float, dest: str = "R3-s2") -> tuple[CopyRequest, CopyInstruction]:
    req = next(r for r in m.next_requests(now) if r.destination == dest)
    inst = m.on_decision(now, grant(req))
    assert inst is not None
    return req, inst


def cross_trunk_setup(**cfg) -> Master:
    m = master(**cfg)
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    m.on_report(0.0, report("R3-s2", row("d", 1, 0)))
    return m


def counts(m: Master) -> dict[str, tuple[int, int]]:
    res = m.snapshot()["resources"]
    path = ("R1-s1", "R1", "DC1", "T1", "DC2", "R3", "R3-s2")
    return {r: (res[r]["failure_count"], res[r]["attempts"]) for r in path}


def test_grant_counts_attempts_on_every_resource_of_the_path() -> None:
    m = cross_trunk_setup()
    req, inst = one_copy(m, 1.0)
    assert (inst.source, inst.destination) == ("R1-s1", "R3-s2")
    assert all(a == 1 and f == 0 for f, a in counts(m).values())
    snap = m.snapshot()
    assert snap["idleness"] == {"R1-s1": 1}
    assert snap["resources"]["R3-s2"]["last_copied_from"] == "R1-s1"
    m.on_report(2.0, report("R3-s2", row("d", 1, BS), results=(ok(req.transfer_id),)))
    assert m.snapshot()["idleness"] == {}


def test_receiver_blame_counts_only_the_destination() -> None:
    m = cross_trunk_setup()
    req, _ = one_copy(m, 1.0)
    rel = m.on_report(2.0, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "receiver"),)))
    assert [(r.transfer_id, r.ok) for r in rel] == [(req.transfer_id, False)]
    c = counts(m)
    assert c["R3-s2"][0] == 1
    assert all(c[r][0] == 0 for r in c if r != "R3-s2")
    assert m.snapshot()["files"]["R3-s2/d"]["failure_count"] == 1


def test_other_blame_counts_every_other_resource_of_the_path() -> None:
    m = cross_trunk_setup()
    req, _ = one_copy(m, 1.0)
    m.on_report(2.0, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "other"),)))
    c = counts(m)
    assert c["R3-s2"][0] == 0
    assert all(c[r][0] == 1 for r in ("R1-s1", "R1", "DC1", "T1", "DC2", "R3"))
    assert m.snapshot()["files"]["R1-s1/d"]["failure_count"] == 1


def test_source_blame_counts_only_the_source() -> None:
    m = cross_trunk_setup()
    req, _ = one_copy(m, 1.0)
    m.on_report(2.0, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "source"),)))
    c = counts(m)
    assert c["R1-s1"][0] == 1 and sum(f for f, _ in c.values()) == 1


def test_failed_source_not_scheduled_then_recovers_after_decay() -> None:
    hc = HealthConfig(failure_threshold=3, recovery_threshold=2, failure_ratio=0.0, time_unit=10.0)
    m = master(health=hc)
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    m.on_report(0.0, report("R2-s1", row("d", 1, 3 * BS, True)))
    now = 0.0
    for _ in range(3):  # R1-s2 copies from R1-s1 (same rack) and fails three times, blame the source
        now += 0.1
        m.on_report(now, report("R1-s2", row("d", 1, 0)))
        req = only(m.next_requests(now))
        assert req.sources[0] == "R1-s1"
        m.on_decision(now, grant(req))
        m.on_report(now, report("R1-s2", row("d", 1, 0), results=(failed(req.transfer_id, "source"),)))
    assert not m.resource_functioning("R1-s1")
    assert m.snapshot()["resources"]["R1-s1"]["state"] == 0
    req = only(m.next_requests(now))
    assert req.sources == ("R2-s1",)
    m.on_decision(now, Denial(req.transfer_id, "full"))
    m.tick(10.0)  # 3 -> 2: still failed (recovery below 2)
    assert not m.resource_functioning("R1-s1")
    m.tick(20.0)  # 2 -> 1
    assert m.resource_functioning("R1-s1")
    req = only(m.next_requests(20.0))
    assert "R1-s1" in req.sources


def test_failed_destination_is_not_scheduled() -> None:
    hc = HealthConfig(failure_threshold=1, recovery_threshold=1, failure_ratio=0.0, time_unit=10.0)
    m = cross_trunk_setup(health=hc)
    req, _ = one_copy(m, 1.0)
    m.on_report(2.0, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "receiver"),)))
    assert not m.resource_functioning("R3-s2")
    assert m.next_requests(3.0) == []
    m.tick(10.0)
    assert only(m.next_requests(10.0)).destination == "R3-s2"


def test_a_failed_trunk_removes_sources_behind_it() -> None:
    hc = HealthConfig(failure_threshold=1, recovery_threshold=1, failure_ratio=0.0, time_unit=10.0)
    m = cross_trunk_setup(health=hc)
    req, _ = one_copy(m, 1.0)
    m.on_report(2.0, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "other"),)))
    assert not m.resource_functioning("T1")
    m.on_report(2.0, report("R1-s1", row("d", 1, 3 * BS, True)))  # source itself fine again? still T1 down
    assert m.next_requests(3.0) == []
    m.tick(10.0)
    assert m.resource_functioning("T1")
    assert only(m.next_requests(10.0)).sources == ("R1-s1",)


def test_silent_slaves_are_neither_sources_nor_destinations_until_they_report() -> None:
    m = master()  # report interval 30 s x liveness factor 3 = 90 s
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    m.on_report(0.0, report("R2-s1", row("d", 1, 3 * BS, True)))
    m.on_report(50.0, report("R2-s1", row("d", 1, 3 * BS, True)))
    m.on_report(100.0, report("R1-s2", row("d", 1, 0)))
    assert only(m.next_requests(100.0)).sources == ("R2-s1",)  # R1-s1 silent for 100 s
    m2 = master()
    m2.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    m2.on_report(0.0, report("R1-s2", row("d", 1, 0)))
    assert m2.next_requests(91.0) == []  # both silent: the destination is not scheduled
    m2.on_report(92.0, report("R1-s2", row("d", 1, 0)))
    assert m2.next_requests(92.0) == []  # the only holder is still silent
    m2.on_report(93.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    assert only(m2.next_requests(93.0)).sources == ("R1-s1",)


def test_deadline_expiry_counts_a_failure_and_releases() -> None:
    m = cross_trunk_setup(min_transfer_timeout=10.0, result_timeout_factor=4.0)
    req, inst = one_copy(m, 1.0)  # 1000 bytes at 100 B/s x 4 = 40 s
    assert inst.deadline == 1.0 + 10.0
    m2 = cross_trunk_setup()
    req2 = only(m2.next_requests(1.0))
    inst2 = m2.on_decision(1.0, grant(req2, rate=100.0))
    assert inst2 is not None and inst2.deadline == 41.0
    assert m.tick(10.9) == []
    rel = m.tick(11.0)
    assert [(r.transfer_id, r.ok) for r in rel] == [(req.transfer_id, False)]
    assert counts(m)["T1"][0] == 1 and counts(m)["R3-s2"][0] == 0
    # a late result for the expired copy is ignored; the destination is scheduled again
    assert m.on_report(12.0, report("R3-s2", row("d", 1, 0), results=(ok(req.transfer_id),))) == []
    assert only(m.next_requests(12.0)).destination == "R3-s2"


def test_request_without_decision_is_dropped_and_retried() -> None:
    m = cross_trunk_setup(min_transfer_timeout=10.0)
    req = only(m.next_requests(1.0))
    assert m.tick(11.0) == []  # never granted: nothing to release
    assert m.on_decision(11.5, grant(req)) is None
    assert only(m.next_requests(12.0)).transfer_id != req.transfer_id


def test_denied_destination_waits_retry_after() -> None:
    m = cross_trunk_setup(retry_after=0.5)
    req = only(m.next_requests(1.0))
    assert m.on_decision(1.0, Denial(req.transfer_id, "no bandwidth")) is None
    m.on_report(1.1, report("R3-s2", row("d", 1, 0)))  # a periodic report does not jump the wait
    assert m.next_requests(1.2) == []
    assert only(m.next_requests(1.5)).destination == "R3-s2"


def test_unknown_and_mismatched_decisions_are_ignored() -> None:
    m = cross_trunk_setup()
    assert m.on_decision(1.0, Denial("M1.old.1", "x")) is None
    req = only(m.next_requests(1.0))
    assert m.on_decision(1.0, grant(req, source="R2-s2")) is None  # not on the ranked list
    assert m.rejected["grant for unrequested pair"] == 1
    assert m.on_decision(1.0, grant(req)) is None  # the transfer was dropped
    assert m.rejected["unknown transfer"] == 2


def test_instruction_delivery_failure_blames_the_unreachable_slave() -> None:
    m = cross_trunk_setup()
    req, _ = one_copy(m, 1.0)
    rel = m.on_instruction_failed(1.5, req.transfer_id, "connection refused")
    assert rel is not None and (rel.transfer_id, rel.ok) == (req.transfer_id, False)
    c = counts(m)
    assert c["R3-s2"][0] == 1 and c["R1-s1"][0] == 0  # pull: the destination was unreachable
    assert m.on_instruction_failed(1.6, req.transfer_id, "again") is None


def test_push_mode_instruction_and_unreachable_source() -> None:
    m = cross_trunk_setup(mode="push")
    req, inst = one_copy(m, 1.0)
    assert inst.mode == "push" and inst.source == "R1-s1" and inst.destination == "R3-s2"
    assert inst.master == "M1" and inst.transfer_id == req.transfer_id
    m.on_instruction_failed(1.5, req.transfer_id, "unreachable")
    c = counts(m)
    assert c["R1-s1"][0] == 1 and c["R3-s2"][0] == 0


def test_result_from_an_uninvolved_slave_is_ignored() -> None:
    m = cross_trunk_setup()
    req, _ = one_copy(m, 1.0)
    assert m.on_report(1.5, report("R2-s2", results=(ok(req.transfer_id),))) == []
    assert m.rejected["result from uninvolved slave"] == 1
    assert len(m.on_report(1.6, report("R3-s2", row("d", 1, BS), results=(ok(req.transfer_id),)))) == 1


# --- ownership, restart, status ---------------------------------------------


def two_master_topology() -> Topology:
    t = topo(filesets={"news": "P3", "logs": "P2"})
    slaves = dict(t.slaves)
    slaves["R2-s2"] = Slave("R2-s2", "R2", "DC1", 1e8, 1e8, ("logs",))
    return replace(
        t,
        slaves=slaves,
        masters={"M1": MasterSpec("M1", "R1", ("news",)), "M2": MasterSpec("M2", "R1", ("logs",))},
    )


def test_reports_outside_this_masters_responsibility_are_ignored() -> None:
    m = Master(two_master_topology(), "M1", incarnation="a")
    assert m.on_report(0.0, report("R1-s1", row("d", 1, BS), fileset="logs")) == []
    assert m.on_report(0.0, report("R9-s9", row("d", 1, BS))) == []
    assert m.on_report(0.0, report("R2-s2", row("d", 1, BS))) == []
    dup = SlaveReport(slave="R1-s1", fileset=FS, files=(row("d", 1, BS), row("d", 1, 0)))
    assert m.on_report(0.0, dup) == []
    assert m.rejected == {
        "fileset not owned": 1,
        "unknown slave": 1,
        "fileset not needed by slave": 1,
        "malformed rows": 1,
    }
    assert len(m.rejections) == 4
    assert m.progress()[FS]["reporting"] == 0
    assert m.progress()[FS]["slaves"] == 5


def test_restarted_master_rebuilds_from_reports_and_schedules_the_same_needs() -> None:
    """§0155: a new master starts empty; the same reports give the same schedule."""
    reports = [
        report("R1-s1", fsfile(3), row("d", 2, 4 * BS, True), row("e", 1, 2 * BS + 10, True)),
        report("R2-s1", fsfile(3), row("d", 2, 2 * BS), row("e", 1, 0)),
        report("R1-s2", fsfile(2), row("d", 2, 0), row("e", 1, 2 * BS)),
        report("R3-s1", fsfile(3), row("d", 2, BS), row("e", 1, 2 * BS + 10, True)),
        report("R3-s2", fsfile(3), row("d", 2, 0), row("e", 1, BS)),
        report("R2-s2", fsfile(3), row("d", 1, 4 * BS, True, want_newest=True), row("e", 1, 0)),
    ]
    old = master()
    for i, r in enumerate(reports):
        old.on_report(0.1 * i, r)
    first = old.next_requests(1.0)
    old_grant = old.on_decision(1.0, grant(first[0]))
    assert old_grant is not None

    def strip(reqs: list[CopyRequest]) -> list[tuple]:
        return [(r.destination, r.file_id, r.version, r.block, r.size, r.sources, r.fileset_file) for r in reqs]

    new = Master(topo(), "M1", incarnation="i2", start=100.0)
    assert new.next_requests(100.0) == []
    for i, r in enumerate(reports):
        new.on_report(100.0 + 0.1 * i, r)
    again = new.next_requests(101.0)
    assert strip(again) == strip(first)
    assert all(r.transfer_id.startswith("M1.i2.") for r in again)
    assert len(first) == 5 and first[0].fileset_file  # R1-s2's FileSet first; R1-s1 has nothing to fetch
    # a result for the old incarnation's copy is ignored by the new master
    late = report("R1-s2", fsfile(3), row("d", 2, 0), row("e", 1, 2 * BS), results=(ok(first[0].transfer_id),))
    assert new.on_report(101.5, late) == []


def test_progress_and_snapshot() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", fsfile(2), row("d", 1, 3 * BS + 500, True)))
    m.on_report(0.0, report("R1-s2", fsfile(2), row("d", 1, BS)))
    m.on_report(0.0, report("R2-s1", fsfile(1), row("d", 1, 3 * BS + 500, True)))
    p = m.progress()[FS]
    assert p["reporting"] == 3 and p["complete"] == 1
    assert p["bytes_held"] == (500 + 3500) + (500 + 1000) + (500 + 3500)
    assert p["bytes_wanted"] == 2500 + 500  # R1-s2's rest of d; R2-s1's new FileSet
    reqs = m.next_requests(1.0)
    m.on_decision(1.0, grant(reqs[0]))
    snap = m.snapshot()
    json.dumps(snap)
    assert snap["resources"]["R1-s1"]["last_contact"] == 0.0
    assert snap["resources"]["R3-s1"]["last_contact"] is None
    assert snap["resources"]["T1"]["state"] == 1
    assert {t["state"] for t in snap["inflight"]} == {"granted", "requested"}
    assert snap["queue"] == 0 and snap["master"] == "M1"


def test_every_slave_of_patent_fig1_completes_when_every_copy_succeeds() -> None:
    """Drive FIG. 1 (4 datacenters, one-way trunks) to completion with a toy resource manager.

    Each sender carries one copy at a time and a copy takes 1 s, so the master must spread
    the work over the slaves that already hold blocks; nothing may be left stuck in a queue.
    """
    t = replace(patent_fig1(), block_size=BS)
    m = Master(t, "M1", MasterConfig(), incarnation="sim")
    full = {"FileSet": 300, "a": 3 * BS, "b": 2 * BS + 1}
    rows: dict[str, dict[str, FileState]] = {}
    for s in t.slaves:
        gen = s == "R11-s1"
        rows[s] = {
            f: FileState(f, 1, n if gen else 0, gen, want_newest=f == "FileSet", fileset_file=f == "FileSet")
            for f, n in full.items()
        }
        m.on_report(0.0, report(s, *rows[s].values()))
    now, copies, sources_used = 0.0, 0, set()
    sending: dict[str, float] = {}  # source -> time its copy finishes
    pending: list[tuple[float, CopyInstruction]] = []
    while m.progress()[FS]["complete"] < len(t.slaves):
        now = round(now + 0.25, 2)
        assert now < 120.0, m.snapshot()
        for done in [p for p in pending if p[0] <= now]:
            pending.remove(done)
            inst = done[1]
            del sending[inst.source]
            old = rows[inst.destination][inst.file_id]
            size = min(full[inst.file_id], old.size + BS)
            rows[inst.destination][inst.file_id] = structs.replace(old, size=size, complete=size == full[inst.file_id])
            m.on_report(
                now, report(inst.destination, *rows[inst.destination].values(), results=(ok(inst.transfer_id),))
            )
        m.tick(now)
        for req in m.next_requests(now):
            free = [s for s in req.sources if s not in sending]
            if not free:
                assert m.on_decision(now, Denial(req.transfer_id, "sources busy")) is None
                continue
            inst = m.on_decision(now, grant(req, source=free[0]))
            assert inst is not None
            copies += 1
            sources_used.add(inst.source)
            sending[inst.source] = now + 1.0
            pending.append((now + 1.0, inst))
    assert copies == (len(t.slaves) - 1) * (1 + 3 + 3)  # every block fetched exactly once per slave
    assert len(sources_used) > len(t.slaves) // 2  # the load spread over many senders
    assert m.snapshot()["idleness"] == {} and m.snapshot()["inflight"] == []
    assert all(h.failure_count == 0 for h in m.health.rows.values())


def test_health_and_liveness_changes_reach_the_log_when_they_happen() -> None:
    hc = HealthConfig(failure_threshold=1, recovery_threshold=1, failure_ratio=0.0, time_unit=10.0)
    m = cross_trunk_setup(health=hc)
    assert m.drain_log(1.0) == []
    req, _ = one_copy(m, 1.0)
    m.on_report(2.0, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "other"),)))
    lines = m.drain_log(2.0)
    assert any(ln.startswith("health T1 failed failures=1 attempts=") for ln in lines), lines
    assert any(ln.startswith(f"copy {req.transfer_id} ") for ln in lines), lines
    assert m.drain_log(2.0) == []  # drained once
    m.tick(10.0)
    assert "health T1 in-service" in m.drain_log(10.0)
    silent = 10.0 + 3 * m.topology.report_interval + 1  # every slave silent past the liveness limit
    lost = m.drain_log(silent)
    assert "liveness R3-s2 lost" in lost and "liveness R1-s1 lost" in lost
    m.on_report(silent + 1, report("R3-s2", row("d", 1, 0)))
    back = m.drain_log(silent + 1)
    assert "liveness R3-s2 back" in back and "liveness R1-s1 back" not in back


def test_a_denied_destination_asks_again_when_the_denial_says() -> None:
    m = cross_trunk_setup(retry_after=0.5)
    req = only(m.next_requests(1.0))
    assert m.on_decision(1.0, Denial(req.transfer_id, "rate", 0, retry_in=0.1)) is None
    assert m.next_requests(1.05) == []
    assert only(m.next_requests(1.1)).destination == "R3-s2"  # not 1.5 s: the hint is used
    m2 = cross_trunk_setup(retry_after=0.5)
    r2 = only(m2.next_requests(1.0))
    m2.on_decision(1.0, Denial(r2.transfer_id, "no hint"))  # retry_in 0: the configured back-off
    assert m2.next_requests(1.4) == []
    assert only(m2.next_requests(1.5)).destination == "R3-s2"


def test_a_release_of_ours_lets_denied_destinations_ask_again_at_once() -> None:
    m = master()
    m.on_report(0.0, report("R1-s1", row("d", 1, 3 * BS, True)))
    m.on_report(0.0, report("R1-s2", row("d", 1, 0)))
    m.on_report(0.0, report("R2-s1", row("d", 1, 0)))
    first, second = m.next_requests(1.0)
    inst = m.on_decision(1.0, grant(first))
    assert inst is not None
    m.on_decision(1.0, Denial(second.transfer_id, "rate", 0, retry_in=5.0))
    assert m.next_requests(1.1) == []
    rels = m.on_report(1.2, report(first.destination, row("d", 1, BS), results=(ok(first.transfer_id),)))
    assert len(rels) == 1
    m.on_released(1.25)
    assert second.destination in {r.destination for r in m.next_requests(1.25)}


def test_a_destination_that_failed_its_own_copy_backs_off_before_asking_again() -> None:
    m = cross_trunk_setup(retry_after=0.5)
    req, _ = one_copy(m, 1.0)
    m.on_report(1.1, report("R3-s2", row("d", 1, 0), results=(failed(req.transfer_id, "receiver"),)))
    assert m.next_requests(1.2) == []  # a full disk is not asked to take the block again at once
    assert only(m.next_requests(1.6)).destination == "R3-s2"


def test_an_undeliverable_instruction_backs_the_destination_off() -> None:
    m = cross_trunk_setup(retry_after=0.5)
    _, inst = one_copy(m, 1.0)
    assert m.on_instruction_failed(1.0, inst.transfer_id, "connection refused") is not None
    assert m.next_requests(1.1) == []
    assert only(m.next_requests(1.5)).destination == "R3-s2"
