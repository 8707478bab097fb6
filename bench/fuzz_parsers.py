"""Fuzz campaign over every parser that takes bytes from outside, plus "a rejected input changes nothing".

Targets (each counts inputs, accepted, rejected with a clear error, crashes = any
other exception, state changes and forged/unsafe inputs accepted):

* ``wire.*``: the ``SD`` frame reader (magic, version, flags, length, HMAC,
  freshness, replay) on random bytes, on structure-aware mutations of valid
  frame streams, and on validly signed payloads that are garbage;
* ``msg.<type>``: validly signed envelopes whose message body was mutated field
  by field (wrong types, missing/unknown fields, wrong tag, extreme values):
  only a key holder can reach this decoder, so it is the interesting one;
* ``data.block_stream``: a block header frame plus raw bytes, mutated, parsed
  as a slave receives them and handed to the slave daemon's real
  ``store_block`` (verify + store): a rejected block must leave storage as it was;
* ``ids``, ``fileset_file``, ``storage.records`` (checksum-file decoder),
  ``storage.disk`` (a BlockStore whose checksum and data files were corrupted:
  read, recover, then every kept block must read back verified);
* ``yaml.topology`` / ``yaml.scenario``: mutated YAML must raise only SpecError;
* ``core.*``: rejected input to the sans-I/O resource manager, master and
  slave-state cores leaves their observable state identical;
* ``live.*``: a resource manager, master and slave daemon on 127.0.0.1 get
  garbage, forged, replayed, stale and wrongly-typed frames over real TCP and
  must answer a StatusQuery with unchanged state afterwards.

Run: ``.venv/bin/python bench/fuzz_parsers.py [--n 100000] [--seed 0]``; the last line is
``fuzz_inputs_total=N crashes=C state_changes=S forged_accepted=F``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scaledist import messages as m  # noqa: E402
from scaledist import netio, storage  # noqa: E402
from scaledist.cluster import Cluster  # noqa: E402
from scaledist.core.blocks import RECORD_SIZE, chain_records, decode_records, encode_record, length_ok  # noqa: E402
from scaledist.core.fileset_file import FileSetContent, FileSetError, encode_fileset, parse_fileset  # noqa: E402
from scaledist.core.master import Master, MasterConfig  # noqa: E402
from scaledist.core.resource_manager import ResourceManager  # noqa: E402
from scaledist.core.slave_state import obsolete, slave_rows  # noqa: E402
from scaledist.daemons.common import Context  # noqa: E402
from scaledist.daemons.master import MasterDaemon  # noqa: E402
from scaledist.daemons.rm import RMDaemon  # noqa: E402
from scaledist.daemons.slave import SlaveDaemon, TransferFailed  # noqa: E402
from scaledist.ids import BadId, check_id, check_version, safe_join  # noqa: E402
from scaledist.scenario import load_scenario_text  # noqa: E402
from scaledist.topology import Topology  # noqa: E402
from scaledist.topology_schema import SpecError, load_topology_text  # noqa: E402
from scaledist.wire import MAGIC, PREFIX_LEN, Codec, FrameReader, ProtocolError  # noqa: E402

KEY = b"fuzz-cluster-key-0123456789abcdef"
WRONG_KEY = b"not-the-cluster-key-0123456789ab"
NOW = 1_700_000_000.0
GOOD = MAGIC + bytes([m.WIRE_VERSION, 0])
TOPOLOGY_TEXT = (ROOT / "topologies" / "small.yaml").read_text()
SCENARIO_TEXT = (ROOT / "topologies" / "small-scenario.yaml").read_text()
SMALL_BLOCK = 4096  # small.yaml scaled by 1/256: blocks of the minimum size keep the data plane fast

# Shares of the inputs per target (the live target is capped: each input is a TCP connection).
WEIGHTS: dict[str, float] = {
    "wire.random_bytes": 14,
    "wire.mutated_frames": 14,
    "wire.signed_garbage": 8,
    "msg": 20,  # split evenly over the message types
    "data.block_stream": 6,
    "ids": 8,
    "fileset_file": 6,
    "storage.records": 6,
    "storage.disk": 2,
    "yaml.topology": 1.5,
    "yaml.scenario": 1.5,
    "core.resource_manager": 4,
    "core.master": 3,
    "core.slave_state": 3,
    "live": 3,
}
LIVE_CAP = 4000


# --- bookkeeping ------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """Outcome counts of one target; ``samples`` keeps the first few crashes with their traceback tail."""

    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    state_changes: int = 0
    forged_accepted: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    crash_sites: Counter[str] = dataclasses.field(default_factory=Counter)  # "Type@file.py" of the raise
    samples: list[str] = dataclasses.field(default_factory=list)

    def accept(self) -> None:
        self.inputs += 1
        self.accepted += 1

    def reject(self, exc: BaseException | str) -> None:
        self.inputs += 1
        self.rejected += 1
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.reasons[_category(text)] += 1

    def reclassify(self, reason: str) -> None:
        """An input the callee answered normally (a Denial, False, None) that is in fact a refusal."""
        self.inputs -= 1
        self.accepted -= 1
        self.reject(reason)

    def crash(self, exc: BaseException, sample: object) -> None:
        self.inputs += 1
        self.crashes += 1
        tb = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in tb if "/scaledist/" in f.filename]
        self.crash_sites[f"{type(exc).__name__}@{Path(ours[-1].filename).name if ours else '?'}"] += 1
        if len(self.samples) < 3:
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(tb[-3:]))
            self.samples.append(f"{type(exc).__name__}: {str(exc)[:160]} at {where}; input {repr(sample)[:200]}")

    def violation(self, what: str, sample: object, *, state: bool = False) -> None:
        """An input that was accepted but must not have been (state=False) or changed state though rejected."""
        if state:
            self.state_changes += 1
        else:
            self.forged_accepted += 1
        if len(self.samples) < 6:
            self.samples.append(f"{what}; input {repr(sample)[:200]}")

    def attempt(self, fn: Callable[[], Any], expected: tuple[type[BaseException], ...], sample: object) -> Any:
        """Runs one input; returns its result, or ``_REJECTED`` / ``_CRASHED``."""
        try:
            out = fn()
        except expected as e:
            self.reject(e)
            return _REJECTED
        except Exception as e:  # anything else is what fuzzing is looking for
            self.crash(e, sample)
            return _CRASHED
        self.accept()
        return out


_REJECTED = object()
_CRASHED = object()


def _category(text: str) -> str:
    """Groups rejection reasons by their first words, without the varying numbers and names."""
    head = text.split(":")[0] if not text.startswith(("ProtocolError", "TransferFailed")) else ":".join(
        text.split(":")[:2])
    out = "".join("#" if c.isdigit() else c for c in head)[:70]
    return out.split("'")[0].split('"')[0].strip()


# --- shared generators -------------------------------------------------------------------------

EVIL_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308,
    -1e308, "", "x", "x" * 300, "../../etc/passwd", "a/b", ".hidden", "é", "\u0000", "\ud800", "\n", [], {},
    [1, "a"], {"type": "ack"}, {"x": 1}, [[[[[[]]]]]], "NaN", "1e999",
]
FUZZ_STRINGS = [
    "", ".", "..", "...", "a..b", "a", "A-1_b.c", "-a", "_a", ".a", "a/", "/a", "a/b", "a\\b", "a\x00b", "~", "@",
    "a@1.data", "file\n", " a", "a ", "\uff41", "é", "x" * 128, "x" * 129, "CON", "nul", "a:b", "%2e%2e", "\u202e",
]


def evil(rng: random.Random) -> Any:
    """A fresh copy of an extreme value (shared lists would end up nested inside themselves)."""
    return copy.deepcopy(rng.choice(EVIL_VALUES))


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "aZ09._-/\\@ \x00\n\t%:~" + "é\u202e\ud7ff\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(n))


def mutate_bytes(rng: random.Random, data: bytes, rounds: int = 4) -> bytes:
    """Byte-level damage: bit flips, replaced/inserted/deleted bytes, truncation, extension, duplication."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4:
            del buf[pos:]
        elif op == 5:
            buf += rng.randbytes(rng.randint(1, 64))
        elif op == 6:
            buf += buf[: rng.randint(0, len(buf))]
        else:
            i = rng.randrange(len(buf) + 1)
            j = rng.randrange(len(buf) + 1)
            buf[i:j] = buf[j:i] if j < i else bytes(reversed(buf[i:j]))
    return bytes(buf)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def mutate_tree(rng: random.Random, obj: Any, tags: list[str] | None = None) -> Any:
    """Structure-aware damage to a JSON value: a field gets a wrong type or an extreme value, vanishes,
    gains an unknown sibling, or the message tag names another (or no) type."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(obj))
        path = rng.choice(paths)
        parent: Any = None
        node: Any = obj
        for p in path:
            parent, node = node, node[p]
        op = rng.randrange(7)
        if op <= 2 or not path:
            value = evil(rng) if rng.random() < 0.8 else random_text(rng, rng.randint(0, 40))
            if not path:
                obj = value
                continue
            parent[path[-1]] = value
        elif op == 3 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == 4 and isinstance(node, dict):
            node[rng.choice(["extra", "type", "v", "msg", random_text(rng, 5)])] = evil(rng)
        elif op == 5 and tags:
            for q in paths:  # retag a message: another type's tag on this body, or an unknown one
                if q and q[-1] == "type":
                    holder = obj
                    for p in q[:-1]:
                        holder = holder[p]
                    holder["type"] = rng.choice([*tags, "nosuch", "", 7])
                    break
        elif isinstance(node, list):
            node.extend(evil(rng) for _ in range(rng.randint(1, 4)))
        elif isinstance(node, str):
            parent[path[-1]] = node * rng.randint(2, 50)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            parent[path[-1]] = node * rng.choice([-1, 2**33, 10**20]) + rng.choice([0, 1, -1])
    return obj


def dumps(obj: Any) -> bytes:
    """JSON as a peer could write it, NaN and huge integers included."""
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


def example_messages(rng: random.Random) -> list[m.Message]:
    """One valid instance of every message type, with varied values."""
    tid = f"t{rng.randrange(10**6)}"
    fs = rng.choice(["news", "web"])
    res = m.TransferResult(tid, rng.random() < 0.5, rng.choice(["none", "receiver", "source", "other"]), "d", 10, 0.1)
    rows = tuple(m.FileState(f"f{i}", rng.randrange(5), rng.randrange(10**7), rng.random() < 0.5) for i in range(3))
    return [
        m.SlaveReport("dc1-r1-s2", fs, rows, 1, (res,), rng.randrange(100)),
        m.CopyRequest(tid, "M1", "dc2-r3-s1", ("dc1-r1-s1", "dc1-r1-s2"), fs, "news-index", 1, 0, 4096),
        m.Grant(tid, "dc1-r1-s1", "dc2-r3-s1", ("slave/dc1-r1-s1/up",), "P3", 1e6, 65536, 3, NOW + 5),
        m.Denial(tid, "no room", 2),
        m.Release(tid, True, 4096),
        m.SetCapacity("trunk/T1", 5e6),
        m.CopyInstruction(tid, "pull", "M1", "dc1-r1-s1", "dc1-r1-s2", fs, "news-index", 1, 0, 1e6, 65536, NOW),
        m.Published(fs, "news-index", 2),
        m.BlockGet(tid, fs, "news-index", 1, 0, 1e6, 65536),
        m.BlockPut(tid, fs, "news-index", 1, 0, 0xDEADBEEF, 0, 4096, True),
        m.BlockHeader(tid, True, "", 0xDEADBEEF, 0, 4096, False),
        m.BlockAck(tid, False, "bad", "receiver"),
        m.Ack(True, "ok"),
        m.Error("refused"),
        m.StatusQuery(),
        m.StatusReply("rm", "rm", {"links": {"a": [1, 2.5, None]}}),
    ]


MESSAGE_TYPES = [type(x) for x in example_messages(random.Random(0))]
TAGS = [t.__struct_config__.tag for t in MESSAGE_TYPES]


def envelope_obj(msg: m.Message, ts: float = NOW, nonce: str | None = None, sender: str = "insider") -> dict:
    return {"v": m.WIRE_VERSION, "sender": sender, "ts": ts, "nonce": nonce or os.urandom(8).hex(),
            "msg": msgspec.to_builtins(msg)}


# --- wire ---------------------------------------------------------------------------------------


def feed(reader: FrameReader, data: bytes, cuts: list[int]) -> tuple[list[m.Envelope], ProtocolError | None]:
    """Feeds ``data`` split at ``cuts`` (as TCP may deliver it), pulling events after each piece, then EOF."""
    out: list[m.Envelope] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for lo, hi in itertools.pairwise(bounds):
            reader.feed(data[lo:hi])
            while (env := reader.next_event(NOW)) is not None:
                out.append(env)
        reader.eof()
    except ProtocolError as e:
        if not (e.reason and reader.poisoned):
            raise AssertionError("a rejection must carry a reason and poison the reader") from e
        return out, e
    return out, None


def _stream_outcome(t: Tally, codec: Codec, data: bytes, cuts: list[int], genuine: dict[str, m.Envelope]) -> None:
    """One stream through a fresh FrameReader: only genuine, never-seen envelopes may come out, and the
    replay cache must hold exactly the accepted nonces (a rejected frame records nothing)."""
    before = codec.replay_state()
    reader = FrameReader(codec)
    try:
        accepted, err = feed(reader, data, cuts)
    except Exception as e:
        t.crash(e, data)
        return
    nonces = [e.nonce for e in accepted]
    if len(set(nonces)) != len(nonces):
        t.violation("an envelope was accepted twice (replay)", data)
    for env in accepted:
        if genuine.get(env.nonce) != env:
            t.violation(f"forged envelope accepted: {env!r}"[:200], data)
    after = codec.replay_state()
    if not nonces:
        changed = after != before
    else:  # accepting may evict the oldest nonces of a full cache (and raise its floor); nothing else
        changed = not (set(nonces) <= after[0] <= before[0] | set(nonces)) or after[1] < before[1]
    if changed:
        t.violation("replay cache changed beyond the accepted nonces", data, state=True)
    if err is None:
        t.accept()
    else:
        t.reject(f"ProtocolError: {err.reason}")


def fuzz_wire_random(n: int, rng: random.Random) -> Tally:
    """Random bytes, a valid header start followed by random bytes, a consistent header with a random MAC."""
    t = Tally("wire.random_bytes")
    for i in range(n):
        body = rng.randbytes(rng.randint(0, 400))
        kind = i % 4
        if kind == 1:
            body = GOOD + body
        elif kind == 2:
            mac_body = rng.randbytes(32) + body
            body = GOOD + struct.pack(">I", len(mac_body) - 32) + mac_body
        elif kind == 3:  # a header whose length field lies
            body = GOOD + struct.pack(">I", rng.choice([0, 1, len(body), 1 << 20, (1 << 20) + 1, 2**32 - 1])) + body
        cuts = [rng.randint(0, len(body)) for _ in range(rng.randint(0, 4))]
        _stream_outcome(t, Codec(KEY, "rx"), body, cuts, {})
    return t


def fuzz_wire_mutated(n: int, rng: random.Random) -> Tally:
    """Streams of 1-3 genuine frames damaged the way a network or an attacker would, incl. length-field lies
    and replays; a shared receiver codec carries its replay cache from input to input."""
    t = Tally("wire.mutated_frames")
    sender = Codec(KEY, "fuzz-sender")
    opener = Codec(KEY, "opener")
    shared = Codec(KEY, "rx-shared", replay_cache=512)
    for i in range(n):
        msgs = example_messages(rng)
        frames = [sender.encode(rng.choice(msgs), NOW) for _ in range(rng.randint(1, 3))]
        genuine = {e.nonce: e for e in (opener.open(f, NOW) for f in frames)}
        data = b"".join(frames)
        op = rng.randrange(5)
        if op == 0:  # the length field of one frame lies
            buf = bytearray(data)
            start = sum(len(f) for f in frames[: rng.randrange(len(frames))])
            true_len = struct.unpack_from(">I", buf, start + 4)[0]
            lie = rng.choice([0, 1, true_len - 1, true_len + 1, true_len + 40, 1 << 20, (1 << 20) + 1, 2**32 - 1])
            struct.pack_into(">I", buf, start + 4, max(0, lie))
            data = bytes(buf)
        elif op == 1:  # version or flags byte changed
            buf = bytearray(data)
            buf[rng.choice([2, 3])] = rng.randrange(256)
            data = bytes(buf)
        elif op == 2:  # replay: a frame sent twice
            data = data + rng.choice(frames)
        else:
            data = mutate_bytes(rng, data)
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 5))]
        codec = shared if i % 3 == 0 else Codec(KEY, "rx")
        _stream_outcome(t, codec, data, cuts, genuine)
        if i % 3 == 0 and op == 2 and data[: len(frames[0])] in frames:
            pass  # counted through _stream_outcome's duplicate check
    return t


def fuzz_wire_signed(n: int, rng: random.Random) -> Tally:
    """Validly signed payloads that are not a proper envelope, or one that is stale, future-dated,
    replayed, or carries a bad nonce/sender/version: only ProtocolError may come out, and nothing stale."""
    t = Tally("wire.signed_garbage")
    insider = Codec(KEY, "insider")
    for i in range(n):
        kind = i % 6
        must_reject = False
        msg = rng.choice(example_messages(rng))
        if kind == 0:
            payload = rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            payload = rng.choice([b"[" * 5000, b'{"a":' * 3000, b"1" * 5000, b"\xff\xfe{}", b"null", b"{}", b"[]"])
        elif kind == 2:  # freshness and envelope fields
            env = envelope_obj(msg)
            field, value = rng.choice([
                ("ts", NOW - 121), ("ts", NOW + 121), ("ts", NOW - 1e9), ("ts", 1e308), ("ts", -1e308),
                ("nonce", ""), ("nonce", "n" * 129), ("sender", ""), ("sender", "s" * 257), ("v", 2), ("v", 0),
            ])
            env[field] = value
            payload, must_reject = dumps(env), True
        elif kind == 3:
            payload = dumps(mutate_tree(rng, envelope_obj(msg), TAGS))
        elif kind == 4:  # valid envelope JSON with a few characters changed
            buf = bytearray(dumps(envelope_obj(msg)))
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] = rng.choice(b'{}[]",:0123456789.-eEtrufalsn \\x\xff')
            payload = bytes(buf)
        else:  # the envelope's JSON value itself is a random structure
            payload = dumps(mutate_tree(rng, rng.choice([[], {}, {"v": 1}, [1, 2], "x", 1.5])))
        frame = insider.seal(payload, version=m.WIRE_VERSION if kind != 2 or rng.random() < 0.8 else 2)
        codec = Codec(KEY, "rx")
        if kind == 5 and i % 12 == 5:  # replay of a genuine frame already accepted
            frame = insider.encode(msg, NOW)
            codec.decode(frame, NOW)
            must_reject = True
        before = codec.replay_state()
        env_out = t.attempt(lambda f=frame, c=codec: c.open(f, NOW), (ProtocolError,), frame)
        if env_out is _REJECTED and codec.replay_state() != before:
            t.violation("rejected frame changed the replay cache", frame, state=True)
        elif env_out not in (_REJECTED, _CRASHED):
            if must_reject:
                t.violation("stale, replayed or malformed envelope accepted", frame)
            _check_envelope_roundtrip(t, env_out, frame)
    return t


def _check_envelope_roundtrip(t: Tally, env: m.Envelope, frame: bytes) -> None:
    """An accepted envelope is a well-typed value: it re-encodes and decodes to itself."""
    try:
        again = msgspec.json.decode(msgspec.json.encode(env), type=m.Envelope)
    except Exception as e:
        t.violation(f"accepted envelope does not round-trip: {e}", frame)
        return
    if again != env:
        t.violation("accepted envelope changes on re-encoding", frame)


# --- message bodies (validly signed) -----------------------------------------------------------


def fuzz_messages(n: int, rng: random.Random) -> list[Tally]:
    """Per message type: validly signed envelopes whose message was mutated field by field."""
    tallies = {cls: Tally(f"msg.{cls.__struct_config__.tag}") for cls in MESSAGE_TYPES}
    insider = Codec(KEY, "insider")
    for i in range(n):
        idx = i % len(MESSAGE_TYPES)
        cls = MESSAGE_TYPES[idx]
        t = tallies[cls]
        msg = example_messages(rng)[idx]
        env = envelope_obj(msg)
        if rng.random() < 0.15:  # a valid body of another type under this tag ("wrong-typed message")
            other = rng.choice(example_messages(rng))
            body = msgspec.to_builtins(other)
            body["type"] = cls.__struct_config__.tag
            env["msg"] = body
        else:
            env["msg"] = mutate_tree(rng, env["msg"], TAGS)
        frame = insider.seal(dumps(env))
        codec = Codec(KEY, "rx")
        before = codec.replay_state()
        out = t.attempt(lambda f=frame, c=codec: c.open(f, NOW), (ProtocolError,), env)
        if out is _REJECTED:
            if codec.replay_state() != before:
                t.violation("rejected message changed the replay cache", env, state=True)
        elif out is not _CRASHED:
            tag = env["msg"].get("type") if isinstance(env["msg"], dict) else None
            if out.msg.__struct_config__.tag != tag:
                t.violation(f"decoded as {type(out.msg).__name__} though tagged {tag!r}", env)
            _check_envelope_roundtrip(t, out, frame)
    return list(tallies.values())


# --- data plane ---------------------------------------------------------------------------------


def small_topology(epoch: float | None = None) -> Topology:
    topo = load_topology_text(TOPOLOGY_TEXT, "small.yaml").scaled(SMALL_BLOCK / (1 << 20))
    return dataclasses.replace(topo, epoch=epoch) if epoch else topo


class LogSink:
    """Daemon log lines kept in memory; ``errors`` counts what netio.serve logs for an unexpected exception."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    def errors(self) -> list[str]:
        return [ln for ln in self.lines if _UNEXPECTED.match(ln)]


