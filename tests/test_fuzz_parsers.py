"""The fuzz campaign of bench/fuzz_parsers.py at a small size, property tests, and regressions for what it found."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fuzz_parsers as fp  # noqa: E402

from scaledist import messages as m  # noqa: E402
from scaledist import netio  # noqa: E402
from scaledist.core.blocks import RECORD_SIZE, decode_records, length_ok  # noqa: E402
from scaledist.core.fileset_file import FileSetContent, FileSetError, encode_fileset, parse_fileset  # noqa: E402
from scaledist.core.resource_manager import MAX_REASON  # noqa: E402
from scaledist.daemons.rm import RMDaemon  # noqa: E402
from scaledist.daemons.slave import SlaveDaemon, TransferFailed  # noqa: E402
from scaledist.ids import BadId, check_id, safe_join  # noqa: E402
from scaledist.topology_schema import SpecError, TopologyError, load_topology_text  # noqa: E402
from scaledist.wire import Codec, ProtocolError  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))

@pytest.fixture(scope="module")
def campaign() -> list[fp.Tally]:
    return fp.run_campaign(8000, seed=7, known=False)


def test_campaign_counts_every_target(campaign: list[fp.Tally]) -> None:
    names = {t.name for t in campaign}
    for target in ("wire.random_bytes", "wire.mutated_frames", "wire.signed_garbage", "msg.slave_report",
                   "msg.block_put", "data.block_stream", "ids", "fileset_file", "storage.records", "storage.disk",
                   "yaml.topology", "yaml.scenario", "core.resource_manager", "core.master", "core.slave_state",
                   "live.hostile_frames", "live.signed_invalid"):
        assert target in names, target
    assert fp.totals(campaign)["fuzz_inputs_total"] >= 8000
    for t in campaign:
        assert t.inputs == t.accepted + t.rejected + t.crashes, t.name
        if t.name != "storage.records":  # that decoder never refuses: it keeps the valid prefix
            assert t.rejected > 0, t.name


def test_campaign_finds_no_crash_state_change_or_forgery(campaign: list[fp.Tally]) -> None:
    for t in campaign:
        assert t.state_changes == 0, (t.name, t.samples)
        assert t.forged_accepted == 0, (t.name, t.samples)
        assert t.crashes == 0, (t.name, t.samples)


def test_live_daemons_refuse_every_hostile_frame(campaign: list[fp.Tally]) -> None:
    hostile = next(t for t in campaign if t.name == "live.hostile_frames")
    assert hostile.inputs >= 100 and hostile.accepted == 0
    assert hostile.reasons  # every one answered with an Error


# --- hypothesis properties ---------------------------------------------------------------------


@SETTINGS
@given(value=st.text(max_size=140))
def test_an_accepted_id_is_one_name_inside_the_root(value: str) -> None:
    try:
        check_id(value)
    except BadId:
        return
    root = Path("/tmp/fuzz-root").resolve()
    assert "/" not in value and ".." not in value and not value.startswith(".")
    assert safe_join(root, value).parent == root


@SETTINGS
@given(data=st.binary(max_size=400))
def test_fileset_parser_raises_only_fileset_error(data: bytes) -> None:
    try:
        parse_fileset(data)
    except FileSetError as e:
        assert str(e)


@SETTINGS
@given(files=st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), st.integers(0, 2**63 - 1),
                             max_size=8), version=st.integers(0, 2**63 - 1))
def test_fileset_round_trips(files: dict[str, int], version: int) -> None:
    files.pop("news", None)
    content = FileSetContent("news", version, tuple(files.items()))
    assert parse_fileset(encode_fileset(content), expect_fileset="news") == content


@SETTINGS
@given(data=st.binary(max_size=24 * 6))
def test_checksum_file_decoder_keeps_only_a_valid_prefix(data: bytes) -> None:
    recs, valid = decode_records(data, 4096)
    assert valid == len(recs) * RECORD_SIZE <= len(data)
    assert [r.index for r in recs] == list(range(len(recs)))
    assert all(length_ok(r.index, r.length, r.final, 4096) for r in recs)
    assert not any(r.final for r in recs[:-1])


@SETTINGS
@given(payload=st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20).map(lambda v: json.dumps({"v": 1, "sender": "x", "ts": fp.NOW, "nonce": "n", "msg": v}).encode())))
def test_signed_garbage_is_refused_without_touching_the_replay_cache(payload: bytes) -> None:
    codec = Codec(fp.KEY, "rx")
    frame = Codec(fp.KEY, "insider").seal(payload)
    before = codec.replay_state()
    try:
        env = codec.open(frame, fp.NOW)
    except ProtocolError:
        assert codec.replay_state() == before
        return
    assert isinstance(env.msg, m.StatusQuery | m.Ack)  # only a body with no required field can pass


# --- regressions for bugs the campaign found ---------------------------------------------------


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a":' * 5000, b"9" * 5000])
def test_fileset_parser_refuses_deep_nesting_and_huge_numbers(data: bytes) -> None:
    """Was RecursionError / a bare ValueError, which the slave's reporter did not catch."""
    with pytest.raises(FileSetError, match="not valid JSON"):
        parse_fileset(data)


