"""`scaledist local`: the whole system as separate processes on loopback addresses, no root needed.

Starts the resource manager, the masters, every slave and the generators as
real ``scaledist`` processes, each on its own 127.77.x.y address, lets them
distribute the scenario, watches the slaves' disks for progress, then checks
every slave's files byte for byte against the generator's copy.
"""

from __future__ import annotations

import ctypes
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from scaledist import storage
from scaledist.cluster import Cluster, Endpoint, loopback_plan, new_key, write_cluster
from scaledist.scenario import Scenario, default_scenario, load_scenario
from scaledist.topology import Topology
from scaledist.topology_schema import load_topology

AUTO_BLOCK = 1 << 20  # 'auto' scale: blocks of at most 1 MiB, so a laptop finishes in about a minute


def auto_scale(topology: Topology) -> float:
    return min(1.0, AUTO_BLOCK / topology.block_size)


@dataclass
class Progress:
    t: float
    filesets: dict[str, tuple[int, int, int, int]]  # fileset -> (slaves complete, slaves, bytes held, bytes wanted)

    def line(self) -> str:
        parts = [f"{fs} {c}/{n} slaves complete ({h / 1e6:.1f}/{w / 1e6:.1f} MB)"
                 for fs, (c, n, h, w) in sorted(self.filesets.items())]
        return f"t={self.t:6.1f}s  " + " | ".join(parts)


@dataclass
class Verification:
    files_verified: int = 0
    files_mismatched: int = 0
    mismatches: list[str] = field(default_factory=list)


