"""The fluid lower bound of a scenario on a topology: no system can complete faster.

A result means little alone; the bound says how far from the physics of the network a completion time is.
It treats data as a fluid (any byte can be split, relayed and forwarded instantly) and takes the largest of
terms each of which any distribution system must respect:

- ``source_upload``: every byte a fileset's generator slave holds alone must leave it once, through its uplink;
- ``slowest_download``: every slave must receive what it needs through its downlink;
- ``dc_cut:<DC>``: what a datacenter needs from outside must cross the minimum cut of the physical trunk
  capacity (both directions of every trunk: the wires exist whoever uses them) and the datacenter's inbound
  link between the sources' datacenters and it;
- ``total_upload``: every byte received was uploaded by some slave: N*F over all slaves' uplinks;
- ``release``: data cannot move before it exists -- for every instant a batch of files is published,
  that instant plus the static bound of the data published from then on, and the time the last byte of
  the last file version is generated (``generation_rate`` writes files one after the other, like the
  generator daemon).

Only the final version of each file is needed (a superseded version need not reach anyone), so the bound
holds for ScaleDist (want-newest) and for any baseline alike.  All figures use ``Link.physical``: the
bandwidth the testbed shapes, which is what bounds any system.  Pure function of a (scaled) Topology and
(scaled) Scenario; no I/O.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scaledist.scenario import Scenario
from scaledist.topology import Topology

__all__ = ["Bound", "FileVersion", "file_versions", "fluid_bound", "max_flow"]


@dataclass(frozen=True)
class FileVersion:
    """One version of one file as the generator writes it: when it starts and when its last byte exists."""

    fileset: str
    file_id: str
    version: int
    size: int
    start: float  # scenario time the generator starts writing it
    ready: float  # scenario time its last byte is written
    final: bool  # the last version of this file in the scenario

    @property
    def key(self) -> str:
        return f"{self.fileset}/{self.file_id}@{self.version}"


@dataclass(frozen=True)
class Bound:
    seconds: float
    binding: str  # the term that set it
    terms: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return f"fluid lower bound {self.seconds:.1f}s ({self.binding})"


def file_versions(scenario: Scenario) -> list[FileVersion]:
    """Every file version the scenario's generators write, with the generator's own timeline.

    Like ``scaledist.daemons.generator``: events at the same instant form one batch (a file started and
    updated at once is one version of the last size), versions count from 1 per file, and with a
    ``generation_rate`` a fileset's files are written one after the other at that rate.
    """
    out: list[FileVersion] = []
    for fs, plan in scenario.filesets.items():
        events = sorted([(f.start, f.id, f.size) for f in plan.files] + [(u.at, u.file, u.size) for u in plan.updates],
                        key=lambda e: e[0])
        versions: dict[str, int] = {}
        clock = 0.0
        mine: list[FileVersion] = []
        i = 0
        while i < len(events):
            at = events[i][0]
            batch = [e for e in events[i:] if e[0] == at]
            i += len(batch)
            merged = {fid: size for _, fid, size in batch}
            clock = max(clock, at)
            for fid, size in merged.items():
                versions[fid] = versions.get(fid, 0) + 1
                start = clock
                if plan.generation_rate:
                    clock += size / plan.generation_rate
                mine.append(FileVersion(fs, fid, versions[fid], size, start, clock, False))
        out += [FileVersion(v.fileset, v.file_id, v.version, v.size, v.start, v.ready, v.version == versions[v.file_id])
                for v in mine]
    return out


def max_flow(edges: Iterable[tuple[str, str, float]], source: str, sink: str) -> float:
    """Edmonds-Karp on a small directed graph (parallel edges add up); the min cut between source and sink."""
    cap: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for a, b, c in edges:
        if c > 0:
            cap[a][b] += c
            cap[b][a] += 0.0  # residual edge
    total = 0.0
    while True:
        parent: dict[str, str] = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, c in cap[u].items():
                if c > 1e-12 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return total
        push = float("inf")
        v = sink
        while v != source:
            push = min(push, cap[parent[v]][v])
            v = parent[v]
        v = sink
        while v != source:
            cap[parent[v]][v] -= push
            cap[v][parent[v]] += push
            v = parent[v]
        total += push


def _phys(topology: Topology, link: str) -> float:
    lk = topology.links[link]
    return float(lk.physical if lk.physical is not None else lk.capacity)


def _static_terms(topology: Topology, files: list[FileVersion], primary_only: bool = False) -> dict[str, float]:
    """The bound's static terms for delivering ``files`` (already existing) from their generators' slaves.

    ``primary_only`` leaves the trunks' reverse directions out of the datacenter cuts: the bound of a data
    plane that, like ScaleDist's, sends bulk data only in the primary directions."""
    terms: dict[str, float] = {}
    if not files:
        return terms
    size_of: dict[str, int] = defaultdict(int)  # fileset -> bytes to deliver
    for f in files:
        size_of[f.fileset] += f.size
    sources = {fs: set(topology.generator_slaves(fs)) for fs in size_of}
    # source uplink: bytes only that source holds and someone else needs
    per_source: dict[str, float] = defaultdict(float)
    for fs, size in size_of.items():
        others = set(topology.slaves_of_fileset(fs)) - sources[fs]
        if others and sources[fs]:
            up = sum(_phys(topology, f"slave/{s}/up") for s in sources[fs])
            for s in sorted(sources[fs]):
                per_source[s] += size * _phys(topology, f"slave/{s}/up") / up
    for s, b in per_source.items():
        terms[f"source_upload:{s}"] = b / _phys(topology, f"slave/{s}/up")
    # every slave's downlink, and the total of what all slaves receive
    need: dict[str, int] = defaultdict(int)
    for fs, size in size_of.items():
        for s in topology.slaves_of_fileset(fs):
            if s not in sources[fs]:
                need[s] += size
    if need:
        slowest = max(need, key=lambda s: need[s] / _phys(topology, f"slave/{s}/down"))
        terms[f"slowest_download:{slowest}"] = need[slowest] / _phys(topology, f"slave/{slowest}/down")
        uplinks = sum(_phys(topology, f"slave/{s}/up") for s in topology.slaves)
        terms["total_upload"] = sum(need.values()) / uplinks
    # per datacenter: what it needs from outside over the min cut from the sources' datacenters
    edges: list[tuple[str, str, float]] = []
    for t in topology.trunks.values():
        edges.append((t.start, t.end, t.bandwidth))
        if not primary_only:
            edges.append((t.end, t.start, t.reverse_bandwidth))
    for dc in sorted(topology.datacenters):
        fs_in = [fs for fs in size_of
                 if any(topology.slaves[s].dc == dc for s in topology.slaves_of_fileset(fs))
                 and not any(topology.slaves[s].dc == dc for s in sources[fs])]
        if not fs_in:
            continue
        src_dcs = {topology.slaves[s].dc for fs in fs_in for s in sources[fs]}
        graph = [*edges, *(("*src", d, _phys(topology, f"dc/{d}/up")) for d in src_dcs),
                 (dc, "*sink", _phys(topology, f"dc/{dc}/down"))]
        cut = max_flow(graph, "*src", "*sink")
        data = sum(size_of[fs] for fs in fs_in)
        terms[f"dc_cut:{dc}"] = data / cut if cut > 0 else float("inf")
    return terms


