"""Scenario files (YAML, version 1): which files each fileset's generator writes, when, and later updates.

A topology says what the network is; a scenario says what to distribute over
it.  Sizes are written in real units (a 640MiB index) and scaled together with
the topology's bandwidths by ``Scenario.scaled``, so an experiment keeps the
patent's proportions at whatever speed one machine can emulate.

An optional ``cross_traffic:`` list declares background load from other
applications sharing a link (§0114), e.g. ``{link: trunk/T1, rate: 2MB/s,
start: 5s, duration: 20s}``: ``traffic.crossload`` sends it during the run.
Its rate is scaled with the run like every bandwidth; times are not.

Validated like topology files: every error names file, line, key and reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scaledist.topology import Topology
from scaledist.topology_schema import (
    SpecError,
    SpecNode,
    check_version,
    did_you_mean,
    parse_document,
    read_text_file,
)

__all__ = [
    "CrossTraffic",
    "FilePlan",
    "FilesetPlan",
    "Scenario",
    "ScenarioError",
    "UpdatePlan",
    "default_scenario",
    "load_scenario",
    "load_scenario_text",
]


class ScenarioError(SpecError):
    """A scenario file that cannot be used with the given topology."""


@dataclass(frozen=True)
class FilePlan:
    """A file the fileset's generator starts writing at ``start`` seconds into the run."""

    id: str
    size: int  # bytes
    start: float = 0.0


@dataclass(frozen=True)
class UpdatePlan:
    """A new version of an existing file, announced through a new FileSet file (§0124)."""

    at: float
    file: str
    size: int


@dataclass(frozen=True)
class FilesetPlan:
    files: tuple[FilePlan, ...]
    updates: tuple[UpdatePlan, ...] = ()
    # bytes/s; None = each file is written at once. With a rate, distribution
    # overlaps generation (§0039).
    generation_rate: float | None = None

    def scaled(self, factor: float) -> FilesetPlan:
        return FilesetPlan(
            files=tuple(FilePlan(f.id, _scale_size(f.size, factor), f.start) for f in self.files),
            updates=tuple(UpdatePlan(u.at, u.file, _scale_size(u.size, factor)) for u in self.updates),
            generation_rate=None if self.generation_rate is None else self.generation_rate * factor,
        )

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files) + sum(u.size for u in self.updates)


@dataclass(frozen=True)
class CrossTraffic:
    """Background load on one link direction: ``rate`` bytes/s from ``start`` for ``duration`` seconds."""

    link: str  # a topology link id, e.g. trunk/T1
    rate: float  # bytes/s (IP bytes on the wire)
    start: float  # seconds after the resource manager's epoch 0 began
    duration: float


@dataclass(frozen=True)
class Scenario:
    name: str
    filesets: dict[str, FilesetPlan]
    cross_traffic: tuple[CrossTraffic, ...] = ()

    def scaled(self, factor: float) -> Scenario:
        """Sizes and rates times ``factor`` (>= 1 byte each); times unchanged, like Topology.scaled."""
        if factor <= 0:
            raise ValueError(f"scale must be positive, got {factor}")
        return Scenario(self.name, {fs: plan.scaled(factor) for fs, plan in self.filesets.items()},
                        tuple(CrossTraffic(c.link, c.rate * factor, c.start, c.duration) for c in self.cross_traffic))

    def total_bytes(self) -> int:
        """Bytes all generators write: every file and every update, once (not times the slaves)."""
        return sum(plan.total_bytes() for plan in self.filesets.values())


def _scale_size(size: int, factor: float) -> int:
    return max(1, round(size * factor))


