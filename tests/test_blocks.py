"""Cumulative checksums and the checksum-file record format (§0039-0040, §0063-0066, FIG. 3D)."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaledist.core.blocks import (
    RECORD_SIZE,
    ChecksumRecord,
    block_count,
    block_span,
    chain_records,
    cumulative_crc,
    decode_records,
    encode_record,
    length_ok,
    split_blocks,
)


def test_block_zero_is_seeded_with_zero() -> None:
    assert cumulative_crc(b"hello", 0) == zlib.crc32(b"hello")


def test_block_i_verifies_with_block_i_minus_1_crc_only() -> None:
    """§0064: block 2 is verified with the checksum of block 1, not by re-reading blocks 0..1."""
    blocks = [b"A" * 8, b"B" * 8, b"C" * 3]
    recs = chain_records(blocks)
    assert cumulative_crc(blocks[2], recs[1].crc) == recs[2].crc
    # Seeded wrongly (e.g. with 0, or a different previous block) it fails.
    assert cumulative_crc(blocks[2], 0) != recs[2].crc
    assert cumulative_crc(blocks[2], recs[0].crc) != recs[2].crc


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_block_crc_covers_all_blocks_so_far(blocks: list[bytes]) -> None:
    recs = chain_records(blocks)
    for i, rec in enumerate(recs):
        assert rec.crc == zlib.crc32(b"".join(blocks[: i + 1]))
        assert rec.index == i
        assert rec.length == len(blocks[i])
    assert [r.final for r in recs] == [False] * (len(blocks) - 1) + [True]


def test_record_is_24_bytes() -> None:
    assert RECORD_SIZE == 24
    assert len(encode_record(ChecksumRecord(0, 1, 2, True))) == 24


@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)),
        max_size=20,
    ),
    st.booleans(),
)
def test_records_round_trip(items: list[tuple[int, int]], final: bool) -> None:
    recs = [ChecksumRecord(i, crc, length, final and i == len(items) - 1) for i, (crc, length) in enumerate(items)]
    buf = b"".join(encode_record(r) for r in recs)
    got, valid = decode_records(buf)
    assert got == recs
    assert valid == len(buf)


def _buf(n: int, final: bool = False) -> bytes:
    return b"".join(encode_record(r) for r in chain_records([bytes([i]) * 4 for i in range(n)], final=final))


@pytest.mark.parametrize("cut", range(1, RECORD_SIZE))
def test_torn_tail_is_cut(cut: int) -> None:
    buf = _buf(3)
    got, valid = decode_records(buf[: 2 * RECORD_SIZE + cut])
    assert [r.index for r in got] == [0, 1]
    assert valid == 2 * RECORD_SIZE


def test_garbage_tail_is_cut() -> None:
    buf = _buf(2) + b"\xff" * RECORD_SIZE + _buf(3)[2 * RECORD_SIZE :]
    got, valid = decode_records(buf)
    assert len(got) == 2
    assert valid == 2 * RECORD_SIZE


@pytest.mark.parametrize("pos", range(RECORD_SIZE))
def test_any_flipped_byte_invalidates_the_record(pos: int) -> None:
    buf = bytearray(_buf(2))
    buf[RECORD_SIZE + pos] ^= 0x40
    got, valid = decode_records(bytes(buf))
    assert len(got) == 1
    assert valid == RECORD_SIZE


def test_indices_must_be_consecutive_from_zero() -> None:
    recs = [ChecksumRecord(0, 1, 4), ChecksumRecord(2, 3, 4)]
    got, valid = decode_records(b"".join(encode_record(r) for r in recs))
    assert got == recs[:1]
    assert valid == RECORD_SIZE
    got, valid = decode_records(encode_record(ChecksumRecord(1, 1, 4)))
    assert (got, valid) == ([], 0)


def test_nothing_after_a_final_record() -> None:
    recs = [ChecksumRecord(0, 1, 4, final=True), ChecksumRecord(1, 2, 4)]
    got, _ = decode_records(b"".join(encode_record(r) for r in recs))
    assert got == recs[:1]


def test_final_flag_is_stored_with_the_last_checksum() -> None:
    got, _ = decode_records(_buf(3, final=True))
    assert [r.final for r in got] == [False, False, True]


def test_decode_with_block_size_enforces_the_block_rule() -> None:
    full = encode_record(ChecksumRecord(0, 1, 8))
    short = encode_record(ChecksumRecord(1, 2, 3))
    assert len(decode_records(full + short, block_size=8)[0]) == 1  # short non-final block refused
    short_final = encode_record(ChecksumRecord(1, 2, 3, final=True))
    assert len(decode_records(full + short_final, block_size=8)[0]) == 2
    too_long = encode_record(ChecksumRecord(0, 1, 9, final=True))
    assert decode_records(too_long, block_size=8)[0] == []


def test_length_rule() -> None:
    assert length_ok(0, 8, False, 8)
    assert not length_ok(0, 7, False, 8)
    assert length_ok(3, 1, True, 8)
    assert length_ok(3, 8, True, 8)
    assert not length_ok(3, 9, True, 8)
    assert not length_ok(3, 0, True, 8)  # an empty final block only as the whole (empty) file
    assert length_ok(0, 0, True, 8)


@pytest.mark.parametrize("bad", [ChecksumRecord(-1, 0, 0), ChecksumRecord(0, 2**32, 0), ChecksumRecord(0, 0, -1)])
def test_encode_refuses_out_of_range(bad: ChecksumRecord) -> None:
    with pytest.raises(ValueError):
        encode_record(bad)


def test_block_arithmetic() -> None:
    assert block_count(0, 64) == 0
    assert block_count(1, 64) == 1
    assert block_count(64, 64) == 1
    assert block_count(65, 64) == 2
    assert block_span(0, 64) == (0, 64)
    assert block_span(3, 64) == (192, 64)
    with pytest.raises(ValueError):
        block_count(10, 0)
    with pytest.raises(ValueError):
        block_span(-1, 64)


@given(st.binary(max_size=300), st.integers(1, 50))
def test_split_blocks(data: bytes, bs: int) -> None:
    blocks = split_blocks(data, bs)
    assert b"".join(blocks) == data
    assert all(len(b) == bs for b in blocks[:-1])
    assert 0 < len(blocks[-1]) <= bs or data == b""
    assert len(blocks) == max(1, block_count(len(data), bs))
