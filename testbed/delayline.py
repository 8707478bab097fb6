"""Real per-packet latency where the kernel has no netem: an NFQUEUE delay line.

Packets arriving on an interface of a node are sent by one iptables rule (mangle PREROUTING, tagged
``scaledist-delay``) to a netfilter queue; a worker process inside that node's namespace holds every packet
for the queue's delay and then accepts it.  The delay is constant per queue, so one FIFO per queue releases
packets in exactly the order they arrived.  Queueing happens at the *receiving* node: queued at the sender's
OUTPUT, TCP small queues would throttle the sender (see ../shared/DESIGN.md).

The worker is ``python -m testbed.delayline worker --queue Q --delay-ms D [--queue Q2 --delay-ms D2 ...]
--stats FILE``; it writes its statistics (JSON) to FILE at start (once bound), every second and on SIGTERM.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import itertools
import json
import operator
import os
import select
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

COMMENT = "scaledist-delay"
MAX_QUEUE_LEN = 65536  # packets the kernel may hold for us before it drops (fail-open stays off)
SOCK_RCVBUF = 32 * 2**20  # netlink receive buffer; forced past rmem_max (we are root)
COPY_RANGE = 64  # bytes of each packet copied to user space: enough for the IP header's length field
FINE_US, FINE_BINS = 10, 1000  # lateness histogram: 10 us bins up to 10 ms ...
COARSE_US, COARSE_BINS = 1000, 1000  # ... then 1 ms bins up to ~1 s (later goes to the last bin)
STATS_INTERVAL = 1.0
READY_TIMEOUT = 10.0


class DelayLineError(RuntimeError):
    """The delay line could not be installed; the message says what to fix."""


@cache
def netem_available() -> bool:
    """Whether the kernel has netem: try it on the loopback of a throwaway namespace (gone with the process)."""
    try:
        probe = subprocess.run(
            ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


# --------------------------------------------------------------------------------------------------------
# The controller (runs in the orchestrating process)


def _run_in(node: Any, argv: list[str], timeout: float = 15.0) -> subprocess.CompletedProcess[bytes]:
    proc = node.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class DelayLine:
    """One worker process inside one node's namespace, delaying packets that arrive on given interfaces."""

    def __init__(self, node: Any, rules: list[tuple[str, float]], queue_num: int, stats_path: Path) -> None:
        if not rules:
            raise ValueError("a delay line needs at least one (interface, delay) rule")
        intfs = [intf for intf, _ in rules]
        if len(set(intfs)) != len(intfs):
            raise ValueError(f"one delay per interface, got {rules}")
        for intf, delay in rules:
            if not 0 <= delay <= 10:
                raise ValueError(f"delay for {intf} must be 0..10 s, got {delay}")
        self.node = node
        self.rules = list(rules)
        self.queue_num = queue_num
        self.stats_path = Path(stats_path)
        # One queue per distinct delay: all packets of a queue share the delay, so its FIFO keeps their order.
        delays = sorted({round(d, 9) for _, d in rules})
        self.queues: dict[float, int] = {d: queue_num + i for i, d in enumerate(delays)}
        self._installed: list[list[str]] = []  # iptables rule specs we added (without -A/-D)
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_stats: dict[str, float] = {}

    @property
    def name(self) -> str:
        return str(getattr(self.node, "name", self.node))

    def _spec(self, intf: str, queue: int) -> list[str]:
        return ["-t", "mangle", "PREROUTING", "-i", intf, "-m", "comment", "--comment", COMMENT,
                "-j", "NFQUEUE", "--queue-num", str(queue)]

    def _iptables(self, op: str, spec: list[str]) -> subprocess.CompletedProcess[bytes]:
        # spec = ["-t", "mangle", "PREROUTING", ...]: the operation goes before the chain name
        return _run_in(self.node, ["iptables", "-w", *spec[:2], op, *spec[2:]])

    def start(self) -> None:
        """Bind the queues (worker) first, then divert the packets: a queue nobody listens on drops them."""
        if self._proc is not None:
            raise DelayLineError(f"delay line on {self.name} already started")
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.stats_path.unlink()
        except FileNotFoundError:
            pass
        argv = [sys.executable, "-m", "testbed.delayline", "worker", "--stats", str(self.stats_path)]
        for delay, queue in self.queues.items():
            argv += ["--queue", str(queue), "--delay-ms", repr(delay * 1000.0)]
        log_path = self.stats_path.with_suffix(".log")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as logf:
            self._proc = self.node.popen(argv, stdout=subprocess.DEVNULL, stderr=logf, env=env, cwd=root)
        try:
            self._wait_ready(log_path)
            for intf, delay in self.rules:
                spec = self._spec(intf, self.queues[round(delay, 9)])
                res = self._iptables("-A", spec)
                if res.returncode != 0:
                    raise DelayLineError(
                        f"iptables refused the delay rule on {self.name}:{intf}: "
                        f"{res.stderr.decode(errors='replace').strip()} (is the NFQUEUE target available?)"
                    )
                self._installed.append(spec)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log_path: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.stats_path.exists():
                return
            if self._proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise DelayLineError(
                    f"delay line worker on {self.name} exited ({self._proc.returncode}): {' | '.join(tail)}"
                )
            time.sleep(0.02)
        raise DelayLineError(f"delay line worker on {self.name} did not bind its queues within {READY_TIMEOUT} s")

    def stop(self) -> None:
        """Remove exactly our rules, then let the worker release what it holds and exit.  Idempotent."""
        errors: list[str] = []
        while self._installed:
            spec = self._installed.pop()
            res = self._iptables("-D", spec)
            if res.returncode != 0:
                errors.append(res.stderr.decode(errors="replace").strip())
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=max(self.queues) + 5.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._last_stats = self._read_stats()
        if errors:
            raise DelayLineError(f"could not remove delay rules on {self.name}: {'; '.join(errors)}")

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _read_stats(self) -> dict[str, float]:
        try:
            data = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return dict(self._last_stats)
        return {k: float(v) for k, v in data.get("total", {}).items()}

    def stats(self) -> dict[str, float]:
        """packets, bytes, max_backlog, late_ms_p50/p99/max, reorders (must be 0), kernel drops (latest file)."""
        if self._proc is None:
            return dict(self._last_stats)
        return self._read_stats()

    def per_queue_stats(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}
        return data.get("queues", {})