class LocalCluster:
    """Real daemons as child processes; every start is paired with a stop in ``close()``."""

    def __init__(self, topology_path: str | Path, scenario_path: str | Path | None = None, *,
                 scale: float | None = None, run_dir: str | Path | None = None, mode: str = "pull",
                 report_interval: float | None = None, log: Callable[[str], None] = print,
                 endpoints: dict[str, Endpoint] | None = None, management: dict[str, str] | None = None,
                 spawn: Spawn | None = None) -> None:
        """``endpoints``/``management``/``spawn`` let an emulated network (the testbed) place each daemon
        on its own host; by default every daemon gets a loopback address and a plain child process."""
        self.topology_path = Path(topology_path).resolve()
        base = load_topology(self.topology_path)
        self.scale = scale if scale is not None else auto_scale(base)
        if self.scale <= 0:
            raise ValueError(f"--scale must be > 0, got {self.scale}")
        self.topology = base.scaled(self.scale) if self.scale != 1.0 else base
        scenario = load_scenario(scenario_path, base) if scenario_path else default_scenario(base)
        self.scenario_path = Path(scenario_path).resolve() if scenario_path else None
        # Scaled by the block size's own factor so files keep their block boundaries.
        self.size_factor = self.topology.block_size / base.block_size
        self.scenario: Scenario = scenario.scaled(self.size_factor) if self.scale != 1.0 else scenario
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(run_dir) if run_dir else Path("results/runs") / f"local-{stamp}-{os.getpid()}"
        self.run_dir = self.run_dir.resolve()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(topology=str(self.topology_path), scale=self.scale, key=new_key(),
                               endpoints=endpoints or loopback_plan(self.topology), management=management or {},
                               mode=mode, report_interval=report_interval)
        self.spawn = spawn or _spawn_child
        self.cluster_path = write_cluster(self.run_dir, self.cluster)
        if self.scenario_path is None:
            self.scenario_path = self.run_dir / "scenario.yaml"
            self.scenario_path.write_text(scenario_yaml(scenario))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log = log
        self.t0 = time.monotonic()

    # --- processes -------------------------------------------------------------

    def data_dir(self, slave: str) -> Path:
        return self.run_dir / "data" / slave

    def command(self, ident: str) -> list[str]:
        topo = self.topology
        base = [sys.executable, "-m", "scaledist"]
        common = [str(self.topology_path), "--id", ident, "--cluster", str(self.cluster_path)]
        if ident == topo.resource_manager.id:
            return [*base, "rm", *common, "--ledger", str(self.run_dir / "ledger.jsonl")]
        if ident in topo.masters:
            return [*base, "master", *common]
        if ident in topo.slaves:
            return [*base, "slave", *common, "--data-dir", str(self.data_dir(ident))]
        if ident in topo.generators:
            g = topo.generators[ident]
            return [*base, "generator", *common, "--scenario", str(self.scenario_path), "--data-dir",
                    str(self.data_dir(g.slave)), "--manifest", str(self.manifest_path(ident))]
        raise KeyError(f"no daemon called {ident!r} in {self.topology_path}")

    def manifest_path(self, generator: str) -> Path:
        return self.run_dir / f"manifest-{generator}.json"

    def start_daemon(self, ident: str) -> None:
        if ident in self.procs and self.procs[ident].poll() is None:
            raise RuntimeError(f"{ident} is already running")
        logf = open(self.run_dir / "logs" / f"{ident}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.procs[ident] = self.spawn(ident, self.command(ident), logf)
        finally:
            logf.close()

    def wait_listening(self, idents: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for ident in idents:
            ep = self.cluster.endpoint(ident)
            host = self.cluster.control_host(ident)
            while True:
                proc = self.procs[ident]
                if proc.poll() is not None:
                    raise RuntimeError(f"{ident} exited with {proc.returncode} at start-up; see "
                                       f"{self.run_dir / 'logs' / (ident + '.log')}")
                try:
                    with self.probe((host, ep.control)):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{ident} did not listen on {host}:{ep.control} "
                                           f"within {timeout}s") from None
                    time.sleep(0.05)

    def probe(self, addr: tuple[str, int]) -> socket.socket:
        """A connection to a daemon's control port; the testbed overrides it to connect from inside its network."""
        return socket.create_connection(addr, timeout=0.5)

    def start_servers(self) -> None:
        """The resource manager, masters and slaves, listening; nothing moves until a generator starts."""
        topo = self.topology
        self.t0 = time.monotonic()
        servers = [topo.resource_manager.id, *topo.masters, *topo.slaves]
        for ident in servers:
            self.start_daemon(ident)
        self.wait_listening(servers)

    def start(self) -> None:
        topo = self.topology
        self.start_servers()
        for ident in topo.generators:
            self.start_daemon(ident)
        self.log(f"started {len(self.procs)} daemons ({len(topo.slaves)} slaves) at scale {self.scale:g}; "
                 f"block {topo.block_size}B; run folder {self.run_dir}")

    def kill(self, ident: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[ident]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def restart(self, ident: str) -> None:
        self.kill(ident)
        self.start_daemon(ident)

    def close(self) -> None:
        """SIGTERM every daemon, SIGKILL what is left after 5 s: nothing survives the run."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observation -----------------------------------------------------------

    def manifests(self) -> dict[str, dict[str, object]]:
        out = {}
        for g in self.topology.generators:
            p = self.manifest_path(g)
            if p.exists():
                out[g] = json.loads(p.read_text())
        return out

    def generators_done(self) -> bool:
        for g, proc in self.procs.items():
            if g in self.topology.generators and proc.returncode not in (None, 0):
                raise RuntimeError(f"generator {g} failed with exit code {proc.returncode}; see its log")
        m = self.manifests()
        return len(m) == len(self.topology.generators) and all(x.get("done") for x in m.values())

    def expected(self) -> dict[str, dict[str, tuple[int, int]]]:
        """fileset -> file_id -> (version, size), including the FileSet file itself."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for m in self.manifests().values():
            gen_store = storage.BlockStore(self.data_dir(str(m["slave"])), self.topology.block_size)
            for fs, entry in m["filesets"].items():  # type: ignore[union-attr]
                files = out.setdefault(fs, {})
                for fid, f in entry["files"].items():
                    files[fid] = (f["version"], f["size"])
                st = gen_store.stored(fs, fs)
                if st is not None:
                    files[fs] = (st.version, st.size)
        return out

    def progress(self) -> Progress:
        expected = self.expected()
        result: dict[str, tuple[int, int, int, int]] = {}
        for fs in self.topology.filesets:
            want = expected.get(fs, {})
            wanted_bytes = sum(size for _, size in want.values())
            slaves = self.topology.slaves_of_fileset(fs)
            complete = held = 0
            for s in slaves:
                files = storage.BlockStore(self.data_dir(s), self.topology.block_size).files(fs)
                ok = bool(want)
                for fid, (version, size) in want.items():
                    st = files.get(fid)
                    if st is not None and st.version == version:
                        held += st.size
                        ok = ok and st.complete and st.size == size
                    else:
                        ok = False
                complete += ok
            result[fs] = (complete, len(slaves), held, wanted_bytes * len(slaves))
        return Progress(time.monotonic() - self.t0, result)

    def wait(self, timeout: float, every: float = 1.0, show: bool = True,
             line: Callable[[Progress], str] | None = None, expected_down: Collection[str] = (),
             hold: Callable[[], bool] | None = None) -> tuple[bool, dict[str, float]]:
        """Polls the slaves' disks until every slave holds the final versions; returns completion times.

        ``line`` renders the progress shown every ``every`` seconds (the testbed adds its trunk rates).
        ``expected_down`` (read live, a drill mutates it) names daemons stopped on purpose, whose death is
        no error; while ``hold()`` is true the wait goes on after completion (a drill still timing a repair).
        """
        render = line or Progress.line
        deadline = time.monotonic() + max(0.0, timeout)
        done_at: dict[str, float] = {}
        next_show = time.monotonic()
        while True:
            for ident, proc in list(self.procs.items()):
                if ident not in self.topology.generators and proc.poll() is not None:
                    if ident in expected_down or self.procs.get(ident) is not proc:
                        continue  # stopped on purpose, or replaced meanwhile
                    raise RuntimeError(f"{ident} died with exit code {proc.returncode}; see "
                                       f"{self.run_dir / 'logs' / (ident + '.log')}")
            gens = self.generators_done()
            p = self.progress()
            for fs, (c, n, _, _) in p.filesets.items():
                if gens and c == n and fs not in done_at:
                    done_at[fs] = p.t
            finished = gens and len(done_at) == len(self.topology.filesets) and not (hold and hold())
            if show and (time.monotonic() >= next_show or finished):
                next_show += every
                self.log(render(p))
            if finished:
                return True, done_at
            if time.monotonic() >= deadline:
                return False, done_at
            time.sleep(0.2)

    def verify(self) -> Verification:
        """Every slave's files compared byte for byte with the generator's copy."""
        v = Verification()
        expected = self.expected()
        origin = {fs: g.slave for g in self.topology.generators.values() for fs in g.filesets}
        for fs, files in expected.items():
            ref = storage.BlockStore(self.data_dir(origin[fs]), self.topology.block_size)
            for s in self.topology.slaves_of_fileset(fs):
                if s == origin[fs]:
                    continue
                mine = storage.BlockStore(self.data_dir(s), self.topology.block_size)
                for fid, (version, size) in files.items():
                    a = mine.data_path(fs, fid, version)
                    b = ref.data_path(fs, fid, version)
                    st = mine.stored(fs, fid)
                    same = (a.exists() and st is not None and st.complete and st.size == size
                            and filecmp.cmp(a, b, shallow=False))
                    if same:
                        v.files_verified += 1
                    else:
                        v.files_mismatched += 1
                        v.mismatches.append(f"{s}: {fs}/{fid}@{version}")
        return v


Spawn = Callable[[str, list[str], IO[bytes]], "subprocess.Popen[bytes]"]


def _spawn_child(ident: str, cmd: list[str], logf: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent)


def die_with_parent() -> None:
    """In the child: SIGTERM when the launcher dies, even by SIGKILL, so no daemon outlives its run."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Terminated(Exception):
    """SIGTERM to the launcher: stop the run and clean up like Ctrl-C."""


_LAUNCHER = os.getpid()


def _on_sigterm(signum: int, frame: object) -> None:
    if os.getpid() != _LAUNCHER:  # a child forked without exec inherited this handler: die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    raise Terminated(f"signal {signum}")


def scenario_yaml(s: Scenario) -> str:
    """The default scenario written out, so every daemon and the run folder read the same file."""
    lines = ["version: 1", f"name: {s.name}", "filesets:"]
    for fs, plan in s.filesets.items():
        lines.append(f"  {fs}:")
        if plan.generation_rate:
            lines.append(f"    generation_rate: {plan.generation_rate}B/s")
        lines.append("    files:")
        lines += [f"      - {{id: {f.id}, size: {f.size}B, start: {f.start}s}}" for f in plan.files]
        if plan.updates:
            lines.append("    updates:")
            lines += [f"      - {{at: {u.at}s, file: {u.file}, size: {u.size}B}}" for u in plan.updates]
    return "\n".join(lines) + "\n"


def run_local(topology: str, scenario: str | None, scale: float | None, timeout: float, mode: str,
              run_dir: str | None, as_json: bool) -> int:
    out = (lambda s: print(s, file=sys.stderr)) if as_json else print
    t0 = time.monotonic()
    lc = LocalCluster(topology, scenario, scale=scale, run_dir=run_dir, mode=mode, log=out)
    completed = False
    done_at: dict[str, float] = {}
    error = ""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        lc.start()
        completed, done_at = lc.wait(timeout)
        if not completed:
            error = f"timed out after {timeout:g}s"
    except (KeyboardInterrupt, Terminated):
        error = "interrupted"
    except RuntimeError as e:
        error = str(e)
    finally:
        lc.close()
        signal.signal(signal.SIGTERM, previous)
    ver = lc.verify()
    summary = {
        "topology": str(lc.topology_path),
        "scenario": str(lc.scenario_path),
        "scale": lc.scale,
        "mode": mode,
        "completed": completed and ver.files_mismatched == 0,
        "slaves": len(lc.topology.slaves),
        "files_verified": ver.files_verified,
        "files_mismatched": ver.files_mismatched,
        "seconds": round(time.monotonic() - t0, 3),
        "completion_s": {fs: round(t, 3) for fs, t in done_at.items()},
        "run_dir": str(lc.run_dir),
        "error": error,
    }
    (lc.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if ver.mismatches:
        out("mismatched: " + ", ".join(ver.mismatches[:20]))
    out(f"{'COMPLETE' if summary['completed'] else 'INCOMPLETE'}: {ver.files_verified} files verified byte for "
        f"byte on {summary['slaves']} slaves, {ver.files_mismatched} mismatched, {summary['seconds']}s"
        f"{' (' + error + ')' if error else ''}; logs and ledger in {lc.run_dir}")
    if as_json:
        print(json.dumps(summary))
    return 0 if summary["completed"] else 1