# netio.serve's line for an exception a handler did not expect, and common.spawn's for a failed task
_UNEXPECTED = re.compile(r"^(error with |\S+ \S+ failed: \w+\()")


def make_context(ident: str, topo: Topology, log: LogSink) -> Context:
    cluster = Cluster(topology="small.yaml", scale=1.0, key=KEY, endpoints={}, source="fuzz")
    return Context(ident, topo, cluster, Codec(KEY, ident), log)  # type: ignore[arg-type]


async def _data_plane(n: int, rng: random.Random, root: Path) -> Tally:
    t = Tally("data.block_stream")
    topo = small_topology()
    bs = topo.block_size
    slave = SlaveDaemon(make_context("dc1-r1-s2", topo, LogSink()), root / "slave")
    sender = Codec(KEY, "dc1-r1-s1")
    fid = "fz"
    version = 0
    for i in range(n):
        for fs_name in ("news", "web"):  # what the last input stored (even under a lying version) goes
            for st in slave.store.files(fs_name).values():
                slave.store.remove(fs_name, st.file_id, st.version)
        slave.contents.clear()
        version += 1
        nblocks = 1 + (i % 2)
        data = rng.randbytes(bs * (nblocks - 1) + rng.randint(1, bs))
        blocks = [data[k : k + bs] for k in range(0, len(data), bs)]
        recs = chain_records(blocks)
        # store all but the last block genuinely, so the fuzzed one continues a real chain
        for b in blocks[:-1]:
            slave.store.generate_block("news", fid, version, b, False)
        last = len(blocks) - 1
        hdr: dict[str, Any] = {"transfer_id": f"x{i}", "fileset": "news", "file_id": fid, "version": version,
                               "block": last, "crc": recs[-1].crc, "prev_crc": recs[-2].crc if last else 0,
                               "length": len(blocks[-1]), "final": True}
        raw = blocks[-1]
        kind = rng.randrange(4)
        if kind == 0:  # signed header with lying fields
            key = rng.choice(list(hdr))
            hdr[key] = rng.choice([-1, 0, 1, bs - 1, bs, bs + 1, 2**32, 2**63 - 1, hdr[key] ^ 1 if isinstance(
                hdr[key], int) and not isinstance(hdr[key], bool) else 0, "..", "news", False, True, "../x"])
        elif kind == 1:  # damaged raw bytes
            raw = mutate_bytes(rng, raw, 2)
        pull = rng.random() < 0.5
        msg_obj = dict(hdr, type="block_put")
        if pull:
            msg_obj = {"type": "block_header", "transfer_id": hdr["transfer_id"], "ok": True, "crc": hdr["crc"],
                       "prev_crc": hdr["prev_crc"], "length": hdr["length"], "final": hdr["final"]}
        stream = sender.seal(dumps(envelope_obj(m.Ack(), nonce=None) | {"msg": msg_obj, "sender": "dc1-r1-s1"}))
        stream += raw
        if kind == 2:  # damage anywhere in header + raw
            stream = mutate_bytes(rng, stream, 3)
        before = slave.store.stored("news", fid)
        reader = FrameReader(Codec(KEY, "dc1-r1-s2"))
        try:
            reader.feed(stream)
            env = reader.next_event(NOW)
            if env is None:
                reader.eof()
                raise ProtocolError("truncated frame")
            h = env.msg
            if not isinstance(h, m.BlockPut | m.BlockHeader):
                raise TransferFailed(f"unexpected reply {type(h).__name__}")
            length = h.length
            if not 0 < length <= bs:  # both receive paths check this before reading raw bytes
                raise TransferFailed(f"announced {length} bytes for one block")
            got = reader.take_raw(length)
            if got is None:
                raise TransferFailed("connection closed before the block's raw bytes")
            fs, f, ver, blk = (h.fileset, h.file_id, h.version, h.block) if isinstance(h, m.BlockPut) else (
                "news", fid, version, last)
            await slave.store_block(fs, f, ver, blk, got, h.crc, h.prev_crc, h.final)
        except (ProtocolError, TransferFailed) as e:
            t.reject(e)
            if slave.store.stored("news", fid) != before:
                t.violation("rejected block changed storage", hdr, state=True)
            continue
        except Exception as e:
            t.crash(e, hdr)
            continue
        t.accept()
        after = slave.store.stored(fs, f)
        if after is None or slave.store.read_block(fs, f, after.version, after.blocks - 1)[0] != got:
            t.violation("accepted block does not read back as sent", hdr)
    return t


