"""Fuzzing the frame reader: random and mutated input only ever yields ProtocolError, never a forged message.

``fuzz_wire(n)`` runs the same checks without hypothesis, for a benchmark count.
"""

from __future__ import annotations

import itertools
import random
import re
import struct
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaledist import messages as m
from scaledist.wire import MAGIC, Codec, FrameReader, ProtocolError

KEY = b"fuzzing-cluster-key-0123456789"
NOW = 1_700_000_000.0
GOOD = bytes(MAGIC) + bytes([m.WIRE_VERSION, 0])  # a valid header start, so fuzz reaches the deeper checks


def with_header(body: bytes) -> bytes:
    """A well-formed header whose length matches: random MAC and payload reach the HMAC check."""
    return GOOD + struct.pack(">I", max(0, len(body) - 32)) + body


def sealed(payload: bytes) -> bytes:
    """Authenticated garbage: a peer holding the key sends bytes the decoder must still survive."""
    return Codec(KEY, "insider").seal(payload)


def json_mutation(rng: random.Random) -> bytes:
    """A real envelope's JSON with a few characters changed: exercises msgspec validation behind a valid HMAC."""
    frame = Codec(KEY, "insider").encode(rng.choice(MESSAGES), NOW)
    payload = bytearray(frame[40:])
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(payload))
        payload[i] = rng.choice(b'{}[]",:0123456789.-eEtrufalsn \\x\xff')
    return bytes(payload)

MESSAGES: list[m.Message] = [
    m.Ack(),
    m.Release("t1", True, bytes=4096),
    m.CopyRequest("t1", "m1", "s2", ("s1", "s3"), "fs", "f", 3, 0, 1 << 20),
    m.BlockPut("t1", "fs", "f", 3, 1, 0xDEADBEEF, 7, 0, True),
    m.SlaveReport("s1", "fs", (m.FileState("f", 3, 1024, complete=True),), seq=4),
    m.StatusReply("rm", "rm1", {"links": {"a": 1.5}}),
]

SETTINGS = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def run_reader(data: bytes, cuts: list[int], codec: Codec | None = None) -> tuple[list[m.Envelope], str | None]:
    """Feeds ``data`` in pieces split at ``cuts``, pulling events after each; then signals EOF.

    Returns the accepted envelopes and the rejection reason (None if none). Any
    exception other than ProtocolError propagates and fails the caller.
    """
    reader = FrameReader(codec or Codec(KEY, "fuzz-receiver"))
    accepted: list[m.Envelope] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for lo, hi in itertools.pairwise(bounds):
            reader.feed(data[lo:hi])
            while (env := reader.next_event(NOW)) is not None:
                accepted.append(env)
        reader.eof()
    except ProtocolError as e:
        assert isinstance(e.reason, str) and e.reason
        assert reader.poisoned
        return accepted, e.reason
    return accepted, None


def genuine(frames: list[bytes]) -> dict[str, m.Envelope]:
    """The envelopes really sent, by nonce: anything else accepted would be a forgery."""
    opener = Codec(KEY, "opener")
    return {env.nonce: env for env in (opener.open(f, NOW) for f in frames)}


def check_no_forgery(accepted: list[m.Envelope], sent: dict[str, m.Envelope]) -> None:
    nonces = [env.nonce for env in accepted]
    assert len(nonces) == len(set(nonces)), "a message was accepted twice"
    for env in accepted:
        assert sent.get(env.nonce) == env, f"forged message accepted: {env}"


def mutate(rng: random.Random, frames: list[bytes]) -> bytes:
    """One valid stream of frames, damaged in one of the ways a network or an attacker would."""
    data = bytearray(b"".join(frames))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a bit
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # replace a byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 2:  # insert bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:  # delete bytes
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del data[pos:]
        elif op == 5:  # duplicate a slice (replays)
            data += data[: rng.randint(0, len(data))]
        else:  # overwrite the length field of the first frame
            data[4:8] = rng.randbytes(4)
    return bytes(data)


# --- hypothesis -------------------------------------------------------------------


@SETTINGS
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6), prefix=st.booleans())
def test_random_bytes_only_raise_protocol_error(data: bytes, cuts: list[int], prefix: bool) -> None:
    accepted, _ = run_reader(GOOD + data if prefix else data, cuts)
    assert accepted == []  # without the key nothing authenticates


