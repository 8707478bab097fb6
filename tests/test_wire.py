"""The wire format: every message round-trips, every kind of bad input is refused and changes nothing."""

from __future__ import annotations

import struct
import typing

import msgspec
import pytest

from scaledist import messages as m
from scaledist.wire import HEADER_LEN, MAGIC, PREFIX_LEN, Codec, FrameReader, ProtocolError

KEY = b"cluster-key-0123456789abcdef"
NOW = 1_700_000_000.0

SAMPLES: list[m.Message] = [
    m.SlaveReport(
        slave="s1",
        fileset="fs",
        files=(m.FileState("f", 3, 1024, complete=True), m.FileState("fs", 1, 10, fileset_file=True)),
        outbound=2,
        results=(m.TransferResult("t1", False, blame="source", detail="crc", bytes=5, seconds=0.5),),
        seq=9,
    ),
    m.CopyRequest("t1", "m1", "s2", ("s1", "s3"), "fs", "f", 3, 0, 1 << 20, fileset_file=False),
    m.Grant("t1", "s1", "s2", ("l1", "l2"), "P4", 1.25e6, 65536, 7, NOW + 10),
    m.Denial("t1", "no room on trunk dc1-dc2", epoch=7),
    m.Release("t1", True, bytes=1 << 20),
    m.SetCapacity("dc1-dc2", 5e6),
    m.CopyInstruction("t1", "pull", "m1", "s1", "s2", "fs", "f", 3, 0, 1e6, 65536, NOW + 30),
    m.Published("fs", "f", 4),
    m.BlockGet("t1", "fs", "f", 3, 0, 1e6, 65536),
    m.BlockPut("t1", "fs", "f", 3, 1, 0xDEADBEEF, 0x12345678, 4096, True),
    m.BlockHeader("t1", True, crc=1, prev_crc=0, length=10, final=False),
    m.BlockAck("t1", False, reason="crc mismatch", blame="receiver"),
    m.Ack(),
    m.Error("nope"),
    m.StatusQuery(),
    m.StatusReply("rm", "rm1", {"links": {"a": 1.5}, "granted": 3, "names": ["x"]}),
]


def codec(sender: str = "node", **kw: typing.Any) -> Codec:
    return Codec(KEY, sender, **kw)


def envelope_json(msg: dict[str, object] | None = None, **fields: object) -> bytes:
    """A JSON envelope payload with arbitrary (possibly invalid) contents, for sealing with the right key."""
    env: dict[str, object] = {"v": 1, "sender": "peer", "ts": NOW, "nonce": "00ff" * 8, "msg": msg or {"type": "ack"}}
    env.update(fields)
    return msgspec.json.encode(env)


def assert_rejected(receiver: Codec, data: bytes, match: str, *, now: float = NOW) -> ProtocolError:
    """Feeds ``data``; it must be refused with a reason matching ``match`` and leave the replay cache as it was."""
    before = receiver.replay_state()
    reader = FrameReader(receiver)
    reader.feed(data)
    with pytest.raises(ProtocolError, match=match) as info:
        reader.next_event(now)
    assert receiver.replay_state() == before
    assert reader.poisoned
    with pytest.raises(ProtocolError):  # poisoned: the connection must be closed
        reader.next_event(now)
    with pytest.raises(ProtocolError):
        reader.feed(b"more")
    return info.value


def test_every_message_type_round_trips() -> None:
    assert {type(s) for s in SAMPLES} == set(typing.get_args(m.Message))
    sender, receiver = codec("alice"), codec("bob")
    for msg in SAMPLES:
        frame = sender.encode(msg, NOW)
        assert frame[:2] == MAGIC and frame[2] == m.WIRE_VERSION and frame[3] == 0
        assert struct.unpack(">I", frame[4:8])[0] == len(frame) - PREFIX_LEN
        env = receiver.decode(frame, NOW + 1)
        assert env.msg == msg
        assert env.sender == "alice" and env.ts == NOW and env.v == m.WIRE_VERSION
    assert receiver.replay_count == len(SAMPLES)