def fuzz_data_plane(n: int, rng: random.Random, root: Path) -> Tally:
    return asyncio.run(_data_plane(n, rng, root))


# --- identifiers, FileSet file, checksum records, storage ---------------------------------------


def fuzz_ids(n: int, rng: random.Random, root: Path) -> Tally:
    """check_id / check_version / safe_join: an accepted id is one plain name that stays under the root."""
    t = Tally("ids")
    base = root.resolve()
    for i in range(n):
        kind = i % 3
        if kind == 0:
            value: Any = rng.choice(FUZZ_STRINGS) if rng.random() < 0.3 else random_text(rng, rng.randint(0, 140))
            if rng.random() < 0.3:
                value = rng.choice(FUZZ_STRINGS) + value + rng.choice(FUZZ_STRINGS)
            out = t.attempt(lambda v=value: check_id(v), (BadId,), value)
            if isinstance(out, str):
                if "/" in out or "\\" in out or ".." in out or out.startswith((".", "-")) or "\x00" in out:
                    t.violation("unsafe id accepted", out)
                elif safe_join(base, out).parent != base:
                    t.violation("accepted id leaves the data directory", out)
        elif kind == 1:
            value = rng.choice([*EVIL_VALUES, rng.randint(-(2**70), 2**70), 2**63 - 1, 2**63, -1, 0, 1.0, True])
            out = t.attempt(lambda v=value: check_version(v), (BadId,), value)
            if (isinstance(out, int) and not (0 <= out <= 2**63 - 1)) or isinstance(out, bool):
                t.violation("bad version accepted", out)
        else:
            parts = [rng.choice(FUZZ_STRINGS) + random_text(rng, rng.randint(0, 6)) for _ in range(rng.randint(0, 3))]
            out = t.attempt(lambda p=parts: safe_join(base, *p), (BadId,), parts)
            if isinstance(out, Path) and not out.is_relative_to(base):
                t.violation("safe_join escaped the root", parts)
    return t


