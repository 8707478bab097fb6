"""Data-integrity and clock faults for drills: a full disk, a block rotting on disk, bytes damaged in flight,
a wall clock stepped on one host.

Each acts on the real world (a tmpfs and a ballast file, bytes of a data file, packets in a namespace, the
libfaketime offset of one process), never on a daemon's memory.  Two need to act before the daemons start
to be honest (a data directory must live on a small filesystem from the start; a daemon must already run
under libfaketime for its clock to jump without a restart): they offer ``prepare(ctx)``, which a drill
calls after building the cluster and before ``cluster.start()``.  Without it they fall back to restarting
the one daemon at injection, and say so in ``notes()``.  ``DiskFull`` also has ``finish(ctx)``: after the
daemons stopped, its data is copied back to the run folder and the tmpfs unmounted (``repair`` does it
too when the slave is not running; an atexit guard unmounts lazily if a drill dies).
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from scaledist import storage
from scaledist.units import UnitError, parse_duration, parse_size
from scaledist.wire import Codec
from testbed.faults.base import DrillContext, Fault, FaultSpecError, register
from testbed.faults.corrupt_worker import COMMENT as CORRUPT_COMMENT

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
BALLAST = ".scaledist-ballast"  # not a fileset id: the slave's storage ignores it
MOUNT_SOURCE = "scaledist-diskfull"  # the tmpfs's source name, so findmnt (and a cleaner) can recognise it
DATA_PORT, PUSH_PORT = 7101, 7102  # block data: pull replies leave the source's data port, pushes go to 7102
CORRUPT_QUEUE_BASE = 4000  # NFQUEUE numbers of corruptors (delay lines use 100 * datacenter index + n)
READY_TIMEOUT = 10.0
MiB = 1 << 20
MAX_SKEW = float(inspect.signature(Codec).parameters["max_skew"].default)  # the daemons' wire clock window


# --- shared helpers ------------------------------------------------------------------------------------


def _params(params: Mapping[str, Any], where: str, allowed: set[str], required: set[str]) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise FaultSpecError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
    missing = required - set(params)
    if missing:
        raise FaultSpecError(f"{where}: missing key {sorted(missing)[0]!r}")


def _str(params: Mapping[str, Any], key: str, where: str) -> str:
    v = params.get(key)
    if not isinstance(v, str) or not v:
        raise FaultSpecError(f"{where}: {key!r} must be a non-empty string, got {v!r}")
    return v


def _check_slave(ctx: DrillContext, slave: str, kind: str) -> None:
    if slave not in ctx.topology.slaves:
        raise FaultSpecError(f"{kind}: no slave {slave!r} in topology {ctx.topology.name!r}")


def _running(ctx: DrillContext, ident: str) -> bool:
    proc = ctx.cluster.procs.get(ident)
    return proc is not None and proc.poll() is None


def _restart(ctx: DrillContext, ident: str, between: Callable[[], None] | None = None) -> None:
    """Stop a daemon cleanly, run ``between`` while it is down, start it again and wait until it listens."""
    ctx.expected_down.add(ident)
    try:
        if _running(ctx, ident):
            ctx.cluster.kill(ident, signal.SIGTERM)
        if between is not None:
            between()
        ctx.cluster.start_daemon(ident)
        if ident not in ctx.topology.generators:
            ctx.cluster.wait_listening([ident])
    finally:
        ctx.expected_down.discard(ident)


def mounted(path: Path) -> bool:
    """Whether something is mounted exactly at ``path`` (from our mount table)."""
    target = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].replace("\\040", " ") == target for line in f)


def diskfull_mounts() -> list[str]:
    """Targets of every tmpfs a DiskFull fault mounted and did not unmount (for tests and cleaners)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 2] == MOUNT_SOURCE:
                out.append(fields[4])
    return out


# --- disk_full -------------------------------------------------------------------------------------------


