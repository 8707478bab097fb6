"""`scaledist-testbed drill`: break something on purpose mid-distribution, repair it, prove nothing was lost.

A drill file (YAML, validated like topology files: file, line, key and reason) names a topology, a scenario
and a schedule of faults::

    version: 1
    name: trunk-down
    topology: net/drill.yaml              # relative to the drill file
    scenario: net/drill-scenario.yaml
    ci: true                              # short enough for CI (`drill --all --short`)
    faults:
      - kind: trunk_down                  # a kind registered in testbed.faults (FAULTS)
        trunk: T2                         # the kind's own parameters
        when: {fileset: news, done: 30%}  # or  at: 5s  (seconds after the daemons started)
        repair_after: 10s                 # or  repair_at: 20s; none = repaired at the end of the run
        expect: {marked_failed: true, back_in_service: true}   # optional; defaults from the fault

The run is ``scaledist-testbed run`` with a hook (``DrillRunner``): a scheduler thread injects and repairs
the faults; while a repaired fault's resource is not yet back in service the run keeps going (at most
``settle`` seconds) so its recovery is timed.  Every fault is repaired before the daemons and the network
are torn down.  The timeline comes from the daemons' own records afterwards:

* noticed: the first failure a master logged after the injection (``failure``/``passed its deadline``/
  ``instruction ... failed``), and the first ``health <resource> failed`` or ``liveness <slave> lost`` of
  each resource the fault names (``Fault.resources()``);
* back in service: the first ``health <resource> in-service`` / ``liveness <slave> back`` after the repair
  (negative: it came back before the repair, because nothing was tried on it while it decayed);
* resumed: a replaced master's first ``instruct pull`` after it listens again; a restarted resource
  manager's first ``grant`` in ``ledger.jsonl`` after it listens again;
* bytes re-sent: blocks (destination, file, version, block) a master instructed again during the fault's
  window (injection to back in service / resumed / repair, plus one report interval), counted with the
  bytes the resource manager granted for the earlier attempt -- what the fault cost at most on the wire.

Log lines carry wall-clock time (``time.time()``), the ledger ``time.monotonic()``; both are recorded at
every injection and repair.  The verdict: completed, every slave byte-identical (``files_mismatched`` 0),
no corrupt block held by any slave, every fault injected and repaired, every expectation met.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scaledist.scenario import default_scenario
from scaledist.topology import Topology
from scaledist.topology_schema import (
    SpecError,
    SpecNode,
    check_version,
    did_you_mean,
    load_topology,
    parse_document,
    read_text_file,
)
from testbed.faults.base import FAULTS, DrillContext, Fault, FaultSpecError

DRILLS_DIR = Path(__file__).resolve().parent / "drills"
SCHED_KEYS = ("kind", "name", "at", "when", "repair_after", "repair_at", "expect")
EXPECT_KEYS = ("marked_failed", "back_in_service", "detect_within", "back_within", "resume_within")
DRILL_KEYS = ("version", "name", "description", "topology", "scenario", "scale", "timeout", "settle", "mode",
              "latency", "ci", "faults")
DEFAULT_TIMEOUT = 240.0
DEFAULT_SETTLE = 30.0
TICK = 0.1  # scheduler resolution, seconds


class DrillError(SpecError):
    """A drill file that cannot be used: file, line, key and why."""


# --- the drill file ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """When something happens: ``at`` seconds after the daemons started, or when a fileset is ``done`` % held."""

    at: float | None = None
    fileset: str | None = None
    done: float | None = None  # 0..1

    def describe(self) -> str:
        return f"t={self.at:g}s" if self.at is not None else f"{self.fileset} {100 * (self.done or 0):g}% done"


@dataclass
class FaultEntry:
    index: int
    name: str
    fault: Fault
    trigger: Trigger
    repair_after: float | None
    repair_at: float | None
    expect: dict[str, Any]
    line: int


@dataclass
class Drill:
    name: str
    source: Path
    topology_path: Path
    scenario_path: Path | None
    topology: Topology
    faults: list[FaultEntry]
    scale: float | None = None
    timeout: float = DEFAULT_TIMEOUT
    settle: float = DEFAULT_SETTLE
    mode: str = "pull"
    latency: str = "auto"
    ci: bool = True
    description: str = ""


def _resolve(base: Path, text: str) -> Path:
    """A path in a drill file: relative to the drill file, else to the working directory (repo root)."""
    p = Path(text)
    if p.is_absolute():
        return p
    return (base.parent / p) if (base.parent / p).exists() or not p.exists() else p.resolve()


def _percent(node: SpecNode) -> float:
    raw = node.text("a share such as 50%").strip()
    try:
        v = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        node.fail(f"expected a share such as 50%, got {raw!r}")
    if not 0 <= v <= 1:
        node.fail(f"must be between 0% and 100%, got {raw}")
    return v


def _trigger(at: SpecNode | None, when: SpecNode | None, topology: Topology, owner: SpecNode, what: str) -> Trigger:
    if at is not None and when is not None:
        when.fail(f"give either {what[0]} or {what[1]}, not both")
    if at is not None:
        return Trigger(at=at.duration(what[0]))
    if when is None:
        owner.fail(f"required key is missing: {what[0]} (seconds after start) or {what[1]} "
                   f"({{fileset: X, done: 50%}})", key=owner.child_key(what[0]))
    m = when.mapping(("fileset", "done"), ("fileset", "done"))
    fs = m["fileset"].text("a fileset id")
    if fs not in topology.filesets:
        m["fileset"].fail(f"unknown fileset {fs!r}: topology {topology.name} has {', '.join(topology.filesets)}"
                          f"{did_you_mean(fs, topology.filesets)}")
    return Trigger(fileset=fs, done=_percent(m["done"]))


def _expect(node: SpecNode | None) -> dict[str, Any]:
    if node is None:
        return {}
    m = node.mapping(EXPECT_KEYS)
    out: dict[str, Any] = {}
    for k in ("marked_failed", "back_in_service"):
        if k in m:
            v = m[k].value()
            if not isinstance(v, bool):
                m[k].fail(f"expected true or false, got {m[k].text()!r}")
            out[k] = v
    for k in ("detect_within", "back_within", "resume_within"):
        if k in m:
            out[k] = m[k].duration(k, strict=True)
    return out


def load_drill(path: str | Path) -> Drill:
    """Read and check a drill file, its topology, its scenario and every fault, before anything is built."""
    source = Path(path)
    text = read_text_file(source, DrillError, "drill")
    root = parse_document(text, str(source), DrillError)
    check_version(root)
    top = root.mapping(DRILL_KEYS, ("version", "name", "topology", "faults"))
    name = top["name"].ident("a drill name")
    topo_path = _resolve(source, top["topology"].text("a topology file"))
    if not topo_path.is_file():
        top["topology"].fail(f"topology file {topo_path} not found")
    topology = load_topology(topo_path)  # TopologyError names the topology file and line
    scenario_path = None
    if "scenario" in top:
        scenario_path = _resolve(source, top["scenario"].text("a scenario file"))
        if not scenario_path.is_file():
            top["scenario"].fail(f"scenario file {scenario_path} not found")
        from scaledist.scenario import load_scenario

        load_scenario(scenario_path, topology)
    drill = Drill(name=name, source=source.resolve(), topology_path=topo_path.resolve(),
                  scenario_path=scenario_path.resolve() if scenario_path else None, topology=topology, faults=[])
    if "scale" in top:
        drill.scale = top["scale"].number("a scale such as 0.5")
        if drill.scale <= 0:
            top["scale"].fail(f"scale must be > 0, got {drill.scale:g}")
    if "timeout" in top:
        drill.timeout = top["timeout"].duration("timeout", strict=True)
    if "settle" in top:
        drill.settle = top["settle"].duration("settle")
    if "mode" in top:
        drill.mode = top["mode"].text("pull or push")
        if drill.mode not in ("pull", "push"):
            top["mode"].fail(f"mode must be pull or push, got {drill.mode!r}")
    if "latency" in top:
        drill.latency = top["latency"].text("auto, netem or nfqueue")
        if drill.latency not in ("auto", "netem", "nfqueue"):
            top["latency"].fail(f"latency must be auto, netem or nfqueue, got {drill.latency!r}")
    if "ci" in top:
        v = top["ci"].value()
        if not isinstance(v, bool):
            top["ci"].fail(f"expected true or false, got {top['ci'].text()!r}")
        drill.ci = v
    if "description" in top:
        drill.description = top["description"].text()
    names: dict[str, int] = {}
    for i, item in enumerate(top["faults"].sequence(non_empty=True)):
        drill.faults.append(_fault_entry(i, item, topology, names))
    return drill


def _fault_entry(i: int, item: SpecNode, topology: Topology, names: dict[str, int]) -> FaultEntry:
    nodes: dict[str, SpecNode] = {}
    params: dict[str, Any] = {}
    for k, v in item.entries():
        key = str(k.node.value)
        if key in SCHED_KEYS:
            nodes[key] = v
        else:
            params[key] = v.value()
    if "kind" not in nodes:
        item.fail("required key is missing", key=item.child_key("kind"))
    kind = nodes["kind"].text("a fault kind")
    if kind not in FAULTS:
        nodes["kind"].fail(f"fault kind {kind!r} is not registered{did_you_mean(kind, FAULTS)} (registered: "
                           f"{', '.join(sorted(FAULTS))}); a kind comes from a module in testbed/faults/")
    where = f"{item.source}:{item.line}: {item.key}"
    fault = FAULTS[kind].from_spec(params, where)  # FaultSpecError names where and the key
    try:
        fault.validate(topology)
    except FaultSpecError as e:
        raise DrillError(item.source, item.line, item.key, str(e)) from None
    trig = _trigger(nodes.get("at"), nodes.get("when"), topology, item, ("at", "when"))
    repair_after = repair_at = None
    if "repair_after" in nodes and "repair_at" in nodes:
        nodes["repair_at"].fail("give either repair_after or repair_at, not both")
    if "repair_after" in nodes:
        repair_after = nodes["repair_after"].duration("repair_after")
    if "repair_at" in nodes:
        repair_at = nodes["repair_at"].duration("repair_at")
        if trig.at is not None and repair_at < trig.at:
            nodes["repair_at"].fail(f"repair at {repair_at:g}s comes before the fault at {trig.at:g}s")
    name = nodes["name"].text() if "name" in nodes else f"{kind} {fault.target}".strip()
    if name in names:
        item.fail(f"two faults are called {name!r} (the first at line {names[name]}); give one a name:")
    names[name] = item.line
    return FaultEntry(i, name, fault, trig, repair_after, repair_at, _expect(nodes.get("expect")), item.line)


def drill_files(directory: Path = DRILLS_DIR) -> list[Path]:
    """The standard drill set: every ``*.yaml`` directly in ``testbed/drills/`` (topologies live below it)."""
    return sorted(p for p in directory.glob("*.yaml") if p.is_file())


def drill_is_short(path: Path) -> bool:
    """The drill's ``ci:`` flag, read without validating the whole file (a broken drill is run and fails)."""
    try:
        import yaml

        doc = yaml.safe_load(path.read_text())
        return bool(doc.get("ci", True)) if isinstance(doc, dict) else True
    except Exception:
        return True


