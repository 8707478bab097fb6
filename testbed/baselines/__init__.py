"""Baselines on the very same emulated network: what people would use instead of ScaleDist.

Each baseline gets a freshly built ``EmulatedNetwork`` for the scaled topology exactly as ``run_testbed``
builds it (same ``plan_run`` scale, shaping and latency), the scenario's file versions with exactly the
bytes ScaleDist's generator writes (``block_bytes``), and the same trunk measurement (``TrunkMeter``: trunk
interface counters once a second, qdisc statistics before/every 10 s/after).  Differences, on purpose:

- Publication: a file version is published when the generator would have written its last byte (its
  scenario start; with ``generation_rate`` after size/rate, files one after the other), because a torrent or
  an HTTP file is published whole.  ScaleDist overlaps distribution with generation; that is its design.
- Catalog: clients learn publications from a JSON-lines file on the shared disk (an unshaped control
  plane, as ScaleDist's management network), never over the data network.
- Want-newest: when a newer version of a file is published, clients drop the older one (what a careful
  operator scripts); completion is every slave holding the final version of every file of its filesets.
- Routing: ``main`` leaves routing as the testbed sets it for "other applications": only
  ScaleDist's data ports take the trunks' primary directions, everything else the main table (reverse of
  the trunk path back, else the primary path).  ``data`` marks every IP packet of 200 bytes or more in
  every router like ScaleDist's block data (fwmark 1), so bulk data takes the primary directions and ACKs
  the reverse ones: the same routing ScaleDist's data gets, to judge the systems rather than the routes
  (the bench's default).

Completion per slave per file comes from the clients' status files (``status/<slave>.json``, written by
processes in the hosts; the monotonic clock is the machine's, shared by every namespace).  Every final file
is verified by sha256 against the publication; everything started is stopped on success, failure and
Ctrl-C, and the network torn down.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from results.bound import FileVersion, file_versions, needed_bytes
from scaledist.daemons.generator import block_bytes
from scaledist.local import die_with_parent
from scaledist.scenario import Scenario
from scaledist.topology import Topology
from testbed.daemons import DaemonSampler
from testbed.run import Interrupted, Plan, TrunkMeter, _delta, _teardown_step, signals_raise, versions

ROUTINGS = ("main", "data")
BULK_MIN_BYTES = 200  # `--routing data`: IP packets at least this long are bulk data (an ACK is 52 bytes)
MARK_COMMENT = "scaledist-baseline-route"
OVER_BUDGET = 1.05  # an epoch is over budget when a trunk direction carried more than budget x epoch x this


@dataclass(frozen=True)
class Publication:
    """One file version as the source holds it; ``at`` is when it is published (seconds after t0)."""

    version: FileVersion
    source: str  # slave id of the fileset's generator
    at: float
    sha256: str = ""

    @property
    def key(self) -> str:
        return self.version.key

    @property
    def name(self) -> str:
        """File name inside <data>/<slave>/<fileset>/."""
        return f"{self.version.file_id}@{self.version.version}"


def scaled_scenario(plan: Plan) -> Scenario:
    """The scenario as ScaleDist's daemons get it: sizes scaled by the block size's own factor (LocalCluster)."""
    if plan.scenario is None:
        from scaledist.scenario import default_scenario

        sc = default_scenario(plan.base)
    else:
        sc = plan.scenario
    factor = plan.topology.block_size / plan.base.block_size
    return sc.scaled(factor) if plan.scale != 1.0 else sc


def publications(topology: Topology, scenario: Scenario) -> list[Publication]:
    out = []
    for v in file_versions(scenario):
        sources = topology.generator_slaves(v.fileset)
        if sources:
            out.append(Publication(v, sources[0], v.ready))
    return sorted(out, key=lambda p: p.at)


def write_version(path: Path, topology: Topology, v: FileVersion) -> str:
    """The exact bytes ScaleDist's generator writes for this version, block by block; returns the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bs = topology.block_size
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        for i in range(max(1, -(-v.size // bs))):
            data = block_bytes(v.fileset, v.file_id, v.version, i, min(bs, v.size - i * bs))
            digest.update(data)
            f.write(data)
    os.replace(tmp, path)
    return digest.hexdigest()


def sha256_of(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def read_catalog(path: Path, offset: int, entries: list[dict[str, Any]]) -> int:
    """Appends the complete new lines of the catalog to ``entries``; returns the new offset (clients poll it)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        if line.strip():
            entries.append(json.loads(line))
    return offset + end


def wanted(entries: list[dict[str, Any]], filesets: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(fileset, file) -> the newest published version's catalog entry, for the filesets a slave holds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        k = (e["fileset"], e["file"])
        if e["fileset"] in filesets and (k not in out or e["version"] > out[k]["version"]):
            out[k] = e
    return out


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


class System(Protocol):
    """A baseline: makes each file version fetchable (before t0: a torrent is made once the file exists, and
    the tracker's whitelist must hold it), then starts its processes in the hosts."""

    name: str

    def settings(self) -> dict[str, Any]: ...
    def prepare(self, run: BaselineRun, pub: Publication) -> dict[str, Any]: ...
    def start(self, run: BaselineRun) -> None: ...


@dataclass
class BaselineRun:
    """The running network and processes of one baseline; everything it starts, ``close()`` stops."""

    net: Any
    plan: Plan
    scenario: Scenario
    rdir: Path
    log: Callable[[str], None]
    procs: dict[str, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)
    t0: float = 0.0

    @property
    def topology(self) -> Topology:
        return self.plan.topology

    @property
    def catalog(self) -> Path:
        return self.rdir / "catalog.jsonl"

    def data_dir(self, slave: str) -> Path:
        return self.rdir / "data" / slave

    def status_path(self, slave: str) -> Path:
        return self.rdir / "status" / f"{slave}.json"

    def spawn(self, ident: str, kind: str, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """``argv`` inside ``host``'s namespace (its own session), output to logs/<ident>.log."""
        (self.rdir / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.rdir / "logs" / f"{ident}.log", "ab") as logf:
            proc = self.net.host(host).popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             preexec_fn=die_with_parent, cwd=str(Path.cwd()))
        self.procs[ident] = (kind, proc)
        return proc

    def python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def kinds(self) -> dict[str, tuple[str, int]]:
        return {ident: (kind, p.pid) for ident, (kind, p) in list(self.procs.items())}

    def check_alive(self) -> None:
        for ident, (_, p) in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{ident} exited with {p.returncode}; see {self.rdir / 'logs' / (ident + '.log')}")

    def close(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after 5 s."""
        for _, p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def mark_bulk_as_data(net: Any) -> list[str]:
    """``--routing data``: every router marks IP packets of BULK_MIN_BYTES or more for the data table, first in
    mangle PREROUTING (before a delay line's NFQUEUE), so baseline bulk data takes the primary directions."""
    done = []
    for node_name, role in net.node_roles().items():
        if not role.startswith("router:"):
            continue
        out = net.net[node_name].cmd(
            f"iptables -w -t mangle -I PREROUTING 1 -m length --length {BULK_MIN_BYTES}:65535 "
            f"-m comment --comment {MARK_COMMENT} -j MARK --set-mark 1 2>&1")
        if out.strip():
            raise RuntimeError(f"{role}: iptables failed: {out.strip()}")
        done.append(role)
    return done


def _epochs_over_budget(meter: TrunkMeter, topology: Topology) -> dict[str, int]:
    """Per trunk direction: epochs (topology.epoch long, from t_ref) whose bytes exceeded budget x epoch x 1.05,
    from the 1 s interface samples (a window's rate is its bytes over the sampled span)."""
    out: dict[str, int] = {}
    ep = float(topology.epoch)
    for link in meter.ports:
        budget = topology.links[link].capacity
        last: dict[int, tuple[float, int]] = {}
        for t, b in meter.history:
            if link in b:
                last[int((t - meter.t_ref) // ep)] = (t, b[link])
        over = 0
        keys = sorted(last)
        for a, b in itertools.pairwise(keys):
            (ta, ba), (tb, bb) = last[a], last[b]
            if tb > ta and (bb - ba) / (tb - ta) > budget * OVER_BUDGET:
                over += 1
        out[link] = over
    return out


def run_baseline(system: System, plan: Plan, *, run_dir: Path, latency: str = "auto", timeout: float = 600.0,
                 routing: str = "data", log: Callable[[str], None] = print, keep_data: bool = False,
                 network_factory: Callable[..., Any] | None = None) -> dict[str, Any]:
    """One baseline on a fresh network; returns (and writes) its summary.  Never leaves anything running."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if network_factory is None:
        from testbed.network import EmulatedNetwork

        network_factory = EmulatedNetwork
    rdir = Path(run_dir).resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    topo = plan.topology
    scenario = scaled_scenario(plan)
    pubs = publications(topo, scenario)
    finals = [p for p in pubs if p.version.final]
    t_start = time.monotonic()
    net: Any = None
    run: BaselineRun | None = None
    meter: TrunkMeter | None = None
    sampler: DaemonSampler | None = None
    before: dict[str, dict[str, int]] = {}
    after: dict[str, dict[str, int]] = {}
    done_at: dict[str, dict[str, float]] = {}  # slave -> key -> seconds after t0
    published: dict[str, float] = {}
    progress: list[tuple[float, int]] = []  # (t, slave x fileset pairs holding the newest published versions)
    error = ""
    latency_method = "unknown"
    completed = False
    settings: dict[str, Any] = {}
    with signals_raise() as shield:
        try:
            net = network_factory(topo, run_dir=rdir, latency=latency, log=log)
            net.start()
            latency_method = net.latency_method
            marked = mark_bulk_as_data(net) if routing == "data" else []
            if marked:
                log(f"{system.name}: bulk packets marked for the trunks' primary directions in {', '.join(marked)}")
            run = BaselineRun(net, plan, scenario, rdir, log)
            (rdir / "status").mkdir(exist_ok=True)
            run.catalog.touch()
            settings = system.settings()
            (rdir / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
            # every version's bytes on the source's disk and made fetchable now; the catalog publishes them later
            ready = []
            for pub in pubs:
                path = run.data_dir(pub.source) / pub.version.fileset / pub.name
                pub = Publication(pub.version, pub.source, pub.at, write_version(path, topo, pub.version))
                ready.append((pub, system.prepare(run, pub)))
            meter = TrunkMeter(net, topo, rdir / "qdisc.jsonl")
            before = meter.stats()
            sampler = DaemonSampler(run.kinds)
            sampler.start()
            system.start(run)
            run.t0 = meter.t_ref = time.monotonic()
            meter.tick()
            log(f"{system.name}: {len(run.procs)} processes started; {len(pubs)} file versions to publish "
                f"({len(finals)} final); routing {routing}")
            completed = _drive(system, run, ready, meter, timeout - (time.monotonic() - t_start), done_at,
                               published, progress)
            if not completed:
                error = f"timed out after {timeout:g}s"
        except (Interrupted, KeyboardInterrupt) as e:
            error = f"interrupted by {e or 'SIGINT'}"
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        finally:
            shield()
            if error:
                log(f"{system.name}: stopping: {error}")
            _teardown_step("stop sampler", sampler.stop if sampler else None, log)
            if meter is not None:
                with contextlib.suppress(Exception):
                    after = meter.stats()
            _teardown_step("stop processes", run.close if run else None, log)
            if meter is not None:
                meter.close()
            _teardown_step("tear down the network", net.stop if net is not None else None, log)
    verified, mismatches = _verify(run, finals) if run else (0, [])
    delta = _delta(before, after)
    trunks: dict[str, dict[str, Any]] = {}
    over = _epochs_over_budget(meter, topo) if meter else {}
    for tid, tr in sorted(topo.trunks.items()):
        for link, budget in ((f"trunk/{tid}", tr.primary_capacity), (f"trunk/{tid}/rev", tr.reverse_capacity)):
            d = delta.get(link, {})
            trunks[link] = {"budget_Bps": budget, "bytes": d.get("bytes"), "drops": d.get("drops"),
                            "sent_bytes": meter.sent_between(link) if meter else None,
                            "peak_5s_Bps": round(meter.peak(link), 1) if meter else None,
                            "epochs_over_budget": over.get(link)}
    need = needed_bytes(topo, [p.version for p in pubs])
    carried = sum(v["bytes"] or 0 for v in trunks.values())
    ok = completed and not mismatches and not error
    overall = max((t for per in done_at.values() for t in per.values()), default=None)
    summary = {
        "system": system.name,
        "id": rdir.name,
        "topology": str(plan.topology_path),
        "topology_name": topo.name,
        "scenario": str(plan.scenario_path),
        "scale": plan.scale,
        "block_size": topo.block_size,
        "latency": latency,
        "latency_method": latency_method,
        "routing": routing,
        "publication": "each file version whole, when the generator would have written its last byte",
        "completed": ok,
        "slaves": len(topo.slaves),
        "files_verified": verified,
        "files_mismatched": len(mismatches),
        "mismatches": mismatches[:50],
        "completion_s": {"overall": round(overall, 3) if ok and overall is not None else None,
                         **_per_fileset(topo, finals, done_at)},
        "published_s": published,
        "done_s": done_at,
        "progress": progress,
        "seconds": round(time.monotonic() - t_start, 3),
        "daemons": sampler.summary() if sampler else {},
        "trunk_directions": trunks,
        "trunk_bytes_all_directions": carried,
        "needed_bytes": sum(need.values()),
        "needed_per_datacenter": need,
        "trunk_efficiency": round(carried / sum(need.values()), 4) if need and meter else None,
        "trunk_efficiency_basis": "qdisc bytes over every trunk direction (IP bytes, ACKs included) / bytes each "
                                  "datacenter had to receive across trunks (every version)",
        "settings": settings,
        "error": error,
        "versions": versions(),
        "run_dir": str(rdir),
    }
    (rdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"{system.name}: {'COMPLETE' if ok else 'INCOMPLETE'}: {verified} files verified byte for byte, "
        f"{len(mismatches)} mismatched, completion {summary['completion_s']['overall']}s"
        f"{' (' + error + ')' if error else ''}; run folder {rdir}")
    if not keep_data:
        shutil.rmtree(rdir / "data", ignore_errors=True)
    return summary


def _drive(system: System, run: BaselineRun, pubs: list[tuple[Publication, dict[str, Any]]], meter: TrunkMeter,
           timeout: float,
           done_at: dict[str, dict[str, float]], published: dict[str, float],
           progress: list[tuple[float, int]]) -> bool:
    """Publishes on schedule, follows the clients' status files, shows progress once a second."""
    topo = run.topology
    deadline = time.monotonic() + max(0.0, timeout)
    pending = list(pubs)
    newest: dict[tuple[str, str], str] = {}  # (fileset, file) -> key of the newest published version
    pairs = [(s, fs) for s in topo.slaves for fs in topo.slaves[s].filesets if fs in run.scenario.filesets]
    next_show = time.monotonic()
    while True:
        now = time.monotonic() - run.t0
        while pending and pending[0][0].at <= now:
            pub, extra = pending.pop(0)
            entry = {"key": pub.key, "fileset": pub.version.fileset, "file": pub.version.file_id,
                     "version": pub.version.version, "size": pub.version.size, "sha256": pub.sha256,
                     "source": pub.source, "name": pub.name, **extra}
            with run.catalog.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            published[pub.key] = round(time.monotonic() - run.t0, 3)
            newest[(pub.version.fileset, pub.version.file_id)] = pub.key
        for s in topo.slaves:
            try:
                st = json.loads(run.status_path(s).read_text())
            except (OSError, ValueError):
                continue
            mine = done_at.setdefault(s, {})
            for key, t in st.get("done", {}).items():
                mine.setdefault(key, round(t - run.t0, 3))
        complete = 0
        for s, fs in pairs:
            keys = [k for (f, _), k in newest.items() if f == fs]
            src = topo.generator_slaves(fs)
            if keys and (s in src or all(k in done_at.get(s, {}) for k in keys)):
                complete += 1
        progress.append((round(now, 2), complete))
        finished = not pending and complete == len(pairs)
        if time.monotonic() >= next_show or finished:
            next_show += 1.0
            rates = meter.tick()
            run.log(f"{system.name} t={now:6.1f}s  "
                    f"{complete}/{len(pairs)} slave-filesets hold the newest versions  || {_line(topo, rates)}")
        if finished:
            meter.tick()
            return True
        if time.monotonic() >= deadline:
            return False
        run.check_alive()
        time.sleep(0.2)


def _line(topo: Topology, rates: Mapping[str, float]) -> str:
    """Trunk rates, primary+reverse (baselines may send data either way), MB/s."""
    parts = [f"{t} {rates.get(f'trunk/{t}', 0) / 1e6:.2f}+{rates.get(f'trunk/{t}/rev', 0) / 1e6:.2f}"
             for t in sorted(topo.trunks)]
    return "trunks MB/s primary+reverse " + " ".join(parts)


def _verify(run: BaselineRun, finals: list[Publication]) -> tuple[int, list[str]]:
    """Every slave's copy of every final version, sha256 against the source's bytes."""
    topo = run.topology
    verified = 0
    bad: list[str] = []
    for pub in finals:
        want = sha256_of(run.data_dir(pub.source) / pub.version.fileset / pub.name)
        for s in topo.slaves_of_fileset(pub.version.fileset):
            if s == pub.source:
                continue
            got = sha256_of(run.data_dir(s) / pub.version.fileset / pub.name)
            if want is not None and got == want:
                verified += 1
            else:
                bad.append(f"{s}: {pub.key}{'' if got else ' (missing)'}")
    return verified, bad


def _per_fileset(topo: Topology, finals: list[Publication], done_at: Mapping[str, Mapping[str, float]]
                 ) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for fs in sorted({p.version.fileset for p in finals}):
        times = []
        for p in finals:
            if p.version.fileset != fs:
                continue
            for s in topo.slaves_of_fileset(fs):
                if s != p.source:
                    times.append(done_at.get(s, {}).get(p.key))
        out[fs] = None if not times or None in times else round(max(t for t in times if t is not None), 3)
    return out


def as_json(p: Publication) -> dict[str, Any]:
    return {**asdict(p.version), "source": p.source, "at": p.at, "sha256": p.sha256}