@register
class DiskFull(Fault):
    """A slave's disk fills up: its data directory is a small tmpfs, and a ballast file takes all but
    ``leave`` bytes of it, so the slave's next writes fail with a real ENOSPC.  Repair deletes the ballast.

    The tmpfs is sized twice what the slave holds at the end of the scenario (at least 16 MiB), so without
    the ballast it never fills.  Best mounted by ``prepare`` over the still empty directory; at injection
    otherwise (the slave is stopped, its data moved onto the tmpfs, and started again).
    """

    kind = "disk_full"

    def __init__(self, slave: str, leave: int = 0) -> None:
        self.target = self.slave = slave
        self.leave = leave
        self.data_dir: Path | None = None
        self.size = 0
        self.ballast_bytes = 0
        self.how = ""  # "prepare" or "restart at injection"
        self.free_after = -1
        self.enospc_writes = 0  # copies whose write hit ENOSPC
        self.refused_full = 0  # pulls the slave refused up front: not room for a block
        self._log_path: Path | None = None
        self._backup: Path | None = None
        self._guard = False

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> Fault:
        _params(params, where, {"slave", "leave"}, {"slave"})
        leave = params.get("leave", 0)
        try:
            n = parse_size(leave)
        except (UnitError, ValueError, TypeError) as e:
            raise FaultSpecError(f"{where}: 'leave' must be a size such as '64KiB', got {leave!r}: {e}") from None
        if n < 0:
            raise FaultSpecError(f"{where}: 'leave' must not be negative, got {leave!r}")
        return cls(_str(params, "slave", where), n)

    def _size(self, ctx: DrillContext) -> int:
        """Twice what the slave holds at the end (every file and update of its filesets), rounded to MiB."""
        scenario = ctx.cluster.scenario
        mine = set(ctx.topology.slaves[self.slave].filesets)
        mine |= {fs for g in ctx.topology.generators.values() if g.slave == self.slave for fs in g.filesets}
        need = sum(plan.total_bytes() for fs, plan in scenario.filesets.items() if fs in mine)
        need += 4 * ctx.topology.block_size * max(1, len(mine))  # FileSet files and a rollover's overlap
        return max(16 * MiB, -(-2 * need // MiB) * MiB)

    def _mount(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", MOUNT_SOURCE, str(path)],
                           capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            raise RuntimeError(f"disk_full: cannot mount a tmpfs on {path}: {r.stderr.strip()} (needs root)")
        if not self._guard:
            atexit.register(self._emergency_unmount)
            self._guard = True

    def before_network(self, ctx: DrillContext) -> None:
        """On the testbed: mount before Mininet gives each host its private copy of the mount table, so the
        slave (in its host) and the testbed (reading progress, verifying) see the same tmpfs."""
        self.prepare(ctx)
        self.how = "before the network"

    def prepare(self, ctx: DrillContext) -> None:
        """Before the slave starts: its (empty) data directory becomes a tmpfs."""
        _check_slave(ctx, self.slave, self.kind)
        if self.how:  # mounted before the network already
            return
        self.data_dir = Path(ctx.cluster.data_dir(self.slave))
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise RuntimeError(f"disk_full: {self.data_dir} is not empty; prepare() runs before the slave starts")
        self.size = self._size(ctx)
        self._mount(self.data_dir)
        self.how = "prepare"

    def inject(self, ctx: DrillContext) -> None:
        _check_slave(ctx, self.slave, self.kind)
        self.data_dir = Path(ctx.cluster.data_dir(self.slave))
        self._log_path = Path(ctx.cluster.run_dir) / "logs" / f"{self.slave}.log"
        if not mounted(self.data_dir):
            self.size = self._size(ctx)
            _restart(ctx, self.slave, self._move_onto_tmpfs)
            self.how = "restart at injection"
        self._fill()
        ctx.log(f"disk_full: {self.slave}: ballast of {self.ballast_bytes} B on a {self.size} B tmpfs, "
                f"{self.free_after} B left")

    def _move_onto_tmpfs(self) -> None:
        assert self.data_dir is not None
        backup = self.data_dir.with_name(self.data_dir.name + ".disk")
        if self.data_dir.exists():
            self.data_dir.rename(backup)
            self._backup = backup
        self._mount(self.data_dir)
        if self._backup is not None:
            shutil.copytree(self._backup, self.data_dir, dirs_exist_ok=True)

    def _fill(self) -> None:
        """Allocate everything free but ``leave`` bytes (tmpfs allocates whole pages, so round down)."""
        assert self.data_dir is not None
        st = os.statvfs(self.data_dir)
        free = st.f_bavail * st.f_frsize
        want = max(0, free - self.leave) // st.f_frsize * st.f_frsize
        path = self.data_dir / BALLAST
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            have = os.fstat(fd).st_size
            if want > 0:
                try:
                    os.posix_fallocate(fd, have, want)
                except OSError:  # raced with the slave's own writes: take what is left
                    st = os.statvfs(self.data_dir)
                    rest = max(0, st.f_bavail * st.f_frsize - self.leave) // st.f_frsize * st.f_frsize
                    if rest:
                        os.posix_fallocate(fd, have, rest)
            self.ballast_bytes = os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
        st = os.statvfs(self.data_dir)
        self.free_after = st.f_bavail * st.f_frsize

    def repair(self, ctx: DrillContext) -> None:
        """Delete the ballast (the disk has room again); unmount as well if the slave is not running."""
        if self.data_dir is None:
            return
        (self.data_dir / BALLAST).unlink(missing_ok=True)
        self._count_enospc()
        if not _running(ctx, self.slave):
            self.finish(ctx)

    def finish(self, ctx: DrillContext) -> None:
        """Teardown, after the daemons stopped: the slave's data back on the run folder's disk, tmpfs gone."""
        if self.data_dir is None:
            return
        (self.data_dir / BALLAST).unlink(missing_ok=True)
        self._count_enospc()
        if mounted(self.data_dir):
            if _running(ctx, self.slave):
                ctx.cluster.kill(self.slave, signal.SIGTERM)
            staging = self.data_dir.with_name(self.data_dir.name + ".unmounting")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.data_dir, staging)
            self._umount(lazy=False)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            staging.rename(self.data_dir)
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
            self._backup = None

    def _umount(self, lazy: bool) -> None:
        assert self.data_dir is not None
        for _ in range(50):
            r = subprocess.run(["umount", *(["-l"] if lazy else []), str(self.data_dir)],
                               capture_output=True, text=True, timeout=15)
            if r.returncode == 0 or not mounted(self.data_dir):
                return
            time.sleep(0.1)  # busy: a process still has a file open there
        raise RuntimeError(f"disk_full: cannot unmount {self.data_dir}: {r.stderr.strip()}")

    def _emergency_unmount(self) -> None:
        if self.data_dir is not None and mounted(self.data_dir):
            with contextlib.suppress(Exception):
                self._umount(lazy=True)

    def _count_enospc(self) -> None:
        if self._log_path is not None and self._log_path.exists():
            lines = self._log_path.read_text(errors="replace").splitlines()
            self.enospc_writes = sum(1 for ln in lines if " failed: " in ln and "No space left on device" in ln)
            self.refused_full = sum(1 for ln in lines if " failed: cannot store: disk full:" in ln)

    def resources(self) -> tuple[str, ...]:
        """None expected: the slave blames itself (§0089) once per copy it cannot store, but a pull waits up to
        ``slave.DISK_WAIT`` for room first, so only a disk full for minutes reaches the failure threshold."""
        return ()

    def notes(self) -> dict[str, Any]:
        return {"slave": self.slave, "tmpfs_bytes": self.size, "ballast_bytes": self.ballast_bytes,
                "free_bytes_after_fill": self.free_after, "leave": self.leave, "mounted_by": self.how,
                "enospc_writes": self.enospc_writes, "refused_disk_full": self.refused_full}


# --- corrupt_on_disk -------------------------------------------------------------------------------------


@register
class CorruptOnDisk(Fault):
    """Bytes of one stored block flipped in a slave's data file, behind the daemon's back (bit rot).

    ``file`` defaults to the largest file the slave holds, ``block`` to its last stored block.  Nothing to
    repair: the slave finds the bad block when it reads it to serve it or when its scrub passes, cuts its
    copy there and fetches the rest again; receivers verify against the cumulative CRC besides.
    """

    kind = "corrupt_on_disk"

    def __init__(self, slave: str, file: str | None = None, block: int | None = None) -> None:
        self.target = self.slave = slave
        self.file = file
        self.block = block
        self.done: dict[str, Any] = {}
        self._log_path: Path | None = None

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> Fault:
        _params(params, where, {"slave", "file", "block"}, {"slave"})
        file = params.get("file")
        if file is not None and (not isinstance(file, str) or not file.strip("/")):
            raise FaultSpecError(f"{where}: 'file' must be a file id (or fileset/file id), got {file!r}")
        block = params.get("block")
        if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 0):
            raise FaultSpecError(f"{where}: 'block' must be a block index >= 0, got {block!r}")
        return cls(_str(params, "slave", where), file, block)

    def _pick(self, store: storage.BlockStore) -> storage.StoredFile:
        held = [st for fs in store.filesets() for st in store.files(fs).values() if st.blocks > 0]
        if self.file is not None:
            fs, _, fid = self.file.rpartition("/")
            held = [st for st in held if st.file_id == fid and (not fs or st.fileset == fs)]
        else:
            held = [st for st in held if st.file_id != st.fileset]  # a data file, not a FileSet file
        if not held:
            raise RuntimeError(f"corrupt_on_disk: {self.slave} holds no block of {self.file or 'any data file'} yet")
        st = max(held, key=lambda s: (s.size, s.fileset, s.file_id))
        if self.block is not None and self.block >= st.blocks:
            raise RuntimeError(f"corrupt_on_disk: {self.slave} holds {st.blocks} blocks of "
                               f"{st.fileset}/{st.file_id}@{st.version}; block {self.block} is not stored")
        return st

    def inject(self, ctx: DrillContext) -> None:
        _check_slave(ctx, self.slave, self.kind)
        bs = ctx.topology.block_size
        store = storage.BlockStore(ctx.cluster.data_dir(self.slave), bs)
        st = self._pick(store)
        block = self.block if self.block is not None else st.blocks - 1
        _, rec, _ = store.read_block(st.fileset, st.file_id, st.version, block)  # it verifies before we flip
        path = store.data_path(st.fileset, st.file_id, st.version)
        offsets = sorted({block * bs + (k * rec.length) // 4 for k in range(4)})  # spread over the block
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            for off in offsets:
                b = os.pread(fd, 1, off)
                os.pwrite(fd, bytes([b[0] ^ 0xFF]), off)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._log_path = Path(ctx.cluster.run_dir) / "logs" / f"{self.slave}.log"
        self.done = {"fileset": st.fileset, "file": st.file_id, "version": st.version, "block": block,
                     "bytes_flipped": len(offsets), "at": time.time()}
        ctx.log(f"corrupt_on_disk: flipped {len(offsets)} bytes of block {block} of "
                f"{st.fileset}/{st.file_id}@{st.version} on {self.slave}")

    def repair(self, ctx: DrillContext) -> None:
        """Nothing to undo: healing is the system's job (and what the drill checks)."""

    def detections(self) -> list[str]:
        """The slave's log lines saying it found one of its blocks bad and cut its copy."""
        if self._log_path is None or not self._log_path.exists():
            return []
        return [ln for ln in self._log_path.read_text(errors="replace").splitlines() if " corrupt: block " in ln]

    def notes(self) -> dict[str, Any]:
        found = self.detections()
        return {"slave": self.slave, **{k: v for k, v in self.done.items() if k != "at"},
                "detected": len(found), "found_by": sorted({ln.rsplit("found by ", 1)[-1].split(")")[0]
                                                             for ln in found})}


# --- corrupt_in_flight -----------------------------------------------------------------------------------


@register
class CorruptInFlight(Fault):
    """Block data damaged on the wire: an NFQUEUE worker in a border router (``trunk``: packets arriving
    over it, FORWARD chain) or a slave's namespace (``slave``: INPUT) flips one byte of chosen block-data
    segments and fixes their TCP checksum.  ``probability`` per data packet (default 1), at most ``count``."""

    kind = "corrupt_in_flight"
    _next_queue = CORRUPT_QUEUE_BASE

    def __init__(self, trunk: str | None = None, slave: str | None = None, probability: float = 1.0,
                 count: int | None = None, seed: int = 1) -> None:
        if (trunk is None) == (slave is None):
            raise ValueError("corrupt_in_flight needs exactly one of trunk, slave")
        self.trunk, self.slave = trunk, slave
        self.target = f"trunk/{trunk}" if trunk else str(slave)
        self.probability = probability
        self.count = count
        self.seed = seed
        self._node: Any = None
        self._rules: list[list[str]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._stats_path: Path | None = None
        self._stats: dict[str, Any] = {}
        self.queue = 0

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> Fault:
        _params(params, where, {"trunk", "slave", "link", "probability", "count", "seed"}, set())
        trunk, slave = params.get("trunk"), params.get("slave")
        link = params.get("link")
        if isinstance(link, str) and link.startswith("trunk/") and trunk is None:
            trunk = link.split("/")[1]
        elif link is not None:
            raise FaultSpecError(f"{where}: 'link' must be a trunk link such as 'trunk/T1', got {link!r}")
        if (trunk is None) == (slave is None):
            raise FaultSpecError(f"{where}: give exactly one of 'trunk' (or 'link') and 'slave'")
        p = params.get("probability", 1.0 if "count" in params else None)
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise FaultSpecError(f"{where}: 'probability' must be in (0, 1] (or give 'count'), got {p!r}")
        count = params.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise FaultSpecError(f"{where}: 'count' must be a positive number of packets, got {count!r}")
        seed = params.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FaultSpecError(f"{where}: 'seed' must be an integer, got {seed!r}")
        return cls(trunk if trunk is None else str(trunk), slave if slave is None else str(slave), float(p),
                   count, seed)

    def _place(self, ctx: DrillContext) -> tuple[Any, str, list[str]]:
        """(node, chain, match) where block data arrives: the trunk's end router, or the slave's host."""
        if self.trunk is not None:
            if self.trunk not in ctx.topology.trunks:
                raise FaultSpecError(f"{self.kind}: no trunk {self.trunk!r} in topology {ctx.topology.name!r}")
            end = ctx.net.links()[f"trunk/{self.trunk}/rev"]  # egress of the end router's trunk interface
            return ctx.net.net[end.node], "FORWARD", ["-i", end.intf]
        assert self.slave is not None
        _check_slave(ctx, self.slave, self.kind)
        return ctx.host(self.slave), "INPUT", []

    def inject(self, ctx: DrillContext) -> None:
        if self._proc is not None:
            return
        node, chain, match = self._place(ctx)
        self._node = node
        self.queue = CorruptInFlight._next_queue
        CorruptInFlight._next_queue += 1
        tag = (self.trunk or self.slave or "x").replace("/", "-")
        self._stats_path = Path(ctx.run_dir) / "faults" / f"corrupt-{tag}-{self.queue}.json"
        self._stats_path.parent.mkdir(parents=True, exist_ok=True)
        self._stats_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "testbed.faults.corrupt_worker", "--queue", str(self.queue),
                "--probability", repr(self.probability), "--seed", str(self.seed), "--stats", str(self._stats_path)]
        if self.count is not None:
            argv += ["--count", str(self.count)]
        root = str(Path(__file__).resolve().parent.parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self._stats_path.with_suffix(".log"), "ab") as logf:
            self._proc = node.popen(argv, stdout=subprocess.DEVNULL, stderr=logf, env=env, cwd=root)
        try:
            self._wait_bound()
            for port_match in (["--sport", str(DATA_PORT)], ["--dport", str(PUSH_PORT)]):
                spec = [chain, *match, "-p", "tcp", *port_match, "-m", "comment", "--comment", CORRUPT_COMMENT,
                        "-j", "NFQUEUE", "--queue-num", str(self.queue), "--queue-bypass"]
                self._iptables("-I", spec)
                self._rules.append(spec)
        except BaseException:
            self.repair(ctx)
            raise
        ctx.log(f"corrupt_in_flight: {self.target}: queue {self.queue} in {node.name} {chain}, "
                f"probability {self.probability:g}, count {self.count}")

    def _iptables(self, op: str, spec: list[str]) -> None:
        proc = self._node.popen(["iptables", "-w", op, *spec], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=15)
        if proc.returncode != 0:
            raise RuntimeError(f"corrupt_in_flight: iptables {op} {' '.join(spec)} failed: {err.decode().strip()}")

    def _wait_bound(self) -> None:
        assert self._proc is not None and self._stats_path is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._stats_path.exists():
            if self._proc.poll() is not None:
                log = self._stats_path.with_suffix(".log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"corrupt_in_flight: worker exited ({self._proc.returncode}): {' | '.join(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"corrupt_in_flight: worker did not bind queue {self.queue} in {READY_TIMEOUT} s")
            time.sleep(0.02)

    def repair(self, ctx: DrillContext) -> None:
        """Remove exactly our rules, then stop the worker (its queue is bypassed once unbound).  Idempotent."""
        errors = []
        while self._rules:
            spec = self._rules.pop()
            try:
                self._iptables("-D", spec)
            except Exception as e:
                errors.append(str(e))
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._stats = self.stats()
        if errors:
            raise RuntimeError("; ".join(errors))

    def stats(self) -> dict[str, Any]:
        if self._stats_path is None:
            return dict(self._stats)
        try:
            return json.loads(self._stats_path.read_text())
        except (OSError, ValueError):
            return dict(self._stats)

    def notes(self) -> dict[str, Any]:
        st = self.stats()
        return {"target": self.target, "queue": self.queue, "probability": self.probability, "count": self.count,
                "data_packets": st.get("packets", 0), "packets_corrupted": st.get("corrupted", 0)}


# --- clock_step ------------------------------------------------------------------------------------------


def _parse_step(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise FaultSpecError(f"{where}: 'step' must be seconds such as +30 or '-30s', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        try:
            return sign * parse_duration(text.lstrip("+-"))
        except (UnitError, ValueError) as e:
            raise FaultSpecError(f"{where}: 'step' must be seconds such as +30 or '-30s', got {value!r}: {e}") from None
    raise FaultSpecError(f"{where}: 'step' must be seconds such as +30 or '-30s', got {value!r}")


@register
class ClockStep(Fault):
    """One daemon's wall clock jumps by ``step`` seconds, the machine's clock untouched.

    The daemon runs under libfaketime (LD_PRELOAD) with its offset read from a file on every call
    (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE); writing the file steps the clock of the running
    process.  CLOCK_MONOTONIC is left alone (FAKETIME_DONT_FAKE_MONOTONIC): a real step (NTP, an operator)
    moves only CLOCK_REALTIME, and the daemons time everything but the wire timestamps monotonically.
    ``prepare`` starts the daemon that way from the beginning; without it injection restarts the daemon
    under libfaketime.  Repair steps the clock back (offset 0).
    """

    kind = "clock_step"

    def __init__(self, ident: str, step: float) -> None:
        self.target = self.ident = ident
        self.step = step
        self.how = ""
        self._file: Path | None = None
        self._orig_spawn: Any = None
        self._wrapper: Any = None
        self._cluster: Any = None
        self._log_dir: Path | None = None
        self._slaves: set[str] = {ident}  # until the topology says otherwise (set at prepare/inject)

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> Fault:
        _params(params, where, {"slave", "daemon", "step"}, {"step"})
        if ("slave" in params) == ("daemon" in params):
            raise FaultSpecError(f"{where}: give exactly one of 'slave' and 'daemon'")
        ident = _str(params, "slave" if "slave" in params else "daemon", where)
        step = _parse_step(params["step"], where)
        if step == 0:
            raise FaultSpecError(f"{where}: 'step' of 0 s changes nothing")
        return cls(ident, step)

    def _check(self, ctx: DrillContext) -> None:
        t = ctx.topology
        known = {t.resource_manager.id, *t.masters, *t.slaves, *t.generators}
        if self.ident not in known:
            raise FaultSpecError(f"{self.kind}: no daemon {self.ident!r} in topology {t.name!r}")
        self._slaves = set(t.slaves)
        if not FAKETIME_LIB.exists():
            raise RuntimeError(f"clock_step needs libfaketime ({FAKETIME_LIB}); apt-get install faketime")

    def _write(self, offset: float) -> None:
        assert self._file is not None
        tmp = self._file.with_name(self._file.name + ".tmp")
        tmp.write_text(f"{offset:+g}\n")
        os.replace(tmp, self._file)  # atomic: the daemon never reads a half-written offset

    def _wrap_spawn(self, ctx: DrillContext) -> None:
        """From now on the cluster starts this daemon under libfaketime reading our offset file."""
        if self._orig_spawn is not None:
            return
        self._cluster = ctx.cluster
        self._orig_spawn = orig = ctx.cluster.spawn
        env = [f"LD_PRELOAD={FAKETIME_LIB}", f"FAKETIME_TIMESTAMP_FILE={self._file}", "FAKETIME_NO_CACHE=1",
               "FAKETIME_DONT_FAKE_MONOTONIC=1"]

        def spawn(ident: str, cmd: list[str], logf: IO[bytes]) -> subprocess.Popen[bytes]:
            if ident == self.ident and self._orig_spawn is not None:
                cmd = ["env", *env, *cmd]
            return orig(ident, cmd, logf)

        ctx.cluster.spawn = self._wrapper = spawn

    def _setup(self, ctx: DrillContext) -> None:
        self._check(ctx)
        self._file = Path(ctx.run_dir) / "faults" / f"clock-{self.ident}.faketime"
        self._file.parent.mkdir(parents=True, exist_ok=True)
        self._log_dir = Path(ctx.cluster.run_dir) / "logs"
        if not self._file.exists():
            self._write(0.0)
        self._wrap_spawn(ctx)

    def prepare(self, ctx: DrillContext) -> None:
        """Before the daemons start: this one runs under libfaketime with offset 0 from the beginning."""
        self._setup(ctx)
        self.how = "prepare"

    def inject(self, ctx: DrillContext) -> None:
        self._setup(ctx)
        self._write(self.step)
        if not self.how:
            _restart(ctx, self.ident)  # not started under libfaketime: start it so, already stepped
            self.how = "restart at injection"
        ctx.log(f"clock_step: {self.ident}'s wall clock stepped {self.step:+g} s ({self.how})")

    def repair(self, ctx: DrillContext) -> None:
        """Step the clock back to the machine's time; later restarts start the daemon plainly again."""
        if self._file is not None and self._file.exists():
            self._write(0.0)
        if self._orig_spawn is not None:
            if self._cluster.spawn is self._wrapper:  # else another fault wrapped ours: ours passes through
                self._cluster.spawn = self._orig_spawn
            self._orig_spawn = None

    def resources(self) -> tuple[str, ...]:
        """Inside the wire's skew window nothing notices.  Beyond it every control message to and from the host
        is refused; a slave's master counts each instruction it cannot deliver as a failure of that slave."""
        return (self.ident,) if abs(self.step) > MAX_SKEW and self.ident in self._slaves else ()

    def rejections(self) -> dict[str, int]:
        """Messages refused for their timestamp, per daemon log (the stepped one and its peers)."""
        out: dict[str, int] = {}
        if self._log_dir is None:
            return out
        for p in sorted(self._log_dir.glob("*.log")):
            text = p.read_text(errors="replace")
            n = text.count("stale message") + text.count("message from the future")
            if n:
                out[p.stem] = n
        return out

    def notes(self) -> dict[str, Any]:
        rej = self.rejections()
        return {"daemon": self.ident, "step_s": self.step, "started_under_faketime_by": self.how,
                "messages_rejected_for_time": sum(rej.values()), "rejected_by_log": rej}