# --- the run: scheduler ----------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    """What happened to one fault during the run (times: wall clock and monotonic, both)."""

    entry: FaultEntry
    injected_wall: float | None = None
    injected_mono: float | None = None
    repair_started_wall: float | None = None
    repaired_wall: float | None = None
    repaired_mono: float | None = None
    progress_at_inject: dict[str, float] = field(default_factory=dict)
    error: str = ""


class DrillRunner:
    """The hook ``run_testbed`` calls: start (after the daemons), holding (in its wait loop), stop (before the
    teardown), finish (after verification, before the data is removed)."""

    def __init__(self, drill: Drill, log: Callable[[str], None] = print) -> None:
        self.drill = drill
        self.log = log
        self.expected_down: set[str] = set()
        self.records = [FaultRecord(e) for e in drill.faults]
        self.ctx: DrillContext | None = None
        self.t0_wall = self.t0_mono = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._progress_at = 0.0
        self._progress: dict[str, float] = {}
        self._complete = False
        self._watch_at = 0.0
        self._settled = False
        self.result: dict[str, Any] = {}

    # --- hooks ------------------------------------------------------------

    def before_network(self, plan: Any, run_dir: Path, log: Callable[[str], None]) -> None:
        """Before the network exists: faults with a ``before_network(ctx)`` step take it now.  Mininet gives each
        host a private copy of the mount table when it is created, so a mount made later is invisible to the
        daemons; one made now is seen (the same filesystem) by the daemons and by the testbed alike."""
        base = plan.base
        scenario = plan.scenario if plan.scenario is not None else default_scenario(base)
        if plan.scale != 1.0:
            scenario = scenario.scaled(plan.topology.block_size / base.block_size)
        early = SimpleNamespace(run_dir=Path(run_dir), scenario=scenario,
                                data_dir=lambda slave: Path(run_dir) / "data" / slave)
        ctx = DrillContext(net=None, cluster=early, topology=plan.topology, run_dir=Path(run_dir), log=log,
                           expected_down=self.expected_down)
        for r in self.records:
            step = getattr(r.entry.fault, "before_network", None)
            if step is not None:
                step(ctx)

    def prepare(self, net: Any, cluster: Any, topology: Topology, run_dir: Path, log: Callable[[str], None]) -> None:
        """Before the daemons start: faults with a ``prepare(ctx)`` step (a data dir on a small tmpfs, a daemon
        started under a shifted clock) take it now."""
        self.log = log
        self.ctx = DrillContext(net=net, cluster=cluster, topology=topology, run_dir=Path(run_dir), log=log,
                                expected_down=self.expected_down)
        for r in self.records:
            prep = getattr(r.entry.fault, "prepare", None)
            if prep is not None:
                prep(self.ctx)

    def start(self, net: Any, cluster: Any, topology: Topology, run_dir: Path, log: Callable[[str], None]) -> None:
        if self.ctx is None:
            self.prepare(net, cluster, topology, run_dir, log)
        self.t0_wall, self.t0_mono = time.time(), time.monotonic()
        log(f"drill {self.drill.name}: {len(self.records)} fault(s): "
            + "; ".join(f"{r.entry.name} at {r.entry.trigger.describe()}" for r in self.records))
        self._thread = threading.Thread(target=self._run, name="drill", daemon=True)
        self._thread.start()

    def holding(self) -> bool:
        """True while the run should go on after completion: a fault still to inject, repair or time."""
        with self._lock:
            if any(r.injected_wall is None and not r.error for r in self.records):
                return True
            scheduled = [r for r in self.records if r.entry.repair_after is not None or r.entry.repair_at is not None]
            if any(r.repaired_wall is None and not r.error for r in scheduled):
                return True  # a fault without a scheduled repair stays until the end and holds nothing
            last = max((r.repaired_mono or 0.0) for r in scheduled) if scheduled else 0.0
        if time.monotonic() - last > self.drill.settle:
            return False
        now = time.monotonic()
        if now - self._watch_at < 1.0:
            return not self._settled
        self._watch_at = now
        timeline = self._timelines(final=False)
        self._settled = all(t["settled"] for t in timeline)
        return not self._settled

    def stop(self) -> None:
        """Stop the scheduler and repair every fault still in place (also after an error or Ctrl-C)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.ctx is None:
            return
        for r in self.records:
            if r.injected_wall is not None and r.repaired_wall is None:
                self._repair(r, at_teardown=True)
            elif r.injected_wall is not None:
                with contextlib.suppress(Exception):  # idempotent: make sure
                    r.entry.fault.repair(self.ctx)

    def after_daemons(self) -> None:
        """After the daemons stopped, before verification: faults with a ``finish(ctx)`` step (copy a slave's
        data back from its tmpfs, unmount) take it."""
        if self.ctx is None:
            return
        problems = []
        for r in self.records:
            fin = getattr(r.entry.fault, "finish", None)
            if fin is None:
                continue
            try:
                fin(self.ctx)
            except Exception as e:
                problems.append(f"{r.entry.name}: {type(e).__name__}: {e}")
                r.error = f"{r.error}; finish failed: {e}" if r.error else f"finish failed: {e}"
        if problems:
            raise RuntimeError("; ".join(problems))

    # --- scheduler --------------------------------------------------------

    def _rel(self) -> float:
        return time.monotonic() - self.t0_mono

    def _done(self, fileset: str) -> float:
        now = time.monotonic()
        if now - self._progress_at >= 0.5:
            self._progress_at = now
            assert self.ctx is not None
            p = self.ctx.cluster.progress()
            self._progress = {fs: (h / w if w else 0.0) for fs, (_, _, h, w) in p.filesets.items()}
            self._complete = all(c == n for c, n, _, _ in p.filesets.values())
        return self._progress.get(fileset, 0.0)

    def _due(self, trig: Trigger) -> bool:
        if trig.at is not None:
            return self._rel() >= trig.at
        assert trig.fileset is not None and trig.done is not None
        return self._done(trig.fileset) >= trig.done

    def _run(self) -> None:
        assert self.ctx is not None
        while not self._stop.is_set():
            for r in self.records:
                if r.error:
                    continue
                e = r.entry
                if r.injected_wall is None and self._due(e.trigger):
                    self._inject(r)
                elif r.injected_wall is not None and r.repaired_wall is None:
                    due = ((e.repair_after is not None and time.monotonic() - (r.injected_mono or 0) >= e.repair_after)
                           or (e.repair_at is not None and self._rel() >= e.repair_at))
                    if due:
                        self._repair(r)
            self._stop.wait(TICK)

    def _inject(self, r: FaultRecord) -> None:
        assert self.ctx is not None
        self._progress_at = 0.0  # a fresh reading for the record
        with contextlib.suppress(Exception):
            self._done("")
        with self._lock:
            r.progress_at_inject = {fs: round(v, 3) for fs, v in self._progress.items()}
            r.injected_wall, r.injected_mono = time.time(), time.monotonic()
        try:
            r.entry.fault.inject(self.ctx)
            self.log(f"drill: injected {r.entry.name} at t={self._rel():.1f}s")
        except Exception as e:
            r.error = f"inject failed: {type(e).__name__}: {e}"
            self.log(f"drill: {r.entry.name}: {r.error}")
            self._repair(r, at_teardown=True)

    def _repair(self, r: FaultRecord, at_teardown: bool = False) -> None:
        assert self.ctx is not None
        r.repair_started_wall = time.time()
        try:
            r.entry.fault.repair(self.ctx)
        except Exception as e:
            msg = f"repair failed: {type(e).__name__}: {e}"
            r.error = f"{r.error}; {msg}" if r.error else msg
            self.log(f"drill: {r.entry.name}: {msg}")
            traceback.print_exc(file=sys.stderr)
        with self._lock:
            r.repaired_wall, r.repaired_mono = time.time(), time.monotonic()
        if at_teardown and not r.error:
            r.error = "" if r.entry.repair_after is None and r.entry.repair_at is None else \
                "repaired only at teardown (the run ended before the repair was due)"
        self.log(f"drill: repaired {r.entry.name} at t={self._rel():.1f}s"
                 + (" (teardown)" if at_teardown else ""))

    # --- after the run ----------------------------------------------------

    def finish(self, cluster: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The drill's section: timeline per fault, verdict; writes drill.json and drill.csv. Never raises."""
        try:
            return self._finish(cluster, summary)
        except Exception as e:
            self.result = {"name": self.drill.name, "verdict": "FAIL", "reasons": [f"drill analysis failed: {e}"]}
            traceback.print_exc(file=sys.stderr)
            return self.result

    def _finish(self, cluster: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        rdir = Path(summary["run_dir"])
        timeline = self._timelines(final=True) if self.ctx is not None else []
        corrupt = corrupt_blocks(cluster) if cluster is not None else {"blocks": None, "where": []}
        reasons: list[str] = []
        if not summary.get("completed"):
            reasons.append(f"not completed ({summary.get('error') or 'incomplete'})")
        if summary.get("files_mismatched"):
            reasons.append(f"{summary['files_mismatched']} files mismatched")
        if corrupt["blocks"]:
            reasons.append(f"{corrupt['blocks']} corrupt blocks accepted")
        if corrupt["blocks"] is None:
            reasons.append("corrupt blocks not counted (no cluster)")
        for t in timeline:
            reasons += [f"{t['name']}: {p}" for p in t["problems"]]
        self.result = {
            "name": self.drill.name,
            "drill_file": str(self.drill.source),
            "description": self.drill.description,
            "t0_wall": self.t0_wall,
            "t0_monotonic": self.t0_mono,
            "health": _health_dict(self.drill.topology),
            "report_interval_s": self.drill.topology.report_interval,
            "epoch_s": self.drill.topology.epoch,
            "faults": timeline,
            "completed": bool(summary.get("completed")),
            "files_verified": summary.get("files_verified"),
            "files_mismatched": summary.get("files_mismatched"),
            "corrupt_blocks_accepted": corrupt["blocks"],
            "corrupt_blocks_where": corrupt["where"][:20],
            "bytes_resent": sum(t["bytes_resent"] for t in timeline),
            "verdict": "FAIL" if reasons else "PASS",
            "reasons": reasons,
            "counting": COUNTING,
        }
        (rdir / "drill.json").write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        with (rdir / "drill.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for t in timeline:
                w.writerow({k: ("" if t.get(k) is None else t.get(k)) for k in CSV_FIELDS})
        return self.result

    def _timelines(self, final: bool) -> list[dict[str, Any]]:
        assert self.ctx is not None
        logs = MasterLogs(self.ctx.run_dir / "logs", list(self.drill.topology.masters), self.t0_wall)
        ledger = Ledger(self.ctx.run_dir / "ledger.jsonl")
        with self._lock:
            records = list(self.records)
        return [fault_timeline(r, logs, ledger, self, final) for r in records]


CSV_FIELDS = ["name", "kind", "target", "trigger", "injected_s", "first_failure_s", "marked_failed_s", "detect_s",
              "failures_at_mark", "repaired_s", "back_in_service_s", "back_after_repair_s", "resumed_after_s",
              "blocks_resent", "bytes_resent", "also_marked_failed", "verdict", "problems"]
COUNTING = ("bytes_resent: blocks (destination, file, version, block) a master instructed again while the fault "
            "was in effect (injection to back in service, resumed or repaired, plus one report interval), each "
            "counted with the bytes the resource manager granted for the earlier attempt: an upper bound of what "
            "the fault cost on the wire (a failed attempt may have sent less).")


def _health_dict(t: Topology) -> dict[str, Any]:
    h = t.health
    return {k: getattr(h, k) for k in ("failure_threshold", "recovery_threshold", "failure_ratio", "decay",
                                      "decay_percent", "time_unit")}


# --- reading what the daemons recorded ---------------------------------------------------------------------


LOG_RE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) master (\S+) (.*)$")
INSTRUCT_RE = re.compile(r"^instruct (?:pull|push) (\S+) (\S+)/(\S+)@(\d+)#(\d+) (\S+)->(\S+)")
FAILURE_RE = re.compile(r"^(failure (\S+) reported by|copy (\S+) .* passed its deadline|instruction (\S+) to \S+ "
                        r"failed|copy (\S+) \S+ failed \()")


@dataclass
class LogLine:
    t: float  # wall clock
    master: str
    text: str


class MasterLogs:
    """Every master's log, with each line's wall-clock time rebuilt from HH:MM:SS.mmm and the run's date."""

    def __init__(self, logs: Path, masters: Iterable[str], t0_wall: float) -> None:
        lt = time.localtime(t0_wall)
        midnight = t0_wall - (lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t0_wall % 1))
        self.lines: list[LogLine] = []
        for m in masters:
            p = logs / f"{m}.log"
            try:
                text = p.read_text(errors="replace")
            except OSError:
                continue
            for raw in text.splitlines():
                mt = LOG_RE.match(raw)
                if not mt:
                    continue
                h, mi, s, ms, who, rest = mt.groups()
                t = midnight + int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000
                if t < t0_wall - 43200:
                    t += 86400  # the run crossed midnight
                self.lines.append(LogLine(t, who, rest))
        self.lines.sort(key=lambda x: x.t)

    def first(self, pred: Callable[[LogLine], bool], after: float, before: float = float("inf")) -> LogLine | None:
        for ln in self.lines:
            if after <= ln.t <= before and pred(ln):
                return ln
        return None

    def state_changes(self, resource: str) -> list[tuple[float, bool, str]]:
        """(time, in service?, line) for a resource: health failed/in-service and liveness lost/back."""
        out = []
        for ln in self.lines:
            for bad, good in ((f"health {resource} failed", f"health {resource} in-service"),
                              (f"liveness {resource} lost", f"liveness {resource} back")):
                if ln.text.startswith(bad + " ") or ln.text == bad:
                    out.append((ln.t, False, ln.text))
                elif ln.text == good:
                    out.append((ln.t, True, ln.text))
        return out

    def instructions(self) -> list[tuple[float, str, tuple[str, str, str, int, int]]]:
        """(time, transfer id, (destination, fileset, file, version, block)) of every copy instructed."""
        out = []
        for ln in self.lines:
            m = INSTRUCT_RE.match(ln.text)
            if m:
                tid, fs, fid, ver, blk, _src, dst = m.groups()
                out.append((ln.t, tid, (dst, fs, fid, int(ver), int(blk))))
        return out


