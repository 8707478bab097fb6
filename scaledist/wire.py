"""The one wire format of ScaleDist: versioned, authenticated, bounded frames (sans-I/O).

Frame layout (all integers big-endian)::

    b"SD" | version u8 | flags u8 (0) | payload length u32 | HMAC-SHA256 (32 bytes) | payload

The HMAC covers the 8 header bytes and the payload; the payload is the msgspec
JSON of a :class:`~scaledist.messages.Envelope` (version, sender, send time,
nonce, message).

Why an HMAC with a shared cluster key and not TLS: the daemons run inside
emulated namespaces and on lab hosts where there is no PKI to manage
(certificates, expiry, trust roots); what the control plane needs is integrity
and authenticity of every message plus freshness (timestamp + nonce replay
cache), which an HMAC gives with one secret in the cluster file. Confidentiality
is not a goal. Data blocks travel as raw bytes after an authenticated header
(``BlockPut`` / ``BlockHeader``) that carries their cumulative CRC32, so a
corrupted or substituted block fails verification at the receiver (§0063, §0065).

This module does no I/O and reads no clock, in the style of h11: bytes are fed
in, events come out, and the caller passes ``now`` (wall-clock seconds, since
``ts`` is compared across hosts).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import secrets
import struct

import msgspec

from scaledist.messages import WIRE_VERSION, Envelope, Message

MAGIC = b"SD"
HEADER = struct.Struct(">2sBBI")
HEADER_LEN = HEADER.size  # 8
MAC_LEN = 32
PREFIX_LEN = HEADER_LEN + MAC_LEN  # bytes before the payload
MIN_KEY_LEN = 16
NONCE_BYTES = 16
_MAX_NONCE_LEN = 128
_MAX_SENDER_LEN = 256

__all__ = [
    "HEADER_LEN",
    "MAC_LEN",
    "MAGIC",
    "PREFIX_LEN",
    "Codec",
    "FrameReader",
    "ProtocolError",
]


class ProtocolError(Exception):
    """A frame was rejected; ``reason`` is a short sentence both sides can log.

    After one, the connection must be closed: the byte stream cannot be resynchronised.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Codec:
    """Seals messages into frames and opens frames into envelopes for one node.

    One codec per daemon (not per connection), so its replay cache sees every
    message the node accepts. The cache keeps the nonce of each accepted message
    while its timestamp is still inside the skew window, and never more than
    ``replay_cache`` entries: when full, the oldest entry is evicted and the
    acceptance floor rises to its timestamp, so memory stays bounded without
    ever letting a replay through (older messages are rejected instead).
    """

    def __init__(
        self,
        key: bytes,
        sender: str,
        *,
        max_payload: int = 1 << 20,
        max_skew: float = 120.0,
        replay_cache: int = 100_000,
    ) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_LEN:
            raise ValueError(f"cluster key must be at least {MIN_KEY_LEN} bytes")
        if not sender or len(sender) > _MAX_SENDER_LEN:
            raise ValueError("sender must be a non-empty name of at most 256 characters")
        if not 0 < max_payload <= 0xFFFFFFFF:
            raise ValueError("max_payload must be in 1..2**32-1")
        if not (max_skew > 0 and math.isfinite(max_skew)):
            raise ValueError("max_skew must be a positive number of seconds")
        if replay_cache < 1:
            raise ValueError("replay_cache must hold at least one nonce")
        self._key = bytes(key)
        self.sender = sender
        self.max_payload = max_payload
        self.max_skew = float(max_skew)
        self.replay_capacity = replay_cache
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Envelope)
        self._seen: dict[str, float] = {}  # nonce -> ts of accepted messages
        self._heap: list[tuple[float, str]] = []  # (ts, nonce), oldest first
        self._floor = -math.inf  # messages with ts <= floor can no longer be checked for replay

    # --- sending --------------------------------------------------------------

    def encode(self, msg: Message, now: float) -> bytes:
        """One complete frame carrying ``msg``, stamped ``now`` with a fresh random nonce."""
        env = Envelope(v=WIRE_VERSION, sender=self.sender, ts=float(now), nonce=secrets.token_hex(NONCE_BYTES), msg=msg)
        payload = self._encoder.encode(env)
        if len(payload) > self.max_payload:
            raise ValueError(f"message of {len(payload)} bytes exceeds the {self.max_payload}-byte limit")
        return self.seal(payload)

    def seal(self, payload: bytes, *, version: int = WIRE_VERSION, flags: int = 0) -> bytes:
        """Frames and authenticates arbitrary payload bytes (``encode`` uses it; tests craft bad frames with it)."""
        header = HEADER.pack(MAGIC, version, flags, len(payload))
        mac = hmac.new(self._key, header + payload, hashlib.sha256).digest()
        return header + mac + payload

    # --- receiving ------------------------------------------------------------

    def check_header(self, header: bytes | bytearray | memoryview) -> int:
        """Validates a header as soon as its bytes arrive; returns the announced payload length.

        Accepts a prefix of a header: it checks what is there, so garbage is refused
        from its first two bytes and a huge length before any payload is buffered.
        Returns -1 when the length field is not complete yet.
        """
        n = len(header)
        if n >= 2 and bytes(header[:2]) != MAGIC:
            raise ProtocolError(f"bad magic {bytes(header[:2])!r}")
        if n == 1 and header[0] != MAGIC[0]:
            raise ProtocolError(f"bad magic {bytes(header[:1])!r}")
        if n >= 3 and header[2] != WIRE_VERSION:
            raise ProtocolError(f"unsupported wire version {header[2]}")
        if n >= 4 and header[3] != 0:
            raise ProtocolError(f"unsupported flags 0x{header[3]:02x}")
        if n < HEADER_LEN:
            return -1
        (length,) = struct.unpack_from(">I", header, 4)
        if length > self.max_payload:
            raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_payload}-byte limit")
        return length

    def open(
        self, frame: bytes | bytearray | memoryview, now: float, *, expect_sender: str | None = None
    ) -> Envelope:
        """Authenticates and checks one complete frame WITHOUT recording its nonce.

        Pure: a rejected frame changes nothing. Call :meth:`accept` to commit.
        """
        view = memoryview(frame)
        length = self.check_header(view[:HEADER_LEN])
        if length < 0 or len(view) < PREFIX_LEN + length:
            need = PREFIX_LEN + max(length, 0)
            raise ProtocolError(f"truncated frame: {len(view)} of at least {need} bytes")
        if len(view) > PREFIX_LEN + length:
            raise ProtocolError(f"{len(view) - PREFIX_LEN - length} trailing bytes after the frame")
        header = view[:HEADER_LEN]
        mac = view[HEADER_LEN:PREFIX_LEN]
        payload = view[PREFIX_LEN:]
        h = hmac.new(self._key, header, hashlib.sha256)
        h.update(payload)
        if not hmac.compare_digest(h.digest(), mac):
            raise ProtocolError("bad HMAC: message not authenticated")
        try:
            env = self._decoder.decode(payload)
        except ValueError as e:  # msgspec's DecodeError/ValidationError, and UnicodeDecodeError for bad UTF-8
            raise ProtocolError(f"malformed message: {e}") from None
        except RecursionError:  # StatusReply.body takes any JSON, so nesting depth is the peer's choice
            raise ProtocolError("malformed message: nested too deeply") from None
        self._check_envelope(env, header[2], now, expect_sender)
        return env

    def accept(self, env: Envelope, now: float) -> None:
        """Records the nonce of an opened envelope so the same frame is refused from now on."""
        self._prune(now)
        while len(self._seen) >= self.replay_capacity:
            ts, nonce = heapq.heappop(self._heap)
            del self._seen[nonce]
            self._floor = max(self._floor, ts)
        self._seen[env.nonce] = env.ts
        heapq.heappush(self._heap, (env.ts, env.nonce))

    def decode(
        self, frame: bytes | bytearray | memoryview, now: float, *, expect_sender: str | None = None
    ) -> Envelope:
        """Opens one complete frame and, if it passes every check, records its nonce."""
        env = self.open(frame, now, expect_sender=expect_sender)
        self.accept(env, now)
        return env

    # --- replay cache ---------------------------------------------------------

    @property
    def replay_count(self) -> int:
        """Nonces currently remembered."""
        return len(self._seen)

    def replay_state(self) -> tuple[frozenset[str], float]:
        """The remembered nonces and the acceptance floor (tests compare it before/after a rejection)."""
        return frozenset(self._seen), self._floor

    def _check_envelope(self, env: Envelope, frame_version: int, now: float, expect_sender: str | None) -> None:
        if env.v != frame_version:
            raise ProtocolError(f"envelope version {env.v} does not match frame version {frame_version}")
        if not env.sender or len(env.sender) > _MAX_SENDER_LEN:
            raise ProtocolError("malformed message: sender must be a non-empty name of at most 256 characters")
        if expect_sender is not None and env.sender != expect_sender:
            raise ProtocolError(f"sender {env.sender!r} does not match the expected peer {expect_sender!r}")
        if not env.nonce or len(env.nonce) > _MAX_NONCE_LEN:
            raise ProtocolError(f"malformed message: nonce of {len(env.nonce)} characters")
        ts = env.ts
        if not math.isfinite(ts):
            raise ProtocolError("malformed message: timestamp is not a finite number")
        age = now - ts
        if age > self.max_skew:
            raise ProtocolError(f"stale message: sent {age:.1f} s ago (limit {self.max_skew:g} s)")
        if -age > self.max_skew:
            raise ProtocolError(f"message from the future: dated {-age:.1f} s ahead (limit {self.max_skew:g} s)")
        if ts <= self._floor:
            raise ProtocolError("stale message: older than the replay window can vouch for (replay cache full)")
        if env.nonce in self._seen:
            raise ProtocolError("replayed nonce")

    def _prune(self, now: float) -> None:
        """Forgets nonces whose messages are stale anyway; the floor keeps them refused if the clock steps back."""
        horizon = now - self.max_skew
        heap = self._heap
        while heap and heap[0][0] < horizon:
            ts, nonce = heapq.heappop(heap)
            del self._seen[nonce]
            self._floor = max(self._floor, ts)


