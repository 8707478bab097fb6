"""Topology files (YAML, version 1) -> ``Topology``, refusing anything doubtful with file, line and key.

A topology file is the single source of truth for the resource manager's
tables, the masters' hierarchy tables and the emulated network, so a mistake in
it must stop the run at load time with a message an engineer can act on:

    topologies/small.yaml:31: trunks[2].bandwidth: bandwidth must be > 0, got 0

PyYAML's composed node tree keeps the line of every key and value; the reader
below walks that tree instead of plain dicts so every complaint can say where.
The format is shown, commented, in ``topologies/patent-fig1.yaml`` and
``topologies/small.yaml``; an optional ``extra:`` mapping is passed untouched to
``Topology.extra`` for tools such as the testbed.  ``scaledist.scenario`` reuses
the same reader for scenario files.
"""

from __future__ import annotations

import difflib
import re
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

import yaml

from scaledist.core.health import HealthConfig
from scaledist.topology import (
    Datacenter,
    FilesetSpec,
    GeneratorSpec,
    MasterSpec,
    Placement,
    Priority,
    Rack,
    Slave,
    Topology,
    Trunk,
)
from scaledist.units import UnitError, parse_duration, parse_rate, parse_size

__all__ = [
    "ID_PATTERN",
    "SpecError",
    "SpecNode",
    "TopologyError",
    "load_topology",
    "load_topology_text",
    "parse_document",
]

FORMAT_VERSION = 1
# Every id shares the fileset state table's resource-id namespace (FIG. 4D) and
# ends up in file names and link names, so keep it short and path-safe.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_BLOCK_SIZE = 4096
MAX_SLAVE_COUNT = 10000

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------
# errors


