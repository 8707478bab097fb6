"""The master, sans-I/O (FIG. 4A, FIG. 6, FIG. 7A; §0085-0093, §0121-0136, §0154-0155).

A master owns some filesets. It learns everything from slave reports (a new
master starts empty, §0155), keeps the fileset state table (health per
resource, last contact, last copied from, a pointer to each slave's state),
the idleness table, and for every destination works out the next block it
needs, the slaves that could send it, ranks them (FIG. 8) and asks the
resource manager. Decisions come back as Grant or Denial; a Grant becomes a
CopyInstruction for a slave; the receiving slave's next report carries the
result, which feeds the failure counters and a Release for the resource
manager.

Scaling choices (a master serves thousands of slaves):

- holders are indexed per (fileset, file, version) as per-rack and
  per-datacenter lists sorted by blocks held, so "who holds block b near this
  destination" is a bisect, never a scan of all slaves;
- destinations wait in FIFO queues (FileSet-file needs first), in a retry heap
  (denied, or holders present but none usable), or parked on the exact block
  they wait for until a slave reports holding it;
- the candidate pool outside the tree is the nearest ``pool_size`` usable
  holders (same rack, same datacenter, then other datacenters by distance),
  in ascending order of blocks held, which is the order the data score
  prefers. Far holders beyond that pool are not scored: an approximation of
  FIG. 8 that keeps a decision O(pool), documented in ``MasterConfig``;
- one trunk copy at a time (``one_trunk_copy``): the trunk is the scarce
  resource, so a block crosses into a datacenter once and spreads from there.
  Holders in other datacenters rank behind every usable holder in the
  destination's own datacenter, as fallbacks for the resource manager (or
  are left out while one is usable: ``trunk_fallback=False``). A request
  whose list reaches another datacenter claims (block, datacenter) until
  its copy is granted locally, reported, failed or expired. While the claim
  stands, other destinations there get only their own datacenter's holders;
  with none usable they are parked until a slave of their datacenter reports
  the block or the claim ends (then one of them may cross).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from scaledist.core.health import HealthConfig, HealthTable
from scaledist.core.ranking import Candidate, RankWeights, rank_sources
from scaledist.core.tree import Tree
from scaledist.messages import (
    CopyInstruction,
    CopyRequest,
    Denial,
    FileState,
    Grant,
    Mode,
    Release,
    SlaveReport,
    TransferResult,
)
from scaledist.topology import Topology

MAX_RETRY_HINT = 60.0  # a Denial's retry_in beyond this is not believed (the configured retry_after is used)


@dataclass(frozen=True)
class MasterConfig:
    health: HealthConfig = field(default_factory=HealthConfig)
    weights: RankWeights = field(default_factory=RankWeights)
    tree: bool = True  # §0154 tree sources inside a datacenter, ranked ahead of other holders
    tree_fanout: int = 2
    tree_refresh: float = 5.0  # seconds between tree rebuilds
    mode: Mode = "pull"
    max_inflight_per_slave: int = 1  # outstanding (requested or granted) copies per destination
    retry_after: float = 0.5  # a denied destination waits this long
    blocked_retry: float = 2.0  # holders exist but none usable (failed, silent, no path): look again after this
    liveness_factor: float = 3.0  # silent for more than this many report intervals = not live (§0091)
    result_timeout_factor: float = 4.0  # deadline = factor x the block's time at the granted rate ...
    min_transfer_timeout: float = 10.0  # ... but never less; also how long a request waits for a decision
    max_sources: int = 8  # length of the ranked list sent to the resource manager
    pool_size: int = 24  # non-tree holders scored per request (nearest first, see module docstring)
    one_trunk_copy: bool = True  # a block crosses into a datacenter once at a time (module docstring)
    trunk_fallback: bool = False  # True: other datacenters' holders back up busy local ones (costs trunk bytes)

    def __post_init__(self) -> None:
        if self.mode not in ("pull", "push"):
            raise ValueError(f"mode must be pull or push, got {self.mode!r}")
        if self.max_inflight_per_slave < 1 or self.max_sources < 1 or self.pool_size < 1:
            raise ValueError("max_inflight_per_slave, max_sources and pool_size must be >= 1")
        if self.tree_fanout < 1:
            raise ValueError("tree_fanout must be >= 1")


_Key = tuple[str, str]  # (slave, fileset)
_BlockKey = tuple[str, str, int, int]  # (fileset, file_id, version, block)
_CrossKey = tuple[str, str, int, int, str]  # (fileset, file_id, version, block, destination datacenter)


class _Need(NamedTuple):
    file_id: str
    version: int
    block: int
    destination_bytes: int  # bytes of this version the destination holds already
    fileset_file: bool


@dataclass(slots=True)
class _Transfer:
    id: str
    destination: str
    fileset: str
    file_id: str
    version: int
    block: int
    size: int
    fileset_file: bool
    sources: tuple[str, ...]
    requested_at: float
    state: Literal["requested", "granted"] = "requested"
    source: str = ""
    resources: tuple[str, ...] = ()
    deadline: float = 0.0
    crossing: _CrossKey | None = None  # the (block, datacenter) claim this copy holds, if any


@dataclass(slots=True)
class _SlaveState:
    """The master's copy of one slave's state for one fileset (the State Pointer, §0092)."""

    slave: str
    fileset: str
    rack: str
    dc: str
    rows: tuple[FileState, ...] = ()
    by_file: dict[str, FileState] = field(default_factory=dict)
    fileset_rows: tuple[FileState, ...] = ()  # FileSet-file rows, scheduled before the others
    data_rows: tuple[FileState, ...] = ()
    held_bytes: int = 0
    inflight: dict[str, str] = field(default_factory=dict)  # file_id -> transfer id
    seq: int = 0


@dataclass(slots=True)
class _VersionIndex:
    """Holders of one (fileset, file, version): per rack and per datacenter, sorted by blocks held."""

    by_rack: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    by_dc: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # slave -> blocks held (> 0 only)
    final_size: int | None = None  # size of a complete copy, once any holder is complete

    def max_held(self) -> int:
        return max((lst[-1][0] for lst in self.by_dc.values() if lst), default=0)

    def set(self, slave: str, rack: str, dc: str, blocks: int) -> None:
        old = self.held.get(slave, 0)
        if old == blocks:
            return
        if old:
            for lst in (self.by_rack[rack], self.by_dc[dc]):
                i = bisect_left(lst, (old, slave))
                del lst[i]
        if blocks:
            self.held[slave] = blocks
            insort(self.by_rack.setdefault(rack, []), (blocks, slave))
            insort(self.by_dc.setdefault(dc, []), (blocks, slave))
        else:
            self.held.pop(slave, None)


class Master:
    """Scheduling core of one master; every method takes the caller's clock as ``now``."""

    def __init__(
        self,
        topology: Topology,
        master_id: str,
        config: MasterConfig = MasterConfig(),
        *,
        incarnation: str,
        start: float = 0.0,
    ) -> None:
        if master_id not in topology.masters:
            raise ValueError(f"master {master_id!r} is not in topology {topology.name!r}")
        self.topology = topology
        self.master_id = master_id
        self.config = config
        self.incarnation = incarnation
        self.filesets: frozenset[str] = frozenset(topology.masters[master_id].filesets)
        self.health: HealthTable[str] = HealthTable(config.health, start)
        self.file_health: HealthTable[tuple[str, str]] = HealthTable(config.health, start)  # (slave, file_id)
        self.rejected: Counter[str] = Counter()
        self.rejections: deque[str] = deque(maxlen=256)  # ignored input, newest last
        self.events: deque[str] = deque(maxlen=256)  # failures, expiries: for status and logs
        self._outbox: list[str] = []  # the same lines, until the daemon drains them into its log
        self._lost: set[str] = set()  # slaves announced silent (``liveness <slave> lost``)
        self._liveness_scan = start

        self._block = topology.block_size
        self._liveness = config.liveness_factor * topology.report_interval
        self._states: dict[_Key, _SlaveState] = {}
        self._by_fileset: dict[str, dict[str, _SlaveState]] = {f: {} for f in self.filesets}
        self._last_contact: dict[str, float] = {}
        self._last_copied_from: dict[str, str] = {}
        self._outbound: dict[str, int] = {}  # idleness table: copies this master started (§0086)
        self._reported_outbound: dict[str, int] = {}  # the slave's own total (§0087)
        self._index: dict[tuple[str, str, int], _VersionIndex] = {}
        self._versions: dict[tuple[str, str], Counter[int]] = {}  # slaves holding > 0 bytes per version
        self._newest: dict[tuple[str, str], int] = {}
        self._transfers: dict[str, _Transfer] = {}
        self._outstanding: dict[str, int] = {}  # destination -> requested or granted copies
        self._not_before: dict[str, float] = {}  # denied destination -> earliest retry
        self._denied: dict[_Key, None] = {}  # waiting out a Denial: a release of ours frees room sooner
        self._fileset_queue: dict[_Key, None] = {}  # FIFO of destinations with a FileSet-file need
        self._queue: dict[_Key, None] = {}  # FIFO of the others, in report order
        self._retry: list[tuple[float, int, _Key]] = []
        self._waiting: dict[_BlockKey, dict[_Key, None]] = {}  # parked until someone holds the block
        self._crossing: dict[_CrossKey, str] = {}  # (block, dc) -> the one transfer that may cross into dc
        self._trunk_waiting: dict[_CrossKey, dict[_Key, None]] = {}  # parked until that claim ends
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0
        self._n = 0
        self._trees: dict[tuple[str, str], Tree] = {}
        self._tree_built = start
        self._distance_cache: dict[tuple[str, str], float | None] = {}
        self._middle_cache: dict[tuple[str, str], tuple[str, ...]] = {}
        self._dc_order: dict[str, tuple[str, ...]] = {}
        self._members: dict[tuple[str, str], tuple[str, ...]] = {}  # (fileset, dc) -> slaves needing it
        for s in topology.slaves.values():
            for f in s.filesets:
                if f in self.filesets:
                    self._members[(f, s.dc)] = (*self._members.get((f, s.dc), ()), s.id)

    # --- events -----------------------------------------------------------

    def on_report(self, now: float, report: SlaveReport) -> list[Release]:
        """A slave's state for one fileset (FIG. 6 624/625), with the results of finished copies."""
        slave, fs = report.slave, report.fileset
        if fs not in self.filesets:
            return self._reject(f"report from {slave} for fileset {fs!r} this master does not own")
        spec = self.topology.slaves.get(slave)
        if spec is None:
            return self._reject(f"report from unknown slave {slave!r}")
        if fs not in spec.filesets:
            return self._reject(f"report from {slave} for fileset {fs!r} it does not need")
        seen: set[str] = set()
        for row in report.files:
            if row.file_id in seen or row.size < 0 or row.version < 0:
                return self._reject(f"report from {slave} for {fs}: duplicate or negative row {row.file_id!r}")
            seen.add(row.file_id)

        revived = slave in self._last_contact and not self.live(now, slave)
        self._last_contact[slave] = now
        self._reported_outbound[slave] = max(0, report.outbound)
        key = (slave, fs)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = _SlaveState(slave, fs, spec.rack, spec.dc)
            self._by_fileset[fs][slave] = st
        self._store_rows(st, report.files)
        if revived:  # a silent holder is back: destinations parked on what it holds may use it now
            for row in st.rows:
                self._wake(fs, row.file_id, row.version, 0, self._blocks(row))
        st.seq = report.seq

        releases = [r for res in report.results if (r := self._on_result(now, slave, res)) is not None]
        self._enqueue(key)
        return releases

    def next_requests(self, now: float, limit: int = 64) -> list[CopyRequest]:
        """Up to ``limit`` ranked copy requests for the resource manager (FIG. 7A 702-712), FCFS."""
        while self._retry and self._retry[0][0] <= now:
            _, _, key = heapq.heappop(self._retry)
            self._enqueue(key)
        out: list[CopyRequest] = []
        for queue in (self._fileset_queue, self._queue):
            while queue and len(out) < limit:
                key = next(iter(queue))
                del queue[key]
                req = self._schedule(now, key)
                if req is not None:
                    out.append(req)
                    if self._outstanding.get(key[0], 0) < self.config.max_inflight_per_slave:
                        self._enqueue(key)  # room for another copy: back of the line
        return out

    def on_decision(self, now: float, decision: Grant | Denial) -> CopyInstruction | None:
        """The resource manager's answer (FIG. 7A 738/740): a Grant becomes an instruction for a slave."""
        t = self._transfers.get(decision.transfer_id)
        if t is None or t.state != "requested":
            self._reject(f"decision for unknown or already decided transfer {decision.transfer_id!r}")
            return None
        if isinstance(decision, Denial):
            self._drop(t)
            wait = decision.retry_in if 0.0 < decision.retry_in <= MAX_RETRY_HINT else self.config.retry_after
            key = (t.destination, t.fileset)
            self._not_before[t.destination] = now + wait
            self._push_retry(now + wait, key)
            self._denied[key] = None
            return None
        if decision.destination != t.destination or decision.source not in t.sources:
            self._reject(f"grant {t.id} names {decision.source}->{decision.destination}, not a requested pair")
            self._drop(t)
            self._push_retry(now + self.config.retry_after, (t.destination, t.fileset))
            return None
        src, dst = decision.source, t.destination
        t.state, t.source = "granted", src
        if t.crossing is not None and self.topology.slaves[src].dc == t.crossing[4]:
            self._uncross(t)  # a holder in the destination's datacenter was granted: nothing crosses
        t.resources = self.topology.resources_of_path(src, dst)
        for r in t.resources:
            self.health.record_attempt(r)
        self.file_health.record_attempt((src, t.file_id))
        self.file_health.record_attempt((dst, t.file_id))
        self._outbound[src] = self._outbound.get(src, 0) + 1
        self._last_copied_from[dst] = src
        rate = decision.rate
        expected = self.config.result_timeout_factor * t.size / rate if rate > 0 else 0.0
        t.deadline = now + max(self.config.min_transfer_timeout, expected)
        self._push_deadline(t.deadline, t.id)
        return CopyInstruction(
            transfer_id=t.id,
            mode=self.config.mode,
            master=self.master_id,
            source=src,
            destination=dst,
            fileset=t.fileset,
            file_id=t.file_id,
            version=t.version,
            block=t.block,
            rate=rate,
            window=decision.window,
            deadline=t.deadline,
        )

    def on_released(self, now: float) -> None:
        """Releases of this master reached the resource manager: room is free now, so denied destinations
        ask again at once instead of waiting out their Denial."""
        for key in self._denied:
            self._not_before.pop(key[0], None)
            self._enqueue(key)
        self._denied.clear()

    def on_instruction_failed(self, now: float, transfer_id: str, detail: str = "") -> Release | None:
        """The daemon could not deliver an instruction: blame the slave it could not reach."""
        t = self._transfers.get(transfer_id)
        if t is None or t.state != "granted":
            return None
        unreachable = t.destination if self.config.mode == "pull" else t.source
        self.health.record_failure(unreachable)
        self.file_health.record_failure((unreachable, t.file_id))
        self._log(f"instruction {transfer_id} to {unreachable} failed: {detail}")
        if unreachable == t.destination:  # the same back-off as a denial: not instructed again at once
            self._not_before[t.destination] = now + self.config.retry_after
            self._push_retry(now + self.config.retry_after, (t.destination, t.fileset))
        return self._finish(t, ok=False, nbytes=0)

    def tick(self, now: float) -> list[Release]:
        """Housekeeping: health decay, expired copies (failures, released), tree refresh."""
        self.health.decay_due(now)
        self.file_health.decay_due(now)
        releases: list[Release] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, tid = heapq.heappop(self._deadlines)
            t = self._transfers.get(tid)
            if t is None:
                continue
            if when != t.deadline:
                continue  # a stale heap entry
            if t.state == "requested":
                self._log(f"request {tid} got no decision; dropped")
                self._drop(t)
                self._enqueue((t.destination, t.fileset))
            else:
                self._blame(t, "other")
                self._log(f"copy {tid} {t.source}->{t.destination} passed its deadline")
                releases.append(self._finish(t, ok=False, nbytes=0))
        if self.config.tree and now - self._tree_built >= self.config.tree_refresh:
            self._trees.clear()  # rebuilt from current sizes on next use
            self._tree_built = now
        return releases

    # --- queries ----------------------------------------------------------

    def resource_functioning(self, rid: str) -> bool:
        return self.health.functioning(rid)

    def live(self, now: float, slave: str) -> bool:
        """Heard from within ``liveness_factor`` report intervals (§0091)."""
        last = self._last_contact.get(slave)
        return last is not None and now - last <= self._liveness

    def tree(self, fileset: str, dc: str) -> Tree:
        key = (fileset, dc)
        tree = self._trees.get(key)
        if tree is None:
            by = self._by_fileset.get(fileset, {})
            sizes = {s: (by[s].held_bytes if s in by else 0) for s in self._members.get(key, ())}
            tree = self._trees[key] = Tree(sizes, self.config.tree_fanout)
        return tree

    def needs(self, slave: str, fileset: str) -> list[tuple[str, int, int]]:
        """(file_id, version, block) the slave needs next, FileSet files first (for status and tests)."""
        st = self._states.get((slave, fileset))
        return [] if st is None else [(n.file_id, n.version, n.block) for n in self._needs(st)]

    def progress(self) -> dict[str, dict]:
        """Per fileset: slaves needing it, reporting, complete (nothing left to fetch), bytes held and wanted."""
        out: dict[str, dict] = {}
        for fs in sorted(self.filesets):
            states = self._by_fileset[fs]
            complete = held = wanted = 0
            for st in states.values():
                held += st.held_bytes
                if next(self._needs(st), None) is None:
                    complete += 1
                for row in st.rows:
                    target = row.version
                    if row.fileset_file or row.want_newest:
                        target = max(target, self._newest.get((fs, row.file_id), target))
                    vi = self._index.get((fs, row.file_id, target))
                    if vi is not None and vi.final_size is not None:
                        full = vi.final_size
                    elif vi is not None and vi.held:
                        full = max(vi.held.values()) * self._block
                    else:
                        full = row.size
                    have = row.size if row.version == target else 0
                    wanted += max(0, full - have)
            out[fs] = {
                "slaves": sum(len(self._members.get((fs, dc), ())) for dc in self.topology.datacenters),
                "reporting": len(states),
                "complete": complete,
                "bytes_held": held,
                "bytes_wanted": wanted,
            }
        return out

    def snapshot(self) -> dict:
        """The fileset state table, idleness table and scheduling queues, JSON-able (FIG. 4C, 4D)."""
        resources: dict[str, dict] = {}
        slaves = sorted({s for (s, _) in self._states} | {s for m in self._members.values() for s in m})
        racks = sorted({self.topology.slaves[s].rack for s in slaves})
        dcs = sorted({self.topology.slaves[s].dc for s in slaves})
        trunks = sorted(self.topology.trunks)
        for kind, ids in (("slave", slaves), ("rack", racks), ("datacenter", dcs), ("trunk", trunks)):
            for rid in ids:
                h = self.health.get(rid)
                row: dict[str, object] = {
                    "kind": kind,
                    "state": h.state,
                    "failure_count": h.failure_count,
                    "attempts": h.attempts,
                }
                if kind == "slave":
                    row["last_contact"] = self._last_contact.get(rid)
                    row["last_copied_from"] = self._last_copied_from.get(rid)
                resources[rid] = row
        files = {
            f"{s}/{f}": {"state": h.state, "failure_count": h.failure_count, "attempts": h.attempts}
            for (s, f), h in sorted(self.file_health.rows.items())
        }
        inflight = [
            {
                "transfer_id": t.id,
                "state": t.state,
                "destination": t.destination,
                "source": t.source or None,
                "fileset": t.fileset,
                "file_id": t.file_id,
                "version": t.version,
                "block": t.block,
                "size": t.size,
                "deadline": t.deadline,
            }
            for t in self._transfers.values()
        ]
        return {
            "master": self.master_id,
            "incarnation": self.incarnation,
            "filesets": sorted(self.filesets),
            "resources": resources,
            "files": files,
            "idleness": {s: n for s, n in sorted(self._outbound.items()) if n},
            "reported_outbound": {s: n for s, n in sorted(self._reported_outbound.items()) if n},
            "inflight": inflight,
            "queue": len(self._fileset_queue) + len(self._queue),
            "fileset_queue": len(self._fileset_queue),
            "retrying": len(self._retry),
            "parked": sum(len(w) for w in self._waiting.values()),
            "trunk_claims": len(self._crossing),
            "trunk_parked": sum(len(w) for w in self._trunk_waiting.values()),
            "rejected": dict(self.rejected),
        }

    # --- state table ------------------------------------------------------

    def _store_rows(self, st: _SlaveState, rows: tuple[FileState, ...]) -> None:
        """Replace the slave's state and keep the holder index and newest versions in step."""
        old = st.by_file
        new = {r.file_id: r for r in rows}
        for fid in old.keys() | new.keys():
            a, b = old.get(fid), new.get(fid)
            if a == b:
                continue
            self._index_row(st, fid, a, b)
        st.rows = rows
        st.by_file = new
        st.fileset_rows = tuple(r for r in rows if r.fileset_file)
        st.data_rows = tuple(r for r in rows if not r.fileset_file)
        st.held_bytes = sum(r.size for r in rows)

    def _blocks(self, row: FileState) -> int:
        n = row.size // self._block
        if row.complete and row.size % self._block:
            n += 1
        return n

    def _index_row(self, st: _SlaveState, fid: str, a: FileState | None, b: FileState | None) -> None:
        fs = st.fileset
        counts = self._versions.setdefault((fs, fid), Counter())
        before_a = 0
        if a is not None:
            if b is None or b.version != a.version:
                vi = self._index.get((fs, fid, a.version))
                if vi is not None:
                    vi.set(st.slave, st.rack, st.dc, 0)
            else:
                before_a = self._blocks(a)
            if a.size > 0:
                counts[a.version] -= 1
                if counts[a.version] <= 0:
                    del counts[a.version]
        if b is not None:
            vi = self._index.setdefault((fs, fid, b.version), _VersionIndex())
            blocks = self._blocks(b)
            vi.set(st.slave, st.rack, st.dc, blocks)
            if b.complete:
                vi.final_size = b.size
            if b.size > 0:
                counts[b.version] += 1
            self._wake(fs, fid, b.version, before_a, blocks)
        newest = max(counts, default=None)
        prev = self._newest.get((fs, fid))
        if newest is None:
            self._newest.pop((fs, fid), None)
        elif newest != prev:
            self._newest[(fs, fid)] = newest
            if prev is None or newest > prev:
                self._wake_want_newest(fs, fid)

    def _wake(self, fs: str, fid: str, version: int, first: int, end: int) -> None:
        """Re-queue destinations parked on blocks [first, end) of one version."""
        waiting = self._waiting
        if not waiting:
            return
        if end - first > len(waiting):  # a report may claim any size: walk what is parked, not the range
            keys = [k for k in waiting if k[0] == fs and k[1] == fid and k[2] == version and first <= k[3] < end]
        else:
            keys = [(fs, fid, version, blk) for blk in range(first, end)]
        for key in keys:
            waiters = waiting.pop(key, None)
            if waiters:
                for k in waiters:
                    self._enqueue(k)

    def _wake_want_newest(self, fs: str, fid: str) -> None:
        """A newer version appeared: every slave that wants the newest copy of this file has a need now."""
        for st in self._by_fileset[fs].values():
            row = st.by_file.get(fid)
            if row is not None and (row.want_newest or row.fileset_file):
                self._enqueue((st.slave, fs))

    # --- needs and sources ---------------------------------------------------

    def _needs(self, st: _SlaveState) -> Iterator[_Need]:
        """FIG. 7A 702: next block per file, FileSet-file rows first, want-newest rows on newer versions."""
        fs, bs = st.fileset, self._block
        for rows in (st.fileset_rows, st.data_rows):
            for row in rows:
                if row.fileset_file or row.want_newest:
                    newest = self._newest.get((fs, row.file_id))
                    if newest is not None and newest > row.version:
                        yield _Need(row.file_id, newest, 0, 0, row.fileset_file)
                        continue
                if row.complete or row.size % bs:
                    continue  # done, or an inconsistent row (partial block without the final flag)
                yield _Need(row.file_id, row.version, row.size // bs, row.size, row.fileset_file)

    def _has_fileset_need(self, st: _SlaveState) -> bool:
        for row in st.fileset_rows:
            newest = self._newest.get((st.fileset, row.file_id))
            if (newest is not None and newest > row.version) or not row.complete:
                return True
        return False

    def _schedule(self, now: float, key: _Key) -> CopyRequest | None:
        """Try to issue one request for this destination; otherwise park it where it will be woken."""
        st = self._states.get(key)
        dest = key[0]
        if st is None or not self.live(now, dest):
            return None  # comes back with its next report
        nb = self._not_before.get(dest)
        if nb is not None:
            if now < nb:
                self._push_retry(nb, key)
                return None
            del self._not_before[dest]
        if self._outstanding.get(dest, 0) >= self.config.max_inflight_per_slave:
            return None  # re-queued when one of its copies finishes
        if not self.health.functioning(dest):
            self._push_retry(now + self.config.blocked_retry, key)
            return None
        blocked = False
        for need in self._needs(st):
            if need.file_id in st.inflight:
                continue  # blocks of a file arrive in order; the next one waits for this one
            if not self.file_health.functioning((dest, need.file_id)):
                blocked = True
                continue
            vi = self._index.get((st.fileset, need.file_id, need.version))
            if vi is None or vi.max_held() <= need.block:
                self._waiting.setdefault((st.fileset, need.file_id, need.version, need.block), {})[key] = None
                continue
            size = self._block
            if vi.final_size is not None:
                size = min(size, vi.final_size - need.block * self._block)
                if size <= 0:
                    continue
            bk = (st.fileset, need.file_id, need.version, need.block)
            ck: _CrossKey | None = (*bk, st.dc) if self.config.one_trunk_copy else None
            claimed = ck if ck is not None and ck in self._crossing else None  # another copy is crossing
            sources, crosses = self._sources(now, st, vi, need, remote=claimed is None)
            if not sources:
                # a new holder wakes it at once; recovery of a failed or silent one is caught by the retry
                self._waiting.setdefault(bk, {})[key] = None
                if claimed is not None:  # only a trunk copy would do and one is on its way: its end wakes us
                    self._trunk_waiting.setdefault(claimed, {})[key] = None
                else:
                    blocked = True
                continue
            return self._issue(now, st, need, size, sources, ck if crosses else None)
        if blocked:
            self._push_retry(now + self.config.blocked_retry, key)
        return None

    def _usable(self, now: float, src: str, dest: str, file_id: str) -> bool:
        """A source may be offered: live, functioning, its copy of the file sound, a sound primary path."""
        if not self.live(now, src):
            return False
        if self._distance(src, dest) is None:
            return False
        if self.health.failed:
            if src in self.health.failed:
                return False
            if any(r in self.health.failed for r in self._middle(src, dest)):
                return False
        return not (self.file_health.failed and (src, file_id) in self.file_health.failed)

    def _sources(
        self, now: float, st: _SlaveState, vi: _VersionIndex, need: _Need, *, remote: bool = True
    ) -> tuple[tuple[str, ...], bool]:
        """Ranked sources (tree, then nearest holders) and whether the list reaches another datacenter.

        With ``one_trunk_copy`` holders in other datacenters rank behind every usable holder of the
        destination's own datacenter (with ``trunk_fallback`` False they are left out when there is one),
        and ``remote=False`` leaves them out (another copy of the block is crossing into it already).
        """
        dest, fs, fid = st.slave, st.fileset, need.file_id
        block, max_sources = need.block, self.config.max_sources
        seen = {dest}
        held = vi.held
        tree_group: list[Candidate] = []
        if self.config.tree:
            for s in self.tree(fs, st.dc).tree_sources(dest, max_peers=max_sources):
                seen.add(s)
                if held.get(s, 0) > block and self._usable(now, s, dest, fid):
                    tree_group.append(Candidate(s, self._held_bytes(s, fs, fid), need.destination_bytes))
        split = self.config.one_trunk_copy
        fallback = self.config.trunk_fallback
        local: list[Candidate] = []  # own datacenter (every non-tree holder when not split)
        far: list[Candidate] = []  # other datacenters, ranked on their own behind ``local``
        want = self.config.pool_size
        n = 0
        probe = (block + 1, "")
        for lst, near in self._holder_lists(vi, st, remote):
            if split and not near and not fallback and (tree_group or local):
                break  # a usable holder in the own datacenter: the block need not cross again
            out = far if split and not near else local
            for i in range(bisect_left(lst, probe), len(lst)):
                s = lst[i][1]
                if s in seen:
                    continue
                seen.add(s)
                if self._usable(now, s, dest, fid):
                    out.append(Candidate(s, self._held_bytes(s, fs, fid), need.destination_bytes))
                    n += 1
                    if n >= want:
                        break
            if n >= want:
                break
        if not tree_group and not n:
            return (), False
        args = (self._last_copied_from.get(dest), _Idleness(self._outbound, self._reported_outbound))
        weights = self.config.weights
        ranked = rank_sources(self.topology, dest, tree_group, *args, weights, distance=self._distance)
        if len(ranked) < max_sources and local:
            ranked += rank_sources(self.topology, dest, local, *args, weights, distance=self._distance)
        if len(ranked) >= max_sources or not far:
            return tuple(ranked[:max_sources]), False
        ranked += rank_sources(self.topology, dest, far, *args, weights, distance=self._distance)
        return tuple(ranked[:max_sources]), True

    def _holder_lists(
        self, vi: _VersionIndex, st: _SlaveState, remote: bool = True
    ) -> Iterator[tuple[list[tuple[int, str]], bool]]:
        """Holder lists nearest first, each with "in the own datacenter": own rack, own datacenter, then
        (unless ``remote`` is False) other datacenters by distance."""
        lst = vi.by_rack.get(st.rack)
        if lst:
            yield lst, True
        lst = vi.by_dc.get(st.dc)
        if lst:
            yield lst, True
        if not remote:
            return
        for dc in self._dcs_by_distance(st.dc):
            lst = vi.by_dc.get(dc)
            if lst:
                yield lst, False

    def _dcs_by_distance(self, dc: str) -> tuple[str, ...]:
        order = self._dc_order.get(dc)
        if order is None:
            topo = self.topology

            def latency(other: str) -> tuple[int, float, str]:
                path = topo.trunk_path(other, dc)
                if path is None:
                    return (1, 0.0, other)
                return (0, sum(topo.trunks[t].latency for t in path), other)

            order = self._dc_order[dc] = tuple(sorted((d for d in topo.datacenters if d != dc), key=latency))
        return order

    def _held_bytes(self, slave: str, fs: str, fid: str) -> int:
        st = self._states.get((slave, fs))
        row = st.by_file.get(fid) if st is not None else None
        return row.size if row is not None else 0

    def _distance(self, src: str, dst: str) -> float | None:
        """topology.distance, cached per rack pair (distance depends only on the racks involved)."""
        a, b = self.topology.slaves[src].rack, self.topology.slaves[dst].rack
        key = (a, b)
        try:
            return self._distance_cache[key]
        except KeyError:
            d = self._distance_cache[key] = self.topology.distance(src, dst)
            return d

    def _middle(self, src: str, dst: str) -> tuple[str, ...]:
        """Resources of the path other than the two slaves (racks, datacenters, trunks), cached per rack pair."""
        a, b = self.topology.slaves[src].rack, self.topology.slaves[dst].rack
        key = (a, b)
        mid = self._middle_cache.get(key)
        if mid is None:
            mid = self._middle_cache[key] = tuple(
                r for r in self.topology.resources_of_path(src, dst) if r not in (src, dst)
            )
        return mid

    # --- transfers ----------------------------------------------------------

    def _issue(
        self,
        now: float,
        st: _SlaveState,
        need: _Need,
        size: int,
        sources: tuple[str, ...],
        crossing: _CrossKey | None = None,
    ) -> CopyRequest:
        self._n += 1
        tid = f"{self.master_id}.{self.incarnation}.{self._n}"
        dest = st.slave
        t = _Transfer(
            tid, dest, st.fileset, need.file_id, need.version, need.block, size, need.fileset_file, sources, now
        )
        if crossing is not None:
            t.crossing = crossing
            self._crossing[crossing] = tid
        t.deadline = now + self.config.min_transfer_timeout  # for a decision; replaced by the copy deadline
        self._transfers[tid] = t
        st.inflight[need.file_id] = tid
        self._outstanding[dest] = self._outstanding.get(dest, 0) + 1
        self._push_deadline(t.deadline, tid)
        return CopyRequest(
            transfer_id=tid,
            master=self.master_id,
            destination=dest,
            sources=sources,
            fileset=st.fileset,
            file_id=need.file_id,
            version=need.version,
            block=need.block,
            size=size,
            fileset_file=need.fileset_file,
        )

    def _on_result(self, now: float, reporter: str, res: TransferResult) -> Release | None:
        t = self._transfers.get(res.transfer_id)
        if t is None or t.state != "granted":
            return None  # an earlier incarnation's copy, or one already expired
        if reporter not in (t.destination, t.source):
            self._reject(f"{reporter} reported result of {t.id}, which is {t.source}->{t.destination}")
            return None
        if res.ok:
            self._last_copied_from[t.destination] = t.source
        else:
            self._blame(t, res.blame)
            self._log(f"copy {t.id} {t.source}->{t.destination} failed ({res.blame}): {res.detail}")
            if res.blame == "receiver":  # its disk or its own state: asking again at once only burns copies
                self._not_before[t.destination] = now + self.config.retry_after
                self._push_retry(now + self.config.retry_after, (t.destination, t.fileset))
        return self._finish(t, ok=res.ok, nbytes=res.bytes)

    def _blame(self, t: _Transfer, blame: str) -> None:
        """§0089: the receiver when it says so, the source when named, else every other resource of the path."""
        if blame == "receiver":
            self.health.record_failure(t.destination)
            self.file_health.record_failure((t.destination, t.file_id))
        elif blame == "source":
            self.health.record_failure(t.source)
            self.file_health.record_failure((t.source, t.file_id))
        else:
            for r in t.resources:
                if r != t.destination:
                    self.health.record_failure(r)
            self.file_health.record_failure((t.source, t.file_id))

    def _finish(self, t: _Transfer, *, ok: bool, nbytes: int) -> Release:
        self._drop(t)
        n = self._outbound.get(t.source, 0)
        if n > 1:
            self._outbound[t.source] = n - 1
        else:
            self._outbound.pop(t.source, None)
        self._enqueue((t.destination, t.fileset))
        return Release(transfer_id=t.id, ok=ok, bytes=nbytes)

    def _drop(self, t: _Transfer) -> None:
        del self._transfers[t.id]
        if t.crossing is not None:
            self._uncross(t)
        st = self._states.get((t.destination, t.fileset))
        if st is not None and st.inflight.get(t.file_id) == t.id:
            del st.inflight[t.file_id]
        n = self._outstanding.get(t.destination, 0)
        if n > 1:
            self._outstanding[t.destination] = n - 1
        else:
            self._outstanding.pop(t.destination, None)

    def _uncross(self, t: _Transfer) -> None:
        """End the transfer's trunk claim; destinations parked on it look again (one may cross next)."""
        ck = t.crossing
        t.crossing = None
        if ck is None:
            return
        if self._crossing.get(ck) == t.id:
            del self._crossing[ck]
        waiters = self._trunk_waiting.pop(ck, None)
        if waiters:
            for k in waiters:
                self._enqueue(k)

    # --- queues -------------------------------------------------------------

    def _enqueue(self, key: _Key) -> None:
        st = self._states.get(key)
        if st is None:
            return
        if key in self._fileset_queue:
            return
        if st.fileset_rows and self._has_fileset_need(st):
            self._queue.pop(key, None)  # a FileSet-file need jumps the line (§0133)
            self._fileset_queue[key] = None
        elif key not in self._queue:
            self._queue[key] = None

    def _push_retry(self, when: float, key: _Key) -> None:
        self._seq += 1
        heapq.heappush(self._retry, (when, self._seq, key))

    def _push_deadline(self, when: float, tid: str) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (when, self._seq, tid))

    def _reject(self, reason: str) -> list[Release]:
        self.rejected[_reason_kind(reason)] += 1
        self.rejections.append(reason)
        return []

    def _log(self, line: str) -> None:
        self.events.append(line)
        if len(self._outbox) < 10_000:  # a core driven without a daemon never drains it
            self._outbox.append(line)

    def drain_log(self, now: float) -> list[str]:
        """Lines for the daemon's log since the last call, with health and liveness changes.

        A resource marked failed or back in service, and a slave gone silent or heard again, are logged
        when they happen so a drill can time detection and recovery from the log alone.
        """
        for table in (self.health, self.file_health):
            for key, ok in table.changes:
                name = key if isinstance(key, str) else ":".join(key)
                if ok:
                    self._log(f"health {name} in-service")
                else:
                    row = table.get(key)
                    self._log(f"health {name} failed failures={row.failure_count} attempts={row.attempts}")
            table.changes.clear()
        if now - self._liveness_scan >= 0.5:
            self._liveness_scan = now
            for slave in self._last_contact:
                alive = self.live(now, slave)
                if not alive and slave not in self._lost:
                    self._lost.add(slave)
                    self._log(f"liveness {slave} lost")
                elif alive and slave in self._lost:
                    self._lost.discard(slave)
                    self._log(f"liveness {slave} back")
        out, self._outbox = self._outbox, []
        return out