def default_scenario(topology: Topology) -> Scenario:
    """What to distribute when no scenario is given, sized in the topology's blocks.

    Per fileset: ``<fs>-a`` of 2 blocks, ``<fs>-b`` of 6 blocks and ``<fs>-c`` of
    1 block, all starting at 0 s, and an update of ``<fs>-a`` at 0 s to 2.5 blocks
    (3 blocks, the last one partial).  That exercises files of more than 5 blocks,
    a single-block file, a partial last block and want-newest for an update.
    """
    b = topology.block_size
    plans = {
        fs: FilesetPlan(
            files=(FilePlan(f"{fs}-a", 2 * b), FilePlan(f"{fs}-b", 6 * b), FilePlan(f"{fs}-c", b)),
            updates=(UpdatePlan(0.0, f"{fs}-a", 2 * b + b // 2),),
        )
        for fs in topology.filesets
    }
    return Scenario("default", plans)


def load_scenario(path: str | Path, topology: Topology) -> Scenario:
    """Read and validate a scenario file against the topology it will run on."""
    text = read_text_file(path, ScenarioError, "scenario")
    return load_scenario_text(text, topology, source=str(path))


def load_scenario_text(text: str, topology: Topology, source: str = "<string>") -> Scenario:
    root = parse_document(text, source, ScenarioError)
    check_version(root)
    top = root.mapping(("version", "name", "filesets", "cross_traffic"), ("version", "name", "filesets"))
    name = top["name"].ident("a scenario name")
    # One namespace for file ids: a slave stores files by id, and the FileSet
    # file of fileset X (itself distributed like any file, §0124) has file id X
    # by ScaleDist convention, so no data file may be called X.
    file_owner: dict[str, tuple[str, SpecNode]] = {}
    plans: dict[str, FilesetPlan] = {}
    for key_node, value in top["filesets"].entries():
        fs = key_node.text("a fileset id")
        if fs not in topology.filesets:
            key_node.fail(
                f"unknown fileset {fs!r}: topology {topology.name} has"
                f" {', '.join(topology.filesets)}{did_you_mean(fs, topology.filesets)}"
            )
        plans[fs] = _read_fileset(value, fs, topology, file_owner)
    if not plans:
        top["filesets"].fail("no filesets: name at least one fileset of the topology")
    cross = tuple(_read_cross(item, topology) for item in top["cross_traffic"].sequence()) \
        if "cross_traffic" in top else ()
    return Scenario(name, plans, cross)


def _read_cross(node: SpecNode, topology: Topology) -> CrossTraffic:
    m = node.mapping(("link", "rate", "start", "duration"), ("link", "rate", "duration"))
    link = m["link"].text("a link id such as trunk/T1")
    if link not in topology.links:
        trunks = [lid for lid in topology.links if lid.startswith("trunk/")]
        m["link"].fail(f"unknown link {link!r} in topology {topology.name} (trunks: {', '.join(trunks) or 'none'})"
                       f"{did_you_mean(link, topology.links)}")
    start = m["start"].duration("start") if "start" in m else 0.0
    return CrossTraffic(link, m["rate"].rate("rate"), start, m["duration"].duration("duration", strict=True))


def _read_fileset(
    node: SpecNode, fs: str, topology: Topology, file_owner: dict[str, tuple[str, SpecNode]]
) -> FilesetPlan:
    m = node.mapping(("generation_rate", "files", "updates"), ("files",))
    rate = m["generation_rate"].rate("generation_rate") if "generation_rate" in m else None
    files: list[FilePlan] = []
    for item in m["files"].sequence(non_empty=True):
        f = item.mapping(("id", "size", "start"), ("id", "size"))
        fid = f["id"].ident("a file id")
        if fid in topology.filesets:
            f["id"].fail(f"file id {fid!r} is taken by the FileSet file of fileset {fid}; choose another")
        if fid in file_owner:
            owner, where = file_owner[fid]
            f["id"].fail(f"duplicate file id {fid!r}: already a file of fileset {owner} at line {where.line}")
        file_owner[fid] = (fs, f["id"])
        start = f["start"].duration("start") if "start" in f else 0.0
        files.append(FilePlan(fid, f["size"].size(), start))
    by_id = {p.id: p for p in files}
    updates: list[UpdatePlan] = []
    for item in m["updates"].sequence() if "updates" in m else []:
        u = item.mapping(("at", "file", "size"), ("at", "file", "size"))
        at = u["at"].duration("at")
        target = u["file"].text("a file id")
        if target not in by_id:
            u["file"].fail(
                f"update of unknown file {target!r}: fileset {fs} has {', '.join(by_id)}{did_you_mean(target, by_id)}"
            )
        if at < by_id[target].start:
            u["at"].fail(f"update at {u['at'].text()} comes before file {target} starts at {by_id[target].start:g}s")
        updates.append(UpdatePlan(at, target, u["size"].size()))
    return FilesetPlan(tuple(files), tuple(updates), rate)
