"""The resource manager's sans-I/O core: reservations per link, priority and epoch.

Patent US 2006/0126201 FIG. 5C/5D, FIG. 7B and FIG. 9 (§0113-0119, §0137-0142,
§0150-0153). Time is an argument (``now``, seconds); nothing here reads a clock,
opens a socket or sleeps, so the daemon and the discrete-event simulation run
the very same code.

Two tables, as the patent has them
----------------------------------
* Global resources table (FIG. 5C): per directional link (``Topology.links``)
  its capacity (bytes/s, adjustable at run time for other users of the link,
  §0114) and the RATE in use = sum of the pacing rates of the active granted
  transfers crossing it.
* Active priority levels table (FIG. 5D): per link a past table (flags of the
  priorities requested on the link in the previous epoch, granted or failed) and
  a current table (per pool: bytes allocated and bytes remaining this epoch).

Decisions (the patent leaves these open; see also ``epochs.py``)
----------------------------------------------------------------
* A request flags its own priority on every link of every source path the RM
  evaluated for it (§0140 says granted or failed both count).
* A link with no flags in the previous epoch (idle, or epochs skipped) gets one
  OPEN pool of its whole epoch, first come first served by any priority.
* Pool choice per link: the OPEN pool if there is one; else the request's own
  priority pool; else the highest allocated priority below it (§0141 downgrade);
  else this source fails (§0142: never upgraded). Pools are chosen per link, so
  on the next source a request may use its own pool again (§0141, link B).
* Rate: ``R = min over links of min(pool rate - rate in use in that pool,
  capacity - rate in use on the link)`` with pool rate = allocated / epoch
  (the OPEN pool's rate is the link's capacity, adjusted or not).
  ``R`` must reach ``min_rate_fraction`` x the smallest pool rate on the path, so a
  nearly full link is not granted a trickle. Bytes this epoch
  ``b0 = min(size, R x time left)`` must fit in every link's pool (§0139); then
  all links are reserved together (§0140).
* The rest of the block is carried (§0152): at each later epoch start, after
  allocation, a still-active transfer reserves ``min(R x epoch, bytes left)`` on
  each link from the pool the same rule picks. A transfer already running is
  never cut off: if no pool fits it (its priority is no longer allocated there),
  it is charged to the lowest allocated pool. A carry larger than what its pool
  has left takes the rest from the link's other pools, lowest priority first
  (the sender keeps its rate, so the bytes will flow), noted in the ledger; the
  bytes reserved on a link in an epoch still never exceed capacity x epoch,
  because the rates of active transfers never exceed the link's capacity.
* Releasing a transfer frees its rate and stops its carries; bytes already
  reserved this epoch stay reserved (the RM cannot know how many were sent).
* A Denial says when to ask again (``retry_in``): the next epoch start when a
  pool is missing or out of bytes, else when the soonest transfer holding rate
  on the tight link should end at its rate (at least ``MIN_RETRY``, at most an
  epoch). A fixed back-off left trunks idle between blocks.
* A grant lapses at ``expires_at = now + 3 x size / R + 2 x epoch`` unless
  released first: its rate is freed and an ``expire`` record written.
* Invalid requests (unknown fileset, destination or source, bad size, too many
  sources, a duplicate active transfer id) are denied with no state change at
  all: no flags, no ledger record.
* Time never runs backwards for the RM: a ``now`` earlier than the current epoch
  is treated as inside it.

Performance: per-link state is created lazily and only links that saw activity
in the last epoch (or carry an active transfer) are rolled at an epoch start;
an idle link is brought up to date when first touched. Paths are cached per
(source rack, destination rack), not per slave pair: ``Topology.path`` is asked
once per rack pair and only the two slave links differ between its slaves, so
the cache stays small at 1000s of slaves.
"""

from __future__ import annotations

import heapq
import math