def test_nonces_are_fresh() -> None:
    c = codec()
    nonces = {c.open(c.encode(m.Ack(), NOW), NOW).nonce for _ in range(200)}
    assert len(nonces) == 200


def test_reader_handles_back_to_back_frames_and_raw_bytes() -> None:
    sender, receiver = codec("a"), codec("b")
    raw = bytes(range(256)) * 40
    put = m.BlockPut("t", "fs", "f", 1, 0, 7, 0, len(raw), True)
    stream = sender.encode(put, NOW) + raw + sender.encode(m.Ack(), NOW)
    reader = FrameReader(receiver)
    reader.feed(stream)
    env = reader.next_event(NOW)
    assert env is not None and env.msg == put
    assert reader.buffered == len(stream) - len(sender.encode(put, NOW))
    assert reader.take_raw(len(raw) + 10**6) is None  # not enough: nothing consumed
    assert reader.take_raw(len(raw)) == raw
    env = reader.next_event(NOW)
    assert env is not None and env.msg == m.Ack()
    assert reader.buffered == 0 and reader.next_event(NOW) is None


def test_frames_split_at_every_byte_boundary_reassemble() -> None:
    sender = codec("a")
    put = m.BlockPut("t", "fs", "f", 1, 0, 7, 0, 4, True)
    stream = sender.encode(SAMPLES[0], NOW) + sender.encode(put, NOW) + b"RAW!"
    want = [SAMPLES[0], put]

    def pull(reader: FrameReader, got: list[m.Message]) -> None:
        # after the BlockPut, its raw bytes follow: the caller stops parsing frames
        while len(got) < 2 and (env := reader.next_event(NOW)) is not None:
            got.append(env.msg)

    for cut in range(len(stream) + 1):
        reader = FrameReader(codec("b"))
        got: list[m.Message] = []
        for part in (stream[:cut], stream[cut:]):
            reader.feed(part)
            pull(reader, got)
        assert got == want, cut
        assert reader.take_raw(4) == b"RAW!" and reader.buffered == 0
    reader = FrameReader(codec("b"))  # and one byte at a time
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        pull(reader, got)
    assert got == want and reader.take_raw(4) == b"RAW!"


def test_bad_magic() -> None:
    err = assert_rejected(codec(), b"GET / HTTP/1.1\r\n\r\n", r"bad magic b'GE'")
    assert err.reason == "bad magic b'GE'"


def test_bad_magic_refused_from_two_bytes() -> None:
    reader = FrameReader(codec())
    reader.feed(b"S")
    assert reader.next_event(NOW) is None
    reader.feed(b"X")
    with pytest.raises(ProtocolError, match="bad magic"):
        reader.next_event(NOW)


def test_unsupported_version() -> None:
    frame = codec().seal(envelope_json(), version=7)
    err = assert_rejected(codec(), frame, "unsupported wire version 7")
    assert err.reason == "unsupported wire version 7"
    assert_rejected(codec(), frame[:3], "unsupported wire version 7")  # refused as soon as the byte arrives


def test_unsupported_flags() -> None:
    assert_rejected(codec(), codec().seal(envelope_json(), flags=1), "unsupported flags 0x01")


def test_oversized_length_refused_from_the_header_alone() -> None:
    header = struct.pack(">2sBBI", MAGIC, m.WIRE_VERSION, 0, 5_000_000)
    err = assert_rejected(codec(), header, "exceeds")  # 8 bytes fed: refused before any payload arrives
    assert err.reason == "frame of 5000000 bytes exceeds the 1048576-byte limit"
    small = codec(max_payload=100)
    big = codec().encode(m.Error("x" * 200), NOW)
    assert_rejected(small, big[:HEADER_LEN], "exceeds the 100-byte limit")


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        codec(max_payload=64).encode(m.Error("x" * 100), NOW)


def test_wrong_key() -> None:
    forged = Codec(b"another-key-of-enough-length", "mallory").encode(m.Ack(), NOW)
    err = assert_rejected(codec(), forged, "bad HMAC")
    assert err.reason == "bad HMAC: message not authenticated"