def valid_fileset_doc(rng: random.Random) -> dict[str, Any]:
    files = [{"id": f"f{k}", "version": rng.randrange(10)} for k in range(rng.randint(0, 5))]
    return {"format": "scaledist-fileset", "v": 1, "fileset": "news", "version": rng.randint(0, 99), "files": files}


def fuzz_fileset(n: int, rng: random.Random) -> Tally:
    """parse_fileset: only FileSetError; an accepted file re-encodes to content that parses the same."""
    t = Tally("fileset_file")
    for i in range(n):
        kind = i % 4
        doc = valid_fileset_doc(rng)
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 200))
        elif kind == 1:
            data = mutate_bytes(rng, dumps(doc))
        elif kind == 2:
            data = dumps(mutate_tree(rng, doc))
        else:
            data = rng.choice([b"[" * 100_000, b'{"a":' * 5000, b"9" * 5000, b"\xef\xbb\xbf{}", b"NaN",
                               dumps(dict(doc, version=float("nan"))), dumps(dict(doc, files=[doc["files"]] * 2)),
                               dumps(dict(doc, version=-1)),
                               dumps(dict(doc, version=0)).replace(b'"version": 0', b'"version": ' + b"9" * 5000, 1)])
        out = t.attempt(lambda d=data: parse_fileset(d, expect_fileset="news" if rng.random() < 0.3 else None),
                        (FileSetError,), data)
        if isinstance(out, FileSetContent):
            try:
                again = parse_fileset(encode_fileset(out))
            except Exception as e:
                t.violation(f"accepted FileSet does not re-encode: {e}", data)
                continue
            if again != out:
                t.violation("accepted FileSet changes on re-encoding", data)
    return t


def fuzz_records(n: int, rng: random.Random) -> Tally:
    """decode_records never raises; what it keeps is a valid chain prefix (indices 0.., block rule, final last)."""
    t = Tally("storage.records")
    bs = 4096
    for _ in range(n):
        k = rng.randint(0, 6)
        blocks = [rng.randbytes(bs) for _ in range(max(0, k - 1))] + ([rng.randbytes(rng.randint(1, bs))] if k else [])
        good = b"".join(encode_record(r) for r in chain_records(blocks))
        data = mutate_bytes(rng, good) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 200))
        use_bs = rng.random() < 0.8
        out = t.attempt(lambda d=data, u=use_bs: decode_records(d, bs if u else None), (), data)
        if isinstance(out, tuple):
            recs, valid = out
            if valid != len(recs) * RECORD_SIZE or data[:valid] != b"".join(encode_record(r) for r in recs):
                t.violation("valid length does not match the records kept", data)
            if any(r.index != j for j, r in enumerate(recs)) or any(r.final for r in recs[:-1]):
                t.violation("kept records are not a chain prefix", data)
            if use_bs and any(not length_ok(r.index, r.length, r.final, bs) for r in recs):
                t.violation("kept record breaks the block rule", data)
    return t


