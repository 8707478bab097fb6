"""`scaledist-testbed run`: the real daemons on an emulated network, one experiment, one run folder.

The same daemons `scaledist local` starts (``LocalCluster``), but each inside
the Mininet host the topology places it on, talking over tc-shaped links with
real trunk latency.  The order is fixed so that nothing is ever left half-built:

1. validate everything that can be checked without building anything (topology,
   scenario, scale, root, Mininet) -- a mistake ends with one line and exit 2;
2. build the network, start the daemons, show progress once a second (per
   fileset: slaves complete; per trunk: measured rate against its budget);
3. on completion, timeout, error, Ctrl-C or SIGTERM: sample last figures, stop
   the daemons, verify every slave's files byte for byte, then tear the network
   down, and write ``summary.json`` (+ ``audit.json``) into the run folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from scaledist import storage
from scaledist.cluster import Endpoint
from scaledist.local import LocalCluster, die_with_parent
from scaledist.scenario import Scenario, load_scenario
from scaledist.topology import Topology
from scaledist.topology_schema import load_topology
from scaledist.units import fmt_rate
from testbed.daemons import DaemonSampler
from testbed.netns import socket_in_netns
from traffic.measure import Measurement

MIN_RATE = 1000.0  # bytes/s: 8 kbit/s, the slowest rate an HTB class shapes sensibly
# Default scale: blocks of at most this many bytes.  Measured on the 2-core CI machine:
# patent-fig1 + default-scenario at 1 MiB blocks (scale 1/64) completes in about a minute and a
# half with the daemons using a few percent of the machine; see the README / report for figures.
DEFAULT_BLOCK = 1 << 20
NEED_ROOT = "scaledist-testbed {command} needs root (network namespaces, tc); run it with sudo"
NEED_MININET = ("scaledist-testbed {command} needs Mininet, which is not installed ({why}); "
                "bash scripts/setup.sh installs it")


class RunError(Exception):
    """Bad input or a machine that cannot run the testbed: one sentence, exit code 2, nothing built.

    Messages about the machine start with "scaledist-testbed <command>" themselves; the CLI prefixes the others.
    """


class Interrupted(BaseException):
    """SIGINT/SIGTERM during a run: unwinds like KeyboardInterrupt so every teardown runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --- validation (nothing is built here) -----------------------------------------------------------


def default_scale(topology: Topology) -> float:
    """Blocks of at most DEFAULT_BLOCK bytes, like `scaledist local --scale auto`."""
    return min(1.0, DEFAULT_BLOCK / topology.block_size)


@dataclass(frozen=True)
class Plan:
    topology_path: Path
    scenario_path: Path | None
    base: Topology
    topology: Topology  # scaled
    scenario: Scenario | None
    scale: float
    scale_chosen: bool  # True when the default was used


def check_scale(topology: Topology, scale: float, source: str) -> None:
    """Refuse a scale that makes any link slower than 8 kbit/s, naming the slowest such link."""
    if scale <= 0:
        raise RunError(f"--scale must be > 0, got {scale:g}")
    shaped = {lid: float(link.physical or link.capacity) for lid, link in topology.links.items()}  # what HTB gets
    slow = sorted((cap * scale, lid) for lid, cap in shaped.items() if cap * scale < MIN_RATE)
    if slow:
        rate, lid = slow[0]
        cap = shaped[lid]
        need = MIN_RATE / min(shaped.values())
        more = f" (and {len(slow) - 1} more links)" if len(slow) > 1 else ""
        raise RunError(f"{source}: {lid}: {fmt_rate(cap)} x scale {scale:g} = {rate:.0f} B/s is slower than "
                       f"8 kbit/s (1000 B/s){more}; use --scale {need:.3g} or more")


