"""Master scheduling throughput: decisions per second at 1,000 and 10,000 slaves.

A decision is one CopyRequest out of ``next_requests`` plus the master's handling of the
resource manager's answer (``on_decision``: nine in ten granted, one in ten denied). The
slave reports that complete each copy (one block more, an ok result) are fed between
rounds and not timed: they are the daemon's input, not a scheduling decision; their cost
is printed separately. Target: >= 5,000 decisions/s at 10,000 slaves.

Run: python bench/bench_master.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scaledist.core.master import Master, MasterConfig  # noqa: E402
from scaledist.messages import (  # noqa: E402
    CopyInstruction,
    Denial,
    FileState,
    Grant,
    SlaveReport,
    TransferResult,
)
from scaledist.topology import Topology  # noqa: E402
from tests.builders import make_topology  # noqa: E402

FILES = ("f0", "f1", "f2", "f3")
BLOCKS = 16  # blocks per data file
FILESET = "news"


def bench_topology(n_slaves: int, rack_size: int = 40, n_dcs: int = 4) -> Topology:
    """n_slaves in racks of ``rack_size`` over ``n_dcs`` datacenters joined by a one-way trunk ring."""
    n_racks = max(1, -(-n_slaves // rack_size))
    dcs: dict[str, dict[str, int]] = {f"DC{d + 1}": {} for d in range(n_dcs)}
    left = n_slaves
    for r in range(n_racks):
        dcs[f"DC{r % n_dcs + 1}"][f"R{r + 1}"] = min(rack_size, left)
        left -= rack_size
    dcs = {d: racks for d, racks in dcs.items() if racks}
    names = list(dcs)
    trunks = [
        (f"T{i + 1}", names[i], names[(i + 1) % len(names)], 25e6, 1e6, 0.02 + 0.01 * i)
        for i in range(len(names) if len(names) > 1 else 0)
    ]
    return make_topology(dcs, trunks, filesets={FILESET: "P3"})


def initial_rows(rng: random.Random, bs: int, generator: bool) -> dict[str, FileState]:
    """A realistic mix: some slaves complete, many part-way, many empty; FileSet mostly current."""
    rows = {"FileSet": FileState("FileSet", 2 if generator or rng.random() < 0.9 else 1, 4096, True, True, True)}
    for f in FILES:
        x = rng.random()
        if generator or x < 0.1:
            blocks, complete = BLOCKS, True
        elif x < 0.6:
            blocks, complete = rng.randrange(0, BLOCKS), False
        else:
            blocks, complete = 0, False
        rows[f] = FileState(f, 1, blocks * bs, complete)
    return rows


def bench_decisions(n_slaves: int, seconds: float = 3.0, *, verbose: bool = False) -> float:
    """Scheduling decisions per second (next_requests + on_decision) over ``n_slaves`` slaves."""
    topo = bench_topology(n_slaves)
    bs = topo.block_size
    rng = random.Random(1)
    m = Master(topo, "M1", MasterConfig(), incarnation="bench")
    state: dict[str, dict[str, FileState]] = {}
    generator = next(iter(topo.slaves))
    now = 0.0
    for s in topo.slaves:
        state[s] = initial_rows(rng, bs, s == generator)
        m.on_report(now, SlaveReport(slave=s, fileset=FILESET, files=tuple(state[s].values())))

    decisions = 0
    timed = 0.0
    feed = 0.0
    rounds = 0
    wall_end = time.perf_counter() + 4 * seconds
    while timed < seconds and time.perf_counter() < wall_end:
        rounds += 1
        now += 0.01
        t0 = time.perf_counter()
        reqs = m.next_requests(now, 64)
        instructions: list[CopyInstruction] = []
        for i, req in enumerate(reqs):
            if (decisions + i) % 10 == 9:
                m.on_decision(now, Denial(req.transfer_id, "no room"))
                continue
            inst = m.on_decision(
                now,
                Grant(req.transfer_id, req.sources[0], req.destination, (), "P3", 25e6, 1 << 20, 1, now + 10.0),
            )
            if inst is not None:
                instructions.append(inst)
        t1 = time.perf_counter()
        timed += t1 - t0
        decisions += len(reqs)
        # the copies finish: each destination reports one block more (not timed)
        for inst in instructions:
            rows = state[inst.destination]
            old = rows[inst.file_id]
            if old.version != inst.version:
                old = FileState(inst.file_id, inst.version, 0, False, old.want_newest, old.fileset_file)
            full = 4096 if old.fileset_file else BLOCKS * bs
            size = min(old.size + bs, full)
            rows[inst.file_id] = FileState(
                inst.file_id, inst.version, size, size >= full, old.want_newest, old.fileset_file
            )
            result = TransferResult(inst.transfer_id, True, bytes=bs, seconds=2.7)
            m.on_report(
                now, SlaveReport(slave=inst.destination, fileset=FILESET, files=tuple(rows.values()), results=(result,))
            )
        if rounds % 50 == 0:
            m.tick(now)
        feed += time.perf_counter() - t1
        if not reqs and not m.snapshot()["inflight"]:
            break  # everything distributed
    rate = decisions / timed if timed > 0 else 0.0
    if verbose:
        per_report = feed / max(1, decisions) * 1e6
        print(
            f"  {n_slaves} slaves: {decisions} decisions in {timed:.2f} s scheduling "
            f"({rate:,.0f}/s); report handling {per_report:.0f} us per completed copy; "
            f"queue {len(m._queue) + len(m._fileset_queue)}",
            file=sys.stderr,
        )
    return rate


if __name__ == "__main__":
    r1k = bench_decisions(1_000, verbose=True)
    r10k = bench_decisions(10_000, verbose=True)
    print(f"master_decisions_per_s_1k={r1k:.0f} master_decisions_per_s_10k={r10k:.0f}")