from scaledist.core.epochs import OPEN, allocate, epoch_index, epoch_start, epoch_total
from scaledist.core.ledger import LedgerRecord
from scaledist.messages import CopyRequest, Denial, Grant
from scaledist.topology import Topology

MAX_SOURCES = 64
MIN_WINDOW = 65536
MAX_WINDOW = 64 * 2**20
MAX_REASON = 2000
MIN_RETRY = 0.05  # a Denial's retry hint is never sooner: a late transfer must not set off a request storm

_INF = math.inf


class _Link:
    """One row of FIG. 5C plus the current and past tables of FIG. 5D for that link.

    Pools are indexed by priority position (ascending level); index ``n`` is the OPEN pool.
    """

    __slots__ = (
        "alloc",
        "base",
        "capacity",
        "choice",
        "epoch",
        "flags",
        "id",
        "lowest",
        "past",
        "pool_rate",
        "prate",
        "rate",
        "remaining",
        "running",
    )

    def __init__(self, link_id: str, capacity: float) -> None:
        self.id = link_id
        self.running: set[_Transfer] = set()  # active grants holding rate here: when will rate free up?
        self.base = capacity  # the topology's value, to tell an adjusted capacity apart
        self.capacity = capacity
        self.epoch = -(2**62)  # stale: brought up to date on first touch
        self.rate = 0.0  # FIG. 5C "BW in use"
        self.flags = 0  # priorities requested this epoch (bit i = priority i)
        self.past = 0  # the past table: flags of the previous epoch
        self.alloc: tuple[int, ...] = ()
        self.remaining: list[int] = []
        self.prate: tuple[float, ...] = ()
        self.pool_rate: list[float] = []
        self.choice: tuple[int, ...] = ()  # request priority index -> pool index, -1 = none
        self.lowest = 0


class _Transfer:
    """An active grant: the rate it holds on each link and the bytes still to carry."""

    __slots__ = ("ends", "expires_at", "left", "links", "p", "pools", "rate", "req", "source")

    def __init__(
        self, req: CopyRequest, source: str, links: tuple[_Link, ...], pools: list[int], p: int, rate: float
    ) -> None:
        self.req = req
        self.source = source
        self.links = links
        self.pools = pools
        self.p = p
        self.rate = rate
        self.left = 0
        self.expires_at = 0.0
        self.ends = 0.0  # when it should be done at its rate: the earliest a denied request may find room


_Middle = tuple[tuple[_Link, ...], float, tuple[str, ...]]  # links between the slave links, RTT, their ids


