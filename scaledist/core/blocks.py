"""Blocks and cumulative checksums (§0039-0040, §0061-0067, FIG. 3D).

A file is a sequence of fixed-size blocks; only the last may be shorter. Each
block's checksum is a CRC32 seeded with the previous block's checksum, so
block i's checksum covers blocks 0..i and a receiver verifies block i knowing
only block i-1's checksum (§0064-0066). The final flag travels with the last
block's checksum (§0040): a receiver that stores that block knows the file is
complete.

The checksum file is a sequence of fixed-size binary records. Each record
carries its own CRC so a torn or garbage tail (a crash mid-append) is
detected and cut, never trusted.

Pure: no I/O.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

CRC_MAX = 0xFFFFFFFF
MAX_INDEX = 0xFFFFFFFF

_MAGIC = b"SD"
_FORMAT = 1
_FLAG_FINAL = 0x01
# magic, format, index, cumulative crc, block length, flags | record crc over the preceding 20 bytes
_BODY = struct.Struct("<2sBIIQB")
_TAIL = struct.Struct("<I")
RECORD_SIZE = _BODY.size + _TAIL.size  # 24 bytes


def cumulative_crc(data: bytes | bytearray | memoryview, prev_crc: int) -> int:
    """CRC32 of ``data`` continuing from ``prev_crc`` (0 for block 0): covers every block so far."""
    return zlib.crc32(data, prev_crc) & CRC_MAX


@dataclass(frozen=True, slots=True)
class ChecksumRecord:
    """One entry of a checksum file: block ``index`` has ``length`` bytes; ``crc`` covers blocks 0..index."""

    index: int
    crc: int
    length: int
    final: bool = False


def encode_record(record: ChecksumRecord) -> bytes:
    """Fixed-size (24 byte) encoding with a self-check so a torn append is recognisable."""
    if not 0 <= record.index <= MAX_INDEX:
        raise ValueError(f"block index {record.index} out of range")
    if not 0 <= record.crc <= CRC_MAX:
        raise ValueError(f"crc {record.crc} out of range")
    if not 0 <= record.length < 2**64:
        raise ValueError(f"block length {record.length} out of range")
    body = _BODY.pack(_MAGIC, _FORMAT, record.index, record.crc, record.length, _FLAG_FINAL if record.final else 0)
    return body + _TAIL.pack(zlib.crc32(body) & CRC_MAX)


def _decode_one(chunk: bytes | memoryview) -> ChecksumRecord | None:
    body = bytes(chunk[: _BODY.size])
    (check,) = _TAIL.unpack_from(chunk, _BODY.size)
    if zlib.crc32(body) & CRC_MAX != check:
        return None
    magic, fmt, index, crc, length, flags = _BODY.unpack(body)
    if magic != _MAGIC or fmt != _FORMAT or flags & ~_FLAG_FINAL:
        return None
    return ChecksumRecord(index=index, crc=crc, length=length, final=bool(flags & _FLAG_FINAL))


def decode_records(
    buf: bytes | bytearray | memoryview, block_size: int | None = None
) -> tuple[list[ChecksumRecord], int]:
    """Decode a checksum file: the valid records and how many bytes of ``buf`` they span.

    Stops at the first torn, corrupt or out-of-sequence record; everything from
    there on is not trusted (the caller truncates it). Indices must run 0, 1,
    2, ...; nothing may follow a final record. With ``block_size``, lengths must
    fit the block rule too (non-final blocks exactly ``block_size``, the final
    one at most that, a zero-length final block only as block 0 of an empty file).
    """
    view = memoryview(buf)
    records: list[ChecksumRecord] = []
    offset = 0
    while offset + RECORD_SIZE <= len(view):
        rec = _decode_one(view[offset : offset + RECORD_SIZE])
        if rec is None or rec.index != len(records):
            break
        if records and records[-1].final:
            break
        if block_size is not None and not length_ok(rec.index, rec.length, rec.final, block_size):
            break
        records.append(rec)
        offset += RECORD_SIZE
    return records, offset


def length_ok(index: int, length: int, final: bool, block_size: int) -> bool:
    """The block rule: every block but the last is full; the last has 1..block_size bytes.

    An empty file is one zero-length final block 0, so that even it can be
    marked complete.
    """
    if final:
        return 1 <= length <= block_size or (length == 0 and index == 0)
    return length == block_size


def block_count(size: int, block_size: int) -> int:
    """Number of blocks holding ``size`` bytes (0 for 0: an empty file's lone final block holds no bytes)."""
    _check_block_size(block_size)
    if size < 0:
        raise ValueError(f"size {size} is negative")
    return -(-size // block_size)


def block_span(index: int, block_size: int) -> tuple[int, int]:
    """Byte offset and nominal length of block ``index`` (the last block may be shorter)."""
    _check_block_size(block_size)
    if index < 0:
        raise ValueError(f"block index {index} is negative")
    return index * block_size, block_size


def split_blocks(data: bytes, block_size: int) -> list[bytes]:
    """Cut a whole file into blocks; an empty file is one empty block so it can carry the final flag."""
    _check_block_size(block_size)
    if not data:
        return [b""]
    return [data[i : i + block_size] for i in range(0, len(data), block_size)]


def chain_records(blocks: Iterable[bytes], final: bool = True) -> list[ChecksumRecord]:
    """The checksum file for a sequence of blocks (the last one flagged final when ``final``)."""
    out: list[ChecksumRecord] = []
    crc = 0
    items = list(blocks)
    for i, data in enumerate(items):
        crc = cumulative_crc(data, crc)
        out.append(ChecksumRecord(index=i, crc=crc, length=len(data), final=final and i == len(items) - 1))
    return out


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block size {block_size!r} must be a positive integer")
