"""`scaledist slave`: stores blocks, serves them, pulls or pushes when a master says so, reports its state.

Disk work (read + verify, verify + write + fsync) runs in a thread so one slow
disk never stalls the event loop that answers masters and peers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from scaledist import netio, storage
from scaledist.core.fileset_file import FileSetContent, FileSetError, parse_fileset
from scaledist.core.slave_state import obsolete, slave_rows
from scaledist.daemons.common import Context, run, spawn
from scaledist.ids import BadId, check_id
from scaledist.messages import (
    Ack,
    BlockAck,
    BlockGet,
    BlockHeader,
    BlockPut,
    CopyInstruction,
    FileState,
    Published,
    SlaveReport,
    StatusQuery,
    StatusReply,
    TransferResult,
)
from scaledist.wire import ProtocolError

MAX_PENDING_RESULTS = 1000
# A pull finding no room for a block waits this long for some before failing: a full disk then costs the
# master one failed copy per DISK_WAIT, not one per round trip (which crossed the failure threshold within
# seconds and kept the slave out for minutes).  Well below the master's minimum copy deadline (10 s).
DISK_WAIT = 2.0
# A pull that receives no byte for this long fails at once (blamed on the path, §0089) instead of at its
# deadline (10 s or more): a dead trunk is then counted within seconds. Paced copies deliver bytes every few
# milliseconds, so only a dead or frozen path goes this quiet.
STALL_TIMEOUT = 5.0
SCRUB_RATE = 8e6  # bytes/s a scrub pass reads at most, so it never competes with the copies it protects


def scrub_interval(topology_value: float = 60.0) -> float:
    """Seconds between scrub passes: the topology's ``scrub_interval`` (0 turns scrubbing off), unless the
    ``SCALEDIST_SCRUB_INTERVAL`` environment variable overrides it for one run."""
    try:
        return max(0.0, float(os.environ.get("SCALEDIST_SCRUB_INTERVAL", topology_value)))
    except ValueError:
        return topology_value


class TransferFailed(Exception):
    def __init__(self, detail: str, blame: str = "other") -> None:
        super().__init__(detail)
        self.detail = detail
        self.blame = blame


def log_flow(log: Callable[[str], None], transfer_id: str, conn: netio.Conn, *, sending: bool) -> None:
    """``flow <transfer_id> <data sender ip:port> > <data receiver ip:port>``: lets a capture tie packets to a transfer.

    Written by both ends of every data connection, always in the direction the block bytes flow, so
    traffic.flows can match a 5-tuple seen on a trunk to the ledger's transfer whichever log survives.
    """
    src, dst = (conn.local, conn.peer) if sending else (conn.peer, conn.local)
    log(f"flow {transfer_id} {src} > {dst}")


class SlaveDaemon:
    def __init__(self, ctx: Context, data_dir: Path) -> None:
        self.ctx = ctx
        topo = ctx.topology
        self.store = storage.BlockStore(data_dir, topo.block_size)
        for line in self.store.recover(verify=True):
            ctx.log(f"recover: {line}")
        me = topo.slaves[ctx.ident]
        self.origin = {fs for g in topo.generators.values() if g.slave == ctx.ident for fs in g.filesets}
        self.filesets = tuple(dict.fromkeys([*me.filesets, *sorted(self.origin)]))
        self.pending: dict[str, list[TransferResult]] = {fs: [] for fs in self.filesets}
        self.kick: dict[str, asyncio.Event] = {}
        self.outbound = 0
        self.seq = 0
        self.contents: dict[str, FileSetContent] = {}
        self.active: set[str] = set()
        self.corrupt_found = 0  # blocks of our own disk found bad (on read or by the scrub) and cut

    # --- state --------------------------------------------------------------

    def fileset_content(self, fileset: str) -> FileSetContent | None:
        """The newest complete FileSet file this slave holds (§0059), parsed once per version."""
        st = self.store.stored(fileset, fileset)
        cached = self.contents.get(fileset)
        if st is None or not st.complete:
            return cached  # a newer FileSet file still arriving: keep following the last complete one
        if cached is not None and cached.version == st.version:
            return cached
        parts: list[bytes] = []
        try:
            for i in range(st.blocks):
                try:
                    parts.append(self.store.read_block(fileset, fileset, st.version, i)[0])
                except storage.CorruptBlock as e:
                    self.ctx.log(f"FileSet file {fileset}@{st.version} unusable: {e}")
                    self.ctx.log(self.discard_corrupt(fileset, fileset, st.version, i, "read"))
                    return cached
            content = parse_fileset(b"".join(parts))
        except (FileSetError, storage.StorageError, storage.MissingBlock) as e:
            self.ctx.log(f"FileSet file {fileset}@{st.version} unusable: {e}")
            return None
        self.contents[fileset] = content
        return content

    def rows(self, fileset: str) -> tuple[FileState, ...]:
        return slave_rows(fileset, self.store.files(fileset), self.fileset_content(fileset),
                          origin=fileset in self.origin)

    def apply_fileset(self, fileset: str) -> None:
        """A new FileSet file arrived: drop versions it no longer lists (§0069: a new version starts at 0)."""
        content = self.fileset_content(fileset)
        if content is None:
            return
        for file_id, version in obsolete(self.store.files(fileset), content):
            self.store.remove(fileset, file_id, version)
            self.ctx.log(f"removed {fileset}/{file_id}@{version}: FileSet {content.version} lists a newer version")

    def result(self, fileset: str, res: TransferResult) -> None:
        q = self.pending.setdefault(fileset, [])
        q.append(res)
        del q[:-MAX_PENDING_RESULTS]
        self.trigger(fileset)

    def trigger(self, fileset: str) -> None:
        ev = self.kick.get(fileset)
        if ev is not None:
            ev.set()

    # --- reporting (§0069, §0091, §0125) -------------------------------------

    async def reporter(self, fileset: str, stop: asyncio.Event) -> None:
        master = self.ctx.topology.filesets[fileset].master
        ep = self.ctx.cluster.endpoint(master)
        host = self.ctx.cluster.control_host(master)
        ev = self.kick.setdefault(fileset, asyncio.Event())
        failures = 0
        while not stop.is_set():
            ev.clear()
            sent = list(self.pending[fileset])
            self.seq += 1
            rows = await asyncio.to_thread(self.rows, fileset)
            report = SlaveReport(slave=self.ctx.ident, fileset=fileset, files=rows, outbound=self.outbound,
                                 results=tuple(sent), seq=self.seq)
            try:
                await netio.call(host, ep.control, self.ctx.codec, report, timeout=5.0,
                                 source_host=self.ctx.cluster.control_host(self.ctx.ident))
                del self.pending[fileset][: len(sent)]
                if failures:
                    self.ctx.log(f"master {master} reachable again")
                failures = 0
            except Exception as e:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    self.ctx.log(f"report to master {master} failed ({failures}x): {e}")
            wait = self.ctx.report_interval if not failures else min(self.ctx.report_interval, 1.0)
            try:
                await asyncio.wait_for(ev.wait(), wait)
                await asyncio.sleep(0.02)  # coalesce bursts of block completions into one report
            except TimeoutError:
                pass

    # --- control plane --------------------------------------------------------

    async def handle_control(self, conn: netio.Conn) -> None:
        env = await conn.recv(timeout=10.0)
        msg = env.msg
        if isinstance(msg, CopyInstruction):
            reason = self.check_instruction(msg)
            if reason:
                self.ctx.log(f"refused instruction {msg.transfer_id} from {env.sender}: {reason}")
                await conn.send(Ack(ok=False, detail=reason[:500]))  # quotes peer fields: keep it in a frame
                return
            self.active.add(msg.transfer_id)
            job = self.pull(msg) if msg.mode == "pull" else self.push(msg)
            spawn(job, self.ctx.log, f"transfer {msg.transfer_id}")
            await conn.send(Ack())
        elif isinstance(msg, Published):
            if msg.fileset not in self.origin:
                raise ProtocolError(f"fileset {msg.fileset!r} is not generated on this slave")
            self.trigger(msg.fileset)
            await conn.send(Ack())
        elif isinstance(msg, StatusQuery):
            body = {fs: [msgspec.to_builtins(r) for r in await asyncio.to_thread(self.rows, fs)]
                    for fs in self.filesets}
            await conn.send(StatusReply(role="slave", ident=self.ctx.ident,
                                        body={"filesets": body, "outbound": self.outbound,
                                              "corrupt_found": self.corrupt_found}))
        else:
            raise ProtocolError(f"slave control port does not accept {type(msg).__name__}")

    def check_instruction(self, msg: CopyInstruction) -> str:
        me = self.ctx.ident
        topo = self.ctx.topology
        if msg.transfer_id in self.active:
            return "duplicate transfer id"
        try:
            check_id(msg.file_id, "file id")
            check_id(msg.fileset, "fileset id")
        except BadId as e:
            return str(e)
        if msg.fileset not in topo.filesets:
            return f"unknown fileset {msg.fileset!r}"
        if msg.source not in topo.slaves or msg.destination not in topo.slaves:
            return "unknown source or destination"
        if msg.mode == "pull" and msg.destination != me:
            return f"pull instruction for {msg.destination}, this is {me}"
        if msg.mode == "push" and msg.source != me:
            return f"push instruction from {msg.source}, this is {me}"
        if msg.fileset not in self.filesets and msg.mode == "pull":
            return f"this slave does not need fileset {msg.fileset!r}"
        if msg.block < 0 or msg.version < 0 or msg.rate <= 0:
            return "negative block/version or non-positive rate"
        return ""

    # --- data plane -----------------------------------------------------------

    async def store_block(self, fileset: str, file_id: str, version: int, block: int, data: bytes, crc: int,
                          prev_crc: int, final: bool) -> None:
        """Verify against the cumulative checksum, write, fsync: only then is the block visible (§0064, §0129)."""
        try:
            await asyncio.to_thread(self.store.append_block, fileset, file_id, version, block, data, crc,
                                    prev_crc, final)
        except storage.ChecksumMismatch as e:
            raise TransferFailed(f"checksum mismatch, block discarded: {e}", "other") from e
        except storage.BadBlock as e:  # the sender's header breaks the block rule (length, index)
            raise TransferFailed(f"bad block, discarded: {e}", "other") from e
        except (storage.StorageFull, storage.StorageError) as e:
            raise TransferFailed(f"cannot store: {e}", "receiver") from e
        except (storage.OutOfOrder, storage.StaleVersion, BadId) as e:
            raise TransferFailed(f"not stored: {e}", "receiver") from e
        if file_id == fileset and final:
            await asyncio.to_thread(self.apply_fileset, fileset)

    async def pull(self, ins: CopyInstruction) -> None:
        t0 = time.monotonic()
        src = self.ctx.cluster.endpoint(ins.source)
        length = 0
        try:
            short = await self.wait_for_room()
            if short:
                raise TransferFailed(f"cannot store: {short}", "receiver")
            try:
                conn = await netio.connect(src.host, src.data, self.ctx.codec, timeout=5.0, window=ins.window,
                                           source_host=self.ctx.cluster.endpoint(self.ctx.ident).host)
            except OSError as e:
                raise TransferFailed(f"cannot reach {ins.source}: {e}") from e
            log_flow(self.ctx.log, ins.transfer_id, conn, sending=False)
            try:
                await conn.send(BlockGet(transfer_id=ins.transfer_id, fileset=ins.fileset, file_id=ins.file_id,
                                         version=ins.version, block=ins.block, rate=ins.rate, window=ins.window))
                timeout = self.transfer_timeout(ins)
                stall = min(timeout, STALL_TIMEOUT)  # no byte for this long: the path is dead, fail now
                async with asyncio.timeout(timeout):  # the whole copy still within its deadline
                    env = await conn.recv(timeout=stall)
                    hdr = env.msg
                    if (isinstance(hdr, BlockHeader) and hdr.transfer_id == ins.transfer_id and hdr.ok
                            and 0 < hdr.length <= self.ctx.topology.block_size):
                        data = await conn.recv_raw(hdr.length, timeout=stall)
                        length = len(data)
                if not isinstance(hdr, BlockHeader) or hdr.transfer_id != ins.transfer_id:
                    raise TransferFailed(f"unexpected reply {type(hdr).__name__}")
                if not hdr.ok:
                    raise TransferFailed(f"source {ins.source} refused: {hdr.reason}", "other")
                if not 0 < hdr.length <= self.ctx.topology.block_size:
                    raise TransferFailed(f"source announced {hdr.length} bytes for one block")
            except (ProtocolError, netio.ConnectionClosed, TimeoutError, OSError) as e:
                raise TransferFailed(f"transfer from {ins.source} broke: {type(e).__name__}: {e}") from e
            finally:
                await conn.close()
            await self.store_block(ins.fileset, ins.file_id, ins.version, ins.block, data, hdr.crc, hdr.prev_crc,
                                   hdr.final)
        except TransferFailed as e:
            self.ctx.log(f"pull {ins.transfer_id} {ins.fileset}/{ins.file_id}@{ins.version}#{ins.block} "
                         f"from {ins.source} failed: {e.detail}")
            self.result(ins.fileset, TransferResult(transfer_id=ins.transfer_id, ok=False, blame=e.blame,
                                                    detail=e.detail[:500], bytes=length,
                                                    seconds=time.monotonic() - t0))
        else:
            dt = time.monotonic() - t0
            self.ctx.log(f"got {ins.transfer_id} {ins.fileset}/{ins.file_id}@{ins.version}#{ins.block} "
                         f"{length}B from {ins.source} in {dt:.3f}s ({length / max(dt, 1e-9) / 1e6:.2f}MB/s)"
                         f"{' final' if hdr.final else ''}")
            self.result(ins.fileset, TransferResult(transfer_id=ins.transfer_id, ok=True, bytes=length, seconds=dt))
        finally:
            self.active.discard(ins.transfer_id)

    async def wait_for_room(self) -> str:
        """'' once the disk can take a block, else (after DISK_WAIT) why it cannot."""
        deadline = time.monotonic() + DISK_WAIT
        while (short := self.disk_short()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return short

    def disk_short(self) -> str:
        """Why our disk cannot take a whole block now ('' if it can). Checked before a pull so that a full
        disk fails the copy at once (§0089: blaming ourselves) instead of after the block crossed the network."""
        try:
            st = os.statvfs(self.store.root)
        except OSError:
            return ""  # let the write itself say what is wrong
        free, need = st.f_bavail * st.f_frsize, self.ctx.topology.block_size
        return f"disk full: {free} bytes free, a block takes up to {need}" if free < need else ""

    def transfer_timeout(self, ins: CopyInstruction) -> float:
        return max(10.0, 4.0 * self.ctx.topology.block_size / max(ins.rate, 1.0))

    async def read_verified(self, fileset: str, file_id: str, version: int, block: int) -> tuple[bytes, int, int, bool]:
        """Read + verify from disk before sending (§0067): a corrupt source block is never sent."""
        try:
            data, rec, prev = await asyncio.to_thread(self.store.read_block, fileset, file_id, version, block)
        except storage.CorruptBlock:
            await self.drop_corrupt(fileset, file_id, version, block, "read")
            raise
        return data, rec.crc, prev, rec.final

    def discard_corrupt(self, fileset: str, file_id: str, version: int, block: int, how: str) -> str:
        """Our copy of a block went bad on disk: cut the file there so we report (and offer) only what verifies
        and our master has us fetch the rest again. Runs in a worker thread; returns the line to log.

        Not on the origin slave while the generator is still appending to that version: cutting would
        make the generator write its next block at the wrong index.
        """
        what = f"corrupt: block {block} of {fileset}/{file_id}@{version} fails to verify on our disk (found by {how})"
        st = self.store.stored(fileset, file_id)
        if fileset in self.origin and st is not None and st.version == version and not st.complete:
            return f"{what}; kept: the generator is still writing this version, so it is not cut"
        try:
            left = self.store.discard_from(fileset, file_id, version, block)
        except storage.StorageProblem as e:
            return f"{what}; could not cut it: {e}"
        self.corrupt_found += 1
        kept = left.blocks if left is not None and left.version == version else 0
        return f"{what}; cut to {kept} blocks, fetching the rest again"

    async def drop_corrupt(self, fileset: str, file_id: str, version: int, block: int, how: str) -> None:
        self.ctx.log(await asyncio.to_thread(self.discard_corrupt, fileset, file_id, version, block, how))
        self.trigger(fileset)

    async def scrubber(self, stop: asyncio.Event) -> None:
        """Re-verify every stored block now and then: a copy that went bad on disk is found even if nobody
        asks for it (verify on read finds it only when served), then cut and fetched again."""
        interval = scrub_interval(self.ctx.topology.scrub_interval)
        while interval > 0 and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            for fs in self.filesets:
                try:
                    files = await asyncio.to_thread(self.store.files, fs)
                except storage.StorageProblem as e:
                    self.ctx.log(f"scrub of {fs} failed: {e}")
                    continue
                for fid, st in files.items():
                    if stop.is_set():
                        return
                    try:
                        bad = await asyncio.to_thread(self.store.first_bad_block, fs, fid, st.version)
                    except storage.StorageProblem as e:
                        self.ctx.log(f"scrub of {fs}/{fid}@{st.version} failed: {e}")
                        continue
                    if bad is not None:
                        await self.drop_corrupt(fs, fid, st.version, bad, "scrub")
                    await asyncio.sleep(st.size / SCRUB_RATE)

    async def push(self, ins: CopyInstruction) -> None:
        """Push mode (§0132): this slave is the source; the destination verifies, stores and reports."""
        t0 = time.monotonic()
        try:
            try:
                data, crc, prev, final = await self.read_verified(ins.fileset, ins.file_id, ins.version, ins.block)
            except (storage.CorruptBlock, storage.StorageError) as e:
                # our own disk failed: in push mode this slave is the source (§0089)
                raise TransferFailed(f"source cannot read block: {e}", "source") from e
            except (storage.MissingBlock, BadId) as e:
                raise TransferFailed(f"source cannot read block: {e}", "other") from e
            dst = self.ctx.cluster.endpoint(ins.destination)
            self.outbound += 1
            try:
                conn = await netio.connect(dst.host, dst.push, self.ctx.codec, timeout=5.0, window=ins.window,
                                           source_host=self.ctx.cluster.endpoint(self.ctx.ident).host)
                log_flow(self.ctx.log, ins.transfer_id, conn, sending=True)
                try:
                    conn.set_pacing(ins.rate)
                    await conn.send(BlockPut(transfer_id=ins.transfer_id, fileset=ins.fileset, file_id=ins.file_id,
                                             version=ins.version, block=ins.block, crc=crc, prev_crc=prev,
                                             length=len(data), final=final))
                    await conn.send_raw(data)
                    env = await conn.recv(timeout=self.transfer_timeout(ins))
                finally:
                    await conn.close()
            except (ProtocolError, netio.ConnectionClosed, TimeoutError, OSError) as e:
                raise TransferFailed(f"push to {ins.destination} broke: {type(e).__name__}: {e}") from e
            finally:
                self.outbound -= 1
            ack = env.msg
            if not isinstance(ack, BlockAck) or not ack.ok:
                # The destination reports its own failure; log ours for the operator.
                self.ctx.log(f"push {ins.transfer_id} refused by {ins.destination}: {getattr(ack, 'reason', ack)}")
            else:
                self.ctx.log(f"pushed {ins.transfer_id} {len(data)}B to {ins.destination} "
                             f"in {time.monotonic() - t0:.3f}s")
        except TransferFailed as e:
            self.ctx.log(f"push {ins.transfer_id} failed: {e.detail}")
            self.result(ins.fileset, TransferResult(transfer_id=ins.transfer_id, ok=False, blame=e.blame,
                                                    detail=e.detail[:500], seconds=time.monotonic() - t0))
        finally:
            self.active.discard(ins.transfer_id)

    async def handle_data(self, conn: netio.Conn) -> None:
        env = await conn.recv(timeout=10.0)
        msg = env.msg
        if isinstance(msg, BlockGet):
            await self.serve_get(conn, msg)
        elif isinstance(msg, BlockPut):
            await self.receive_put(conn, msg)
        else:
            raise ProtocolError(f"slave data port does not accept {type(msg).__name__}")

    async def serve_get(self, conn: netio.Conn, get: BlockGet) -> None:
        try:
            data, crc, prev, final = await self.read_verified(get.fileset, get.file_id, get.version, get.block)
        except (storage.CorruptBlock, storage.MissingBlock, storage.StorageError, BadId) as e:
            self.ctx.log(f"cannot serve {get.transfer_id} {get.fileset}/{get.file_id}@{get.version}#{get.block}: {e}")
            await conn.send(BlockHeader(transfer_id=get.transfer_id, ok=False, reason=str(e)[:500]))
            return
        log_flow(self.ctx.log, get.transfer_id, conn, sending=True)
        self.outbound += 1
        try:
            if get.window > 0:
                conn.set_window(get.window)
            conn.set_pacing(get.rate)
            await conn.send(BlockHeader(transfer_id=get.transfer_id, ok=True, crc=crc, prev_crc=prev,
                                        length=len(data), final=final))
            await conn.send_raw(data)
        finally:
            self.outbound -= 1

    async def receive_put(self, conn: netio.Conn, put: BlockPut) -> None:
        t0 = time.monotonic()
        log_flow(self.ctx.log, put.transfer_id, conn, sending=False)
        if put.fileset not in self.filesets or not 0 < put.length <= self.ctx.topology.block_size:
            await conn.send(BlockAck(transfer_id=put.transfer_id, ok=False, reason="not wanted here or bad length",
                                     blame="other"))
            return
        try:
            data = await conn.recv_raw(put.length, timeout=max(10.0, put.length / 1e5))
            await self.store_block(put.fileset, put.file_id, put.version, put.block, data, put.crc, put.prev_crc,
                                   put.final)
        except TransferFailed as e:
            res = TransferResult(transfer_id=put.transfer_id, ok=False, blame=e.blame, detail=e.detail[:500],
                                 seconds=time.monotonic() - t0)
            self.result(put.fileset, res)
            await conn.send(BlockAck(transfer_id=put.transfer_id, ok=False, reason=e.detail[:500], blame=e.blame))
            return
        except (netio.ConnectionClosed, TimeoutError, OSError) as e:
            self.result(put.fileset, TransferResult(transfer_id=put.transfer_id, ok=False, blame="other",
                                                    detail=f"push broke: {e}", seconds=time.monotonic() - t0))
            return
        dt = time.monotonic() - t0
        self.ctx.log(f"got (push) {put.transfer_id} {put.fileset}/{put.file_id}@{put.version}#{put.block} "
                     f"{len(data)}B in {dt:.3f}s")
        self.result(put.fileset, TransferResult(transfer_id=put.transfer_id, ok=True, bytes=len(data), seconds=dt))
        await conn.send(BlockAck(transfer_id=put.transfer_id, ok=True))

    # --- life -----------------------------------------------------------------

    async def main(self, stop: asyncio.Event) -> None:
        ep = self.ctx.cluster.endpoint(self.ctx.ident)
        log = self.ctx.log
        control_host = self.ctx.cluster.control_host(self.ctx.ident)
        servers = [await netio.serve(control_host, ep.control, self.ctx.codec, self.handle_control, log=log)]
        servers.append(await netio.serve(ep.host, ep.data, self.ctx.codec, self.handle_data, log=log))
        servers.append(await netio.serve(ep.host, ep.push, self.ctx.codec, self.handle_data, log=log))
        held = {fs: sum(r.size for r in self.rows(fs)) for fs in self.filesets}
        log(f"listening on {control_host}:{ep.control} (control) {ep.host}:{ep.data} (data); "
            f"filesets {','.join(self.filesets)}; holding {held}")
        for fs in self.filesets:
            self.kick[fs] = asyncio.Event()
        tasks = [spawn(self.reporter(fs, stop), log, f"reporter {fs}") for fs in self.filesets]
        tasks.append(spawn(self.scrubber(stop), log, "scrubber"))
        await stop.wait()
        for s in servers:
            s.close()
        for t in tasks:
            t.cancel()


def main(ctx: Context, data_dir: str) -> int:
    return run(SlaveDaemon(ctx, Path(data_dir)).main, ctx.log)
