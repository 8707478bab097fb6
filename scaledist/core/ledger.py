"""The reservation ledger: what the resource manager promised, per epoch and per link.

The testbed compares these records with the bytes it measured on each link, so
every byte the resource manager takes out of a pool appears here exactly once:

- ``allocate``: at an epoch start, one record per pool of a link whose past table
  was non-empty (FIG. 9 step 904); ``bytes`` = allocated, ``priority`` = pool.
- ``grant``: one record per link of the granted path; ``bytes`` = the part of the
  block reserved in the grant's epoch, ``priority`` = the pool it came from.
- ``carry``: at a later epoch start, one record per link for the part of a block
  that spans epochs (§0152); ``bytes`` = what the pool actually gave (clamped at
  what it had left; the ``reason`` says so when clamped).
- ``deny``: one record per failed request (``link`` = last failing link or None,
  ``source`` = the source that failed there, ``priority`` = the request's own).
- ``release`` / ``expire``: the transfer's rate was freed (``granted`` = the
  master's ok flag for a release, ``reason`` says "ok"/"failed"/"lapsed").

The daemon appends :func:`encode_jsonl` output to a file; :func:`read_ledger`
reads it back and tolerates a torn last line (a daemon killed mid-write).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import msgspec

Kind = Literal["grant", "carry", "deny", "release", "expire", "allocate"]


class LedgerRecord(msgspec.Struct, frozen=True):
    """One line of the ledger; sizes in bytes, rate in bytes/s, ``t`` in the RM's clock."""

    kind: Kind
    epoch: int
    t: float
    link: str | None
    priority: str | None  # the pool used (deny: the request's priority)
    bytes: int
    rate: float
    transfer_id: str
    source: str | None
    destination: str
    fileset: str
    file_id: str
    block: int
    granted: bool
    reason: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LedgerRecord)


def encode_jsonl(records: Iterable[LedgerRecord]) -> bytes:
    """JSON lines, one record each, newline-terminated (append-only friendly)."""
    encode = _encoder.encode
    return b"".join(encode(r) + b"\n" for r in records)


def read_ledger(path: str | Path) -> list[LedgerRecord]:
    """Records of a JSON-lines ledger file; a torn (partial) last line is skipped.

    A bad line anywhere else is corruption, not a crash mid-write, and raises ValueError.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    out: list[LedgerRecord] = []
    last = len(lines) - 1
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(_decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if n == last:  # no trailing newline: a write torn by a crash
                break
            raise ValueError(f"{path}: line {n + 1} is not a ledger record: {exc}") from exc
    return out


def reserved_bytes(records: Iterable[LedgerRecord]) -> dict[tuple[int, str], int]:
    """Bytes reserved per (epoch, link): grant + carry records, what the testbed measures against."""
    out: dict[tuple[int, str], int] = {}
    for r in records:
        if (r.kind == "grant" or r.kind == "carry") and r.link is not None:
            key = (r.epoch, r.link)
            out[key] = out.get(key, 0) + r.bytes
    return out