def check_machine(command: str = "run", mininet: bool = True) -> None:
    """Root and Mininet, checked before anything is built."""
    if os.geteuid() != 0:
        raise RunError(NEED_ROOT.format(command=command))
    if not mininet:
        return
    try:
        import mininet.net
    except ImportError as e:
        raise RunError(NEED_MININET.format(command=command, why=f"import mininet failed: {e}")) from None
    if shutil.which("mnexec") is None:
        raise RunError(NEED_MININET.format(command=command, why="mnexec is not on PATH"))
    try:
        import testbed.network  # noqa: F401  (pyroute2 and friends, before anything is built)
    except ImportError as e:
        raise RunError(f"scaledist-testbed {command} cannot load the testbed ({e}); "
                       "bash scripts/setup.sh installs what it needs") from None


def plan_run(topology: str | Path, scenario: str | Path | None, scale: float | None,
             *, command: str = "run", machine: bool = True) -> Plan:
    """Loads and checks the inputs with scaledist's own loaders; raises TopologyError/ScenarioError/RunError."""
    base = load_topology(topology)
    sc = load_scenario(scenario, base) if scenario else None
    chosen = scale is None
    s = default_scale(base) if scale is None else scale
    check_scale(base, s, str(topology))
    if machine:
        check_machine(command)
    return Plan(Path(topology).resolve(), Path(scenario).resolve() if scenario else None, base,
                base.scaled(s) if s != 1.0 else base, sc, s, chosen)


# --- the daemons inside the network ---------------------------------------------------------------


def connect_in_netns(pid: int, addr: tuple[str, int], timeout: float = 0.5) -> socket.socket:
    """A TCP connection made from inside the network namespace of process ``pid``."""
    return socket_in_netns(pid, lambda: socket.create_connection(addr, timeout=timeout))


class TestbedCluster(LocalCluster):
    """LocalCluster whose daemons run in the network's hosts and whose readiness probe runs inside it."""

    def __init__(self, net: Any, *args: Any, **kwargs: Any) -> None:
        self.net = net
        super().__init__(*args, spawn=self._spawn, **kwargs)
        self._probe_pid = {}
        for ident in [self.topology.resource_manager.id, *self.topology.masters, *self.topology.slaves]:
            self._probe_pid[self.cluster.control_host(ident)] = net.host(ident).pid

    def _spawn(self, ident: str, cmd: list[str], logf: IO[bytes]) -> subprocess.Popen[bytes]:
        return self.net.host(ident).popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=die_with_parent)

    def probe(self, addr: tuple[str, int]) -> socket.socket:
        """Connects from the daemon's own host, where its address lives (the root namespace has no route)."""
        pid = self._probe_pid.get(addr[0])
        if pid is None:
            raise OSError(f"no host has address {addr[0]}")
        return connect_in_netns(pid, addr)

    def kinds(self) -> dict[str, tuple[str, int]]:
        """ident -> (daemon kind, pid) of every daemon started, for the resource sampler."""
        t = self.topology
        out = {}
        for ident, proc in list(self.procs.items()):
            kind = ("rm" if ident == t.resource_manager.id else "master" if ident in t.masters
                    else "generator" if ident in t.generators else "slave")
            out[ident] = (kind, proc.pid)
        return out


# --- signals --------------------------------------------------------------------------------------


@contextlib.contextmanager
def signals_raise() -> Iterator[Callable[[], None]]:
    """SIGINT/SIGTERM raise Interrupted once; the yielded ``shield()`` makes later ones only log (teardown)."""
    state = {"shielded": False, "raised": False}
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # A child forked without exec (pyroute2's NetNS helper, multiprocessing) inherits this handler and
            # a copy of our stack: raising here would run the run's teardown in the child.  Die as by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        if state["shielded"] or state["raised"]:
            print(f"scaledist-testbed: {signal.Signals(signum).name} received; still tearing down, please wait",
                  file=sys.stderr)
            return
        state["raised"] = True
        raise Interrupted(signum)

    def shield() -> None:
        state["shielded"] = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield shield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- the run --------------------------------------------------------------------------------------


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f}"