def fuzz_storage_disk(n: int, rng: random.Random, root: Path) -> Tally:
    """A BlockStore whose checksum/data files were corrupted on disk: reads refuse with a StorageProblem,
    recover() repairs, and afterwards every block it kept reads back verified."""
    t = Tally("storage.disk")
    bs = 4096
    store_root = root / "disk"
    store = storage.BlockStore(store_root, bs)
    blocks = [rng.randbytes(bs), rng.randbytes(bs), rng.randbytes(1000)]
    for k, b in enumerate(blocks):
        store.generate_block("news", "f1", 3, b, k == len(blocks) - 1)
    crc_path = store_root / "news" / "f1@3.crc"
    data_path = store_root / "news" / "f1@3.data"
    good_crc, good_data = crc_path.read_bytes(), data_path.read_bytes()
    expected = (storage.StorageProblem, BadId)
    for i in range(n):
        for p in (store_root / "news").iterdir():  # back to a clean directory with only the lock file
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name != "f1@lock":
                p.unlink()
        kind = i % 5
        crc_bytes = mutate_bytes(rng, good_crc, 2) if kind in (0, 2) else good_crc
        data_bytes = mutate_bytes(rng, good_data, 2) if kind in (1, 2) else good_data
        crc_path.write_bytes(crc_bytes)
        data_path.write_bytes(data_bytes)
        if kind == 3:  # odd files in the fileset directory
            odd = store_root / "news" / rng.choice(["f1@4.crc", "f1@4.data", "f1@999999999999999999999.crc",
                                                     "..@1.crc", "f1@01.crc", "zz@1.data", "f1@x"])
            with contextlib.suppress(OSError):
                odd.write_bytes(rng.randbytes(rng.choice([0, 24, 48, 100])))
        elif kind == 4:  # a directory or a symlink where a file should be
            target = rng.choice([crc_path, data_path])
            target.unlink()
            if rng.random() < 0.5:
                target.mkdir()
            else:
                target.symlink_to("/etc/hostname")

        def probe() -> int:
            st = store.stored("news", "f1")
            store.files("news")
            if st is not None:
                for k in range(st.blocks):
                    with contextlib.suppress(storage.CorruptBlock, storage.MissingBlock):
                        store.read_block("news", "f1", st.version, k)
            lines = store.recover(verify=True)
            st = store.stored("news", "f1")
            if st is not None:  # after recovery every kept block must verify
                for k in range(st.blocks):
                    store.read_block("news", "f1", st.version, k)
            return len(lines)

        out = t.attempt(probe, expected, (kind, crc_bytes[:48], len(data_bytes)))
        if isinstance(out, int) and kind in (0, 1, 2) and crc_bytes == good_crc and data_bytes == good_data and out:
            t.violation("recover changed an intact file", kind)
    return t


# --- YAML ---------------------------------------------------------------------------------------

YAML_TOKENS = [
    "", "~", "null", "0", "-1", "1e999", "1e999B", "1e400MiB", "0x10", "007", "yes", "no", "on", "[", "]", "{", "}",
    "{a: 1}", "[1, 2]", "!!int abc", "!!float x", "!!binary ###", "!!timestamp x", "!!python/object:os.system x",
    "&a x", "*a", "*nosuch", "<<: *a", "'", '"', "\t", "- x", "? x", ": x", "|", ">", "%YAML 1.1", "---", "...",
    "@x", "`x", "10MB/s", "-5MB/s", "NaN", ".inf", "-.inf", "1s", "-1s", "0s", "1h", "99999999999999999999999",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "ĳ", "\u202e", "\x00",
]


def mutate_yaml(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(lines)) if lines else 0
        if not lines:
            lines.append(rng.choice(YAML_TOKENS))
        elif op == 0:  # replace a value after a colon
            head, sep, _ = lines[i].partition(": ")
            lines[i] = head + (sep or ": ") + rng.choice(YAML_TOKENS)
        elif op == 1:
            del lines[i]
        elif op == 2:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 3:  # indentation changed
            lines[i] = " " * rng.choice([0, 1, 3, 8]) + lines[i].lstrip()
        elif op == 4:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + rng.choice(YAML_TOKENS) + lines[i][pos:]
        else:
            b = mutate_bytes(rng, lines[i].encode(), 2)
            lines[i] = b.decode("utf-8", "replace")
    return "\n".join(lines) + "\n"


def fuzz_yaml(n: int, rng: random.Random, kind: str) -> Tally:
    """Mutated topology or scenario YAML: the loaders may only raise SpecError (file, line, key, reason)."""
    t = Tally(f"yaml.{kind}")
    topo = load_topology_text(TOPOLOGY_TEXT, "small.yaml")
    for _ in range(n):
        if kind == "topology":
            text = mutate_yaml(rng, TOPOLOGY_TEXT)
            t.attempt(lambda x=text: load_topology_text(x, "fuzz.yaml"), (SpecError,), text)
        else:
            text = mutate_yaml(rng, SCENARIO_TEXT)
            t.attempt(lambda x=text: load_scenario_text(x, topo, "fuzz.yaml"), (SpecError,), text)
    return t


# --- sans-I/O cores: a rejected input changes nothing --------------------------------------------


def _bad_request(rng: random.Random, good: m.CopyRequest, active: str) -> m.CopyRequest:
    """A copy request the resource manager must deny as invalid, before touching any state."""
    choice = rng.randrange(8)
    if choice == 0:
        return dataclasses_replace(good, fileset=rng.choice(["nosuch", "", "NEWS", random_text(rng, 8)]))
    if choice == 1:
        return dataclasses_replace(good, destination=rng.choice(["nobody", "", "rm", "M1"]))
    if choice == 2:
        return dataclasses_replace(good, sources=(*good.sources, rng.choice(["ghost", "", "G1"])))
    if choice == 3:
        return dataclasses_replace(good, sources=())
    if choice == 4:
        return dataclasses_replace(good, sources=("dc1-r1-s1",) * 65)
    if choice == 5:
        return dataclasses_replace(good, size=rng.choice([0, -1, -(2**63), SMALL_BLOCK + 1, 2**63 - 1]))
    if choice == 6:
        return dataclasses_replace(good, transfer_id="")
    return dataclasses_replace(good, transfer_id=active)