# --------------------------------------------------------------------------------------------------------
# The worker (runs inside the node's namespace)


class _Lateness:
    """Histogram of release time minus due time: fixed memory, and cheap to summarise (the loop must not stall)."""

    def __init__(self) -> None:
        self.bins = [0] * (FINE_BINS + COARSE_BINS)
        self.n = 0
        self.max_s = 0.0

    def add(self, late_s: float) -> None:
        us = int(late_s * 1e6)
        if us < FINE_US * FINE_BINS:
            i = max(us, 0) // FINE_US
        else:
            i = min(FINE_BINS + (us - FINE_US * FINE_BINS) // COARSE_US, FINE_BINS + COARSE_BINS - 1)
        self.bins[i] += 1
        self.n += 1
        if late_s > self.max_s:
            self.max_s = late_s

    def merge(self, other: _Lateness) -> None:
        self.bins = list(map(operator.add, self.bins, other.bins))
        self.n += other.n
        self.max_s = max(self.max_s, other.max_s)

    def pct_ms(self, q: float, cum: list[int] | None = None) -> float:
        """Upper edge of the bin holding the q-quantile (never understates), capped by the maximum seen."""
        if self.n == 0:
            return 0.0
        cum = cum if cum is not None else list(itertools.accumulate(self.bins))
        i = bisect.bisect_left(cum, q * self.n)
        edge_us = (i + 1) * FINE_US if i < FINE_BINS else FINE_US * FINE_BINS + (i - FINE_BINS + 1) * COARSE_US
        return min(edge_us / 1000.0, self.max_s * 1000.0)


class _Queue:
    def __init__(self, num: int, delay: float) -> None:
        self.num = num
        self.delay = delay
        self.fifo: collections.deque[tuple[float, Any, int]] = collections.deque()
        self.packets = 0
        self.bytes = 0
        self.max_backlog = 0
        self.max_backlog_bytes = 0
        self.backlog_bytes = 0
        self.reorders = 0
        self.last_id = -1
        self.late = _Lateness()
        self.nfq: Any = None

    def on_packet(self, pkt: Any) -> None:
        now = time.monotonic()
        head = pkt.get_payload()
        length = len(head)
        if length >= 4:
            version = head[0] >> 4
            if version == 4:
                length = int.from_bytes(head[2:4], "big")
            elif version == 6 and length >= 6:
                length = int.from_bytes(head[4:6], "big") + 40
        self.fifo.append((now + self.delay, pkt, length))
        self.backlog_bytes += length
        if len(self.fifo) > self.max_backlog:
            self.max_backlog = len(self.fifo)
        if self.backlog_bytes > self.max_backlog_bytes:
            self.max_backlog_bytes = self.backlog_bytes

    def release_due(self, now: float) -> None:
        fifo = self.fifo
        while fifo and fifo[0][0] <= now:
            due, pkt, length = fifo.popleft()
            pkt.accept()
            t = time.monotonic()
            self.late.add(t - due)
            self.packets += 1
            self.bytes += length
            self.backlog_bytes -= length
            if pkt.id <= self.last_id:
                self.reorders += 1
            self.last_id = pkt.id

    def release_all(self) -> None:
        self.release_due(float("inf"))

    def summary(self, kernel: dict[int, tuple[int, int]]) -> dict[str, float]:
        qdrop, udrop = kernel.get(self.num, (0, 0))
        cum = list(itertools.accumulate(self.late.bins))
        return {
            "delay_ms": self.delay * 1000.0,
            "packets": self.packets,
            "bytes": self.bytes,
            "backlog": len(self.fifo),
            "max_backlog": self.max_backlog,
            "max_backlog_bytes": self.max_backlog_bytes,
            "late_ms_p50": self.late.pct_ms(0.50, cum),
            "late_ms_p99": self.late.pct_ms(0.99, cum),
            "late_ms_max": self.late.max_s * 1000.0,
            "reorders": self.reorders,
            "kernel_queue_dropped": qdrop,
            "kernel_user_dropped": udrop,
        }


def _kernel_drops() -> dict[int, tuple[int, int]]:
    """queue -> (dropped: queue full, user_dropped: netlink buffer full), from this namespace's /proc."""
    out: dict[int, tuple[int, int]] = {}
    try:
        text = Path("/proc/self/net/netfilter/nfnetlink_queue").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7:
            out[int(f[0])] = (int(f[5]), int(f[6]))
    return out


def _write_stats(path: Path, queues: list[_Queue], state: str) -> None:
    kernel = _kernel_drops()
    per = {str(q.num): q.summary(kernel) for q in queues}
    merged = _Lateness()
    for q in queues:
        merged.merge(q.late)
    cum = list(itertools.accumulate(merged.bins))
    total = {
        "packets": sum(q.packets for q in queues),
        "bytes": sum(q.bytes for q in queues),
        "max_backlog": max(q.max_backlog for q in queues),
        "late_ms_p50": merged.pct_ms(0.50, cum),
        "late_ms_p99": merged.pct_ms(0.99, cum),
        "late_ms_max": merged.max_s * 1000.0,
        "reorders": sum(q.reorders for q in queues),
        "kernel_dropped": sum(v["kernel_queue_dropped"] + v["kernel_user_dropped"] for v in per.values()),
        "kernel_counters": float(all(q.num in kernel for q in queues)),  # 0: drops unknown, not zero
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), "total": total, "queues": per}))
    os.replace(tmp, path)