@pytest.mark.parametrize("where", [0, 4, 7, 8, 39, 40, -1])
def test_any_flipped_bit_breaks_authentication(where: int) -> None:
    frame = bytearray(codec("a").encode(m.Release("t", True, bytes=5), NOW))
    frame[where] ^= 0x01
    receiver = codec()
    reader = FrameReader(receiver)
    reader.feed(bytes(frame))
    # header bytes are checked first (magic/version/flags/length), everything else by the HMAC;
    # a length made larger just waits for bytes that never come: the close then reports truncation
    with pytest.raises(ProtocolError, match=r"bad magic|unsupported|bad HMAC|truncated|exceeds"):
        assert reader.next_event(NOW) is None
        reader.eof()
    assert receiver.replay_count == 0


def test_truncated_frame() -> None:
    c = codec()
    frame = codec("a").encode(m.Ack(), NOW)
    before = c.replay_state()
    with pytest.raises(ProtocolError, match="truncated"):
        c.decode(frame[:-1], NOW)
    with pytest.raises(ProtocolError, match="truncated"):
        c.decode(frame[:5], NOW)
    with pytest.raises(ProtocolError, match="trailing"):
        c.decode(frame + b"x", NOW)
    reader = FrameReader(c)
    reader.feed(frame[:-1])
    assert reader.next_event(NOW) is None  # incomplete: waits for more
    with pytest.raises(ProtocolError, match="truncated"):
        reader.eof()  # ...but the peer closed
    assert reader.poisoned and c.replay_state() == before


def test_clean_eof_between_frames() -> None:
    reader = FrameReader(codec())
    reader.eof()  # nothing buffered: no error
    assert not reader.poisoned


def test_malformed_json() -> None:
    err = assert_rejected(codec(), codec().seal(b'{"v": 1, "sender": '), "malformed message")
    assert "truncated" in err.reason
    assert_rejected(codec(), codec().seal(b"\xff\xfe not json"), "malformed message")
    assert_rejected(codec(), codec().seal(b""), "malformed message")


def test_unknown_message_type() -> None:
    err = assert_rejected(codec(), codec().seal(envelope_json({"type": "launch_missiles"})), "malformed message")
    assert "launch_missiles" in err.reason and "$.msg.type" in err.reason


def test_missing_field() -> None:
    payload = envelope_json({"type": "release", "ok": True})
    err = assert_rejected(codec(), codec().seal(payload), "malformed message")
    assert "missing required field `transfer_id`" in err.reason
    assert_rejected(codec(), codec().seal(b'{"v":1,"sender":"p","ts":1.0,"msg":{"type":"ack"}}'), "nonce")


def test_wrong_type() -> None:
    req = msgspec.to_builtins(SAMPLES[1])
    req["size"] = "big"
    err = assert_rejected(codec(), codec().seal(envelope_json(req)), "malformed")
    assert err.reason == "malformed message: Expected `int`, got `str` - at `$.msg.size`"


def test_unknown_field() -> None:
    assert_rejected(codec(), codec().seal(envelope_json(extra=1)), "malformed message: .*unknown field `extra`")
    assert_rejected(codec(), codec().seal(envelope_json({"type": "ack", "sneaky": 1})), "unknown field `sneaky`")


def test_envelope_version_must_match_frame() -> None:
    assert_rejected(codec(), codec().seal(envelope_json(v=2)), "envelope version 2 does not match frame version 1")


def test_bad_sender_and_nonce() -> None:
    assert_rejected(codec(), codec().seal(envelope_json(sender="")), "sender")
    assert_rejected(codec(), codec().seal(envelope_json(nonce="")), "nonce")
    assert_rejected(codec(), codec().seal(envelope_json(nonce="x" * 1000)), "nonce")


def test_unexpected_sender() -> None:
    frame = codec("x").encode(m.Ack(), NOW)
    receiver = codec("rm")
    reader = FrameReader(receiver, expect_sender="m1")
    reader.feed(frame)
    before = receiver.replay_state()
    with pytest.raises(ProtocolError, match="sender 'x' does not match the expected peer 'm1'"):
        reader.next_event(NOW)
    assert receiver.replay_state() == before
    reader = FrameReader(receiver, expect_sender="x")
    reader.feed(frame)
    assert reader.next_event(NOW) is not None


