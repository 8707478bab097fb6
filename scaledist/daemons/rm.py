"""`scaledist rm`: the resource manager daemon, a thin asyncio shell around core.resource_manager."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec

from scaledist import netio
from scaledist.core.ledger import encode_jsonl
from scaledist.core.resource_manager import MAX_REASON, ResourceManager
from scaledist.daemons.common import Context, every, now, run, spawn
from scaledist.messages import Ack, CopyRequest, Denial, Error, Release, SetCapacity, StatusQuery, StatusReply
from scaledist.wire import ProtocolError

# Block bytes per wire byte of a full TCP segment: 1448 payload in a 1514-byte frame is 0.956; a little under
# it so paced senders whose rates add up to a link's budget never overfill its queue.
PAYLOAD_FRACTION = 0.95


class RMDaemon:
    def __init__(self, ctx: Context, ledger_path: Path) -> None:
        self.ctx = ctx
        self.core = ResourceManager(ctx.topology, start=now(), payload_fraction=PAYLOAD_FRACTION)
        self.ledger_path = ledger_path
        self.ledger = open(ledger_path, "ab")  # noqa: SIM115 - held for the daemon's life
        self.granted = 0
        self.denied = 0

    def flush_ledger(self) -> None:
        records = self.core.take_ledger()
        if records:
            self.ledger.write(encode_jsonl(records))
            self.ledger.flush()

    async def handle(self, conn: netio.Conn) -> None:
        env = await conn.recv(timeout=10.0)
        msg = env.msg
        log = self.ctx.log
        if isinstance(msg, CopyRequest):
            decision = self.core.request(now(), msg)
            if isinstance(decision, Denial):
                # an invalid request's reason quotes the peer's fields: bound it so the reply fits in a frame
                decision = msgspec.structs.replace(decision, reason=decision.reason[:MAX_REASON])
                self.denied += 1
                log(f"deny {msg.transfer_id} {msg.fileset}/{msg.file_id}@{msg.version}#{msg.block} -> "
                    f"{msg.destination}: {decision.reason[:300]}")
            else:
                self.granted += 1
                log(f"grant {msg.transfer_id} {msg.fileset}/{msg.file_id}@{msg.version}#{msg.block} "
                    f"{decision.source}->{decision.destination} rate={decision.rate / 1e6:.3f}MB/s "
                    f"links={len(decision.path)} epoch={decision.epoch}")
            self.flush_ledger()
            await conn.send(decision)
        elif isinstance(msg, Release):
            found = self.core.release(now(), msg.transfer_id, msg.ok)
            self.flush_ledger()
            await conn.send(Ack(ok=bool(found), detail="" if found else "unknown transfer"))
        elif isinstance(msg, SetCapacity):
            try:
                self.core.set_capacity(now(), msg.link, msg.bytes_per_s)
            except ValueError as e:
                log(f"rejected set_capacity from {env.sender}: {e}")
                await conn.send(Error(reason=str(e)))
                return
            log(f"capacity {msg.link} = {msg.bytes_per_s / 1e6:.3f}MB/s (adjusted, §0114)")
            await conn.send(Ack())
        elif isinstance(msg, StatusQuery):
            body = self.core.snapshot()
            body["granted"] = self.granted
            body["denied"] = self.denied
            await conn.send(StatusReply(role="rm", ident=self.ctx.ident, body=msgspec.to_builtins(body)))
        else:
            raise ProtocolError(f"resource manager does not accept {type(msg).__name__}")

    def tick(self) -> None:
        self.core.tick(now())
        self.flush_ledger()

    async def main(self, stop: asyncio.Event) -> None:
        ep = self.ctx.cluster.endpoint(self.ctx.ident)
        host = self.ctx.cluster.control_host(self.ctx.ident)
        server = await netio.serve(host, ep.control, self.ctx.codec, self.handle, log=self.ctx.log)
        self.ctx.log(f"listening on {host}:{ep.control}; epoch {self.ctx.topology.epoch}s; "
                     f"{len(self.ctx.topology.links)} links; ledger {self.ledger_path}")
        period = max(0.05, self.ctx.topology.epoch / 8)
        ticker = spawn(every(stop, period, self.tick), self.ctx.log, "ticker")
        await stop.wait()
        server.close()
        ticker.cancel()
        self.flush_ledger()
        os.fsync(self.ledger.fileno())
        self.ledger.close()


def main(ctx: Context, ledger: str) -> int:
    daemon = RMDaemon(ctx, Path(ledger))
    return run(daemon.main, ctx.log)