def fluid_bound(topology: Topology, scenario: Scenario, *, primary_only: bool = False) -> Bound:
    """The largest of the terms in the module docstring, for a scaled topology and the scenario scaled with it
    (``primary_only``: trunks carry data only in their primary directions)."""
    versions = file_versions(scenario)
    final = [v for v in versions if v.final]
    terms = dict(_static_terms(topology, final, primary_only))
    if versions:
        last = max(versions, key=lambda v: v.ready)
        terms[f"release:{last.key} generated"] = last.ready
    for at in sorted({v.start for v in final}):
        if at <= 0:
            continue
        later = _static_terms(topology, [v for v in final if v.start >= at], primary_only)
        if later:
            name, value = max(later.items(), key=lambda kv: kv[1])
            terms[f"release:{at:g}s+{name}"] = at + value
    if not terms:
        return Bound(0.0, "nothing to distribute", {})
    binding, seconds = max(terms.items(), key=lambda kv: kv[1])
    return Bound(seconds, binding, {k: round(v, 3) for k, v in terms.items()})


def needed_bytes(topology: Topology, versions: Iterable[FileVersion]) -> dict[str, int]:
    """Per datacenter: bytes of the given versions it must receive across trunks (it has slaves of the fileset
    and no generator of it) -- the denominator of trunk efficiency, as ``results.analyse`` computes it."""
    need: dict[str, int] = defaultdict(int)
    for v in versions:
        gen_dcs = {topology.slaves[s].dc for s in topology.generator_slaves(v.fileset)}
        for dc in {topology.slaves[s].dc for s in topology.slaves_of_fileset(v.fileset)} - gen_dcs:
            need[dc] += v.size
    return dict(sorted(need.items()))


def describe(bound: Bound, limit: int = 4) -> str:
    """The bound and its largest terms, one line."""
    top = sorted(bound.terms.items(), key=lambda kv: -kv[1])[:limit]
    return bound.line() + "; terms " + ", ".join(f"{k}={v:.1f}s" for k, v in top)


def as_dict(bound: Bound) -> Mapping[str, object]:
    return {"seconds": round(bound.seconds, 3), "binding": bound.binding, "terms": bound.terms}
