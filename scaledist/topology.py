"""The network as the resource manager and masters see it (FIG. 1, 4B, 5B, 5C).

One ``Topology`` is built from one topology file (``scaledist.topology_schema``)
and is the single source of truth for link capacities, the hierarchy and the
paths: a path the resource manager reserves is the path the testbed routes.

Links are directional and named by strings:

    slave/<id>/up, slave/<id>/down   the slave's uplink and downlink
    rack/<id>/up,  rack/<id>/down    rack switch <-> datacenter switch
    dc/<id>/up,    dc/<id>/down      datacenter switch <-> border router (trunk side)
    trunk/<id>                       a trunk in its primary direction (start -> end)
    trunk/<id>/rev                   the same trunk's reverse direction (ACKs, control)

A trunk may carry a ``budget`` (and ``reverse_budget``) besides its physical
``bandwidth``: the capacity the resource manager is told, adjusted for other
traffic sharing the link (§0114).  ``Link.capacity`` is what the resource
manager reserves against (the budget when given); ``Link.physical`` is what the
link carries (the testbed shapes that).  Without a budget the two are equal.

A copy from slave A to slave B crosses only the levels it must (§0041-0042):
same rack: A up, B down; same datacenter: + A's rack up, B's rack down; other
datacenter: + A's dc up, the trunks in primary direction, B's dc down.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from scaledist.core.health import HealthConfig

LinkKind = Literal["slave", "rack", "dc", "trunk"]


@dataclass(frozen=True)
class Priority:
    name: str  # "P1"
    level: int  # higher level = more important (§0141: P4 is higher than P3)
    weight: float  # share of a link among the priorities seen on it (§0150)


@dataclass(frozen=True)
class Datacenter:
    id: str
    inbound: float  # bytes/s
    outbound: float


@dataclass(frozen=True)
class Rack:
    id: str
    dc: str
    inbound: float
    outbound: float


@dataclass(frozen=True)
class Slave:
    id: str
    rack: str
    dc: str
    inbound: float
    outbound: float
    filesets: tuple[str, ...]


@dataclass(frozen=True)
class Trunk:
    id: str
    start: str  # datacenter the primary direction leaves
    end: str
    bandwidth: float  # primary direction, bytes/s: what the link physically carries
    reverse_bandwidth: float
    latency: float  # one-way seconds
    budget: float | None = None  # primary direction, bytes/s the resource manager is told (§0114); None = bandwidth
    reverse_budget: float | None = None  # None = reverse_bandwidth

    @property
    def primary_capacity(self) -> float:
        """What the resource manager reserves against in the primary direction."""
        return self.bandwidth if self.budget is None else self.budget

    @property
    def reverse_capacity(self) -> float:
        return self.reverse_bandwidth if self.reverse_budget is None else self.reverse_budget


@dataclass(frozen=True)
class Placement:
    """Where a control daemon lives: its id and its rack (FIG. 1)."""

    id: str
    rack: str


@dataclass(frozen=True)
class MasterSpec:
    id: str
    rack: str
    filesets: tuple[str, ...]


@dataclass(frozen=True)
class GeneratorSpec:
    id: str
    slave: str  # the slave sharing its storage (§0038, device 107/108)
    filesets: tuple[str, ...]


@dataclass(frozen=True)
class FilesetSpec:
    id: str
    priority: str  # a Priority name
    master: str


@dataclass(frozen=True)
class Link:
    id: str
    kind: LinkKind
    owner: str  # the slave, rack, datacenter or trunk id
    direction: Literal["up", "down", "primary", "reverse"]
    capacity: float  # bytes/s the resource manager reserves against (a trunk's budget when it has one)
    physical: float | None = None  # bytes/s the link carries (the testbed shapes this); None = capacity

    def __post_init__(self) -> None:
        if self.physical is None:
            object.__setattr__(self, "physical", self.capacity)


@dataclass(frozen=True)
class Topology:
    name: str
    datacenters: dict[str, Datacenter]
    racks: dict[str, Rack]
    slaves: dict[str, Slave]
    trunks: dict[str, Trunk]
    resource_manager: Placement
    masters: dict[str, MasterSpec]
    generators: dict[str, GeneratorSpec]
    filesets: dict[str, FilesetSpec]
    priorities: tuple[Priority, ...]  # ascending level
    fileset_file_priority: str  # FileSet files are copied at this priority (§0120: highest)
    block_size: int = 64 * 2**20
    epoch: float = 2.0
    report_interval: float = 30.0
    control: Literal["management", "trunks"] = "management"  # how slave status reaches masters (§0043)
    health: HealthConfig = field(default_factory=HealthConfig)  # every master's failure thresholds (§0089-0091)
    scrub_interval: float = 60.0  # seconds between a slave's re-checks of blocks nobody read (0 = never)
    scale: float = 1.0
    source: str = ""  # file it was loaded from, for messages
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    # --- tables -----------------------------------------------------------

    @cached_property
    def links(self) -> dict[str, Link]:
        out: dict[str, Link] = {}
        for s in self.slaves.values():
            out[f"slave/{s.id}/up"] = Link(f"slave/{s.id}/up", "slave", s.id, "up", s.outbound)
            out[f"slave/{s.id}/down"] = Link(f"slave/{s.id}/down", "slave", s.id, "down", s.inbound)
        for r in self.racks.values():
            out[f"rack/{r.id}/up"] = Link(f"rack/{r.id}/up", "rack", r.id, "up", r.outbound)
            out[f"rack/{r.id}/down"] = Link(f"rack/{r.id}/down", "rack", r.id, "down", r.inbound)
        for d in self.datacenters.values():
            out[f"dc/{d.id}/up"] = Link(f"dc/{d.id}/up", "dc", d.id, "up", d.outbound)
            out[f"dc/{d.id}/down"] = Link(f"dc/{d.id}/down", "dc", d.id, "down", d.inbound)
        for t in self.trunks.values():
            out[f"trunk/{t.id}"] = Link(f"trunk/{t.id}", "trunk", t.id, "primary", t.primary_capacity, t.bandwidth)
            out[f"trunk/{t.id}/rev"] = Link(f"trunk/{t.id}/rev", "trunk", t.id, "reverse", t.reverse_capacity,
                                            t.reverse_bandwidth)
        return out

    @cached_property
    def priority_by_name(self) -> dict[str, Priority]:
        return {p.name: p for p in self.priorities}

    def priority_of(self, fileset: str, fileset_file: bool = False) -> Priority:
        """The priority table lookup (FIG. 5E); FileSet files get their own, highest, entry."""
        if fileset_file:
            return self.priority_by_name[self.fileset_file_priority]
        return self.priority_by_name[self.filesets[fileset].priority]

    def slaves_of_fileset(self, fileset: str) -> tuple[str, ...]:
        return tuple(s.id for s in self.slaves.values() if fileset in s.filesets)

    def generator_slaves(self, fileset: str) -> tuple[str, ...]:
        return tuple(g.slave for g in self.generators.values() if fileset in g.filesets)

    # --- paths ------------------------------------------------------------

    @cached_property
    def _trunk_paths(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """Lowest-latency primary-direction trunk path between every pair of datacenters."""
        out_edges: dict[str, list[Trunk]] = {d: [] for d in self.datacenters}
        for t in sorted(self.trunks.values(), key=lambda t: t.id):
            out_edges[t.start].append(t)
        paths: dict[tuple[str, str], tuple[str, ...]] = {}
        for src in self.datacenters:
            # (latency, hops, trunk ids, dc)
            heap: list[tuple[float, int, tuple[str, ...], str]] = [(0.0, 0, (), src)]
            seen: set[str] = set()
            while heap:
                lat, hops, trunks, dc = heapq.heappop(heap)
                if dc in seen:
                    continue
                seen.add(dc)
                paths[(src, dc)] = trunks
                for t in out_edges[dc]:
                    if t.end not in seen:
                        heapq.heappush(heap, (lat + t.latency, hops + 1, (*trunks, t.id), t.end))
        return paths

    def trunk_path(self, src_dc: str, dst_dc: str) -> tuple[str, ...] | None:
        """Trunk ids from one datacenter to another in primary direction, or None if unreachable."""
        return self._trunk_paths.get((src_dc, dst_dc))

    def path(self, src: str, dst: str) -> tuple[str, ...] | None:
        """Link ids a copy from slave ``src`` to slave ``dst`` uses, or None if no primary path."""
        if src == dst:
            return None
        key = (src, dst)
        cache = self._path_cache
        if key in cache:
            return cache[key]
        a, b = self.slaves[src], self.slaves[dst]
        links: list[str] = [f"slave/{a.id}/up"]
        if a.rack != b.rack:
            links.append(f"rack/{a.rack}/up")
            if a.dc != b.dc:
                trunks = self.trunk_path(a.dc, b.dc)
                if trunks is None:
                    cache[key] = None
                    return None
                links.append(f"dc/{a.dc}/up")
                links.extend(f"trunk/{t}" for t in trunks)
                links.append(f"dc/{b.dc}/down")
            links.append(f"rack/{b.rack}/down")
        links.append(f"slave/{b.id}/down")
        result = tuple(links)
        cache[key] = result
        return result

    @cached_property
    def _path_cache(self) -> dict[tuple[str, str], tuple[str, ...] | None]:
        return {}

    def latency(self, src: str, dst: str) -> float:
        """One-way latency of the path in seconds (trunks carry all of it; switches count as 0)."""
        path = self.path(src, dst)
        if not path:
            return 0.0
        return sum(self.trunks[link.split("/")[1]].latency for link in path if link.startswith("trunk/"))

    def distance(self, src: str, dst: str) -> float | None:
        """Network distance for ranking (§0143): links crossed, plus 1 per 10 ms of trunk latency."""
        path = self.path(src, dst)
        if path is None:
            return None
        return len(path) + self.latency(src, dst) * 100.0

    def bottleneck(self, src: str, dst: str) -> float:
        """Smallest capacity along the path, bytes/s (0 when there is no path)."""
        path = self.path(src, dst)
        if not path:
            return 0.0
        return min(self.links[link].capacity for link in path)

    def resources_of_path(self, src: str, dst: str) -> tuple[str, ...]:
        """Resource ids (slaves, racks, datacenters, trunks) a copy involves, for failure counting (§0089)."""
        path = self.path(src, dst) or ()
        out: list[str] = []
        for link in path:
            owner = link.split("/")[1]
            if owner not in out:
                out.append(owner)
        return tuple(out)

    # --- derived topologies ----------------------------------------------

    def scaled(self, factor: float) -> Topology:
        """Bandwidths and block size multiplied together, so an experiment runs in real time at any scale."""
        if factor <= 0:
            raise ValueError(f"scale must be positive, got {factor}")

        def bw(x: float) -> float:
            return x * factor

        def opt(x: float | None) -> float | None:
            return None if x is None else x * factor

        return replace(
            self,
            datacenters={
                k: replace(v, inbound=bw(v.inbound), outbound=bw(v.outbound)) for k, v in self.datacenters.items()
            },
            racks={k: replace(v, inbound=bw(v.inbound), outbound=bw(v.outbound)) for k, v in self.racks.items()},
            slaves={k: replace(v, inbound=bw(v.inbound), outbound=bw(v.outbound)) for k, v in self.slaves.items()},
            trunks={
                k: replace(v, bandwidth=bw(v.bandwidth), reverse_bandwidth=bw(v.reverse_bandwidth),
                           budget=opt(v.budget), reverse_budget=opt(v.reverse_budget))
                for k, v in self.trunks.items()
            },
            block_size=max(4096, round(self.block_size * factor / 4096) * 4096),
            scale=self.scale * factor,
        )

    def with_capacity(self, link_id: str, bytes_per_s: float) -> Topology:
        """A copy with one link's capacity replaced (tests and adjusted budgets).

        For a trunk with a budget in that direction the budget is replaced (the physical bandwidth stays);
        without one, the bandwidth (capacity and physical alike), as before budgets existed.
        """
        link = self.links[link_id]
        if link.kind == "slave":
            s = self.slaves[link.owner]
            new = replace(s, outbound=bytes_per_s) if link.direction == "up" else replace(s, inbound=bytes_per_s)
            return replace(self, slaves={**self.slaves, s.id: new})
        if link.kind == "rack":
            r = self.racks[link.owner]
            new_r = replace(r, outbound=bytes_per_s) if link.direction == "up" else replace(r, inbound=bytes_per_s)
            return replace(self, racks={**self.racks, r.id: new_r})
        if link.kind == "dc":
            d = self.datacenters[link.owner]
            new_d = replace(d, outbound=bytes_per_s) if link.direction == "up" else replace(d, inbound=bytes_per_s)
            return replace(self, datacenters={**self.datacenters, d.id: new_d})
        t = self.trunks[link.owner]
        if link.direction == "primary":
            new_t = (replace(t, bandwidth=bytes_per_s) if t.budget is None else replace(t, budget=bytes_per_s))
        elif t.reverse_budget is None:
            new_t = replace(t, reverse_bandwidth=bytes_per_s)
        else:
            new_t = replace(t, reverse_budget=bytes_per_s)
        return replace(self, trunks={**self.trunks, t.id: new_t})