@pytest.mark.parametrize(("block", "length", "final"), [(0, 100, False), (-1, 100, True), (2**32, 100, True)])
def test_slave_refuses_a_block_breaking_the_block_rule(tmp_path: Path, block: int, length: int, final: bool) -> None:
    """Was storage.BadBlock escaping store_block: no BlockAck, no result for the master."""
    slave = SlaveDaemon(fp.make_context("dc1-r1-s2", fp.small_topology(), fp.LogSink()), tmp_path / "s")
    with pytest.raises(TransferFailed, match="bad block") as err:
        asyncio.run(slave.store_block("news", "f", 1, block, b"\x00" * length, 0, 0, final))
    assert err.value.blame == "other"
    assert slave.store.stored("news", "f") is None


def test_refusals_quoting_huge_fields_still_fit_in_a_frame(tmp_path: Path) -> None:
    """Was a Denial / Ack quoting a 250k-character name with repr(): over the frame limit, so no reply at all."""

    async def run() -> tuple[m.Message, m.Message]:
        topo = fp.small_topology(epoch=3600.0)
        rm = RMDaemon(fp.make_context("rm", topo, fp.LogSink()), tmp_path / "ledger.jsonl")
        slave = SlaveDaemon(fp.make_context("dc1-r1-s2", topo, fp.LogSink()), tmp_path / "s")
        servers = [await netio.serve("127.0.0.1", 0, rm.ctx.codec, rm.handle, log=lambda s: None),
                   await netio.serve("127.0.0.1", 0, slave.ctx.codec, slave.handle_control, log=lambda s: None)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        client = Codec(fp.KEY, "client")
        huge = "\x7f" * 250_000
        try:
            deny = await netio.call("127.0.0.1", ports[0], client, m.CopyRequest(
                "t", "M1", "dc2-r3-s1", ("dc1-r1-s1",), huge, "f", 1, 0, 10))
            ack = await netio.call("127.0.0.1", ports[1], client, m.CopyInstruction(
                "t", "pull", "M1", "dc1-r1-s1", "dc1-r1-s2", "news", huge, 1, 0, 1e6, 65536, 0.0))
        finally:
            for s in servers:
                s.close()
            rm.ledger.close()
        return deny, ack

    deny, ack = asyncio.run(run())
    assert isinstance(deny, m.Denial) and deny.reason.startswith("invalid request") and len(deny.reason) <= MAX_REASON
    assert isinstance(ack, m.Ack) and not ack.ok and ack.detail.startswith("file id") and len(ack.detail) <= 500


# --- regressions: a huge report row, YAML the loaders once leaked other exceptions for ---------------

_TOPOLOGY = fp.TOPOLOGY_TEXT


def test_master_survives_a_report_claiming_an_absurd_size() -> None:
    t = fp.probe_master_huge_report(timeout=3.0)
    assert t.crashes == 0, t.samples


@pytest.mark.parametrize("text", [
    _TOPOLOGY.replace("block_size: 1MiB", "block_size: 1e999B"),
    _TOPOLOGY.replace("version: 1", "version: !!int abc"),
    _TOPOLOGY.replace("version: 1", "version: !!python/object:os.system x"),
    "[" * 5000,
])
def test_topology_loader_raises_only_spec_errors(text: str) -> None:
    with pytest.raises(SpecError):
        load_topology_text(text)
    assert issubclass(TopologyError, SpecError)


def test_a_pull_whose_source_goes_silent_fails_at_the_stall_timeout_not_the_deadline(tmp_path: Path) -> None:
    """A dead path (a trunk cut mid-block) is counted within STALL_TIMEOUT, blamed on the path."""
    from scaledist.cluster import Cluster, Endpoint
    from scaledist.daemons import slave as slave_mod

    async def run() -> tuple[float, m.TransferResult]:
        topo = fp.small_topology()

        async def silent_source(conn: netio.Conn) -> None:
            env = await conn.recv(timeout=5.0)
            await conn.send(m.BlockHeader(env.msg.transfer_id, True, length=topo.block_size))  # then nothing
            await asyncio.sleep(30)

        src_codec = Codec(fp.KEY, "dc1-r1-s1")
        server = await netio.serve("127.0.0.1", 0, src_codec, silent_source, log=lambda s: None)
        port = server.sockets[0].getsockname()[1]
        cluster = Cluster(topology="small.yaml", scale=1.0, key=fp.KEY, source="test",
                          endpoints={"dc1-r1-s1": Endpoint("127.0.0.1", data=port),
                                     "dc1-r1-s2": Endpoint("127.0.0.1")})
        ctx = slave_mod.Context("dc1-r1-s2", topo, cluster, Codec(fp.KEY, "dc1-r1-s2"), fp.LogSink())
        slave = SlaveDaemon(ctx, tmp_path / "s")
        ins = m.CopyInstruction("t1", "pull", "M1", "dc1-r1-s1", "dc1-r1-s2", "news", "f", 1, 0, 1e3, 65536, 0.0)
        assert slave.transfer_timeout(ins) > 2 * slave_mod.STALL_TIMEOUT  # the deadline alone would take long
        t0 = time.monotonic()
        try:
            await slave.pull(ins)
        finally:
            server.close()
        return time.monotonic() - t0, slave.pending["news"][-1]

    took, res = asyncio.run(run())
    assert not res.ok and res.blame == "other" and "TimeoutError" in res.detail, res
    assert took < slave_mod.STALL_TIMEOUT + 3.0, took