class Ledger:
    """The resource manager's ledger: first grant time (monotonic) and granted bytes per transfer."""

    def __init__(self, path: Path) -> None:
        self.grants: dict[str, tuple[float, int]] = {}
        self.grant_times: list[float] = []
        try:
            f = path.open()
        except OSError:
            return
        with f:
            for line in f:
                if '"grant"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    r = json.loads(line)
                    if r.get("kind") == "grant":
                        tid = r.get("transfer_id", "")
                        if tid not in self.grants:
                            self.grants[tid] = (float(r["t"]), int(r.get("bytes") or 0))
                            self.grant_times.append(float(r["t"]))
        self.grant_times.sort()


def fault_timeline(r: FaultRecord, logs: MasterLogs, ledger: Ledger, runner: DrillRunner,
                   final: bool) -> dict[str, Any]:
    """One fault's row: injected, noticed, marked failed, repaired, back in service, resumed, bytes re-sent."""
    e, f = r.entry, r.entry.fault
    topo = runner.ctx.topology if runner.ctx is not None else runner.drill.topology  # scaled: the run's blocks
    t0 = runner.t0_wall

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 3)

    out: dict[str, Any] = {
        "name": e.name, "kind": f.kind, "target": f.target, "trigger": e.trigger.describe(),
        "injected_s": rel(r.injected_wall), "injected_wall": r.injected_wall, "injected_monotonic": r.injected_mono,
        "repaired_s": rel(r.repaired_wall), "repaired_wall": r.repaired_wall, "repaired_monotonic": r.repaired_mono,
        "repair_started_s": rel(r.repair_started_wall), "progress_at_inject": r.progress_at_inject,
        "error": r.error, "resources": list(f.resources()),
    }
    problems: list[str] = []
    settled = True
    if r.error:
        problems.append(r.error)
    if r.injected_wall is None:
        problems.append("never injected")
        out.update(problems=problems, settled=True, bytes_resent=0, blocks_resent=0, verdict="FAIL")
        return out
    if r.progress_at_inject and all(v >= 1.0 for v in r.progress_at_inject.values()):
        problems.append("injected after the distribution had completed: inject earlier or distribute more")
    inj, rep = r.injected_wall, r.repaired_wall
    first_fail = logs.first(lambda ln: bool(FAILURE_RE.match(ln.text)), inj)
    out["first_failure_s"] = rel(first_fail.t) if first_fail else None
    out["first_failure"] = first_fail.text[:200] if first_fail else None
    resources = list(f.resources())
    expect_failed = e.expect.get("marked_failed", bool(resources))
    expect_back = e.expect.get("back_in_service", bool(resources))
    per: dict[str, dict[str, Any]] = {}
    window_end = rep or time.time()
    for res in resources:
        changes = [c for c in logs.state_changes(res) if c[0] >= inj]
        marked = next((c for c in changes if not c[1]), None)
        info: dict[str, Any] = {"marked_failed_s": rel(marked[0]) if marked else None,
                                "marked_line": marked[2] if marked else None}
        if marked:
            m = re.search(r"failures=(\d+)", marked[2])
            info["failures_at_mark"] = int(m.group(1)) if m else None
            # back in service: the first in-service after the last time it was marked failed (it may have come
            # back before the repair while nothing was tried on it, or been marked only after the repair, when
            # copies stalled by the fault passed their deadlines)
            last_bad = max(c[0] for c in changes if not c[1])
            back = next((c for c in changes if c[1] and c[0] > last_bad), None)
            info["back_in_service_s"] = rel(back[0]) if back else None
            info["back_after_repair_s"] = round(back[0] - rep, 3) if back and rep else None
            if back:
                window_end = max(window_end, back[0])
            elif rep is not None:
                settled = False
        per[res] = info
    out["per_resource"] = per
    if resources:
        marks = [p["marked_failed_s"] for p in per.values() if p["marked_failed_s"] is not None]
        out["marked_failed_s"] = max(marks) if len(marks) == len(resources) else None
        out["detect_s"] = round(out["marked_failed_s"] - out["injected_s"], 3) if out["marked_failed_s"] else None
        fam = [p.get("failures_at_mark") for p in per.values() if p.get("failures_at_mark") is not None]
        out["failures_at_mark"] = max(fam) if fam else None
        backs = [p.get("back_in_service_s") for p in per.values() if p["marked_failed_s"] is not None]
        out["back_in_service_s"] = max(backs) if backs and None not in backs else None
        ab = [p.get("back_after_repair_s") for p in per.values() if p["marked_failed_s"] is not None]
        out["back_after_repair_s"] = max(ab) if ab and None not in ab else None
        if expect_failed and out["marked_failed_s"] is None:
            problems.append(f"{', '.join(resources)} never marked failed")
        if expect_back and out["marked_failed_s"] is not None and out["back_in_service_s"] is None:
            problems.append(f"{', '.join(resources)} not back in service after the repair")
        lim = e.expect.get("detect_within")
        if lim is not None and out.get("detect_s") is not None and out["detect_s"] > lim:
            problems.append(f"marked failed after {out['detect_s']:.1f}s, expected within {lim:g}s")
        lim = e.expect.get("back_within")
        if lim is not None and out.get("back_after_repair_s") is not None and out["back_after_repair_s"] > lim:
            problems.append(f"back in service {out['back_after_repair_s']:.1f}s after the repair, expected within "
                            f"{lim:g}s")
    elif e.expect.get("marked_failed"):
        problems.append("marked_failed expected but the fault names no resource")
    # resuming after a restart
    resume_limit = e.expect.get("resume_within")
    if f.kind == "master_replace":
        resume_limit = resume_limit if resume_limit is not None else 2 * topo.report_interval
        out["resume_limit_s"] = resume_limit
        first = logs.first(lambda ln: ln.master == f.target and bool(INSTRUCT_RE.match(ln.text)), rep) if rep else None
        listening = logs.first(lambda ln: ln.master == f.target and ln.text.startswith("listening on"),
                               r.repair_started_wall or inj) if rep else None
        out["listening_s"] = rel(listening.t) if listening else None
        base = listening.t if listening else rep
        out["resumed_s"] = rel(first.t) if first else None
        out["resumed_after_s"] = round(first.t - base, 3) if first and base else None
        if first:
            window_end = max(window_end, first.t)
        if rep is not None and first is None:
            if final:
                problems.append("the new master never instructed a copy")
            settled = False
        elif out["resumed_after_s"] is not None and out["resumed_after_s"] > resume_limit:
            problems.append(f"the new master resumed scheduling {out['resumed_after_s']:.2f}s after it listened, "
                            f"expected within {resume_limit:g}s (two report periods)")
    if f.kind == "rm_restart":
        resume_limit = resume_limit if resume_limit is not None else topo.epoch
        out["resume_limit_s"] = resume_limit
        if ledger is not None and r.repaired_mono is not None:
            g = next((t for t in ledger.grant_times if t >= r.repaired_mono), None)
            out["resumed_after_s"] = round(g - r.repaired_mono, 3) if g is not None else None
            out["resumed_s"] = round(g - runner.t0_mono, 3) if g is not None else None
            if g is None:
                settled = False
                if final:
                    problems.append("the restarted resource manager never granted")
            else:
                window_end = max(window_end, t0 + (g - runner.t0_mono))
                if g - r.repaired_mono > resume_limit:
                    problems.append(f"the restarted resource manager granted {g - r.repaired_mono:.2f}s after it "
                                    f"listened, expected within {resume_limit:g}s (one epoch)")
    # bytes re-sent in the fault window
    blocks = nbytes = 0
    if final:
        window_end += topo.report_interval
        prev: dict[tuple[str, str, str, int, int], str] = {}
        for t, tid, key in logs.instructions():
            earlier = prev.get(key)
            prev[key] = tid
            if earlier is not None and inj <= t <= window_end:
                blocks += 1
                nbytes += ledger.grants.get(earlier, (0.0, topo.block_size))[1]
        out["window_end_s"] = rel(window_end)
        # collateral: what else the masters took out of service meanwhile (§0089 blames a whole path)
        others: dict[str, float] = {}
        for ln in logs.lines:
            m = re.match(r"^health (\S+) failed ", ln.text)
            if m and inj <= ln.t <= window_end and m.group(1) not in resources and m.group(1) not in others:
                others[m.group(1)] = round(ln.t - inj, 3)
        out["also_marked_failed"] = others
    out["blocks_resent"] = blocks
    out["bytes_resent"] = nbytes
    out["notes"] = _safe_notes(f)
    out["problems"] = problems
    out["settled"] = settled
    out["verdict"] = "FAIL" if problems else "PASS"
    return out