def dataclasses_replace(msg: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(msg, **changes)


def fuzz_core_rm(n: int, rng: random.Random) -> Tally:
    """Invalid requests, unknown releases and bad capacities leave the RM's tables and ledger as they were."""
    t = Tally("core.resource_manager")
    topo = small_topology()
    rm = ResourceManager(topo, start=0.0)
    now = 0.3
    good = m.CopyRequest("g1", "M1", "dc2-r3-s1", ("dc1-r1-s1",), "news", "news-index", 1, 0, SMALL_BLOCK)
    grant = rm.request(now, good)
    if not isinstance(grant, m.Grant):
        raise RuntimeError(f"priming grant refused: {grant}")
    rm.take_ledger()
    chaos = ResourceManager(topo, start=0.0)  # random valid-shaped traffic: must never raise
    slaves = list(topo.slaves)
    for i in range(n):
        before = (rm.snapshot(), rm.active_transfers)
        kind = i % 4
        if kind == 0:
            req = _bad_request(rng, good, "g1")
            out = t.attempt(lambda r=req: rm.request(now, r), (), req)
            if isinstance(out, m.Denial) and out.reason.startswith("invalid request"):
                t.reclassify(out.reason)
            elif out is not _CRASHED:
                t.violation(f"invalid request not denied as invalid: {out}", req)
        elif kind == 1:
            tid = rng.choice(["nosuch", "", "g1 ", "G1", random_text(rng, 10)])
            out = t.attempt(lambda x=tid: rm.release(now, x, rng.random() < 0.5), (), tid)
            if out is True:
                t.violation("release of an unknown transfer accepted", tid)
            elif out is False:
                t.reclassify("unknown transfer")
        elif kind == 2:
            link, bps = rng.choice([("nosuch", 1e6), ("trunk/T9", 1e6), ("trunk/T1", 0.0), ("trunk/T1", -5.0),
                                    ("trunk/T1", float("nan")), ("trunk/T1", float("inf")), ("", 1.0),
                                    ("trunk/T1", "1e6")])
            t.attempt(lambda a=link, b=bps: rm.set_capacity(now, a, b), (ValueError,), (link, bps))
        else:  # valid-shaped random traffic on another instance: crash check only
            src = rng.sample(slaves, rng.randint(1, 3))
            req = m.CopyRequest(f"c{i}", "M1", rng.choice(slaves), tuple(src), rng.choice(["news", "web"]), "f", 1,
                                0, rng.randint(1, SMALL_BLOCK), rng.random() < 0.2)
            when = i * 0.01
            out = t.attempt(lambda r=req, w=when: chaos.request(w, r), (), req)
            if isinstance(out, m.Grant) and rng.random() < 0.7:
                chaos.release(when, out.transfer_id, rng.random() < 0.5)
            chaos.take_ledger()
            continue
        if (rm.snapshot(), rm.active_transfers) != before or rm.take_ledger():
            t.violation("rejected input changed the resource manager", i, state=True)
    return t


def _master_state(master: Master) -> Any:
    snap = master.snapshot()
    snap.pop("rejected")  # the count of rejections is the record of them, not state
    slaves = sorted(master.topology.slaves)
    return snap, master.progress(), [master.needs(s, fs) for s in slaves for fs in sorted(master.filesets)]


def _primed_master(topo: Topology) -> tuple[Master, list[str]]:
    master = Master(topo, "M1", MasterConfig(), incarnation="fuzz", start=0.0)
    bs = topo.block_size
    for fs in ("news", "web"):
        master.on_report(0.1, m.SlaveReport("dc1-r1-s1", fs, (
            m.FileState(fs, 1, 200, True, True, True), m.FileState(f"{fs}-a", 1, 3 * bs, True)), seq=1))
        for s in ("dc1-r1-s2", "dc2-r3-s1"):
            master.on_report(0.1, m.SlaveReport(s, fs, (m.FileState(fs, 0, 0, False, True, True),), seq=1))
    granted = []
    for req in master.next_requests(0.2):
        g = m.Grant(req.transfer_id, req.sources[0], req.destination, (), "P3", 1e6, 65536, 0, 100.0)
        if master.on_decision(0.2, g) is not None:
            granted.append(req.transfer_id)
    return master, granted


def fuzz_core_master(n: int, rng: random.Random) -> Tally:
    """Rejected reports, decisions for unknown transfers and unknown failures leave the master's tables as
    they were (the rejection counter aside); random valid reports on a second master must never raise."""
    t = Tally("core.master")
    topo = small_topology()
    master, granted = _primed_master(topo)
    if not granted:
        raise RuntimeError("priming produced no granted transfer")
    chaos, _ = _primed_master(topo)
    slaves = list(topo.slaves)
    now = 0.3
    for i in range(n):
        before = _master_state(master)
        kind = i % 5
        if kind == 0:
            fs, slave = rng.choice([("nosuch", "dc1-r1-s2"), ("news", "ghost"), ("", ""), ("web", "M1"),
                                    ("news", "rm")])
            rep = m.SlaveReport(slave, fs, (), seq=i)
            out = t.attempt(lambda r=rep: master.on_report(now, r), (), rep)
        elif kind == 1:  # negative or duplicate rows
            rows = rng.choice([(m.FileState("x", 1, -1),), (m.FileState("x", -1, 0),),
                               (m.FileState("news", 1, 10, fileset_file=True), m.FileState("y", 1, 1),
                                m.FileState("y", 1, 2))])
            rep = m.SlaveReport(rng.choice(slaves), rng.choice(["news", "web"]), rows, seq=i)
            out = t.attempt(lambda r=rep: master.on_report(now, r), (), rep)
        elif kind == 2:
            tid = rng.choice(["nosuch", "", *granted, random_text(rng, 12)])
            dec = rng.choice([m.Denial(tid, "x", 0), m.Grant(tid, "dc1-r1-s1", "dc1-r1-s2", (), "P3", 1e6, 1, 0, 9)])
            out = t.attempt(lambda d=dec: master.on_decision(now, d), (), dec)
            if out is not None and out is not _CRASHED:
                t.violation("decision for an unknown or decided transfer produced an instruction", dec)
        elif kind == 3:
            tid = rng.choice(["nosuch", "", random_text(rng, 8)])
            out = t.attempt(lambda x=tid: master.on_instruction_failed(now, x, "fuzz"), (), tid)
            if out is not None and out is not _CRASHED:
                t.violation("failure of an unknown transfer produced a release", tid)
        else:  # valid-shaped random reports on the chaos master: crash check only
            rows = tuple(m.FileState(rng.choice(["news", "web", "news-a", "web-a", random_text(rng, 4)]),
                                     rng.randint(0, 3), rng.choice([0, 1, 4096, 3 * 4096 + 5, 10**6]),
                                     rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.3)
                         for _ in range(rng.randint(0, 4)))
            uniq = tuple({r.file_id: r for r in rows}.values())
            results = tuple(m.TransferResult(rng.choice([*granted, "nosuch"]), rng.random() < 0.5,
                                             rng.choice(["none", "receiver", "source", "other"]), "", 1, 0.1)
                            for _ in range(rng.randint(0, 2)))
            rep = m.SlaveReport(rng.choice(slaves), rng.choice(["news", "web"]), uniq, rng.randint(-5, 5), results, i)
            when = now + i * 0.01

            def step(r: m.SlaveReport = rep, w: float = when) -> None:
                chaos.on_report(w, r)
                for req in chaos.next_requests(w, limit=4):
                    dec = m.Grant(req.transfer_id, req.sources[0], req.destination, (), "P3", 1e6, 1, 0, w + 9) \
                        if rng.random() < 0.5 else m.Denial(req.transfer_id, "busy", 0)
                    chaos.on_decision(w, dec)
                chaos.tick(w)
                chaos.snapshot()
                chaos.progress()

            t.attempt(step, (), rep)
            continue
        if out is _CRASHED:
            continue
        if kind <= 1:
            if out != [] or master.rejected.total() == 0:
                t.violation("invalid report not rejected", rep)
            else:
                t.reclassify("report rejected")
        else:
            t.reclassify("unknown transfer")
        if _master_state(master) != before:
            t.violation("rejected input changed the master", i, state=True)
    return t


def fuzz_core_slave_state(n: int, rng: random.Random) -> Tally:
    """slave_rows/obsolete: FileSet row first, every listed file has a row, inputs untouched; a FileSet of
    another fileset is refused with ValueError."""
    t = Tally("core.slave_state")
    for _ in range(n):
        fs = rng.choice(["news", "web"])
        ids = [f"f{k}" for k in range(rng.randint(0, 5))]
        content = None if rng.random() < 0.1 else FileSetContent(
            rng.choice([fs, fs, fs, "other"]), rng.randint(0, 9), tuple((f, rng.randint(0, 5)) for f in ids))
        names = rng.sample([*ids, fs, "extra"], rng.randint(0, 2))
        stored = {f: storage.StoredFile(fs, f, rng.randint(0, 6), rng.randint(0, 10**6), rng.randint(0, 9),
                                        rng.random() < 0.5, 0) for f in names}
        snapshot = dict(stored)
        origin = rng.random() < 0.5
        out = t.attempt(lambda f=fs, c=content, s=stored, o=origin: (slave_rows(f, s, c, origin=o),
                                                               obsolete(s, c, rollback=not o) if c else []),
                        (ValueError,), (fs, content))
        if stored != snapshot:
            t.violation("slave_rows changed its input", content, state=True)
        if isinstance(out, tuple):
            rows, _ = out
            if not rows[0].fileset_file or rows[0].file_id != fs:
                t.violation("first row is not the FileSet file", content)
            if content is not None and {f for f, _ in content.files} - {r.file_id for r in rows}:
                t.violation("a listed file has no row", content)
        elif out is _REJECTED and content is not None and content.fileset == fs:
            t.violation("a FileSet of this fileset was refused", content)
    return t


# --- live daemons over real TCP ------------------------------------------------------------------


async def _exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Sends ``payload``, half-closes, and reads the reply until the daemon closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(payload)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(-1), timeout)
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _reply(data: bytes) -> m.Message | None:
    if not data:
        return None
    env = Codec(KEY, "client").open(data[: PREFIX_LEN + struct.unpack_from(">I", data, 4)[0]], time.time())
    return env.msg