class _Idleness(Mapping[str, int]):
    """Outbound count per source: the larger of this master's own count (§0086) and the slave's total (§0087).

    The slave's total also covers other masters' filesets but is only as fresh as its last report;
    this master's own count is exact for its copies. The larger is the safer load estimate.
    """

    __slots__ = ("_own", "_reported")

    def __init__(self, own: dict[str, int], reported: dict[str, int]) -> None:
        self._own, self._reported = own, reported

    def __getitem__(self, key: str) -> int:
        return max(self._own.get(key, 0), self._reported.get(key, 0))

    def get(self, key: str, default: int = 0) -> int:  # type: ignore[override]
        return max(self._own.get(key, default), self._reported.get(key, default))

    def __iter__(self) -> Iterator[str]:
        return iter(self._own.keys() | self._reported.keys())

    def __len__(self) -> int:
        return len(self._own.keys() | self._reported.keys())


def _reason_kind(reason: str) -> str:
    """Counter key for a rejection: the message with slave/transfer ids stripped, so counts aggregate."""
    for marker, kind in (
        ("does not own", "fileset not owned"),
        ("unknown slave", "unknown slave"),
        ("does not need", "fileset not needed by slave"),
        ("duplicate or negative", "malformed rows"),
        ("unknown or already decided", "unknown transfer"),
        ("not a requested pair", "grant for unrequested pair"),
        ("reported result of", "result from uninvolved slave"),
    ):
        if marker in reason:
            return kind
    return reason