@SETTINGS
@given(body=st.binary(max_size=400), cuts=st.lists(st.integers(0, 500), max_size=4))
def test_random_body_behind_a_valid_header_is_not_authenticated(body: bytes, cuts: list[int]) -> None:
    accepted, reason = run_reader(with_header(body), cuts)
    assert accepted == [] and reason is not None


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), raw=st.binary(max_size=300), use_raw=st.booleans())
def test_authenticated_garbage_only_raises_protocol_error(seed: int, raw: bytes, use_raw: bool) -> None:
    payload = raw if use_raw else json_mutation(random.Random(seed))
    accepted, reason = run_reader(sealed(payload), [])
    if accepted:  # a mutation can still be a valid envelope; then it is exactly what the bytes say
        assert reason is None and len(accepted) == 1
        assert Codec(KEY, "check").open(sealed(payload), NOW) == accepted[0]
    else:
        assert reason is not None


@SETTINGS
@given(
    picks=st.lists(st.integers(0, len(MESSAGES) - 1), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_mutated_frames_never_yield_a_forgery(picks: list[int], seed: int, cuts: list[int]) -> None:
    sender = Codec(KEY, "fuzz-sender")
    frames = [sender.encode(MESSAGES[i], NOW) for i in picks]
    data = mutate(random.Random(seed), frames)
    accepted, reason = run_reader(data, cuts)
    check_no_forgery(accepted, genuine(frames))
    if data == b"".join(frames):
        assert reason is None and len(accepted) == len(frames)


@SETTINGS
@given(picks=st.lists(st.integers(0, len(MESSAGES) - 1), min_size=1, max_size=4), cuts=st.lists(st.integers(0, 4000)))
def test_intact_streams_always_decode(picks: list[int], cuts: list[int]) -> None:
    sender = Codec(KEY, "fuzz-sender")
    frames = [sender.encode(MESSAGES[i], NOW) for i in picks]
    accepted, reason = run_reader(b"".join(frames), cuts)
    assert reason is None
    assert [e.msg for e in accepted] == [MESSAGES[i] for i in picks]


# --- plain fuzz loop for the benchmark ----------------------------------------------


def fuzz_wire(n: int, seed: int = 0) -> dict[str, Any]:
    """Runs ``n`` random or mutated inputs through a FrameReader; counts outcomes.

    ``forged_accepted`` and ``unexpected_exceptions`` must be 0. Reasons are
    grouped by their first words so the mix of rejections is visible.
    """
    rng = random.Random(seed)
    sender = Codec(KEY, "fuzz-sender")
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    t0 = time.perf_counter()
    for i in range(n):
        kind = i % 5
        frames: list[bytes] = []
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 600))
        elif kind == 1:
            data = GOOD + rng.randbytes(rng.randint(0, 600))
        elif kind == 2:
            data = with_header(rng.randbytes(rng.randint(32, 600)))
        elif kind == 3:
            data = sealed(json_mutation(rng))  # authenticated: acceptance is legitimate, crashes are not
        else:
            frames = [sender.encode(rng.choice(MESSAGES), NOW) for _ in range(rng.randint(1, 3))]
            data = mutate(rng, frames)
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 5))]
        try:
            accepted, reason = run_reader(data, cuts)
        except Exception as e:  # counted: the caller asserts there are none
            counts["unexpected_exceptions"] += 1
            reasons[f"UNEXPECTED {type(e).__name__}"] += 1
            continue
        if kind != 3:
            sent = genuine(frames) if frames else {}
            counts["forged_accepted"] += sum(1 for env in accepted if sent.get(env.nonce) != env)
        counts["accepted_messages"] += len(accepted)
        if reason is None:
            counts["clean"] += 1
        else:
            counts["rejected"] += 1
            reasons[_category(reason)] += 1
    return {
        "inputs": n,
        "rejected": counts["rejected"],
        "clean": counts["clean"],
        "accepted_messages": counts["accepted_messages"],
        "forged_accepted": counts["forged_accepted"],
        "unexpected_exceptions": counts["unexpected_exceptions"],
        "seconds": round(time.perf_counter() - t0, 3),
        "reasons": dict(reasons.most_common()),
    }


def _category(reason: str) -> str:
    """Groups reasons by kind: drops the varying bytes and numbers."""
    if reason.startswith("bad magic"):
        return "bad magic"
    return re.sub(r"0x[0-9a-f]+|[0-9][0-9.]*", "#", reason.split(":")[0])


def test_fuzz_wire_counts() -> None:
    result = fuzz_wire(600, seed=1)
    assert result["inputs"] == 600
    assert result["forged_accepted"] == 0 and result["unexpected_exceptions"] == 0
    assert result["rejected"] + result["clean"] == 600
    assert result["rejected"] > 300  # random input is refused
    for kind in ("bad magic", "bad HMAC", "malformed message", "truncated frame"):
        assert result["reasons"].get(kind, 0) > 0, (kind, result["reasons"])
    assert result["accepted_messages"] > 0  # mutations that leave a frame intact still deliver it