class StopSignals:
    """SIGTERM/SIGINT set ``stop`` and wake a worker's select() through ``fd`` (signal.set_wakeup_fd), so a
    queue worker leaves its loop at once, whatever it was waiting for."""

    def __init__(self) -> None:
        self.stop = False
        self.fd, wfd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop = True

    def drain(self) -> None:
        try:
            os.read(self.fd, 512)
        except BlockingIOError:
            pass


def run_worker(specs: list[tuple[int, float]], stats_path: Path) -> int:
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    term = StopSignals()

    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)  # we are part of the network: run before the applications
    except OSError:
        pass
    queues = [_Queue(num, delay) for num, delay in specs]
    by_fd: dict[int, _Queue] = {}
    for q in queues:
        nfq = NetfilterQueue()
        nfq.bind(q.num, q.on_packet, max_len=MAX_QUEUE_LEN, mode=COPY_PACKET, range=COPY_RANGE,
                 sock_len=SOCK_RCVBUF)
        q.nfq = nfq
        by_fd[nfq.get_fd()] = q
    parent = os.getppid()
    gc.disable()  # the loop makes no reference cycles; a collection pass would only stall releases
    _write_stats(stats_path, queues, "running")
    next_stats = time.monotonic() + STATS_INTERVAL
    drain_deadline: float | None = None
    fds = [*by_fd, term.fd]
    try:
        while True:
            now = time.monotonic()
            for q in queues:
                q.release_due(now)
            if term.stop and drain_deadline is None:
                # our rules are gone (stop() removes them first): release what we hold on time, then leave
                drain_deadline = now + max(q.delay for q in queues) + 0.2
            if drain_deadline is not None and (now >= drain_deadline or not any(q.fifo for q in queues)):
                break
            if now >= next_stats:
                _write_stats(stats_path, queues, "running")
                next_stats = now + STATS_INTERVAL
                if os.getppid() != parent:  # orchestrator died: do not hold a namespace's traffic forever
                    term.stop = True
            wake = next_stats
            for q in queues:
                if q.fifo and q.fifo[0][0] < wake:
                    wake = q.fifo[0][0]
            if drain_deadline is not None:
                wake = min(wake, drain_deadline)
            # select() sleeps with microsecond resolution (epoll only with milliseconds)
            ready, _, _ = select.select(fds, [], [], max(0.0, wake - time.monotonic()))
            for fd in ready:
                if fd == term.fd:
                    term.drain()
                    continue
                by_fd[fd].nfq.run(block=False)
    finally:
        for q in queues:
            q.release_all()
        _write_stats(stats_path, queues, "stopped")
        for q in queues:
            q.nfq.unbind()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.delayline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="hold packets of NFQUEUE queues for their delay (runs in a namespace)")
    w.add_argument("--queue", type=int, action="append", required=True)
    w.add_argument("--delay-ms", type=float, action="append", required=True)
    w.add_argument("--stats", type=Path, required=True)
    sub.add_parser("netem", help="say whether this kernel has netem")
    args = parser.parse_args(argv)
    if args.cmd == "netem":
        print("netem available" if netem_available() else "netem absent")
        return 0
    if len(args.queue) != len(args.delay_ms):
        parser.error("give one --delay-ms per --queue")
    return run_worker([(q, d / 1000.0) for q, d in zip(args.queue, args.delay_ms, strict=True)], args.stats)


if __name__ == "__main__":
    sys.exit(main())
