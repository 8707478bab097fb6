"""Background load from "other applications" on a link, at a set rate and time window (scenario ``cross_traffic``).

§0114: a link shared with other traffic is given to the resource manager with an
adjusted capacity (the topology's trunk ``budget``).  To test that, the scenario
declares ``{link, rate, start, duration}`` and this module sends a paced UDP
stream whose path crosses exactly that link direction:

- ``trunk/T``: start router -> end router's trunk address (``trunk/T/rev``: the other way);
- an ``up`` link (slave, rack, datacenter): a slave under it -> its datacenter's border router;
- a ``down`` link: the border router -> a slave under it.

The sender is our own (``python -m traffic.crossload send``): it paces IP bytes
(payload + 28 bytes of UDP/IP header) to the rate, and a sink on the receiving node
counts what arrived; both write a JSON record, gathered into ``crossload.json``.
``start`` is seconds after the resource manager's epoch 0 began; ``rate`` is the
scenario's, times the run's scale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traffic.capture import ns_popen, wait_rusage

BASE_PORT = 7200
PAYLOAD = 1372  # + 28 = 1400 IP bytes per datagram, one frame under any MTU the testbed uses
IP_UDP_HEADER = 28


@dataclass
class CrossPlan:
    """One declared load, resolved to nodes of the emulated network."""

    index: int
    link: str
    rate: float  # IP bytes/s, scaled
    start: float  # s after the RM's epoch 0
    duration: float
    src: str  # sender address
    dst: str
    dport: int
    sender_pid: int
    receiver_pid: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cpu_s: float = 0.0
    error: str = ""


def endpoints(link: str, net: Any, topology: Any) -> tuple[int, str, int, str]:
    """(sender pid, sender address, receiver pid, receiver address) for a load on ``link``."""
    p = net.plan
    links = net.links()
    parts = link.split("/")
    if parts[0] == "trunk":
        t = topology.trunks[parts[1]]
        start_ip, end_ip = (str(a.ip) for a in p.trunks[t.id])
        start_pid, end_pid = links[f"trunk/{t.id}"].pid, links[f"trunk/{t.id}/rev"].pid
        if len(parts) == 3:
            return end_pid, end_ip, start_pid, start_ip
        return start_pid, start_ip, end_pid, end_ip
    kind, owner, direction = parts
    if kind == "slave":
        slave = owner
    elif kind == "rack":
        slave = next(s.id for s in topology.slaves.values() if s.rack == owner)
    else:
        slave = next(s.id for s in topology.slaves.values() if s.dc == owner)
    dc = topology.slaves[slave].dc
    router_pid = links[f"dc/{dc}/down"].pid
    router_ip = str(p.router[dc].ip)
    host_pid, host_ip = net.host(slave).pid, net.ip(slave)
    if direction == "up":
        return host_pid, host_ip, router_pid, router_ip
    return router_pid, router_ip, host_pid, host_ip


class CrossLoad:
    """Schedules every declared load relative to the RM's epoch origin; ``stop`` ends and reaps them."""

    def __init__(self, loads: Sequence[Any], scale: float, net: Any, topology: Any, out_dir: Path,
                 log: Callable[[str], None] = print) -> None:
        self.out_dir = out_dir
        self.log = log
        self.plans: list[CrossPlan] = []
        for i, c in enumerate(loads):
            sp, sip, rp, rip = endpoints(c.link, net, topology)
            self.plans.append(CrossPlan(i, c.link, c.rate * scale, c.start, c.duration, sip, rip, BASE_PORT + i,
                                        sp, rp))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.origin: float | None = None
        self._lock = threading.Lock()

    def start(self, origin: float) -> None:
        if not self.plans:
            return
        self.origin = origin
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="crossload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.origin is not None
        for p in sorted(self.plans, key=lambda p: p.start):
            if self._stop.wait(max(0.0, self.origin + p.start - 0.3 - time.monotonic())):
                return
            base = [sys.executable, "-m", "traffic.crossload"]
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    with (self.out_dir / f"sink-{p.index}.log").open("wb") as err:
                        p.procs["sink"] = ns_popen(p.receiver_pid, [
                            *base, "sink", "--port", str(p.dport), "--duration", f"{p.duration + 2:.3f}",
                            "--out", str(self.out_dir / f"sink-{p.index}.json")], stdin=subprocess.DEVNULL,
                            stdout=err, stderr=subprocess.STDOUT)
                except OSError as e:
                    p.error = f"sink: {e}"
                    continue
            if self._stop.wait(max(0.0, self.origin + p.start - time.monotonic())):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    with (self.out_dir / f"send-{p.index}.log").open("wb") as err:
                        p.procs["send"] = ns_popen(p.sender_pid, [
                            *base, "send", "--dst", p.dst, "--port", str(p.dport), "--rate", f"{p.rate:.3f}",
                            "--duration", f"{p.duration:.3f}", "--origin", f"{self.origin:.6f}",
                            "--out", str(self.out_dir / f"send-{p.index}.json")], stdin=subprocess.DEVNULL,
                            stdout=err, stderr=subprocess.STDOUT)
                    self.log(f"cross traffic {p.index}: {p.rate / 1e6:.3f} MB/s on {p.link} ({p.src} > "
                             f"{p.dst}:{p.dport}) for {p.duration:g}s")
                except OSError as e:
                    p.error = f"sender: {e}"
        # The children die with this thread (PR_SET_PDEATHSIG follows the spawning thread, not the process):
        # it lives until stop().
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for p in self.plans:
                for proc in p.procs.values():
                    if proc.returncode is None:  # not reaped yet: wait_rusage reaps it, for its CPU time
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGTERM)  # not Popen.send_signal: it would reap (poll) first
                for proc in p.procs.values():
                    if proc.returncode is None:
                        p.cpu_s += wait_rusage(proc, 5.0)

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.plans)

    def summary(self) -> list[dict[str, object]]:
        out = []
        for p in self.plans:
            rec: dict[str, object] = {"index": p.index, "link": p.link, "rate_bytes_per_s": round(p.rate, 3),
                                      "start": p.start, "duration": p.duration, "src": p.src, "dst": p.dst,
                                      "dport": p.dport, "proto": "udp", "cpu_s": round(p.cpu_s, 4),
                                      "error": p.error, "started": "send" in p.procs}
            for name in ("send", "sink"):
                f = self.out_dir / f"{name}-{p.index}.json"
                with contextlib.suppress(OSError, ValueError):
                    rec[name] = json.loads(f.read_text())
                if name in p.procs and name not in rec:
                    log = self.out_dir / f"{name}-{p.index}.log"
                    tail = log.read_text(errors="replace").strip()[-300:] if log.exists() else ""
                    rec["error"] = (f"{rec['error']}; " if rec["error"] else "") + \
                        f"{name} wrote no record (exit {p.procs[name].returncode}): {tail}"
            out.append(rec)
        return out


