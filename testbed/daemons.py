"""CPU and memory of the ScaleDist daemons during a testbed run, sampled with psutil.

An experiment only means something if the machine was not the bottleneck: the
summary records, per daemon kind, how many ran, the CPU seconds they used and
their peak resident memory, so a run whose daemons saturated the two cores can
be told apart from one whose network was the limit.  Each daemon is a process
started in its Mininet host (``mnexec`` execs it, so the Popen pid is the
daemon); a background thread samples every process (and any children) once a
second and keeps the last CPU times of processes that have exited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil


@dataclass
class _Track:
    kind: str
    pid: int
    cpu_s: float = 0.0  # cumulative user+system seconds at the last sample (process and its children)
    peak_rss: int = 0  # bytes
    samples: int = 0


class DaemonSampler:
    """Samples the daemons' CPU time and RSS every ``interval`` seconds on a thread; ``stop()`` takes a last sample.

    ``pids`` is called at every sample so daemons (re)started during the run are picked up; it returns
    ident -> (kind, pid).
    """

    def __init__(self, pids: Callable[[], Mapping[str, tuple[str, int]]], interval: float = 1.0) -> None:
        self._pids = pids
        self.interval = interval
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0
        self.t1 = 0.0
        self.errors = 0
        self._last_total: tuple[float, float] | None = None  # (monotonic time, CPU seconds of all daemons)
        self.peak_cpu_pct = 0.0  # busiest interval, share of all cores

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="daemon-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Idempotent; call it before the daemons are stopped so the last CPU times are seen."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self.sample()
        if not self.t1:
            self.t1 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _process(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = psutil.Process(pid)
        return p

    def sample(self) -> None:
        try:
            current = dict(self._pids())
        except RuntimeError:  # the dict of processes changed under us; next second
            return
        with self._lock:
            for ident, (kind, pid) in current.items():
                track = self._tracks.setdefault((ident, pid), _Track(kind, pid))
                try:
                    proc = self._process(pid)
                    with proc.oneshot():
                        t = proc.cpu_times()
                        cpu = t.user + t.system
                        # an exited, unreaped daemon still has its CPU times but no memory any more
                        rss = 0 if proc.status() == psutil.STATUS_ZOMBIE else proc.memory_info().rss
                    for child in proc.children(recursive=True):
                        try:
                            ct = child.cpu_times()
                            cpu += ct.user + ct.system
                            rss += child.memory_info().rss
                        except psutil.Error:
                            pass
                except psutil.Error:  # exited (a zombie is still readable until reaped); keep the last figures
                    continue
                except OSError:
                    self.errors += 1
                    continue
                track.cpu_s = max(track.cpu_s, cpu)
                track.peak_rss = max(track.peak_rss, rss)
                track.samples += 1
            now = time.monotonic()
            total = sum(t.cpu_s for t in self._tracks.values())
            if self._last_total is not None and now - self._last_total[0] >= 0.5:
                pct = 100.0 * (total - self._last_total[1]) / (now - self._last_total[0]) / (psutil.cpu_count() or 1)
                self.peak_cpu_pct = max(self.peak_cpu_pct, pct)
            if self._last_total is None or now - self._last_total[0] >= 0.5:
                self._last_total = (now, total)

    def summary(self) -> dict[str, object]:
        """{kind: {count, cpu_s, peak_rss_mb, ...}, plus 'all'}; cpu_pct is of the whole machine over the run."""
        wall = max(1e-9, (self.t1 or time.monotonic()) - self.t0)
        ncpu = psutil.cpu_count() or 1
        out: dict[str, object] = {}
        with self._lock:
            tracks = list(self._tracks.values())
        kinds = sorted({t.kind for t in tracks})
        for kind in [*kinds, "all"]:
            mine = [t for t in tracks if kind in (t.kind, "all")]
            cpu = sum(t.cpu_s for t in mine)
            figures: dict[str, float] = {
                "count": len(mine),
                "cpu_s": round(cpu, 3),
                "cpu_pct": round(100.0 * cpu / wall / ncpu, 2),  # share of all cores, averaged over the run
                "peak_rss_mb": round(max((t.peak_rss for t in mine), default=0) / 2**20, 2),  # biggest one daemon
                "sum_peak_rss_mb": round(sum(t.peak_rss for t in mine) / 2**20, 2),
                "samples": sum(t.samples for t in mine),
            }
            if kind == "all":
                figures["peak_cpu_pct"] = round(self.peak_cpu_pct, 2)  # busiest sampling interval
            out[kind] = figures
        out["wall_s"] = round(wall, 3)
        out["cpus"] = ncpu
        return out