class SpecError(ValueError):
    """A file that cannot be used: which file, which line, which key, and why."""

    def __init__(self, source: str, line: int | None, key: str, reason: str) -> None:
        self.source = source
        self.line = line
        self.key = key
        self.reason = reason
        super().__init__(self._text())

    def _text(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"

    def __str__(self) -> str:
        return self._text()

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the four attributes across pickling (multiprocessing, pytest-xdist)
        return (type(self), (self.source, self.line, self.key, self.reason))


class TopologyError(SpecError):
    """A topology file that cannot be used."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a likely typo, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------
# the located YAML reader


class SpecNode:
    """One YAML node plus its dotted key, so any value read from it can be complained about precisely."""

    def __init__(self, node: yaml.Node, key: str, source: str, error: type[SpecError]) -> None:
        self.node = node
        self.key = key
        self.source = source
        self.error = error

    # --- location and failure ---------------------------------------------

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def fail(self, reason: str, key: str | None = None, line: int | None = None) -> NoReturn:
        raise self.error(self.source, self.line if line is None else line, self.key if key is None else key, reason)

    def child_key(self, name: str | int) -> str:
        if isinstance(name, int):
            return f"{self.key}[{name}]"
        return f"{self.key}.{name}" if self.key else name

    def _child(self, node: yaml.Node, key: str) -> SpecNode:
        return SpecNode(node, key, self.source, self.error)

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        if self.is_null:
            return "nothing"
        return repr(self.node.value)

    @property
    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == _NULL_TAG

    # --- containers --------------------------------------------------------

    def entries(self) -> list[tuple[SpecNode, SpecNode]]:
        """(key node, value node) pairs of a mapping, refusing duplicate keys (PyYAML would keep the last).

        ``<<: *anchor`` merges are honoured: the mapping's own keys override merged ones.
        """
        if not isinstance(self.node, yaml.MappingNode):
            self.fail(f"expected a mapping, got {self._kind()}")
        seen: dict[str, int] = {}
        for knode, _ in self.node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self._child(knode, self.key).fail("a key must be a plain word")
            if knode.tag == _MERGE_TAG:
                continue
            if knode.value in seen:
                self._child(knode, self.child_key(knode.value)).fail(
                    f"duplicate key {knode.value!r} (first at line {seen[knode.value]})"
                )
            seen[knode.value] = knode.start_mark.line + 1
        yaml.constructor.SafeConstructor().flatten_mapping(self.node)  # merged pairs first, own pairs last
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in self.node.value:
            pairs.pop(knode.value, None)  # later (own) wins and keeps its position
            pairs[knode.value] = (knode, vnode)
        return [
            (self._child(k, self.child_key(name)), self._child(v, self.child_key(name)))
            for name, (k, v) in pairs.items()
        ]

    def mapping(self, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, SpecNode]:
        """The mapping's values by key; unknown keys (typos) and missing required keys are errors."""
        allowed = tuple(allowed)
        out: dict[str, SpecNode] = {}
        for key_node, value in self.entries():
            name = cast(yaml.ScalarNode, key_node.node).value
            if name not in allowed:
                key_node.fail(f"unknown key {name!r}{did_you_mean(name, allowed)}")
            out[name] = value
        for name in required:
            if name not in out:
                self.fail("required key is missing", key=self.child_key(name))
        return out

    def sequence(self, *, non_empty: bool = False) -> list[SpecNode]:
        if not isinstance(self.node, yaml.SequenceNode):
            self.fail(f"expected a list, got {self._kind()}")
        if non_empty and not self.node.value:
            self.fail("the list must not be empty")
        return [self._child(n, self.child_key(i)) for i, n in enumerate(self.node.value)]

    # --- scalars -----------------------------------------------------------

    def _scalar_text(self, what: str) -> str:
        if not isinstance(self.node, yaml.ScalarNode) or self.is_null:
            self.fail(f"expected {what}, got {self._kind()}")
        return str(self.node.value)

    def value(self) -> Any:
        """The value as YAML types it (int, float, bool, str, ...)."""
        try:
            return yaml.constructor.SafeConstructor().construct_object(self.node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:  # `!!int abc`, unknown tags
            self.fail(f"cannot read this value: {str(e).splitlines()[0][:200]}")

    def text(self, what: str = "a string") -> str:
        # the raw text, so that `no`, `on` or `007` stay the words that were written
        return self._scalar_text(what)

    def ident(self, what: str = "an id") -> str:
        raw = self._scalar_text(what)
        if not ID_PATTERN.match(raw) or ".." in raw:
            self.fail(
                f"invalid id {raw!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit,"
                " no '..'"
            )
        return raw

    def integer(self, what: str = "a whole number") -> int:
        v = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(f"expected {what}, got {self._kind()}")
        return v

    def number(self, what: str = "a number") -> float:
        v = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            self.fail(f"expected {what}, got {self._kind()}")
        return float(v)

    def _quantity(self, parse: Callable[[str], float], what: str, example: str, *, strict: bool) -> float:
        raw = self._scalar_text(f"a {what} such as {example!r}").strip()
        relation = ">" if strict else ">="
        try:
            value = float(parse(raw))
        except UnitError as e:
            if raw.startswith("-"):
                # the unit parser refuses signs; say what is actually wrong
                try:
                    parse(raw[1:])
                except UnitError:
                    pass
                else:
                    self.fail(f"{what} must be {relation} 0, got {raw}")
            self.fail(str(e))
        if value < 0 or (strict and value == 0):
            self.fail(f"{what} must be {relation} 0, got {raw}")
        return value

    def rate(self, what: str = "bandwidth") -> float:
        """Bytes/s, strictly positive: a zero-capacity link would make every reservation on it fail."""
        return self._quantity(parse_rate, what, "100MB/s", strict=True)

    def size(self, what: str = "size") -> int:
        return int(self._quantity(parse_size, what, "64MiB", strict=True))

    def duration(self, what: str = "duration", *, strict: bool = False) -> float:
        return self._quantity(parse_duration, what, "100ms", strict=strict)


def parse_document(text: str, source: str, error: type[SpecError]) -> SpecNode:
    """Compose one YAML document into a located node tree; syntax errors become ``error`` with their line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = "YAML syntax error: " + (e.problem or "unreadable")
        if e.context:
            reason += f" ({e.context}"
            if e.context_mark is not None and e.context_mark is not mark:
                reason += f" at line {e.context_mark.line + 1}"
            reason += ")"
        raise error(source, mark.line + 1 if mark else None, "", reason) from None
    except yaml.YAMLError as e:
        raise error(source, None, "", f"YAML error: {e}") from None
    except RecursionError:
        raise error(source, None, "", "YAML nested too deeply to read") from None
    if node is None:
        raise error(source, None, "", "the file is empty")
    return SpecNode(node, "", source, error)


def read_text_file(path: str | Path, error: type[SpecError], what: str) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(p), None, "", f"{what} file not found") from None
    except UnicodeDecodeError as e:
        raise error(str(p), None, "", f"{what} file is not UTF-8 text: {e.reason}") from None
    except OSError as e:
        raise error(str(p), None, "", f"cannot read {what} file: {e.strerror or e}") from None


def check_version(root: SpecNode) -> None:
    """Version first: a newer file may use keys this reader does not know, and that is the real problem."""
    entries = {cast(yaml.ScalarNode, k.node).value: v for k, v in root.entries()}
    if "version" not in entries:
        root.fail(f"required key is missing (this ScaleDist reads version {FORMAT_VERSION})", key="version", line=1)
    v = entries["version"]
    if v.integer(f"version {FORMAT_VERSION}") != FORMAT_VERSION:
        v.fail(f"unsupported version {v.text()} (this ScaleDist reads version {FORMAT_VERSION})")


# --------------------------------------------------------------------------
# topology


_TOP_KEYS = (
    "version", "name", "block_size", "epoch", "report_interval", "control", "priorities",
    "fileset_file_priority", "defaults", "datacenters", "trunks", "resource_manager", "masters",
    "generators", "filesets", "health", "scrub_interval", "extra",
)  # fmt: skip
_TOP_REQUIRED = (
    "version", "name", "priorities", "datacenters", "resource_manager", "masters", "generators", "filesets",
)  # fmt: skip
_CONTROL_MODES = ("management", "trunks")
_HEALTH_KEYS = ("failure_threshold", "recovery_threshold", "failure_ratio", "decay", "decay_percent",
                "decay_fixed_failures", "decay_fixed_attempts", "time_unit")
_LEVELS = ("slave", "rack", "datacenter")  # the entries `defaults:` can give bandwidths for


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; ``Topology.source`` is the path as given."""
    text = read_text_file(path, TopologyError, "topology")
    return load_topology_text(text, source=str(path))


def load_topology_text(text: str, source: str = "<string>") -> Topology:
    """Validate topology YAML held in memory (tests, generated topologies)."""
    return _TopologyReader(parse_document(text, source, TopologyError)).read()


class _TopologyReader:
    """One pass over the file; cross-references are checked once every table is known."""

    def __init__(self, root: SpecNode) -> None:
        self.root = root
        self.ids: dict[str, tuple[str, SpecNode]] = {}  # id -> (kind, where first defined)
        self.defaults: dict[str, dict[str, float]] = {k: {} for k in _LEVELS}
        self.fileset_nodes: dict[str, SpecNode] = {}
        self.dc_nodes: dict[str, SpecNode] = {}

    def claim(self, ident: str, kind: str, node: SpecNode) -> str:
        """Ids share one namespace, as resources share the fileset state table (FIG. 4D)."""
        if ident in self.ids:
            prev_kind, prev = self.ids[ident]
            node.fail(f"duplicate id {ident!r}: already used by {prev_kind} {prev.key} at line {prev.line}")
        self.ids[ident] = (kind, node)
        return ident

    def ref(self, node: SpecNode, kind: str, known: Iterable[str]) -> str:
        name = node.text(f"a {kind} id")
        known = list(known)
        if name not in known:
            node.fail(f"unknown {kind} {name!r}{did_you_mean(name, known)}")
        return name

    def fileset_refs(self, node: SpecNode, *, non_empty: bool) -> tuple[tuple[str, SpecNode], ...]:
        out: list[tuple[str, SpecNode]] = []
        for item in node.sequence(non_empty=non_empty):
            name = self.ref(item, "fileset", self.fileset_nodes)
            if any(name == n for n, _ in out):
                item.fail(f"fileset {name!r} is listed twice")
            out.append((name, item))
        return tuple(out)

    # --- the whole file ---------------------------------------------------

    def read(self) -> Topology:
        check_version(self.root)
        top = self.root.mapping(_TOP_KEYS, _TOP_REQUIRED)
        name = top["name"].ident("a topology name")

        block_size = parse_size("64MiB")
        if "block_size" in top:
            block_size = top["block_size"].size("block_size")
            if block_size < MIN_BLOCK_SIZE:
                top["block_size"].fail(f"block_size must be >= {MIN_BLOCK_SIZE} bytes, got {top['block_size'].text()}")
        epoch = top["epoch"].duration("epoch", strict=True) if "epoch" in top else 2.0
        report_interval = (
            top["report_interval"].duration("report_interval", strict=True) if "report_interval" in top else 30.0
        )
        control = "management"
        if "control" in top:
            control = top["control"].text("'management' or 'trunks'")
            if control not in _CONTROL_MODES:
                top["control"].fail(
                    f"control must be 'management' or 'trunks', got {control!r}{did_you_mean(control, _CONTROL_MODES)}"
                )

        health = self.read_health(top["health"]) if "health" in top else HealthConfig()
        scrub = top["scrub_interval"].duration("scrub_interval") if "scrub_interval" in top else 60.0
        if scrub < 0:
            top["scrub_interval"].fail(f"scrub_interval must be >= 0 (0 turns scrubbing off), got {scrub:g}s")
        priorities = self.read_priorities(top["priorities"])
        names = [p.name for p in priorities]
        fileset_file_priority = priorities[-1].name  # §0120: FileSet files go first
        if "fileset_file_priority" in top:
            fileset_file_priority = self.ref(top["fileset_file_priority"], "priority", names)

        fileset_priority = self.read_filesets(top["filesets"], names)
        if "defaults" in top:
            self.read_defaults(top["defaults"])
        datacenters, racks, slaves = self.read_datacenters(top["datacenters"])
        trunks = self.read_trunks(top["trunks"], datacenters) if "trunks" in top else {}
        rm = self.read_resource_manager(top["resource_manager"], racks)
        masters, owners = self.read_masters(top["masters"], racks)
        generators = self.read_generators(top["generators"], slaves)
        extra: dict[str, object] = {}
        if "extra" in top:
            top["extra"].entries()  # must be a mapping; its contents belong to whoever reads them
            extra = dict(top["extra"].value())
        extra["version"] = FORMAT_VERSION  # Topology has no field for it; kept for writers and reports

        filesets: dict[str, FilesetSpec] = {}
        for fs, node in self.fileset_nodes.items():
            owned = owners.get(fs, [])
            if not owned:
                node.fail(f"fileset {fs!r} is owned by no master")
            if len(owned) > 1:
                who = " and ".join(m for m, _ in owned) if len(owned) == 2 else ", ".join(m for m, _ in owned)
                both = "both " if len(owned) == 2 else "several masters: "
                owned[1][1].fail(f"fileset {fs!r} is owned by {both}{who}")
            filesets[fs] = FilesetSpec(fs, fileset_priority[fs], owned[0][0])

        topo = Topology(
            name=name,
            datacenters=datacenters,
            racks=racks,
            slaves=slaves,
            trunks=trunks,
            resource_manager=rm,
            masters=masters,
            generators=generators,
            filesets=filesets,
            priorities=priorities,
            fileset_file_priority=fileset_file_priority,
            block_size=block_size,
            epoch=epoch,
            report_interval=report_interval,
            control=cast(Literal["management", "trunks"], control),
            health=health,
            scrub_interval=scrub,
            source=self.root.source,
            extra=extra,
        )
        self.check_coverage(topo)
        self.check_reachability(topo)
        if control == "trunks":
            self.check_control_paths(topo)
        return topo

    # --- sections ---------------------------------------------------------

    def read_health(self, node: SpecNode) -> HealthConfig:
        """Every master's failure counting (§0089-0091); the patent's 50/25/10 % per 60 s unless given."""
        m = node.mapping(_HEALTH_KEYS)
        kw: dict[str, object] = {}
        for key in ("failure_threshold", "recovery_threshold", "decay_fixed_failures", "decay_fixed_attempts"):
            if key in m:
                kw[key] = m[key].integer(f"{key} (a whole number)")
        for key in ("failure_ratio", "decay_percent"):
            if key in m:
                kw[key] = m[key].number(f"{key} (a number)")
        if "decay" in m:
            kw["decay"] = m["decay"].text("'percent' or 'fixed'")
        if "time_unit" in m:
            kw["time_unit"] = m["time_unit"].duration("time_unit", strict=True)
        try:
            return HealthConfig(**kw)  # type: ignore[arg-type]
        except ValueError as e:
            node.fail(str(e))

    def read_priorities(self, node: SpecNode) -> tuple[Priority, ...]:
        out: list[Priority] = []
        levels: dict[int, SpecNode] = {}
        names: set[str] = set()
        for i, item in enumerate(node.sequence(non_empty=True)):
            m = item.mapping(("name", "weight", "level"), ("name", "weight"))
            name = m["name"].ident("a priority name")
            if name in names:
                m["name"].fail(f"duplicate priority name {name!r}")
            names.add(name)
            weight = m["weight"].number("a weight")
            if weight <= 0:
                m["weight"].fail(f"weight must be > 0, got {m['weight'].text()}")
            level = m["level"].integer("a whole-number level") if "level" in m else i + 1
            where = m.get("level", item)
            if level in levels:
                where.fail(f"duplicate priority level {level} (also at line {levels[level].line})")
            levels[level] = where
            out.append(Priority(name, level, weight))
        return tuple(sorted(out, key=lambda p: p.level))

    def read_filesets(self, node: SpecNode, priority_names: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in node.sequence(non_empty=True):
            m = item.mapping(("id", "priority"), ("id", "priority"))
            fs = self.claim(m["id"].ident(), "fileset", m["id"])
            self.fileset_nodes[fs] = m["id"]
            out[fs] = self.ref(m["priority"], "priority", priority_names)
        return out

    def read_defaults(self, node: SpecNode) -> None:
        for level, value in node.mapping(_LEVELS).items():
            for direction, bw in value.mapping(("inbound", "outbound")).items():
                self.defaults[level][direction] = bw.rate()

    def bandwidth(self, m: dict[str, SpecNode], owner: SpecNode, level: str, direction: str) -> float:
        if direction in m:
            return m[direction].rate()
        if direction in self.defaults[level]:
            return self.defaults[level][direction]
        reason = f"required key is missing (and no defaults.{level}.{direction} given)"
        owner.fail(reason, key=owner.child_key(direction))

    def read_datacenters(self, node: SpecNode) -> tuple[dict[str, Datacenter], dict[str, Rack], dict[str, Slave]]:
        dcs: dict[str, Datacenter] = {}
        racks: dict[str, Rack] = {}
        slaves: dict[str, Slave] = {}
        for item in node.sequence(non_empty=True):
            m = item.mapping(("id", "inbound", "outbound", "racks"), ("id",))
            dc = self.claim(m["id"].ident(), "datacenter", m["id"])
            self.dc_nodes[dc] = m["id"]
            dcs[dc] = Datacenter(
                dc, self.bandwidth(m, item, "datacenter", "inbound"), self.bandwidth(m, item, "datacenter", "outbound")
            )
            for rack_item in m["racks"].sequence() if "racks" in m else []:
                rm = rack_item.mapping(("id", "inbound", "outbound", "slaves"), ("id",))
                rack = self.claim(rm["id"].ident(), "rack", rm["id"])
                racks[rack] = Rack(
                    rack,
                    dc,
                    self.bandwidth(rm, rack_item, "rack", "inbound"),
                    self.bandwidth(rm, rack_item, "rack", "outbound"),
                )
                for slave_item in rm["slaves"].sequence() if "slaves" in rm else []:
                    for slave in self.read_slaves(slave_item, rack, dc):
                        slaves[slave.id] = slave
        return dcs, racks, slaves

    def read_slaves(self, item: SpecNode, rack: str, dc: str) -> list[Slave]:
        """One slave, or ``count`` alike ones named prefix1..prefixN (a rack of identical machines)."""
        m = item.mapping(("id", "count", "prefix", "inbound", "outbound", "filesets"), ("filesets",))
        inbound = self.bandwidth(m, item, "slave", "inbound")
        outbound = self.bandwidth(m, item, "slave", "outbound")
        filesets = tuple(n for n, _ in self.fileset_refs(m["filesets"], non_empty=False))
        if "id" in m and "count" in m:
            m["count"].fail("give either 'id' (one slave) or 'count' (several), not both")
        if "id" in m:
            if "prefix" in m:
                m["prefix"].fail("'prefix' only goes with 'count'")
            ident = self.claim(m["id"].ident(), "slave", m["id"])
            return [Slave(ident, rack, dc, inbound, outbound, filesets)]
        if "count" not in m:
            item.fail("a slave needs an 'id' (or 'count' and 'prefix' for several)", key=item.child_key("id"))
        count = m["count"].integer()
        if not 1 <= count <= MAX_SLAVE_COUNT:
            m["count"].fail(f"count must be between 1 and {MAX_SLAVE_COUNT}, got {count}")
        prefix_node = m.get("prefix", m["count"])
        prefix = m["prefix"].text("an id prefix") if "prefix" in m else f"{rack}-s"
        out = []
        for i in range(1, count + 1):
            ident = f"{prefix}{i}"
            if not ID_PATTERN.match(ident) or ".." in ident:
                prefix_node.fail(f"prefix {prefix!r} makes invalid id {ident!r}")
            out.append(Slave(self.claim(ident, "slave", prefix_node), rack, dc, inbound, outbound, filesets))
        return out

    def read_trunks(self, node: SpecNode, dcs: dict[str, Datacenter]) -> dict[str, Trunk]:
        out: dict[str, Trunk] = {}
        keys = ("id", "from", "to", "bandwidth", "reverse_bandwidth", "latency")
        for item in node.sequence():
            m = item.mapping((*keys, "budget", "reverse_budget"), keys)
            tid = self.claim(m["id"].ident(), "trunk", m["id"])
            start = self.ref(m["from"], "datacenter", dcs)
            end = self.ref(m["to"], "datacenter", dcs)
            if start == end:
                m["to"].fail(f"trunk {tid} goes from {start} to itself; 'from' and 'to' must differ")
            out[tid] = Trunk(
                tid,
                start,
                end,
                m["bandwidth"].rate(),
                m["reverse_bandwidth"].rate("reverse bandwidth"),
                m["latency"].duration("latency"),
                # §0114: what the resource manager is told, when other traffic shares the trunk (default: all of it)
                m["budget"].rate("budget") if "budget" in m else None,
                m["reverse_budget"].rate("reverse budget") if "reverse_budget" in m else None,
            )
        return out

    def read_resource_manager(self, node: SpecNode, racks: dict[str, Rack]) -> Placement:
        m = node.mapping(("id", "rack"), ("id", "rack"))
        ident = self.claim(m["id"].ident(), "resource manager", m["id"])
        return Placement(ident, self.ref(m["rack"], "rack", racks))

    def read_masters(
        self, node: SpecNode, racks: dict[str, Rack]
    ) -> tuple[dict[str, MasterSpec], dict[str, list[tuple[str, SpecNode]]]]:
        masters: dict[str, MasterSpec] = {}
        owners: dict[str, list[tuple[str, SpecNode]]] = {}
        for item in node.sequence(non_empty=True):
            m = item.mapping(("id", "rack", "filesets"), ("id", "rack", "filesets"))
            ident = self.claim(m["id"].ident(), "master", m["id"])
            rack = self.ref(m["rack"], "rack", racks)
            refs = self.fileset_refs(m["filesets"], non_empty=True)
            for fs, where in refs:
                owners.setdefault(fs, []).append((ident, where))
            masters[ident] = MasterSpec(ident, rack, tuple(fs for fs, _ in refs))
        return masters, owners

    def read_generators(self, node: SpecNode, slaves: dict[str, Slave]) -> dict[str, GeneratorSpec]:
        out: dict[str, GeneratorSpec] = {}
        for item in node.sequence(non_empty=True):
            m = item.mapping(("id", "slave", "filesets"), ("id", "slave", "filesets"))
            ident = self.claim(m["id"].ident(), "generator", m["id"])
            slave = self.ref(m["slave"], "slave", slaves)
            refs = self.fileset_refs(m["filesets"], non_empty=True)
            out[ident] = GeneratorSpec(ident, slave, tuple(fs for fs, _ in refs))
        return out

    # --- whole-network checks --------------------------------------------

    def check_coverage(self, topo: Topology) -> None:
        """A fileset nobody generates or nobody needs is a configuration mistake, not a no-op."""
        for fs, node in self.fileset_nodes.items():
            if not topo.generator_slaves(fs):
                node.fail(f"fileset {fs!r} has no generator")
            if not topo.slaves_of_fileset(fs):
                node.fail(f"no slave needs fileset {fs!r}")

    def check_reachability(self, topo: Topology) -> None:
        """Every file a generator writes must be able to reach every slave needing it (trunks are one-way)."""
        for fs in topo.filesets:
            dcs = list(dict.fromkeys(topo.slaves[s].dc for s in topo.slaves_of_fileset(fs)))
            for gen in topo.generators.values():
                if fs not in gen.filesets:
                    continue
                src = topo.slaves[gen.slave].dc
                for dc in dcs:
                    if topo.trunk_path(src, dc) is None:
                        self.dc_nodes[dc].fail(
                            f"datacenter {dc} holds slaves of fileset {fs} but no trunk path in primary direction"
                            f" reaches it from generator {gen.id} in {src}"
                        )

    def check_control_paths(self, topo: Topology) -> None:
        """With control over trunks, slave reports (and master requests) need some trunk path, any direction."""
        neighbours: dict[str, set[str]] = {dc: set() for dc in topo.datacenters}
        for t in topo.trunks.values():
            neighbours[t.start].add(t.end)
            neighbours[t.end].add(t.start)

        def connected(a: str, b: str) -> bool:
            seen, todo = {a}, deque([a])
            while todo:
                for n in neighbours[todo.popleft()]:
                    if n not in seen:
                        seen.add(n)
                        todo.append(n)
            return b in seen

        for dc in topo.datacenters:
            for fs in dict.fromkeys(f for s in topo.slaves.values() if s.dc == dc for f in s.filesets):
                master = topo.masters[topo.filesets[fs].master]
                mdc = topo.racks[master.rack].dc
                if not connected(dc, mdc):
                    self.dc_nodes[dc].fail(
                        f"with control: trunks, slaves of fileset {fs} in datacenter {dc} cannot report to master"
                        f" {master.id} in {mdc}: no trunk path in either direction; use control: management"
                    )
        rm_dc = topo.racks[topo.resource_manager.rack].dc
        for master in topo.masters.values():
            mdc = topo.racks[master.rack].dc
            if not connected(mdc, rm_dc):
                self.dc_nodes[mdc].fail(
                    f"with control: trunks, master {master.id} in datacenter {mdc} cannot reach the resource manager"
                    f" in {rm_dc}: no trunk path in either direction; use control: management"
                )
