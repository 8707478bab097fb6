"""netio over real sockets on loopback: round trips, rejections, pacing, windows, timeouts."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import pytest

from scaledist import messages as m
from scaledist import netio
from scaledist.wire import MAGIC, Codec, ProtocolError

KEY = b"cluster-key-0123456789abcdef"
HOST = "127.0.0.1"

Handler = Callable[[netio.Conn], Awaitable[None]]


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


async def start(handler: Handler, logs: list[str], **kw: object) -> tuple[asyncio.Server, int]:
    server = await netio.serve(HOST, 0, Codec(KEY, "srv"), handler, log=logs.append, **kw)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


async def echo(conn: netio.Conn) -> None:
    """Answers every request on the connection; ProtocolError from the peer propagates to serve()."""
    while True:
        env = await conn.recv(timeout=2.0)
        if isinstance(env.msg, m.Denial):
            raise ProtocolError(f"server does not accept {type(env.msg).__name__}")
        if isinstance(env.msg, m.Release):
            raise RuntimeError("handler bug")
        await conn.send(m.StatusReply(role="test", ident="srv", body={"from": env.sender, "peer": conn.peer}))


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Sends bytes outside the protocol and returns everything the server says until it closes."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return reply


def test_serve_and_call_round_trip() -> None:
    async def main() -> None:
        logs: list[str] = []
        server, port = await start(echo, logs)
        client = Codec(KEY, "m1")
        reply = await netio.call(HOST, port, client, m.StatusQuery())
        assert isinstance(reply, m.StatusReply) and reply.body["from"] == "m1"
        # the local address can be chosen: daemons live on distinct loopback addresses
        reply = await netio.call(HOST, port, client, m.StatusQuery(), source_host="127.0.0.2")
        assert isinstance(reply, m.StatusReply) and str(reply.body["peer"]).startswith("127.0.0.2:")
        # several requests on one connection
        async with await netio.connect(HOST, port, client) as conn:
            for _ in range(3):
                await conn.send(m.Ack())
                env = await conn.recv(timeout=2)
                assert env.sender == "srv" and isinstance(env.msg, m.StatusReply)
        server.close()
        await server.wait_closed()
        assert logs == []

    run(main())


def test_error_reply_raises_remote_error_and_is_logged() -> None:
    async def main() -> None:
        logs: list[str] = []
        server, port = await start(echo, logs)
        with pytest.raises(netio.RemoteError, match="server does not accept Denial") as info:
            await netio.call(HOST, port, Codec(KEY, "m1"), m.Denial("t", "x"))
        assert info.value.reason == "server does not accept Denial"
        assert len(logs) == 1 and logs[0].startswith("rejected from 127.0.0.1:")
        assert logs[0].endswith(": server does not accept Denial")
        server.close()

    run(main())


def test_garbage_and_forged_frames_are_rejected_and_the_server_keeps_serving() -> None:
    async def main() -> None:
        logs: list[str] = []
        server, port = await start(echo, logs)
        reader_codec = Codec(KEY, "observer")

        reply = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        err = reader_codec.decode(reply, time.time()).msg
        assert err == m.Error("bad magic b'GE'")

        forged = Codec(b"not-the-cluster-key-at-all!!", "mallory").encode(m.StatusQuery(), time.time())
        reply = await raw_exchange(port, forged)
        assert reader_codec.decode(reply, time.time()).msg == m.Error("bad HMAC: message not authenticated")

        huge = struct.pack(">2sBBI", MAGIC, m.WIRE_VERSION, 0, 1 << 30)
        reply = await raw_exchange(port, huge)
        assert "exceeds" in reader_codec.decode(reply, time.time()).msg.reason  # type: ignore[union-attr]

        # a client without the key cannot authenticate the server's Error either
        with pytest.raises(ProtocolError, match="bad HMAC"):
            await netio.call(HOST, port, Codec(b"not-the-cluster-key-at-all!!", "mallory"), m.StatusQuery())

        assert len(logs) == 4, logs
        assert all(line.startswith("rejected from 127.0.0.1:") for line in logs)
        assert "bad magic b'GE'" in logs[0] and "bad HMAC" in logs[1] and "exceeds" in logs[2]

        # a handler bug is logged with the peer and does not stop the server
        with pytest.raises((netio.ConnectionClosed, ConnectionError)):
            await netio.call(HOST, port, Codec(KEY, "m1"), m.Release("t", True))
        assert logs[-1].startswith("error with 127.0.0.1:") and "handler bug" in logs[-1]

        reply = await netio.call(HOST, port, Codec(KEY, "m1"), m.StatusQuery())
        assert isinstance(reply, m.StatusReply)
        server.close()

    run(main())


async def timed_transfer(rate: float | None, nbytes: int) -> float:
    """Seconds for ``nbytes`` raw bytes (after a BlockPut header) to arrive, with the sender paced at ``rate``."""
    got: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()

    async def receiver(conn: netio.Conn) -> None:
        env = await conn.recv(timeout=5)
        assert isinstance(env.msg, m.BlockPut)
        total = 0
        async for piece in conn.raw_chunks(env.msg.length, timeout=5):
            total += len(piece)
        got.set_result((total, time.perf_counter()))

    server, port = await start(receiver, [])
    conn = await netio.connect(HOST, port, Codec(KEY, "s1"))
    value = conn.set_pacing(rate)
    raw = conn.socket.getsockopt(socket.SOL_SOCKET, netio.SO_MAX_PACING_RATE, 4)
    assert struct.unpack("=I", raw)[0] == value
    start_t = time.perf_counter()
    await conn.send(m.BlockPut("t", "fs", "f", 1, 0, 0, 0, nbytes, True))
    await conn.send_raw(b"\x5a" * nbytes, timeout=10)
    total, end_t = await asyncio.wait_for(got, 15)
    assert total == nbytes
    await conn.close()
    server.close()
    return end_t - start_t


def test_pacing_limits_the_send_rate() -> None:
    async def main() -> None:
        nbytes = 4_000_000
        paced = await timed_transfer(8e6, nbytes)
        free = await timed_transfer(None, nbytes)
        print(f"\npaced at 8 MB/s: {nbytes / paced / 1e6:.2f} MB/s ({paced:.3f} s); "
              f"unpaced: {nbytes / free / 1e6:.1f} MB/s ({free:.3f} s)")
        assert paced >= 0.35  # 0.5 s at exactly 8 MB/s; the initial window goes out unpaced
        assert free < paced

    run(main())


def test_pacing_values() -> None:
    async def main() -> None:
        server, port = await start(echo, [])
        conn = await netio.connect(HOST, port, Codec(KEY, "s1"))
        assert conn.set_pacing(0) == 2**32 - 1
        assert conn.set_pacing(1e12) == 2**32 - 1  # capped to the u32 option
        assert conn.set_pacing(0.2) == 1
        assert conn.set_pacing(1_250_000.7) == 1_250_000
        await conn.close()
        server.close()

    run(main())


def test_window_is_applied_to_the_socket() -> None:
    async def main() -> None:
        want = 256 * 1024
        seen: list[int] = []

        async def handler(conn: netio.Conn) -> None:
            seen.append(conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            await echo(conn)

        server, port = await start(handler, [], window=want)
        conn = await netio.connect(HOST, port, Codec(KEY, "s1"), window=want)
        sock = conn.socket
        snd = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rcv = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        cap = min(want, _sysctl("wmem_max"), _sysctl("rmem_max"))
        assert snd >= cap and rcv >= cap  # Linux reports twice the request (bookkeeping overhead)
        await conn.send(m.StatusQuery())
        await conn.recv(timeout=2)
        assert seen and seen[0] >= cap  # accepted sockets inherit the listener's buffers
        smaller = conn.set_window(64 * 1024)
        assert smaller == (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )
        assert 64 * 1024 <= smaller[0] < snd
        await conn.close()
        server.close()

    run(main())


def _sysctl(name: str) -> int:
    try:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read())
    except OSError:
        return 1 << 30


def test_stalled_peer_is_dropped_after_the_timeout() -> None:
    async def main() -> None:
        logs: list[str] = []

        async def handler(conn: netio.Conn) -> None:
            await conn.recv(timeout=0.5)

        server, port = await start(handler, logs)
        for prefix in (struct.pack(">2sBBI", MAGIC, m.WIRE_VERSION, 0, 100), b""):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(prefix)  # a header announcing 100 bytes that never come, or nothing at all
            await writer.drain()
            t0 = time.perf_counter()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hung up
            waited = time.perf_counter() - t0
            assert 0.4 <= waited < 3.0
            writer.close()
        assert len(logs) == 2 and all(line.startswith("dropped 127.0.0.1:") for line in logs)
        server.close()

    run(main())


def test_call_times_out_on_a_silent_server() -> None:
    async def main() -> None:
        async def silent(conn: netio.Conn) -> None:
            await conn.recv(timeout=5)
            await asyncio.sleep(5)

        server, port = await start(silent, [])
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError):
            await netio.call(HOST, port, Codec(KEY, "m1"), m.StatusQuery(), timeout=0.5)
        assert time.perf_counter() - t0 < 2
        server.close()

    run(main())


def test_connect_refused_and_timeout() -> None:
    async def main() -> None:
        probe = socket.socket()
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens here now
        with pytest.raises(OSError):
            await netio.connect(HOST, port, Codec(KEY, "m1"), timeout=2)

    run(main())


def test_frame_and_raw_bytes_in_one_segment_and_early_close() -> None:
    async def main() -> None:
        results: list[object] = []

        async def handler(conn: netio.Conn) -> None:
            env = await conn.recv(timeout=2)
            assert isinstance(env.msg, m.BlockPut)
            try:
                results.append(await conn.recv_raw(env.msg.length, timeout=2))
            except netio.ConnectionClosed as e:
                results.append(e)

        server, port = await start(handler, [])
        client = Codec(KEY, "s1")
        for payload, announced in ((b"abc" * 1000, 3000), (b"short", 10)):
            _, writer = await asyncio.open_connection(HOST, port)
            header = client.encode(m.BlockPut("t", "fs", "f", 1, 0, 0, 0, announced, True), time.time())
            writer.write(header + payload)  # the reader buffers raw bytes together with the frame
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        for _ in range(100):
            if len(results) == 2:
                break
            await asyncio.sleep(0.02)
        assert results[0] == b"abc" * 1000
        assert isinstance(results[1], netio.ConnectionClosed) and "after 5 of 10 raw bytes" in str(results[1])
        server.close()

    run(main())


def test_slow_pacing_does_not_trip_the_progress_timeout() -> None:
    """600 kB paced at 150 kB/s takes seconds; a 1 s timeout bounds progress, not the whole send."""

    async def main() -> None:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def receiver(conn: netio.Conn) -> None:
            env = await conn.recv(timeout=5)
            assert isinstance(env.msg, m.BlockPut)
            got.set_result(len(await conn.recv_raw(env.msg.length, timeout=5)))

        server, port = await start(receiver, [])
        conn = await netio.connect(HOST, port, Codec(KEY, "s1"), timeout=1.0, window=16 * 1024)
        conn.set_pacing(150_000)
        t0 = time.perf_counter()
        await conn.send(m.BlockPut("t", "fs", "f", 1, 0, 0, 0, 600_000, True))
        await conn.send_raw(b"x" * 600_000, timeout=1.0)
        assert await asyncio.wait_for(got, 15) == 600_000
        assert time.perf_counter() - t0 >= 1.0  # paced (the initial window, 10 segments of 64 KiB on loopback, is not)
        await conn.close()
        server.close()

    run(main())