class FrameReader:
    """Incremental frame parser for one connection: ``feed`` bytes, pull envelopes with ``next_event``.

    Raw bytes that follow a frame (a block's payload) are taken with ``take_raw``
    / ``take_available``. After a :class:`ProtocolError` the reader is poisoned:
    every later call raises the same error, because the stream cannot be trusted.
    """

    def __init__(self, codec: Codec, *, expect_sender: str | None = None) -> None:
        self.codec = codec
        self.expect_sender = expect_sender
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed but not consumed yet."""
        return len(self._buf)

    @property
    def poisoned(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._raise_if_poisoned()
        self._buf += data

    def next_event(self, now: float) -> Envelope | None:
        """The next authenticated, fresh envelope; None when more bytes are needed."""
        self._raise_if_poisoned()
        buf = self._buf
        try:
            # copies, not memoryviews: an exported view would pin the bytearray against resizing
            length = self.codec.check_header(bytes(buf[:HEADER_LEN]))
            if length < 0 or len(buf) < PREFIX_LEN + length:
                return None
            end = PREFIX_LEN + length
            env = self.codec.open(bytes(buf[:end]), now, expect_sender=self.expect_sender)
        except ProtocolError as e:
            self._error = e
            raise
        self.codec.accept(env, now)
        del buf[:end]
        return env

    def take_raw(self, n: int) -> bytes | None:
        """Exactly ``n`` buffered raw bytes following a frame, or None if fewer are buffered."""
        self._raise_if_poisoned()
        if n < 0:
            raise ValueError("n must be >= 0")
        if len(self._buf) < n:
            return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def take_available(self, limit: int) -> bytes:
        """Up to ``limit`` buffered raw bytes (possibly none): lets a stream drain the buffer first."""
        self._raise_if_poisoned()
        n = min(max(limit, 0), len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def eof(self) -> None:
        """The peer closed: raise if it did so mid-frame (a truncated frame is a protocol error)."""
        self._raise_if_poisoned()
        if self._buf:
            e = ProtocolError(f"truncated frame: connection closed with {len(self._buf)} bytes of a frame buffered")
            self._error = e
            raise e

    def _raise_if_poisoned(self) -> None:
        if self._error is not None:
            raise self._error