class TrunkMeter:
    """Trunk rates against their budgets once a second, and the full qdisc statistics now and then.

    The per-second rates come from the trunk interfaces' transmit counters, read from
    ``/proc/<router pid>/net/dev`` without entering any namespace (every byte a trunk carries leaves
    through its HTB qdisc, so these are the bytes the qdisc sent).  ``net.qdisc_stats()`` -- bytes,
    drops, overlimits, backlog of every shaped link -- enters each namespace through a forked helper and
    costs about half a CPU-second per call on patent-fig1 here, which would perturb the experiment it
    measures if done every second; it is read before, every QDISC_EVERY seconds (``qdisc.jsonl``) and
    after.  Each reading is stamped with the middle of its call; the summary's peak is taken over
    windows of at least PEAK_WINDOW seconds, since a 1 s window mostly measures reading jitter.
    """

    PEAK_WINDOW = 5.0
    QDISC_EVERY = 10.0

    def __init__(self, net: Any, topology: Topology, record: Path) -> None:
        self.net = net
        self.topology = topology
        self.trunks = [f"trunk/{t}" for t in sorted(topology.trunks)]
        shaped = net.links()
        self.ports = {link: (shaped[link].pid, shaped[link].intf)
                      for t in self.trunks for link in (t, f"{t}/rev") if link in shaped}
        self.last: dict[str, int] = {}
        self.last_t = 0.0
        self.last_qdisc = 0.0
        self.history: list[tuple[float, dict[str, int]]] = []  # (monotonic, link -> bytes sent)
        self.record = record.open("a")
        self.t_ref = time.monotonic()

    def stats(self) -> dict[str, dict[str, int]]:
        """Full qdisc statistics of every shaped link (expensive, see the class docstring)."""
        t0 = time.monotonic()
        st = {k: dict(v) for k, v in self.net.qdisc_stats().items()}
        self.last_qdisc = now = (t0 + time.monotonic()) / 2
        self.record.write(json.dumps({"t": round(now - self.t_ref, 3), "stats": st}) + "\n")
        return st

    def sent(self) -> dict[str, int]:
        """Bytes sent so far by each trunk direction's interface."""
        out: dict[str, int] = {}
        tables: dict[int | None, dict[str, int]] = {}
        for link, (pid, intf) in self.ports.items():
            if pid not in tables:
                tables[pid] = _tx_bytes(pid)
            if intf in tables[pid]:
                out[link] = tables[pid][intf]
        return out

    def tick(self) -> dict[str, float]:
        """Rates since the previous tick (bytes/s), per trunk direction; a full qdisc reading when due."""
        t0 = time.monotonic()
        cur = self.sent()
        now = (t0 + time.monotonic()) / 2
        rates: dict[str, float] = {}
        if self.last:
            dt = max(1e-3, now - self.last_t)
            rates = {k: max(0, v - self.last.get(k, v)) / dt for k, v in cur.items()}
        self.last, self.last_t = cur, now
        self.history.append((now, cur))
        if now - self.last_qdisc >= self.QDISC_EVERY:
            self.stats()
        return rates

    def sent_between(self, link: str) -> int | None:
        h = [b[link] for _, b in self.history if link in b]
        return h[-1] - h[0] if h else None

    def peak(self, link: str) -> float:
        """Highest mean rate of ``link`` over any window of at least PEAK_WINDOW seconds (bytes/s)."""
        h = [(t, b[link]) for t, b in self.history if link in b]
        best = 0.0
        j = 0
        for i in range(len(h)):
            while j < len(h) and h[j][0] - h[i][0] < self.PEAK_WINDOW:
                j += 1
            if j == len(h):
                break
            best = max(best, (h[j][1] - h[i][1]) / (h[j][0] - h[i][0]))
        return best

    def line(self, rates: Mapping[str, float]) -> str:
        parts = []
        for link in self.trunks:
            budget = self.topology.links[link].capacity
            parts.append(f"{link.split('/')[1]} {_mb(rates.get(link, 0.0))}/{_mb(budget)}")
        return ("trunks MB/s " + " ".join(parts)) if parts else ""

    def close(self) -> None:
        self.record.close()


def _tx_bytes(pid: int | None) -> dict[str, int]:
    """Interface -> transmitted bytes in the network namespace of ``pid`` (None: ours), from /proc."""
    path = f"/proc/{pid}/net/dev" if pid else "/proc/self/net/dev"
    out: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, fields = line.partition(":")
        values = fields.split()
        if len(values) >= 9:
            out[name.strip()] = int(values[8])  # receive: 8 fields, then transmit bytes
    return out


