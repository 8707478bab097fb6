"""`scaledist master`: one master daemon, a thin asyncio shell around core.master.

It learns everything from slave reports (a restarted master starts empty, §0155),
asks the resource manager for each copy with a ranked source list (FIG. 7A) and
tells the slave to pull (or the source to push) the block.
"""

from __future__ import annotations

import asyncio
import secrets

import msgspec

from scaledist import netio
from scaledist.core.master import Master, MasterConfig
from scaledist.daemons.common import Context, every, now, run, spawn
from scaledist.messages import (
    Ack,
    CopyInstruction,
    CopyRequest,
    Denial,
    Grant,
    Release,
    SlaveReport,
    StatusQuery,
    StatusReply,
)
from scaledist.wire import ProtocolError


class MasterDaemon:
    def __init__(self, ctx: Context, config: MasterConfig | None = None) -> None:
        self.ctx = ctx
        cfg = config or MasterConfig(mode=ctx.cluster.mode, health=ctx.topology.health)
        self.incarnation = secrets.token_hex(3)
        self.core = Master(ctx.topology, ctx.ident, cfg, incarnation=self.incarnation, start=now())
        self.wake = asyncio.Event()
        self.rm = ctx.topology.resource_manager.id
        self.reports = 0

    async def call_rm(self, msg: CopyRequest | Release) -> object:
        ep = self.ctx.cluster.endpoint(self.rm)
        return await netio.call(self.ctx.cluster.control_host(self.rm), ep.control, self.ctx.codec, msg, timeout=5.0)

    async def release(self, rel: Release) -> None:
        try:
            await self.call_rm(rel)
        except Exception as e:  # the grant lapses by itself at the resource manager
            self.ctx.log(f"release {rel.transfer_id} not delivered: {e}")

    def releases(self, rels: list[Release]) -> None:
        if rels:
            spawn(self.release_all(rels), self.ctx.log, "release")

    async def release_all(self, rels: list[Release]) -> None:
        """Release, then let destinations that were denied ask again: the room is free now."""
        await asyncio.gather(*(self.release(rel) for rel in rels))
        self.core.on_released(now())
        self.wake.set()

    async def handle(self, conn: netio.Conn) -> None:
        env = await conn.recv(timeout=10.0)
        msg = env.msg
        if isinstance(msg, SlaveReport):
            self.reports += 1
            self.releases(self.core.on_report(now(), msg))
            for r in msg.results:
                if not r.ok:
                    self.ctx.log(f"failure {r.transfer_id} reported by {msg.slave}: blame={r.blame} {r.detail[:200]}")
            self.wake.set()
            await conn.send(Ack())
        elif isinstance(msg, StatusQuery):
            body = {"progress": self.core.progress(), "state": self.core.snapshot(), "reports": self.reports,
                    "incarnation": self.incarnation}
            await conn.send(StatusReply(role="master", ident=self.ctx.ident, body=msgspec.to_builtins(body)))
        else:
            raise ProtocolError(f"master does not accept {type(msg).__name__}")

    async def schedule_one(self, req: CopyRequest) -> None:
        try:
            decision = await self.call_rm(req)
        except Exception as e:
            decision = Denial(transfer_id=req.transfer_id, reason=f"resource manager unreachable: {e}")
        if not isinstance(decision, (Grant, Denial)):
            decision = Denial(transfer_id=req.transfer_id, reason=f"unexpected reply {type(decision).__name__}")
        instr = self.core.on_decision(now(), decision)
        if instr is not None:
            await self.instruct(instr)
        self.wake.set()

    async def instruct(self, instr: CopyInstruction) -> None:
        target = instr.destination if instr.mode == "pull" else instr.source
        ep = self.ctx.cluster.endpoint(target)
        self.ctx.log(f"instruct {instr.mode} {instr.transfer_id} {instr.fileset}/{instr.file_id}@{instr.version}"
                     f"#{instr.block} {instr.source}->{instr.destination} rate={instr.rate / 1e6:.3f}MB/s")
        try:
            reply = await netio.call(self.ctx.cluster.control_host(target), ep.control, self.ctx.codec, instr,
                                     timeout=5.0)
            if not isinstance(reply, Ack) or not reply.ok:
                raise RuntimeError(f"refused: {reply}")
        except Exception as e:
            rel = self.core.on_instruction_failed(now(), instr.transfer_id, str(e))
            if rel is not None:
                await self.release_all([rel])

    async def scheduler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            for line in self.core.drain_log(now()):
                self.ctx.log(line)
            for req in self.core.next_requests(now(), limit=64):
                spawn(self.schedule_one(req), self.ctx.log, "schedule")
            try:
                await asyncio.wait_for(self.wake.wait(), 0.1)
            except TimeoutError:
                pass

    def tick(self) -> None:
        self.releases(self.core.tick(now()))

    async def main(self, stop: asyncio.Event) -> None:
        ep = self.ctx.cluster.endpoint(self.ctx.ident)
        host = self.ctx.cluster.control_host(self.ctx.ident)
        server = await netio.serve(host, ep.control, self.ctx.codec, self.handle, log=self.ctx.log)
        owned = ",".join(self.ctx.topology.masters[self.ctx.ident].filesets)
        self.ctx.log(f"listening on {host}:{ep.control}; filesets {owned}; mode {self.ctx.cluster.mode}; "
                     f"incarnation {self.incarnation} (starts empty, learns from slave reports)")
        tasks = [spawn(self.scheduler(stop), self.ctx.log, "scheduler"),
                 spawn(every(stop, 0.25, self.tick), self.ctx.log, "ticker")]
        await stop.wait()
        server.close()
        for t in tasks:
            t.cancel()


def main(ctx: Context) -> int:
    return run(MasterDaemon(ctx).main, ctx.log)