def _safe_notes(f: Fault) -> dict[str, Any]:
    try:
        return dict(f.notes())
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def corrupt_blocks(cluster: Any) -> dict[str, Any]:
    """Blocks a slave holds (verifiably stored, final versions) whose bytes differ from the generator's copy."""
    from scaledist import storage

    bs = cluster.topology.block_size
    origin = {fs: g.slave for g in cluster.topology.generators.values() for fs in g.filesets}
    n = 0
    where: list[str] = []
    for fs, files in cluster.expected().items():
        ref = storage.BlockStore(cluster.data_dir(origin[fs]), bs)
        for s in cluster.topology.slaves_of_fileset(fs):
            if s == origin[fs]:
                continue
            mine = storage.BlockStore(cluster.data_dir(s), bs)
            for fid, (version, _size) in files.items():
                st = mine.stored(fs, fid)
                if st is None or st.version != version or st.size == 0:
                    continue
                a, b = mine.data_path(fs, fid, version), ref.data_path(fs, fid, version)
                try:
                    with a.open("rb") as fa, b.open("rb") as fb:
                        for i in range((st.size + bs - 1) // bs):
                            want = min(bs, st.size - i * bs)
                            if fa.read(want) != fb.read(want):
                                n += 1
                                where.append(f"{s}: {fs}/{fid}@{version}#{i}")
                except OSError as e:
                    where.append(f"{s}: {fs}/{fid}@{version}: unreadable ({e.strerror})")
                    n += 1
    return {"blocks": n, "where": where}


# --- running drills ------------------------------------------------------------------------------------------


def verdict_line(result: Mapping[str, Any], run_dir: str | Path = "") -> str:
    """One line per drill: PASS/FAIL, name, each fault's detection and recovery times, bytes re-sent."""
    parts = []
    for t in result.get("faults", []):
        bits = [t["name"]]
        if t.get("detect_s") is not None:
            how = [str(p.get("marked_line", "")).split(" ")[0] for p in (t.get("per_resource") or {}).values()]
            why = f"failures={t['failures_at_mark']}" if t.get("failures_at_mark") is not None else \
                "liveness lost" if "liveness" in how else "marked failed"
            bits.append(f"detect {t['detect_s']:.1f}s ({why})")
        elif t.get("resources"):
            bits.append("not marked failed")
        if t.get("back_after_repair_s") is not None:
            bits.append(f"back {t['back_after_repair_s']:+.1f}s after repair")
        if t.get("resumed_after_s") is not None:
            bits.append(f"resumed {t['resumed_after_s']:.2f}s (limit {t.get('resume_limit_s'):g}s)")
        bits.append(f"resent {t.get('bytes_resent', 0) / 1e6:.3f}MB ({t.get('blocks_resent', 0)} blocks)")
        parts.append(" ".join(bits))
    why = "; ".join(result.get("reasons", [])[:3])
    return (f"{result.get('verdict', 'FAIL')} {result.get('name')}: {' | '.join(parts) or 'no faults'}; "
            f"mismatched={result.get('files_mismatched')} corrupt_accepted={result.get('corrupt_blocks_accepted')}"
            + (f"; {why}" if why else "") + (f"; run folder {run_dir}" if run_dir else ""))


def run_drill(path: str | Path, *, run_dir: str | Path | None = None, timeout: float | None = None,
              as_json: bool = False, keep_data: bool = False) -> tuple[int, dict[str, Any]]:
    """One drill end to end; (exit code, drill result). Bad input raises (SpecError, RunError) before building."""
    from testbed import run as tbrun

    d = load_drill(path)
    plan = tbrun.plan_run(d.topology_path, d.scenario_path, d.scale, command="drill")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rdir = Path(run_dir) if run_dir else Path("results/runs") / f"drill-{d.name}-{stamp}"
    runner = DrillRunner(d)
    rc = tbrun.run_testbed(plan, timeout=timeout or d.timeout, mode=d.mode, latency=d.latency, run_dir=rdir,
                           as_json=as_json, keep_data=keep_data, drill=runner)
    result = runner.result or {"name": d.name, "verdict": "FAIL", "reasons": ["the run ended before the drill"]}
    if rc == 0 and result.get("verdict") != "PASS":
        rc = 1
    return rc, result


def run_all(paths: list[Path], *, short: bool = False, out: Callable[[str], None] = print,
            base_dir: Path | None = None) -> int:
    """Every drill in turn (one emulation at a time), its output in its run folder's drill.log; one line each."""
    from testbed import run as tbrun

    tbrun.check_machine("drill")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = base_dir or Path("results/runs") / f"drills-{stamp}"
    passed = total = 0
    for p in paths:
        if short and not drill_is_short(p):
            continue
        total += 1
        rdir = (base / p.stem).resolve()
        rdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        result: dict[str, Any] = {"name": p.stem, "verdict": "FAIL"}
        rc = 1
        try:
            with (rdir.parent / f"{p.stem}.log").open("w") as logf, contextlib.redirect_stdout(logf), \
                    contextlib.redirect_stderr(logf):
                rc, result = run_drill(p, run_dir=rdir)
        except (SpecError, tbrun.RunError) as e:
            result = {"name": p.stem, "verdict": "FAIL", "reasons": [str(e)]}
        except Exception as e:
            result = {"name": p.stem, "verdict": "FAIL", "reasons": [f"{type(e).__name__}: {e}"]}
        ok = rc == 0 and result.get("verdict") == "PASS"
        passed += ok
        out(verdict_line({**result, "verdict": "PASS" if ok else "FAIL"}, rdir) + f" ({time.monotonic() - t0:.0f}s)")
        if rc >= 128:  # interrupted: stop the set here
            break
    out(f"drills_passed={passed} drills_total={total}")
    return 0 if passed == total and total else 1