class LiveCluster:
    """A resource manager, master and slave daemon in this process, each serving its real handler on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.topo = small_topology(epoch=3600.0)  # one long epoch: nothing rolls while we compare state
        self.logs = {name: LogSink() for name in ("rm", "M1", "slave")}
        self.rm = RMDaemon(make_context("rm", self.topo, self.logs["rm"]), root / "ledger.jsonl")
        self.master = MasterDaemon(make_context("M1", self.topo, self.logs["M1"]))
        self.slave = SlaveDaemon(make_context("dc1-r1-s2", self.topo, self.logs["slave"]), root / "live-slave")
        self.ports: dict[str, int] = {}
        self.servers: list[asyncio.Server] = []
        self.client = Codec(KEY, "fuzz-client")

    async def start(self) -> None:
        for name, codec, handler in (("rm", self.rm.ctx.codec, self.rm.handle),
                                     ("M1", self.master.ctx.codec, self.master.handle),
                                     ("slave", self.slave.ctx.codec, self.slave.handle_control),
                                     ("slave-data", self.slave.ctx.codec, self.slave.handle_data)):
            log = self.logs[name.split("-")[0]]
            server = await netio.serve("127.0.0.1", 0, codec, handler, log=log, timeout=5.0)
            self.servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        self.rm.ledger.close()

    async def call(self, name: str, msg: m.Message) -> m.Message | None:
        return _reply(await _exchange(self.ports[name], self.client.encode(msg, time.time())))

    async def status(self) -> dict[str, Any]:
        out = {}
        for name in ("rm", "M1", "slave"):
            reply = await self.call(name, m.StatusQuery())
            if not isinstance(reply, m.StatusReply):
                raise RuntimeError(f"{name} did not answer a StatusQuery: {reply!r}")
            out[name] = reply.body
        out["ledger_bytes"] = self.rm.ledger.tell()
        out["slave_active"] = sorted(self.slave.active)
        out["slave_pending"] = {fs: len(q) for fs, q in self.slave.pending.items()}
        return out


def _core_only(status: dict[str, Any]) -> dict[str, Any]:
    """State that no rejected input may change; per-request counters (denied, reports received, rejection
    counts, a slave's queued failure results) legitimately count refused requests."""
    s = json.loads(json.dumps(status))
    s["rm"].pop("denied")
    s["M1"].pop("reports")
    s["M1"]["state"].pop("rejected")
    s.pop("slave_pending")
    return s


async def _live(n: int, rng: random.Random, root: Path) -> list[Tally]:
    lc = LiveCluster(root)
    await lc.start()
    bs = lc.topo.block_size
    try:
        # prime: one granted copy at the RM, reports at the master, one stored block at the slave
        captured: dict[str, bytes] = {}
        req = m.CopyRequest("live.1", "M1", "dc2-r3-s1", ("dc1-r1-s1",), "news", "news-index", 1, 0, bs)
        captured["rm"] = lc.client.encode(req, time.time())
        if not isinstance(_reply(await _exchange(lc.ports["rm"], captured["rm"])), m.Grant):
            raise RuntimeError("live resource manager refused the priming request")
        rep = m.SlaveReport("dc1-r1-s1", "news", (m.FileState("news", 1, 100, True, True, True),), seq=1)
        captured["M1"] = lc.client.encode(rep, time.time())
        await _exchange(lc.ports["M1"], captured["M1"])
        lc.slave.store.generate_block("news", "news-index", 1, rng.randbytes(bs), False)
        get = m.BlockGet("live.g", "news", "news-index", 1, 0, 1e7, 65536)
        captured["slave-data"] = lc.client.encode(get, time.time())
        hdr = _reply(await _exchange(lc.ports["slave-data"], captured["slave-data"]))
        if not (isinstance(hdr, m.BlockHeader) and hdr.ok):
            raise RuntimeError(f"live slave did not serve its block: {hdr!r}")
        captured["slave"] = lc.client.encode(m.StatusQuery(), time.time())
        await _exchange(lc.ports["slave"], captured["slave"])
        baseline = await lc.status()

        hostile = Tally("live.hostile_frames")
        signed = Tally("live.signed_invalid")
        wrong = Codec(WRONG_KEY, "fuzz-client")
        targets = ["rm", "M1", "slave", "slave-data"]
        errors_seen = _daemon_errors(lc)

        def state_changing(target: str) -> m.Message:
            return {"rm": req, "M1": rep, "slave": m.CopyInstruction(
                "live.x", "pull", "M1", "dc1-r1-s1", "dc1-r1-s2", "news", "news-index", 1, 0, 1e6, 65536, 0.0),
                "slave-data": m.BlockPut("live.p", "news", "news-web", 1, 0, 0, 0, bs, False)}[target]

        def hostile_input(i: int) -> tuple[str, bytes]:
            target = targets[i % len(targets)]
            kind = rng.randrange(8)
            msg = state_changing(target)
            if kind == 0:
                data = rng.randbytes(rng.randint(1, 200))
            elif kind == 1:
                data = rng.choice([b"GET / HTTP/1.1\r\n\r\n", GOOD + b"\xff" * 4, GOOD + struct.pack(">I", 2**31)])
            elif kind == 2:  # forged: right shape, wrong key
                data = wrong.encode(msg, time.time())
            elif kind == 3:  # replay of a frame the daemon already accepted
                data = captured[target]
            elif kind == 4:  # stale or future-dated, correctly signed
                data = lc.client.encode(msg, time.time() + rng.choice([-1000.0, 1000.0]))
            elif kind == 5:  # a genuine frame damaged in transit (inside the frame: its HMAC cannot hold)
                buf = bytearray(lc.client.encode(msg, time.time()))
                for _ in range(rng.randint(1, 3)):
                    buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
                data = bytes(buf)
            else:  # validly signed message of a type this port does not take, its body mutated or not
                bad = {"rm": m.Grant("g", "a", "b", (), "P1", 1.0, 1, 0, 0.0), "M1": req,
                       "slave": m.BlockGet("z", "news", "f", 1, 0, 1.0, 1), "slave-data": rep}[target]
                env = envelope_obj(bad, ts=time.time())
                if kind == 6:
                    env["msg"] = mutate_tree(rng, env["msg"], TAGS)
                data = lc.client.seal(dumps(env))
            return target, data

        sem = asyncio.Semaphore(16)
        n_hostile = n // 2

        async def one_hostile(i: int) -> None:
            target, data = hostile_input(i)
            async with sem:
                raw = await _exchange(lc.ports[target], data)
            try:
                reply = _reply(raw)
            except ProtocolError as e:
                hostile.crash(e, data)
                return
            if reply is None or isinstance(reply, m.Error):
                hostile.reject(f"Error: {reply.reason if reply else 'closed without reply'}")
            elif isinstance(reply, m.StatusReply):
                hostile.accept()  # a mutation that retagged the body as a bare status query: harmless
            else:
                hostile.violation(f"{target} answered {type(reply).__name__} to a hostile frame", data)

        await asyncio.gather(*(one_hostile(i) for i in range(n_hostile)))
        after = await lc.status()
        errors_seen = _charge_daemon_errors(lc, hostile, errors_seen)
        if _strip_time(after) != _strip_time(baseline):
            hostile.violation(f"hostile frames changed daemon state: {_diff(baseline, after)}", "", state=True)
        # validly signed requests the daemons must refuse or deny without changing state
        base2 = _core_only(after)

        def signed_input(i: int) -> tuple[str, m.Message]:
            target = targets[i % len(targets)]
            tid = rng.choice(["nosuch", "", "live.1x", random_text(rng, 10)])
            k = rng.randrange(3)
            if target == "rm":
                cap = rng.choice([("nosuch", 1e6), ("trunk/T1", -1.0), ("trunk/T1", 0.0), ("", 5.0)])
                if rng.random() < 0.02:  # a name whose repr in the refusal outgrows the frame limit
                    return target, dataclasses_replace(req, fileset="\x7f" * 250_000)
                return target, [_bad_request(rng, req, "live.1"), m.Release(tid, rng.random() < 0.5, 5),
                                m.SetCapacity(*cap)][k]
            if target == "M1":
                return target, [m.SlaveReport("ghost", "news", ()), m.SlaveReport("dc1-r1-s3", "nosuch", ()),
                                m.SlaveReport("dc1-r1-s3", "news", (m.FileState("a", 1, -5),))][k]
            if target == "slave":
                ins = state_changing("slave")
                if rng.random() < 0.02:
                    return target, dataclasses_replace(ins, file_id="\x7f" * 250_000)
                return target, [dataclasses_replace(ins, file_id=rng.choice(["../../x", "", ".a", "a/b"])),
                                dataclasses_replace(ins, fileset="nosuch"),
                                dataclasses_replace(ins, destination="dc2-r3-s1", rate=-1.0)][k]
            put = m.BlockPut(tid, "news", "fz", 1, 0, 0, 0, 100, True)
            return target, [
                dataclasses_replace(put, final=False),  # a short non-final block (breaks the block rule)
                dataclasses_replace(put, block=rng.choice([-1, 2**32, 5]), crc=0),
                m.BlockGet(tid, "news", rng.choice(["nosuch", "../x", "news-index"]), rng.choice([-1, 1, 2**63 - 1]),
                           rng.choice([0, 1, -1, 2**40]), rng.choice([1e6, 0.0, -1.0, 1e300]), 0)][k]

        async def one_signed(i: int) -> None:
            target, msg = signed_input(i)
            data = lc.client.encode(msg, time.time())
            if isinstance(msg, m.BlockPut):
                data += b"\x00" * (msg.length if 0 < msg.length <= bs else 0)
            async with sem:
                raw = await _exchange(lc.ports[target], data)
            try:
                reply = _reply(raw)
            except ProtocolError as e:
                signed.crash(e, msg)
                return
            refused = (reply is None or isinstance(reply, (m.Error, m.Denial))
                       or (isinstance(reply, m.Ack | m.BlockAck | m.BlockHeader) and not reply.ok)
                       or (isinstance(reply, m.Ack) and target == "M1"))
            if reply is None:
                signed.crash(RuntimeError(f"{target} closed without a reply"), msg)
                signed.reasons["closed without a reply"] += 1
            elif refused:
                signed.reject(f"{type(reply).__name__}")
            elif isinstance(reply, m.BlockHeader) and reply.ok:
                signed.accept()  # a BlockGet of the primed block is legitimately served
            else:
                signed.violation(f"{target} accepted {msg!r}"[:200], msg)

        await asyncio.gather(*(one_signed(i) for i in range(n - n_hostile)))
        await asyncio.sleep(0.05)  # a handler logs after it replies
        final = await lc.status()
        if _strip_time(_core_only(final)) != _strip_time(base2):
            signed.violation(f"refused requests changed daemon state: {_diff(base2, _core_only(final))}", "",
                             state=True)
        _charge_daemon_errors(lc, signed, errors_seen)
        return [hostile, signed]
    finally:
        await lc.stop()


def _daemon_errors(lc: LiveCluster) -> list[str]:
    return [ln for sink in lc.logs.values() for ln in sink.errors()]


def _charge_daemon_errors(lc: LiveCluster, t: Tally, seen: list[str]) -> list[str]:
    """A handler that died on an unexpected exception is logged by netio.serve: each one is a crash
    (those already counted as a missing reply are not counted twice)."""
    now = _daemon_errors(lc)
    new = now[len(seen):]
    no_reply = t.reasons.get("closed without a reply", 0)
    t.crashes += max(0, len(new) - no_reply)
    for line in new[:3]:
        if len(t.samples) < 6:
            t.samples.append(f"daemon logged: {line[:240]}")
    return now


def _strip_time(status: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(status))


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = [k for k in a if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {json.dumps(a.get(k))[:150]} -> {json.dumps(b.get(k))[:150]}" for k in keys)


def fuzz_live(n: int, rng: random.Random, root: Path) -> list[Tally]:
    return asyncio.run(_live(n, rng, root))


# --- a report claiming an absurd size (once hung the master: Master._wake walked the whole range) -----

HUGE_REPORT = """
import sys
sys.path.insert(0, {bench!r})
import fuzz_parsers as fp
from scaledist import messages as m
from scaledist.core.master import Master, MasterConfig
topo = fp.small_topology()
master = Master(topo, "M1", MasterConfig(), incarnation="x", start=0.0)
row = m.FileState("news", 1, 200, True, True, True)
for s in ("dc1-r1-s1", "dc1-r1-s2"):  # dc1-r1-s2 is parked waiting for block 1 of news-a@1
    master.on_report(0.1, m.SlaveReport(s, "news", (row, m.FileState("news-a", 1, topo.block_size)), seq=1))
master.next_requests(0.2)
master.on_report(0.5, m.SlaveReport("dc1-r1-s3", "news", (row, m.FileState("news-a", 1, {size})), seq=2))
"""


def probe_master_huge_report(timeout: float = 5.0, size: int = 2**62) -> Tally:
    """One signed SlaveReport whose row claims 2**62 bytes: Master._wake walks range(0, size // block_size)
    while a destination is parked, so the master's event loop spins for ages (run in a child, with a timeout)."""
    import subprocess

    t = Tally("core.master.huge_report")
    code = HUGE_REPORT.format(bench=str(ROOT / "bench"), size=size)
    try:
        subprocess.run([sys.executable, "-c", code], timeout=timeout, check=True, capture_output=True)
    except subprocess.TimeoutExpired as e:
        t.crash(TimeoutError(f"Master.on_report still busy after {timeout:g}s with one row of size {size}"), size)
        t.crash_sites.clear()
        t.crash_sites["hang@master.py"] += 1
        del e
    except subprocess.CalledProcessError as e:
        t.crash(RuntimeError(e.stderr.decode()[-300:]), size)
    else:
        t.accept()
    return t


# --- the campaign --------------------------------------------------------------------------------


def plan(n: int) -> dict[str, int]:
    """Inputs per target for a campaign of about ``n`` inputs."""
    total = sum(WEIGHTS.values())
    counts = {name: max(1, round(n * w / total)) for name, w in WEIGHTS.items()}
    counts["live"] = min(counts["live"], LIVE_CAP)
    counts["msg"] = max(counts["msg"], len(MESSAGE_TYPES))
    counts["known"] = 1
    return counts


def run_campaign(n: int = 100_000, seed: int = 0, *, live: bool = True, known: bool = True,
                 report: Callable[[Tally], None] | None = None) -> list[Tally]:
    """Every target with its share of ``n`` inputs; returns one Tally per target (per message type)."""
    counts = plan(n)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    out: list[Tally] = []
    try:
        jobs: list[tuple[str, Callable[[int, random.Random], Tally | list[Tally]]]] = [
            ("wire.random_bytes", fuzz_wire_random),
            ("wire.mutated_frames", fuzz_wire_mutated),
            ("wire.signed_garbage", fuzz_wire_signed),
            ("msg", fuzz_messages),
            ("data.block_stream", lambda k, r: fuzz_data_plane(k, r, tmp / "data")),
            ("ids", lambda k, r: fuzz_ids(k, r, tmp / "ids")),
            ("fileset_file", fuzz_fileset),
            ("storage.records", fuzz_records),
            ("storage.disk", lambda k, r: fuzz_storage_disk(k, r, tmp / "storage")),
            ("yaml.topology", lambda k, r: fuzz_yaml(k, r, "topology")),
            ("yaml.scenario", lambda k, r: fuzz_yaml(k, r, "scenario")),
            ("core.resource_manager", fuzz_core_rm),
            ("core.master", fuzz_core_master),
            ("core.slave_state", fuzz_core_slave_state),
        ]
        if live:
            jobs.append(("live", lambda k, r: fuzz_live(k, r, tmp / "live")))
        if known:
            jobs.append(("known", lambda k, r: probe_master_huge_report()))
        for idx, (name, fn) in enumerate(jobs):
            (tmp / name).mkdir(exist_ok=True)
            rng = random.Random(zlib.crc32(f"{seed}:{name}".encode()) + idx)
            t0 = time.perf_counter()
            result = fn(counts[name], rng)
            dt = time.perf_counter() - t0
            tallies = result if isinstance(result, list) else [result]
            for t in tallies:
                t.seconds = dt / len(tallies)
                out.append(t)
                if report:
                    report(t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def totals(tallies: list[Tally]) -> dict[str, int]:
    return {
        "fuzz_inputs_total": sum(t.inputs for t in tallies),
        "crashes": sum(t.crashes for t in tallies),
        "state_changes": sum(t.state_changes for t in tallies),
        "forged_accepted": sum(t.forged_accepted for t in tallies),
    }


def _print_tally(t: Tally) -> None:
    print(f"{t.name:28s} inputs={t.inputs:6d} accepted={t.accepted:6d} rejected={t.rejected:6d} "
          f"crashes={t.crashes} state_changes={t.state_changes} forged_accepted={t.forged_accepted} "
          f"({t.seconds:.1f}s)", flush=True)
    top = ", ".join(f"{k} x{v}" for k, v in t.reasons.most_common(3))
    if top:
        print(f"{'':28s}   top rejections: {top}", flush=True)
    for s in t.samples:
        print(f"{'':28s}   !! {s}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="inputs in the whole campaign (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-live", action="store_true", help="skip the daemons over TCP")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tallies = run_campaign(args.n, args.seed, live=not args.no_live, report=_print_tally)
    tot = totals(tallies)
    print(f"elapsed {time.perf_counter() - t0:.1f}s on {os.cpu_count()} cpus")
    print(" ".join(f"{k}={v}" for k, v in tot.items()))
    return 0 if tot["crashes"] == tot["state_changes"] == tot["forged_accepted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