def _delta(before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]) -> dict[str, dict]:
    out = {}
    for link, st in after.items():
        b = before.get(link, {})
        out[link] = {k: v - b.get(k, 0) for k, v in st.items() if k in ("bytes", "packets", "drops", "overlimits",
                                                                        "requeues")}
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release(), "machine": platform.machine()}
    for dist in ("scaledist", "psutil", "pyroute2", "scapy", "NetfilterQueue", "msgspec", "PyYAML"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        from mininet.net import VERSION

        out["mininet"] = VERSION
    except ImportError:
        pass
    try:
        out["tc"] = subprocess.run(["tc", "-V"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def run_testbed(plan: Plan, *, timeout: float = 600.0, mode: str = "pull", latency: str = "auto",
                run_dir: str | Path | None = None, as_json: bool = False, keep_data: bool = False,
                network_factory: Callable[..., Any] | None = None, drill: Any | None = None) -> int:
    """One experiment; returns 0 only if every slave completed and every file verified byte for byte.

    ``drill`` (a ``testbed.drill.DrillRunner``) injects and repairs faults during the run: started after the
    daemons, stopped (every fault repaired) before anything is torn down, its section added to the summary.
    """
    out: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if as_json else (
        lambda s: print(s, flush=True))
    if network_factory is None:
        from testbed.network import EmulatedNetwork

        network_factory = EmulatedNetwork
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rdir = Path(run_dir) if run_dir else Path("results/runs") / f"{plan.topology.name}-{stamp}"
    rdir = rdir.resolve()
    if rdir.exists() and any(rdir.iterdir()):
        raise RunError(f"run folder {rdir} already exists and is not empty; choose another --run-dir")
    rdir.mkdir(parents=True, exist_ok=True)
    out(f"scale {plan.scale:g}{' (default: blocks of at most 1 MiB)' if plan.scale_chosen else ''}; "
        f"block {plan.topology.block_size} B; run folder {rdir}")

    t0 = time.monotonic()
    net: Any = None
    lc: TestbedCluster | None = None
    sampler: DaemonSampler | None = None
    meter: TrunkMeter | None = None
    measurement: Measurement | None = None  # traffic/: epochs.jsonl, capture/, flows.json, measurement.json
    completed = False
    done_at: dict[str, float] = {}
    error = ""
    interrupted: int | None = None
    refused = ""
    qdisc_before: dict[str, dict[str, int]] = {}
    qdisc_after: dict[str, dict[str, int]] = {}
    audit: dict[str, object] = {}
    latency_method = "unknown"
    summary: dict[str, Any] = {}
    with signals_raise() as shield:
        try:
            if drill is not None:  # before Mininet copies the mount table into every host (a tmpfs data dir)
                drill.before_network(plan, rdir, out)
            net = network_factory(plan.topology, run_dir=rdir, latency=latency, log=out)
            net.start()
            latency_method = net.latency_method
            out(f"network up: {len(plan.topology.slaves)} slaves, {len(plan.topology.trunks)} trunks, "
                f"latency by {latency_method}")
            t = plan.topology
            idents = [t.resource_manager.id, *t.masters, *t.slaves, *t.generators]
            endpoints = {i: Endpoint(net.ip(i)) for i in idents}
            management = None
            if t.control == "management":
                management = {i: m for i in idents if (m := net.mgmt_ip(i))}
            lc = TestbedCluster(net, plan.topology_path, plan.scenario_path, scale=plan.scale, run_dir=rdir,
                                mode=mode, log=out, endpoints=endpoints, management=management)
            meter = TrunkMeter(net, t, rdir / "qdisc.jsonl")
            qdisc_before = meter.stats()
            sampler = DaemonSampler(lc.kinds)
            sampler.start()
            measurement = Measurement(net, t, rdir, scenario=plan.scenario, scale=plan.scale, log=out)
            measurement.start(lc)  # tcpdump on the trunks and the epoch sampler's baseline, before the daemons
            meter.t_ref = time.monotonic()
            if drill is not None:  # faults that must act before the daemons start (a data dir on a tmpfs, ...)
                drill.prepare(net, lc, plan.topology, rdir, out)
            lc.start()
            if drill is not None:
                drill.start(net, lc, plan.topology, rdir, out)
            sampler.sample()  # at once: a generator with little to write may be gone within the first second
            meter.tick()
            completed, done_at = lc.wait(timeout - (time.monotonic() - t0),
                                         line=lambda p: f"{p.line()}  || {meter.line(meter.tick())}",
                                         expected_down=drill.expected_down if drill is not None else (),
                                         hold=drill.holding if drill is not None else None)
            if not completed:
                error = f"timed out after {timeout:g}s"
        except Interrupted as e:
            interrupted = e.signum
            error = f"interrupted by {e}"
        except KeyboardInterrupt:
            interrupted = signal.SIGINT
            error = "interrupted by SIGINT"
        except Exception as e:  # a daemon died, the network could not be built: recorded, then torn down
            error = f"{type(e).__name__}: {e}"
            if lc is None and type(e).__name__ == "TestbedError":  # this machine cannot build it: say so, exit 2
                refused = str(e)
        finally:
            shield()
            if error:
                out(f"stopping: {error}")
            # every fault repaired while the daemons and the network still exist
            _teardown_step("repair drill faults", drill.stop if drill is not None else None, out)
            _teardown_step("stop sampler", sampler.stop if sampler else None, out)
            if meter is not None:
                with contextlib.suppress(Exception):
                    qdisc_after = meter.stats()
            _teardown_step("stop daemons", lc.close if lc else None, out)
            _teardown_step("drill faults' last steps", drill.after_daemons if drill is not None else None, out)
            _teardown_step("stop measurement", measurement.stop if measurement else None, out)  # before the network
            if net is not None:
                try:
                    audit = dict(net.audit())
                except Exception as e:
                    audit = {"error": f"{type(e).__name__}: {e}"}
            if meter is not None:
                meter.close()
            _teardown_step("tear down the network", net.stop if net is not None else None, out)
            _teardown_step("write measurement", measurement.finish if measurement else None, out)
            summary = _summarise(plan, lc, rdir, mode, latency, latency_method, completed, done_at, error,
                                 sampler, meter, qdisc_before, qdisc_after, t0)
            if drill is not None:  # before the data is removed: it counts corrupt blocks on the slaves' disks
                summary["drill"] = drill.finish(lc, summary)
            if audit:
                (rdir / "audit.json").write_text(json.dumps(audit, indent=1, default=str) + "\n")
                summary["audit"] = "audit.json"
            summary["data_kept"] = keep_data
            (rdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            if lc is not None and not keep_data:
                shutil.rmtree(rdir / "data", ignore_errors=True)
    if summary:  # the run ends in its report: verdict per trunk, CSVs, plots, report.html (results/)
        from results.report import report_after_run

        summary = report_after_run(rdir, out) or summary
    _report(summary, out)
    if as_json:
        print(json.dumps(summary), flush=True)
    if interrupted is not None:
        return 128 + int(interrupted)
    if refused:
        print(f"scaledist-testbed run: {refused}", file=sys.stderr)
        return 2
    return 0 if summary["completed"] else 1


def _teardown_step(what: str, fn: Callable[[], object] | None, out: Callable[[str], None]) -> None:
    """Runs one teardown step; a failure is reported and the next steps still run."""
    if fn is None:
        return
    try:
        fn()
    except Exception as e:
        out(f"warning: {what} failed: {type(e).__name__}: {e}")


def _summarise(plan: Plan, lc: TestbedCluster | None, rdir: Path, mode: str, latency: str, latency_method: str,
               completed: bool, done_at: Mapping[str, float], error: str, sampler: DaemonSampler | None,
               meter: TrunkMeter | None, qdisc_before: Mapping[str, Mapping[str, int]],
               qdisc_after: Mapping[str, Mapping[str, int]], t0: float) -> dict[str, Any]:
    topo = plan.topology
    verified = mismatched = missing = 0
    mismatches: list[str] = []
    if lc is not None:
        try:
            v = lc.verify()
            verified, mismatched, mismatches = v.files_verified, v.files_mismatched, v.mismatches
            missing = sum(1 for m in mismatches if _not_yet_copied(lc, m))
        except Exception as e:
            error = error or f"verification failed: {type(e).__name__}: {e}"
    ok = bool(completed and lc is not None and mismatched == 0 and not error)
    completion: dict[str, float | None] = {"overall": round(max(done_at.values()), 3) if ok and done_at else None}
    completion.update({fs: round(s, 3) for fs, s in sorted(done_at.items())})
    delta = _delta(qdisc_before, qdisc_after)
    wall = max(1e-9, time.monotonic() - t0)
    trunks = {}
    for tid, tr in sorted(topo.trunks.items()):
        for link, budget in ((f"trunk/{tid}", tr.primary_capacity), (f"trunk/{tid}/rev", tr.reverse_capacity)):
            d = delta.get(link, {})
            trunks[link] = {
                "budget_Bps": budget,
                "bytes": d.get("bytes"),  # qdisc, before -> after
                "sent_bytes": meter.sent_between(link) if meter else None,  # interface, while the daemons ran
                "drops": d.get("drops"),
                "peak_5s_Bps": round(meter.peak(link), 1) if meter else None,  # TrunkMeter.PEAK_WINDOW
                "peak_over_budget": round(meter.peak(link) / budget, 3) if meter and budget else None,
            }
    return {
        "id": rdir.name,
        "topology": str(plan.topology_path),
        "topology_name": topo.name,
        "scenario": str(lc.scenario_path if lc else plan.scenario_path),
        "scale": plan.scale,
        "block_size": topo.block_size,
        "mode": mode,
        "latency": latency,
        "latency_method": latency_method,
        "completed": ok,
        "slaves": len(topo.slaves),
        "files_verified": verified,
        "files_mismatched": mismatched,
        "files_missing": missing,  # of the mismatched: not (completely) copied yet, as opposed to wrong bytes
        "mismatches": mismatches[:50],
        "completion_s": completion,
        "seconds": round(wall, 3),
        "daemons": sampler.summary() if sampler else {},
        "trunks": trunks,
        "qdisc": {"before": qdisc_before, "after": qdisc_after},
        "run_dir": str(rdir),
        "ledger": "ledger.jsonl" if (rdir / "ledger.jsonl").exists() else None,
        "error": error,
        "versions": versions(),
    }


def _not_yet_copied(lc: TestbedCluster, mismatch: str) -> bool:
    """A mismatch ('slave: fs/fid@version') whose file is absent, older or incomplete rather than different."""
    slave, _, rest = mismatch.partition(": ")
    fs, _, rest = rest.partition("/")
    fid, _, version = rest.rpartition("@")
    st = storage.BlockStore(lc.data_dir(slave), lc.topology.block_size).stored(fs, fid)
    return st is None or not st.complete or str(st.version) != version


def _report(summary: Mapping[str, Any], out: Callable[[str], None]) -> None:
    if not summary:
        return
    if summary["mismatches"]:
        out(f"mismatched ({summary['files_missing']} of them not copied yet): "
            + ", ".join(summary["mismatches"][:20]))
    d = summary["daemons"].get("all", {}) if summary["daemons"] else {}
    err = summary["error"]
    out(f"{'COMPLETE' if summary['completed'] else 'INCOMPLETE'}: {summary['files_verified']} files verified byte "
        f"for byte on {summary['slaves']} slaves, {summary['files_mismatched']} mismatched, "
        f"{summary['seconds']}s, latency by {summary['latency_method']}; daemons {d.get('cpu_s', 0)} CPU-s "
        f"({d.get('cpu_pct', 0)}% of the machine), largest {d.get('peak_rss_mb', 0)} MB"
        f"{' (' + err + ')' if err else ''}; run folder {summary['run_dir']}")
