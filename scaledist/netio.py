"""Thin asyncio networking shared by every daemon: framed, authenticated messages plus raw block bytes.

Everything here is bounded: every read has a timeout, frames have a size limit
checked from the header, and a rejected peer gets one ``Error`` reply and is
disconnected. The protocol logic (framing, HMAC, freshness, replay) lives in
the sans-I/O :mod:`scaledist.wire`; this module only moves bytes.

Rate control is the kernel's: ``SO_MAX_PACING_RATE`` makes TCP pace a socket
without the fq qdisc (measured in the design notes), and socket buffers sized
from the bandwidth-delay product set the window (§0116).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

from scaledist.messages import Envelope, Error, Message
from scaledist.wire import Codec, FrameReader, ProtocolError

__all__ = [
    "Conn",
    "ConnectionClosed",
    "ProtocolError",
    "RemoteError",
    "call",
    "connect",
    "serve",
]

SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
MAX_PACING = 2**32 - 1  # the u32 option value; ~0U means "unlimited" to the kernel
READ_CHUNK = 1 << 16  # frame reads: a frame plus at most this much stays buffered
RAW_CHUNK = 1 << 18  # raw block bytes are moved in pieces of this size
_GSO_MAX = 1 << 16  # largest segment the kernel hands to the device in one go
_REJECT_LINGER = 1.0  # seconds a rejected peer gets to read its Error before we close


class ConnectionClosed(ConnectionError):
    """The peer closed the connection cleanly between frames (or before the raw bytes were complete)."""


class RemoteError(Exception):
    """The peer answered with ``messages.Error``: it rejected what we sent and changed nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _oneline(text: str, limit: int = 300) -> str:
    """Log lines stay one line even when a reason quotes peer-supplied text."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _apply_window(sock: socket.socket | asyncio.trsock.TransportSocket, nbytes: int) -> tuple[int, int]:
    """Sets SO_SNDBUF/SO_RCVBUF; FORCE variants (root) go past net.core.[rw]mem_max. Returns the kernel's values."""
    nbytes = max(1, min(int(nbytes), 2**31 - 1))
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, nbytes)
        except OSError:  # not privileged: capped at [rw]mem_max
            sock.setsockopt(socket.SOL_SOCKET, plain, nbytes)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def _fmt_addr(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


class Conn:
    """One connection: frames in and out through the codec, raw block bytes around them.

    ``timeout`` is the default for every wait; ``None`` passed to a method means "use it".
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        codec: Codec,
        *,
        timeout: float = 30.0,
        expect_sender: str | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = codec
        self.timeout = timeout
        self.frames = FrameReader(codec, expect_sender=expect_sender)
        self.peer = _fmt_addr(writer.get_extra_info("peername"))
        self.local = _fmt_addr(writer.get_extra_info("sockname"))
        self._closed = False
        self._pacing = 0  # bytes/s set by set_pacing (0 = unlimited)

    async def __aenter__(self) -> Conn:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def socket(self) -> asyncio.trsock.TransportSocket:
        return self.writer.get_extra_info("socket")

    # --- receiving ------------------------------------------------------------

    async def recv(self, timeout: float | None = None) -> Envelope:
        """The next authenticated envelope; the whole frame must arrive within ``timeout``.

        Raises ProtocolError (close the connection), ConnectionClosed, TimeoutError.
        A peer that sends a header and stalls is thus dropped after the timeout.
        """
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            while True:
                env = self.frames.next_event(time.time())
                if env is not None:
                    return env
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    self.frames.eof()  # raises ProtocolError if closed mid-frame
                    raise ConnectionClosed(f"{self.peer} closed the connection")
                self.frames.feed(data)

    async def raw_chunks(self, n: int, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Streams exactly ``n`` raw bytes (a block after its header) in pieces, for writing to disk as they come.

        Not subject to the frame limit (blocks go up to 1 GiB). ``timeout`` bounds each
        wait for progress, not the whole transfer: a paced copy is slow by design, and
        the copy's deadline belongs to the caller.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        wait = self.timeout if timeout is None else timeout
        remaining = n
        while remaining and self.frames.buffered:
            piece = self.frames.take_available(min(remaining, RAW_CHUNK))
            remaining -= len(piece)
            yield piece
        while remaining:
            async with asyncio.timeout(wait):
                data = await self.reader.read(min(remaining, RAW_CHUNK))
            if not data:
                raise ConnectionClosed(f"{self.peer} closed the connection after {n - remaining} of {n} raw bytes")
            remaining -= len(data)
            yield data

    async def recv_raw(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` raw bytes in memory (use :meth:`raw_chunks` to stream large blocks to disk)."""
        parts = [piece async for piece in self.raw_chunks(n, timeout)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- sending --------------------------------------------------------------

    async def send(self, msg: Message, timeout: float | None = None) -> None:
        """Sends one message; waits (bounded) until the kernel has taken it."""
        self.writer.write(self.codec.encode(msg, time.time()))
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            await self.writer.drain()

    async def send_raw(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Sends raw bytes in pieces, draining after each so memory stays bounded and pacing applies.

        ``timeout`` bounds each drain (progress), not the whole transfer.
        """
        wait = self.timeout if timeout is None else timeout
        chunk = RAW_CHUNK
        if self._pacing:
            # a paced socket drains at the pacing rate, in bursts of up to one GSO segment (64 KiB on loopback):
            # smaller pieces, and each wait extended by the time the rate needs for what must drain
            chunk = max(16 * 1024, min(RAW_CHUNK, int(self._pacing / 4)))
            wait += (chunk + 2 * _GSO_MAX) / self._pacing
        view = memoryview(data).cast("B")
        for off in range(0, len(view), chunk):
            self.writer.write(view[off : off + chunk])
            async with asyncio.timeout(wait):
                await self.writer.drain()

    # --- socket options -------------------------------------------------------

    def set_pacing(self, rate: float | None) -> int:
        """Caps this socket's send rate (bytes/s) in the kernel via SO_MAX_PACING_RATE; 0/None = unlimited.

        Returns the value set (2**32-1 = unlimited). No fq qdisc needed: TCP paces itself.
        """
        value = MAX_PACING if not rate or rate <= 0 else max(1, min(int(rate), MAX_PACING))
        self.socket.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("=I", value))
        self._pacing = 0 if value == MAX_PACING else value
        return value

    def set_window(self, nbytes: int) -> tuple[int, int]:
        """Sizes send and receive buffers from the bandwidth-delay product (§0116); returns (sndbuf, rcvbuf).

        Set before connecting (``connect(window=...)``/``serve(window=...)``) to also get a matching window scale.
        """
        return _apply_window(self.socket, nbytes)

    # --- closing --------------------------------------------------------------

    async def reject(self, reason: str) -> None:
        """Best effort: tell the peer why it is being dropped, then let it read that before we close."""
        try:
            async with asyncio.timeout(_REJECT_LINGER):
                self.writer.write(self.codec.encode(Error(reason=reason[:1000]), time.time()))
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                await self.writer.drain()
                # discard what the peer still sends; closing with unread input would reset the connection
                # and could destroy our Error before the peer reads it
                while await self.reader.read(READ_CHUNK):
                    pass
        except (OSError, TimeoutError, ValueError, RuntimeError):
            pass

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


async def connect(
    host: str,
    port: int,
    codec: Codec,
    *,
    timeout: float = 5.0,
    window: int | None = None,
    source_host: str | None = None,
    expect_sender: str | None = None,
) -> Conn:
    """Opens a connection; ``window`` is applied before the SYN so the window scale fits it.

    ``source_host`` binds the local address: daemons live on distinct loopback
    addresses or in namespaces, and the testbed matches flows by 5-tuple.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                if window:
                    _apply_window(sock, window)
                if source_host is not None:
                    sock.bind((source_host, 0))
                await loop.sock_connect(sock, addr)
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError as e:
                sock.close()
                last = e
                continue
            except BaseException:
                sock.close()
                raise
            return Conn(reader, writer, codec, timeout=timeout, expect_sender=expect_sender)
        raise last or OSError(f"no address for {host}:{port}")


async def serve(
    host: str | None,
    port: int,
    codec: Codec,
    handler: Callable[[Conn], Awaitable[None]],
    *,
    log: Callable[[str], None],
    window: int | None = None,
    timeout: float = 30.0,
) -> asyncio.Server:
    """Listens and runs ``handler`` in its own task per connection; a bad peer never takes the server down.

    A ProtocolError from the handler (raised by ``recv`` or by the handler itself)
    is answered with ``messages.Error(reason)``, logged as one line and the
    connection closed; other failures are logged with the peer. ``timeout`` is
    each connection's default wait. ``window`` sizes the listening socket's buffers,
    which accepted connections inherit (and negotiate their window scale from).
    """

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer, codec, timeout=timeout)
        try:
            await handler(conn)
        except ProtocolError as e:
            log(f"rejected from {conn.peer}: {_oneline(e.reason)}")
            await conn.reject(e.reason)
        except ConnectionClosed:
            pass  # the peer hung up between messages: the normal end of a connection
        except TimeoutError:
            log(f"dropped {conn.peer}: nothing complete within the timeout")
        except Exception as e:  # never let one connection crash the server
            log(f"error with {conn.peer}: {_oneline(repr(e))}")
        except asyncio.CancelledError:
            # server shutdown: end quietly (asyncio's stream callback would print a traceback for a cancelled task)
            pass
        finally:
            await conn.close()

    server = await asyncio.start_server(on_client, host, port, reuse_address=True)
    if window:
        for sock in server.sockets:
            _apply_window(sock, window)
    return server


async def call(
    host: str,
    port: int,
    codec: Codec,
    msg: Message,
    *,
    timeout: float = 5.0,
    source_host: str | None = None,
) -> Message:
    """One request, one reply, within ``timeout`` overall; an ``Error`` reply raises RemoteError."""
    async with asyncio.timeout(timeout):
        conn = await connect(host, port, codec, timeout=timeout, source_host=source_host)
        try:
            await conn.send(msg)
            env = await conn.recv()
        finally:
            await conn.close()
    if isinstance(env.msg, Error):
        raise RemoteError(env.msg.reason)
    return env.msg