def test_stale_message() -> None:
    frame = codec("a").encode(m.Ack(), NOW - 400)
    err = assert_rejected(codec(), frame, "stale")
    assert err.reason == "stale message: sent 400.0 s ago (limit 120 s)"
    assert codec().decode(codec("a").encode(m.Ack(), NOW - 119), NOW).msg == m.Ack()  # inside the window


def test_future_dated_beyond_skew() -> None:
    err = assert_rejected(codec(), codec("a").encode(m.Ack(), NOW + 300), "future")
    assert "300.0 s ahead (limit 120 s)" in err.reason
    assert codec().decode(codec("a").encode(m.Ack(), NOW + 60), NOW).msg == m.Ack()


def test_non_finite_timestamp() -> None:
    assert_rejected(codec(), codec().seal(envelope_json(ts=1e999)), "malformed message")


def test_replayed_frame() -> None:
    receiver = codec()
    frame = codec("a").encode(m.Release("t", True), NOW)
    assert receiver.decode(frame, NOW).msg == m.Release("t", True)
    assert receiver.replay_count == 1
    err = assert_rejected(receiver, frame, "replayed nonce", now=NOW + 5)
    assert err.reason == "replayed nonce"
    assert receiver.replay_count == 1


def test_rejected_message_does_not_enter_replay_cache() -> None:
    # a stale copy is refused without recording its nonce ...
    receiver = codec()
    frame = codec("a").encode(m.Ack(), NOW)
    assert_rejected(receiver, frame, "future", now=NOW - 200)
    assert receiver.replay_count == 0
    # ... so the genuine delivery, once the clocks agree, is still accepted (exactly once)
    assert receiver.decode(frame, NOW).msg == m.Ack()
    assert_rejected(receiver, frame, "replayed")


def test_replay_cache_forgets_stale_nonces() -> None:
    receiver = codec(max_skew=10.0)
    sender = codec("a")
    for i in range(50):
        receiver.decode(sender.encode(m.Ack(), NOW + i), NOW + i)
    assert receiver.replay_count <= 11  # only the last skew window's nonces are kept


def test_replay_cache_is_bounded_and_still_refuses_replays() -> None:
    receiver = codec(replay_cache=3)
    sender = codec("a")
    frames = [sender.encode(m.Ack(), NOW + i * 0.1) for i in range(6)]
    for f in frames:
        receiver.decode(f, NOW + 1)
    assert receiver.replay_count == 3
    for f in frames:  # evicted or not, none is accepted twice
        with pytest.raises(ProtocolError, match="replay"):
            receiver.decode(f, NOW + 1)


def test_clock_stepping_back_does_not_reopen_replays() -> None:
    receiver = codec(max_skew=10.0)
    sender = codec("a")
    old = sender.encode(m.Ack(), NOW)
    receiver.decode(old, NOW)
    receiver.decode(sender.encode(m.Ack(), NOW + 30), NOW + 30)  # prunes the first nonce
    with pytest.raises(ProtocolError, match=r"stale|replay"):
        receiver.decode(old, NOW + 5)  # the receiver's clock stepped back into the first message's window


def test_codec_argument_checks() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Codec(b"short", "x")
    with pytest.raises(ValueError, match="sender"):
        Codec(KEY, "")
    with pytest.raises(ValueError):
        Codec(KEY, "x", max_payload=0)


def test_invalid_utf8_and_deep_nesting_are_malformed() -> None:
    bad_utf8 = envelope_json().replace(b'"peer"', b'"\xff\xfe"')
    assert_rejected(codec(), codec().seal(bad_utf8), "malformed message")
    depth = 200_000
    body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    reply = envelope_json({"type": "status_reply", "role": "r", "ident": "i", "body": {}})
    deep = reply.replace(b'"body":{}', b'"body":' + body)
    assert_rejected(codec(), codec().seal(deep), "malformed message: nested too deeply")
