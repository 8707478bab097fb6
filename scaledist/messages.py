"""The one vocabulary of ScaleDist: every event the core consumes and every message on the wire.

The sans-I/O core (``scaledist.core``) takes and returns these structs; the
wire codec (``scaledist.wire``) frames, authenticates and bounds them. Keeping
one definition means a field the core relies on is a field the codec checks.

All sizes are bytes, rates bytes/second, times seconds (float, the caller's
clock). Identifiers are validated by ``scaledist.ids`` where they touch disk.
"""

from __future__ import annotations

from typing import Literal

import msgspec

WIRE_VERSION = 1

Blame = Literal["none", "receiver", "source", "other"]
Mode = Literal["pull", "push"]


class _Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


# --- slave -> master -------------------------------------------------------


class FileState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One row of a slave state (FIG. 3C / FIG. 4D): what a slave holds of one file."""

    file_id: str
    version: int
    size: int  # bytes verified and durable on the slave
    complete: bool = False  # the final flag of the last block was received (§0040)
    want_newest: bool = False  # §0093: fetch a newer version when one exists
    fileset_file: bool = False  # this row is the FileSet file itself


class TransferResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Outcome of one copy operation as the receiving slave saw it (§0089, §0128)."""

    transfer_id: str
    ok: bool
    blame: Blame = "none"  # receiver: the reporting slave itself; other: anything else on the path
    detail: str = ""
    bytes: int = 0
    seconds: float = 0.0


class SlaveReport(_Msg, tag="slave_report"):
    """Periodic and per-block slave state for one fileset (§0069, §0125)."""

    slave: str
    fileset: str
    files: tuple[FileState, ...]
    outbound: int = 0  # current outbound transmissions (§0087)
    results: tuple[TransferResult, ...] = ()
    seq: int = 0  # increases with every report a slave process sends


# --- master <-> resource manager ------------------------------------------


class CopyRequest(_Msg, tag="copy_request"):
    """A master's ranked source list for one block (§0135, FIG. 7A step 712)."""

    transfer_id: str
    master: str
    destination: str
    sources: tuple[str, ...]  # best first
    fileset: str
    file_id: str
    version: int
    block: int
    size: int  # bytes of this block
    fileset_file: bool = False


class Grant(_Msg, tag="grant"):
    """Resource manager: copy from ``source`` (§0136)."""

    transfer_id: str
    source: str
    destination: str
    path: tuple[str, ...]  # link ids, in order
    priority: str  # the priority pool the bytes were taken from
    rate: float  # bytes/s the sender paces to
    window: int  # socket buffer bytes from the bandwidth-delay product (§0116)
    epoch: int
    expires_at: float  # the reservation lapses by itself after this time


class Denial(_Msg, tag="denial"):
    """Resource manager: no source on the list had room (§0139 'fail')."""

    transfer_id: str
    reason: str
    epoch: int = 0
    retry_in: float = 0.0  # seconds until one of the sources may have room; 0 = no estimate


class Release(_Msg, tag="release"):
    """Master -> resource manager: a granted copy finished; free its rate and future bytes."""

    transfer_id: str
    ok: bool
    bytes: int = 0


class SetCapacity(_Msg, tag="set_capacity"):
    """Adjusted capacity of a link shared with other applications (§0114)."""

    link: str
    bytes_per_s: float


# --- master -> slave -------------------------------------------------------


class CopyInstruction(_Msg, tag="copy_instruction"):
    """Master -> destination (pull) or source (push) slave: move one block (§0127, §0132)."""

    transfer_id: str
    mode: Mode
    master: str
    source: str
    destination: str
    fileset: str
    file_id: str
    version: int
    block: int
    rate: float
    window: int
    deadline: float  # the master counts the copy failed if no result by then


# --- generator -> its slave -----------------------------------------------


class Published(_Msg, tag="published"):
    """A generator stored a new verified block in its slave's storage (§0039)."""

    fileset: str
    file_id: str
    version: int


# --- data plane: slave <-> slave ------------------------------------------


class BlockGet(_Msg, tag="block_get"):
    """Pull: the destination asks the source for one block."""

    transfer_id: str
    fileset: str
    file_id: str
    version: int
    block: int
    rate: float
    window: int


class BlockPut(_Msg, tag="block_put"):
    """Push: header before ``length`` raw bytes of one block."""

    transfer_id: str
    fileset: str
    file_id: str
    version: int
    block: int
    crc: int  # cumulative CRC32 of blocks 0..block (§0063)
    prev_crc: int  # cumulative CRC32 of blocks 0..block-1 (0 for block 0)
    length: int
    final: bool


class BlockHeader(_Msg, tag="block_header"):
    """Pull reply: ``length`` raw bytes follow when ok (checksum in the header, §0065)."""

    transfer_id: str
    ok: bool
    reason: str = ""
    crc: int = 0
    prev_crc: int = 0
    length: int = 0
    final: bool = False


class BlockAck(_Msg, tag="block_ack"):
    """Push reply from the destination after verify + store."""

    transfer_id: str
    ok: bool
    reason: str = ""
    blame: Blame = "none"


# --- generic ---------------------------------------------------------------


class Ack(_Msg, tag="ack"):
    ok: bool = True
    detail: str = ""


class Error(_Msg, tag="error"):
    """A rejected message: the reason is logged by both sides and nothing changed."""

    reason: str


class StatusQuery(_Msg, tag="status_query"):
    pass


class StatusReply(_Msg, tag="status_reply"):
    role: str
    ident: str
    body: dict[str, object]


Message = (
    SlaveReport
    | CopyRequest
    | Grant
    | Denial
    | Release
    | SetCapacity
    | CopyInstruction
    | Published
    | BlockGet
    | BlockPut
    | BlockHeader
    | BlockAck
    | Ack
    | Error
    | StatusQuery
    | StatusReply
)

Decision = Grant | Denial


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What is authenticated: version, sender, send time, a nonce against replay, and the message."""

    v: int
    sender: str
    ts: float
    nonce: str
    msg: Message