# --- the processes inside the nodes ---------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = bytes(PAYLOAD)
    size = PAYLOAD + IP_UDP_HEADER
    rate = float(args.rate)
    sent = packets = errors = 0
    t0 = time.monotonic()
    end = t0 + float(args.duration)
    while not stop["now"]:
        now = time.monotonic()
        if now >= end:
            break
        due = t0 + sent / rate  # when the next datagram may leave: IP bytes so far / rate
        if due > now:
            time.sleep(min(due - now, end - now))
            continue
        try:
            sock.sendto(payload, (args.dst, args.port))
            sent += size
            packets += 1
        except OSError:  # a full socket buffer / queue: the datagram is lost like any other drop
            errors += 1
            sent += size
    t1 = time.monotonic()
    origin = float(args.origin)
    Path(args.out).write_text(json.dumps({
        "ip_bytes": packets * size, "packets": packets, "send_errors": errors, "datagram_ip_bytes": size,
        "t_start": round(t0 - origin, 4), "t_end": round(t1 - origin, 4),
        "rate_achieved": round(packets * size / max(t1 - t0, 1e-9), 1)}) + "\n")
    return 0


def _sink(args: argparse.Namespace) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    sock.settimeout(0.2)
    got = packets = 0
    end = time.monotonic() + float(args.duration)
    while not stop["now"] and time.monotonic() < end:
        try:
            n = len(sock.recv(65536))
        except TimeoutError:
            continue
        got += n + IP_UDP_HEADER
        packets += 1
    Path(args.out).write_text(json.dumps({"ip_bytes": got, "packets": packets}) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m traffic.crossload", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="paced UDP to --dst:--port at --rate IP bytes/s for --duration s")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--origin", type=float, default=0.0, help="monotonic time of epoch 0 (for the record)")
    s.add_argument("--out", required=True)
    k = sub.add_parser("sink", help="count UDP arriving on --port for --duration s")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--duration", type=float, required=True)
    k.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.rate <= 0 if args.cmd == "send" else False:
        ap.error("--rate must be > 0")
    return _send(args) if args.cmd == "send" else _sink(args)


if __name__ == "__main__":
    raise SystemExit(main())
