"""In-flight corruption: an NFQUEUE worker that damages block-data TCP segments inside one node's namespace.

The iptables rules (tagged ``scaledist-corrupt``) send only block data to the queue (TCP sport 7101: pull
replies; dport 7102: pushes).  For a chosen packet the worker flips one payload byte and recomputes the TCP
checksum (scapy), so the kernel accepts the segment and the damaged bytes reach the application: with a bad
checksum TCP would just drop and retransmit it and the system would never see the fault.  Every other packet
is accepted untouched without being parsed, so the worker keeps up with a trunk.

``python -m testbed.faults.corrupt_worker --queue Q --probability P [--count N] --seed S --stats FILE``
writes its counts (JSON) to FILE once bound, every second and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import sys
import time
from pathlib import Path
from typing import Any

COMMENT = "scaledist-corrupt"
MAX_QUEUE_LEN = 8192
STATS_INTERVAL = 1.0


def payload_offset(packet: bytes) -> int | None:
    """Offset of the TCP payload in an IPv4 packet, None if there is none (or it is not IPv4/TCP)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 6:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    if len(packet) < ihl + 20:
        return None
    data_off = (packet[ihl + 12] >> 4) * 4
    start = ihl + data_off
    return start if min(total, len(packet)) > start else None


def corrupt(packet: bytes, rng: random.Random) -> bytes:
    """The packet with one payload byte inverted and a TCP checksum that matches the new bytes."""
    from scapy.layers.inet import IP, TCP

    start = payload_offset(packet)
    assert start is not None
    end = min(len(packet), int.from_bytes(packet[2:4], "big"))
    pos = rng.randrange(start, end)
    raw = bytearray(packet)
    raw[pos] ^= 0xFF
    ip = IP(bytes(raw))
    del ip[TCP].chksum  # recomputed on build
    return bytes(ip)


class Corruptor:
    def __init__(self, probability: float, count: int | None, seed: int) -> None:
        self.probability = probability
        self.count = count
        self.rng = random.Random(seed)
        self.packets = 0  # data packets seen
        self.data_bytes = 0
        self.corrupted = 0

    def on_packet(self, pkt: Any) -> None:
        raw = pkt.get_payload()
        self.packets += 1
        start = payload_offset(raw)
        if start is not None:
            self.data_bytes += len(raw) - start
        budget = self.count is None or self.corrupted < self.count
        if start is not None and budget and self.rng.random() < self.probability:
            pkt.set_payload(corrupt(raw, self.rng))
            self.corrupted += 1
        pkt.accept()

    def write(self, path: Path, state: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), "packets": self.packets,
                                   "data_bytes": self.data_bytes, "corrupted": self.corrupted}))
        os.replace(tmp, path)


def run_worker(queue: int, probability: float, count: int | None, seed: int, stats: Path) -> int:
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    from testbed.delayline import StopSignals

    term = StopSignals()
    c = Corruptor(probability, count, seed)
    nfq = NetfilterQueue()
    nfq.bind(queue, c.on_packet, max_len=MAX_QUEUE_LEN, mode=COPY_PACKET, range=0xFFFF)
    parent = os.getppid()
    c.write(stats, "running")
    next_stats = time.monotonic() + STATS_INTERVAL
    try:
        while not term.stop:
            ready, _, _ = select.select([nfq.get_fd(), term.fd], [], [], max(0.0, next_stats - time.monotonic()))
            if term.fd in ready:
                term.drain()
            if nfq.get_fd() in ready:
                nfq.run(block=False)
            if time.monotonic() >= next_stats:
                c.write(stats, "running")
                next_stats = time.monotonic() + STATS_INTERVAL
                if os.getppid() != parent:  # orchestrator gone: stop (the rules bypass an unbound queue)
                    break
        nfq.run(block=False)  # verdicts for what is still queued
    finally:
        c.write(stats, "stopped")
        nfq.unbind()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.faults.corrupt_worker", description=__doc__.split("\n")[0])
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--probability", type=float, required=True)
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", type=Path, required=True)
    a = p.parse_args(argv)
    return run_worker(a.queue, a.probability, a.count, a.seed, a.stats)


if __name__ == "__main__":
    sys.exit(main())
