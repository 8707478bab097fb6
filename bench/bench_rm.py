"""How many copy requests per second the resource manager core answers on one core.

Topology: 4 datacenters x 10 racks x 25 slaves (1000 slaves), trunks in a ring in
both directions, so a copy crosses 4 links (same datacenter, other rack), 6 (a
neighbouring datacenter, one trunk) or 7 (the opposite datacenter, two trunks).
Every request carries a ranked list of 5 sources. A simulated clock advances a
little per request so epochs roll as they would in a busy system; grants are
released after a short while (a window of outstanding transfers), so the RM
stays in a steady state instead of filling up. The ledger is drained as the
daemon would.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaledist.core.resource_manager import ResourceManager
from scaledist.messages import CopyRequest, Grant
from scaledist.topology import Priority, Topology
from tests.builders import make_topology

GB = 10**9


def bench_topology() -> Topology:
    dcs = {f"DC{d}": {f"R{d}_{r}": 25 for r in range(10)} for d in range(1, 5)}
    ring = [(1, 2), (2, 3), (3, 4), (4, 1)]
    trunks = []
    for a, b in ring:
        trunks.append((f"T{a}{b}", f"DC{a}", f"DC{b}", 5 * GB, 5 * GB, 0.02))
        trunks.append((f"T{b}{a}", f"DC{b}", f"DC{a}", 5 * GB, 5 * GB, 0.02))
    return make_topology(
        dcs,
        trunks,
        slave_bw=1.25 * GB,
        rack_bw=10 * GB,
        dc_bw=40 * GB,
        filesets={"f1": "P1", "f2": "P2", "f3": "P3", "f4": "P4"},
        priorities=tuple(Priority(f"P{i}", i, float(i)) for i in range(1, 6)),
        block_size=64 * 2**20,
    )


def _requests(topo: Topology, n: int, seed: int = 7) -> list[CopyRequest]:
    """Requests with 5 ranked sources in other racks: a mix of 4-, 6- and 7-link paths."""
    rnd = random.Random(seed)
    slaves = sorted(topo.slaves)
    by_rack: dict[str, list[str]] = {}
    for s in slaves:
        by_rack.setdefault(topo.slaves[s].rack, []).append(s)
    filesets = sorted(topo.filesets)
    out = []
    for i in range(n):
        dst = rnd.choice(slaves)
        rack = topo.slaves[dst].rack
        sources: list[str] = []
        while len(sources) < 5:
            s = rnd.choice(slaves)
            if topo.slaves[s].rack != rack and s not in sources:
                sources.append(s)
        out.append(
            CopyRequest(
                f"x{i}", "M1", dst, tuple(sources), rnd.choice(filesets), "file", 1, i % 64,
                rnd.choice((16, 32, 64)) * 2**20,
            )
        )
    return out


def bench_reservations(seconds: float = 3.0) -> float:
    """request() calls per second, measured over about ``seconds`` of wall time."""
    topo = bench_topology()
    pool = _requests(topo, 50_000)
    rm = ResourceManager(topo)
    outstanding: deque[str] = deque()
    window = 256  # transfers in flight before the oldest is released
    step = 1.0 / 20_000  # simulated seconds per request: ~40k requests per 2 s epoch
    now = 0.0
    calls = 0
    granted = 0
    request = rm.request
    release = rm.release
    t0 = time.perf_counter()
    deadline = t0 + seconds
    i = 0
    n = len(pool)
    while True:
        for _ in range(1000):
            r = pool[i]
            i += 1
            if i == n:
                i = 0
            now += step
            if isinstance(request(now, r), Grant):
                granted += 1
                outstanding.append(r.transfer_id)
                if len(outstanding) > window:
                    release(now, outstanding.popleft())
        calls += 1000
        rm.take_ledger()
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    bench_reservations.last = {"calls": calls, "granted": granted, "epochs": rm.epoch}  # type: ignore[attr-defined]
    return calls / elapsed


if __name__ == "__main__":
    rate = bench_reservations(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
    info = bench_reservations.last  # type: ignore[attr-defined]
    print(f"rm_reservations_per_s={rate:.0f}")
    print(f"# calls={info['calls']} granted={info['granted'] / info['calls']:.1%} epochs={info['epochs']}")