class ResourceManager:
    """Answers a master's ranked source list with a Grant ("copy from N") or a Denial ("fail")."""

    def __init__(
        self,
        topology: Topology,
        *,
        epoch: float | None = None,
        start: float = 0.0,
        min_rate_fraction: float = 0.25,
        payload_fraction: float = 1.0,
    ) -> None:
        """``payload_fraction``: the share of a link's bytes that can be block data. 1.0 reserves against the
        topology's figures as the patent does; the daemon passes ~0.95 because the wire also carries each
        frame's Ethernet/IP/TCP headers (66 of every 1514 bytes), which the grants' payload rates do not."""
        length = float(topology.epoch if epoch is None else epoch)
        if not length > 0 or not math.isfinite(length):
            raise ValueError(f"epoch length must be a positive number of seconds, got {epoch!r}")
        if not 0 <= min_rate_fraction <= 1:
            raise ValueError(f"min_rate_fraction must be within [0, 1], got {min_rate_fraction}")
        self.topology = topology
        self._length = length
        self._start = float(start)
        self._frac = float(min_rate_fraction)
        if not 0 < payload_fraction <= 1:
            raise ValueError(f"payload_fraction must be within (0, 1], got {payload_fraction}")
        self._payload = float(payload_fraction)
        self._prios = tuple(sorted(topology.priorities, key=lambda p: p.level))
        self._n = len(self._prios)
        self._pindex = {p.name: i for i, p in enumerate(self._prios)}
        self._names = (*(p.name for p in self._prios), OPEN)
        self._pool_cache: dict[tuple[int, int], tuple[tuple[int, ...], tuple[float, ...]]] = {}
        self._choice_cache: dict[int, tuple[tuple[int, ...], int]] = {}
        self._links: dict[str, _Link] = {}
        self._live: dict[_Link, None] = {}  # current-epoch links; ordered so replays match
        self._rack_of = {s.id: s.rack for s in topology.slaves.values()}
        self._ends: dict[str, tuple[_Link, _Link]] = {}  # slave -> (uplink, downlink)
        self._mids: dict[tuple[str, str], _Middle | None] = {}  # (source rack, destination rack) -> middle
        self._active: dict[str, _Transfer] = {}
        self._expiry: list[tuple[float, int, _Transfer]] = []
        self._seq = 0
        self._ledger: list[LedgerRecord] = []
        self._epoch = 0
        self._epoch_end = epoch_start(1, self._start, length)
        self._next_check = self._epoch_end

    # --- public API -------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Index of the current epoch (as of the last call)."""
        return self._epoch

    @property
    def epoch_length(self) -> float:
        return self._length

    @property
    def active_transfers(self) -> int:
        return len(self._active)

    def take_ledger(self) -> list[LedgerRecord]:
        """Records written since the last call; the daemon appends them to its JSON-lines file."""
        out = self._ledger
        self._ledger = []
        return out

    def tick(self, now: float) -> None:
        """Roll epochs up to ``now`` (FIG. 9) and let lapsed grants expire; safe to call at any time."""
        target = epoch_index(now, self._start, self._length)
        if target > self._epoch:
            self._roll(target)
        self._expire(now)
        self._next_check = min(self._epoch_end, self._expiry[0][0]) if self._expiry else self._epoch_end

    def set_capacity(self, now: float, link: str, bytes_per_s: float) -> None:
        """Adjust a link's capacity (§0114): rate checks see it at once, pools from the next epoch."""
        if link not in self.topology.links:
            raise ValueError(f"unknown link {link!r}")
        if isinstance(bytes_per_s, bool) or not (isinstance(bytes_per_s, (int, float)) and math.isfinite(bytes_per_s)
                                                 and bytes_per_s > 0):
            raise ValueError(f"capacity of {link} must be a positive number of bytes/s, got {bytes_per_s!r}")
        self.tick(now)
        ls = self._link(link)
        if ls.epoch != self._epoch:
            self._set_pools(ls, 0, None)
        ls.capacity = float(bytes_per_s) * self._payload
        if ls.past == 0:  # an OPEN pool's rate is the link's capacity; its bytes stay as allocated
            ls.prate = (*ls.prate[: self._n], ls.capacity)

    def release(self, now: float, transfer_id: str, ok: bool = True) -> bool:
        """A granted copy finished: free its rate and stop its carries. Unknown id -> False, nothing changes."""
        if now >= self._next_check:
            self.tick(now)
        tr = self._active.get(transfer_id)
        if tr is None:
            return False
        self._finish(tr)
        req = tr.req
        self._ledger.append(
            LedgerRecord(
                "release", self._epoch, now, None, self._names[tr.p], req.size - tr.left, tr.rate,
                transfer_id, tr.source, req.destination, req.fileset, req.file_id, req.block, ok,
                "ok" if ok else "failed",
            )
        )
        return True

    def request(self, now: float, req: CopyRequest) -> Grant | Denial:
        """FIG. 7B: try the ranked sources in order; grant the first whose whole path has room."""
        if now >= self._next_check:
            self.tick(now)
        tid = req.transfer_id
        problem = self._invalid(req)
        if problem is not None:
            return Denial(tid, problem, self._epoch)
        prio = self.topology.priority_of(req.fileset, req.fileset_file)
        p = self._pindex[prio.name]
        bit = 1 << p
        e = self._epoch
        length = self._length
        dt = self._epoch_end - now
        if dt > length:
            dt = length
        elif dt < 0.0:
            dt = 0.0
        size = req.size
        frac = self._frac
        dst = req.destination
        ends = self._ends
        mids = self._mids
        down = (ends[dst] if dst in ends else self._slave_links(dst))[1]
        rack_of = self._rack_of
        dst_rack = rack_of[dst]
        reasons: list[str] = []
        last_link: str | None = None
        last_source: str | None = None
        wait = _INF  # earliest time any of these sources may have room: the Denial's retry hint
        for src in req.sources:
            key = (rack_of[src], dst_rack)
            mid = mids[key] if key in mids else self._middle(src, dst)
            if mid is None or src == dst:
                reasons.append(f"{src}: " + ("is the destination" if src == dst else "no primary-direction path"))
                continue
            links = ((ends[src] if src in ends else self._slave_links(src))[0], *mid[0], down)
            for ls in links:
                if ls.epoch != e:
                    self._set_pools(ls, 0, None)
                ls.flags |= bit
            rate = _INF
            minpool = _INF
            tight = links[0]
            bad: _Link | None = None
            for ls in links:
                k = ls.choice[p]
                if k < 0:
                    bad = ls
                    break
                pr = ls.prate[k]
                free = pr - ls.pool_rate[k]
                lf = ls.capacity - ls.rate
                if lf < free:
                    free = lf
                if free < rate:
                    rate = free
                    tight = ls
                if pr < minpool:
                    minpool = pr
            if bad is not None:
                reasons.append(f"{src}: {self._no_pool(bad, p)}")
                wait = min(wait, dt)  # pools are set again at the next epoch start
            elif rate <= 0.0 or rate < frac * minpool:
                bad = tight
                soonest = min((tr.ends for tr in tight.running), default=now + dt)
                wait = min(wait, max(soonest - now, 0.0))
                reasons.append(
                    f"{src}: rate: {tight.id} has {max(rate, 0.0):.0f} B/s free for {prio.name}, "
                    f"needs >= {frac * minpool:.0f}"
                )
            else:
                b0 = int(rate * dt + 0.5)
                if b0 > size:
                    b0 = size
                for ls in links:
                    k = ls.choice[p]
                    if ls.remaining[k] < b0:
                        bad = ls
                        reasons.append(
                            f"{src}: bytes: {ls.id} pool {self._names[k]} has {ls.remaining[k]} B left, needs {b0}"
                        )
                        wait = min(wait, dt)
                        break
                else:
                    return self._grant(now, req, src, links, mid, p, rate, b0)
            last_link = bad.id
            last_source = src
        reason = "; ".join(reasons)
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 3] + "..."
        self._ledger.append(
            LedgerRecord(
                "deny", e, now, last_link, prio.name, size, 0.0, tid, last_source, dst,
                req.fileset, req.file_id, req.block, False, reason,
            )
        )
        retry = wait if wait < _INF else dt
        return Denial(tid, reason, e, min(max(retry, MIN_RETRY), length))

    def snapshot(self) -> dict[str, object]:
        """JSON-able view of both tables for status pages and tests (links with any activity)."""
        e = self._epoch
        n = self._n
        names = self._names
        links: dict[str, object] = {}
        for lid in sorted(self._links):
            ls = self._links[lid]
            if ls.epoch == e:
                ks = [n] if ls.past == 0 else [i for i in range(n) if ls.past >> i & 1]
                pools = {
                    names[k]: {"allocated": ls.alloc[k], "remaining": ls.remaining[k], "rate_in_use": ls.pool_rate[k]}
                    for k in ks
                }
                links[lid] = {
                    "capacity": ls.capacity,
                    "rate_in_use": ls.rate,
                    "pools": pools,
                    "past": self._flag_names(ls.past),
                    "requested": self._flag_names(ls.flags),
                }
            elif ls.capacity != ls.base:  # idle now, but its adjusted capacity is still worth showing
                total = epoch_total(ls.capacity, self._length)
                links[lid] = {
                    "capacity": ls.capacity,
                    "rate_in_use": 0.0,
                    "pools": {OPEN: {"allocated": total, "remaining": total, "rate_in_use": 0.0}},
                    "past": [],
                    "requested": [],
                }
        return {
            "epoch": e,
            "epoch_start": epoch_start(e, self._start, self._length),
            "epoch_length": self._length,
            "active_transfers": len(self._active),
            "links": links,
        }

    # --- requests -----------------------------------------------------------

    def _invalid(self, req: CopyRequest) -> str | None:
        """Why a request cannot even be evaluated, or None. Checked before any state is touched."""
        topo = self.topology
        if not req.transfer_id:
            return "invalid request: empty transfer_id"
        if req.transfer_id in self._active:
            return f"invalid request: transfer_id {req.transfer_id!r} is already active"
        if req.fileset not in topo.filesets:
            return f"invalid request: unknown fileset {req.fileset!r}"
        slaves = topo.slaves
        if req.destination not in slaves:
            return f"invalid request: unknown destination {req.destination!r}"
        n = len(req.sources)
        if n == 0:
            return "invalid request: no sources"
        if n > MAX_SOURCES:
            return f"invalid request: {n} sources, at most {MAX_SOURCES}"
        for s in req.sources:
            if s not in slaves:
                return f"invalid request: unknown source {s!r}"
        if req.size <= 0 or req.size > topo.block_size:
            return f"invalid request: size {req.size} outside 1..{topo.block_size} bytes"
        return None

    def _grant(
        self, now: float, req: CopyRequest, src: str, links: tuple[_Link, ...], mid: _Middle, p: int, rate: float,
        b0: int,
    ) -> Grant:
        """Reserve on every link of the path together (§0140) and record it."""
        rtt = mid[1]
        ids = (links[0].id, *mid[2], links[-1].id)
        e = self._epoch
        names = self._names
        tid = req.transfer_id
        dst = req.destination
        pools = [ls.choice[p] for ls in links]
        append = self._ledger.append
        for ls, k in zip(links, pools, strict=True):
            ls.remaining[k] -= b0
            ls.pool_rate[k] += rate
            ls.rate += rate
            append(
                LedgerRecord(
                    "grant", e, now, ls.id, names[k], b0, rate, tid, src, dst,
                    req.fileset, req.file_id, req.block, True,
                )
            )
        tr = _Transfer(req, src, links, pools, p, rate)
        tr.left = req.size - b0
        tr.ends = now + req.size / rate + rtt
        for ls in links:
            ls.running.add(tr)
        length = self._length
        tr.expires_at = expires = now + 3.0 * req.size / rate + 2.0 * length
        self._active[tid] = tr
        self._seq += 1
        heap = self._expiry
        heapq.heappush(heap, (expires, self._seq, tr))
        if len(heap) > 4 * len(self._active) + 4096:  # drop entries of released transfers
            active = self._active
            self._expiry = heap = [x for x in heap if active.get(x[2].req.transfer_id) is x[2]]
            heapq.heapify(heap)
        if expires < self._next_check:
            self._next_check = expires
        window = int(2.0 * rate * rtt)
        if window < MIN_WINDOW:
            window = MIN_WINDOW
        elif window > MAX_WINDOW:
            window = MAX_WINDOW
        return Grant(tid, src, dst, ids, self._names[p], rate, window, e, expires)

    def _no_pool(self, ls: _Link, p: int) -> str:
        allocated = ",".join(self._flag_names(ls.past)) or "nothing"
        return (
            f"no pool: {ls.id} allocates {allocated} this epoch, none at or below {self._names[p]} "
            "(never upgraded)"
        )

    def _flag_names(self, mask: int) -> list[str]:
        return [self._names[i] for i in range(self._n) if mask >> i & 1]

    def _slave_links(self, slave: str) -> tuple[_Link, _Link]:
        ends = self._ends[slave] = (self._link(f"slave/{slave}/up"), self._link(f"slave/{slave}/down"))
        return ends

    def _middle(self, src: str, dst: str) -> _Middle | None:
        """The links between the source's uplink and the destination's downlink, per rack pair.

        ``Topology.path`` stays the single source of truth: it is asked once per rack pair and its
        answer (minus the two slave links, which are the only slave-specific part) is reused.
        """
        key = (self._rack_of[src], self._rack_of[dst])
        if src == dst:  # path() has no answer for a slave to itself; the caller fails that source anyway
            return None
        ids = self.topology.path(src, dst)
        mid: _Middle | None = None
        if ids is not None:
            if ids[0] != f"slave/{src}/up" or ids[-1] != f"slave/{dst}/down":
                raise RuntimeError(f"topology path {ids} does not start/end at the slaves' own links")
            inner = ids[1:-1]
            mid = (tuple(self._link(i) for i in inner), 2.0 * self.topology.latency(src, dst), inner)
        self._mids[key] = mid
        return mid

    def _link(self, link_id: str) -> _Link:
        ls = self._links.get(link_id)
        if ls is None:
            ls = self._links[link_id] = _Link(link_id, float(self.topology.links[link_id].capacity) * self._payload)
        return ls

    # --- epochs (FIG. 9) ----------------------------------------------------

    def _set_pools(self, ls: _Link, mask: int, t0: float | None) -> None:
        """Allocate a link's epoch among the priorities in ``mask`` (none: one OPEN pool); makes it current.

        ``t0`` given: this is an epoch-start allocation and non-empty masks are written to the ledger.
        """
        length = self._length
        total = epoch_total(ls.capacity, length)
        key = (total, mask)
        cached = self._pool_cache.get(key)
        if cached is None:
            flagged = [q for i, q in enumerate(self._prios) if mask >> i & 1]
            shares = allocate(total, flagged)
            alloc = tuple(shares.get(name, 0) for name in self._names)
            cached = (alloc, tuple(a / length for a in alloc))
            if len(self._pool_cache) > 65536:
                self._pool_cache.clear()
            self._pool_cache[key] = cached
        choice = self._choice_cache.get(mask)
        if choice is None:
            choice = self._choice_cache[mask] = self._choices(mask)
        ls.alloc, ls.prate = cached
        ls.remaining = list(cached[0])
        ls.pool_rate = [0.0] * (self._n + 1)
        ls.choice, ls.lowest = choice
        ls.past = mask
        ls.flags = 0
        ls.rate = 0.0
        ls.epoch = self._epoch
        self._live[ls] = None
        if t0 is not None and mask:
            e = self._epoch
            for i in range(self._n):
                if mask >> i & 1:
                    a = cached[0][i]
                    self._ledger.append(
                        LedgerRecord(
                            "allocate", e, t0, ls.id, self._names[i], a, a / length, "", None, "", "", "", 0, False
                        )
                    )

    def _choices(self, mask: int) -> tuple[tuple[int, ...], int]:
        """Per request priority, the pool it draws from on a link allocated as ``mask`` (§0141/§0142)."""
        n = self._n
        if mask == 0:
            return (n,) * n, n
        out = []
        for p in range(n):
            if mask >> p & 1:
                out.append(p)
            else:
                out.append((mask & ((1 << p) - 1)).bit_length() - 1)  # highest below p, or -1
        return tuple(out), (mask & -mask).bit_length() - 1

    def _roll(self, target: int) -> None:
        """Advance epoch by epoch to ``target``: lapse grants, allocate flagged links, carry late blocks."""
        length = self._length
        names = self._names
        while self._epoch < target:
            if not self._live and not self._active:
                self._epoch = target  # nothing to carry: idle links are brought up to date lazily
                break
            e = self._epoch + 1
            t0 = epoch_start(e, self._start, length)
            self._expire(t0)
            self._epoch = e
            old = self._live
            self._live = {}
            for ls in old:
                if ls.flags:
                    self._set_pools(ls, ls.flags, t0)
            append = self._ledger.append
            for tr in self._active.values():
                p = tr.p
                rate = tr.rate
                carry = 0
                if tr.left > 0:
                    carry = min(int(rate * length + 0.5), tr.left)
                    tr.left -= carry
                req = tr.req
                pools = tr.pools
                for i, ls in enumerate(tr.links):
                    if ls.epoch != e:
                        self._set_pools(ls, 0, None)
                    k = ls.choice[p]
                    if k < 0:
                        k = ls.lowest
                    pools[i] = k
                    ls.pool_rate[k] += rate
                    ls.rate += rate
                    if carry:
                        got = ls.remaining[k]
                        if got > carry:
                            got = carry
                        ls.remaining[k] -= got
                        short = carry - got
                        append(
                            LedgerRecord(
                                "carry", e, t0, ls.id, names[k], got, rate, req.transfer_id, tr.source,
                                req.destination, req.fileset, req.file_id, req.block, True,
                                "" if not short else f"pool short by {short} B: rest from other pools",
                            )
                        )
                        if short:
                            self._spill(ls, k, short, e, t0, tr)
        self._epoch_end = epoch_start(self._epoch + 1, self._start, length)

    def _spill(self, ls: _Link, k: int, short: int, e: int, t0: float, tr: _Transfer) -> None:
        """A running transfer's carry that its own pool cannot hold is taken from the link's other pools,
        lowest priority first: the sender keeps pacing at its granted rate, so those bytes will cross the
        link whatever the pools say, and a reservation that does not count them would be a lie.
        It always fits: the rates of active transfers never exceed the link's capacity."""
        req = tr.req
        names = self._names
        for j in range(len(ls.remaining)):
            if short <= 0:
                break
            if j == k or ls.remaining[j] <= 0:
                continue
            take = min(ls.remaining[j], short)
            ls.remaining[j] -= take
            short -= take
            self._ledger.append(
                LedgerRecord(
                    "carry", e, t0, ls.id, names[j], take, tr.rate, req.transfer_id, tr.source, req.destination,
                    req.fileset, req.file_id, req.block, True, f"spilled from {names[k]}",
                )
            )
        if short > 0:  # only after a capacity cut below the rates already running (set_capacity)
            self._ledger.append(
                LedgerRecord(
                    "carry", e, t0, ls.id, names[k], 0, tr.rate, req.transfer_id, tr.source, req.destination,
                    req.fileset, req.file_id, req.block, True, f"clamped: {short} B found no room on the link",
                )
            )

    def _expire(self, t: float) -> None:
        """Let every grant whose ``expires_at`` <= t lapse (rate freed, 'expire' record)."""
        heap = self._expiry
        active = self._active
        while heap and heap[0][0] <= t:
            expires, _, tr = heapq.heappop(heap)
            req = tr.req
            if active.get(req.transfer_id) is not tr:
                continue  # released earlier
            self._finish(tr)
            self._ledger.append(
                LedgerRecord(
                    "expire", epoch_index(expires, self._start, self._length), expires, None, self._names[tr.p],
                    req.size - tr.left, tr.rate, req.transfer_id, tr.source, req.destination, req.fileset,
                    req.file_id, req.block, True, "lapsed",
                )
            )

    def _finish(self, tr: _Transfer) -> None:
        """Free a transfer's rate on every link; its links are current (active transfers keep them live)."""
        del self._active[tr.req.transfer_id]
        rate = tr.rate
        for ls, k in zip(tr.links, tr.pools, strict=True):
            ls.running.discard(tr)
            r = ls.rate - rate
            ls.rate = r if r > 1e-6 else 0.0
            r = ls.pool_rate[k] - rate
            ls.pool_rate[k] = r if r > 1e-6 else 0.0
