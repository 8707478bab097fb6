"""Does the emulated network deliver what the topology configures?  (``scaledist-testbed verify-links``)

Every shaped link direction is measured with one TCP stream between two endpoints whose path crosses it:
trunks router to router over the trunk's own /30 (nothing else shaped on the way), the other links inside a
datacenter between hosts and the border router, preferring endpoints with unshaped ports (masters, the
resource manager, the router).  Any other shaped link on the data path slower than 1.5x the target is lifted
to 2x the target's rate for the measurement and restored afterwards, so the target is the only bottleneck
(a tie would hide a link shaped too fast); if a lift fails the row says the path's bottleneck was measured.
The stream's rate is compared on the wire (payload plus TCP/IP/Ethernet headers, which is what HTB meters),
and the target's qdisc counters must show the stream crossed it.  Every trunk direction's one-way latency is
measured at application level with timestamped UDP probes on idle links (the namespaces share the machine's
monotonic clock; ``ping`` cannot see a delay applied after the kernel's receive timestamp).  Measurements that
share no shaped link in either direction (data or ACKs) run in parallel rounds to keep the total short.

The measuring tools run inside the namespaces as ``python -m testbed.verify udp-recv|udp-send|tcp-recv|tcp-send``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaledist.topology import Topology

# --------------------------------------------------------------------------------------------------------
# Measuring tools (run inside a namespace; print one JSON line at the end, "ready" first for receivers)

_PROBE = struct.Struct("!QQ")  # sequence number, time.monotonic_ns() at send
_TCPI = struct.Struct("8B24I")  # the stable head of struct tcp_info
TCPI_OPT_TIMESTAMPS = 1
ETH_HEADER = 14


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def udp_recv(bind: str, port: int, count: int, timeout: float) -> dict[str, Any]:
    """Receive timestamped probes; one-way latency = our monotonic clock at recv minus the sender's."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    s.bind((bind, port))
    _ready()
    lat_ns: list[int] = []
    seqs: set[int] = set()
    reorders = dups = 0
    highest = -1
    deadline = time.monotonic() + timeout
    while len(seqs) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            break
        data = s.recv(2048)
        now = time.monotonic_ns()
        if len(data) < _PROBE.size:
            continue
        seq, sent = _PROBE.unpack_from(data)
        if seq in seqs:
            dups += 1
            continue
        seqs.add(seq)
        if seq < highest:
            reorders += 1
        highest = max(highest, seq)
        lat_ns.append(now - sent)
        deadline = max(deadline, time.monotonic() + 1.0)  # keep listening while probes still arrive
    out: dict[str, Any] = {"received": len(seqs), "expected": count, "reorders": reorders, "duplicates": dups}
    if lat_ns:
        ms = sorted(x / 1e6 for x in lat_ns)
        out.update(min_ms=ms[0], p50_ms=statistics.median(ms), p99_ms=ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                   max_ms=ms[-1], mean_ms=statistics.fmean(ms))
    return out


def udp_send(dst: str, port: int, count: int, interval: float, size: int = 64, sport: int = 0) -> dict[str, Any]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
    pad = b"\0" * max(0, size - _PROBE.size)
    start = time.monotonic()
    for seq in range(count):
        due = start + seq * interval
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        s.sendto(_PROBE.pack(seq, time.monotonic_ns()) + pad, (dst, port))
    return {"sent": count}


def tcp_recv(bind: str, port: int, timeout: float, sample: float = 0.02) -> dict[str, Any]:
    """Accept one stream, read it to the end, sample (monotonic_ns, cumulative bytes) every ``sample`` s."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, port))
    ls.listen(1)
    _ready()
    r, _, _ = select.select([ls], [], [], timeout)
    if not r:
        return {"error": f"no connection within {timeout} s"}
    conn, peer = ls.accept()
    ls.close()
    conn.settimeout(timeout)
    buf = bytearray(1 << 20)
    total = 0
    samples: list[tuple[int, int]] = [(time.monotonic_ns(), 0)]
    step = int(sample * 1e9)
    try:
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            total += n
            now = time.monotonic_ns()
            if now - samples[-1][0] >= step:
                samples.append((now, total))
    except TimeoutError:
        return {"error": "stream stalled", "bytes": total, "samples": samples}
    samples.append((time.monotonic_ns(), total))
    return {"bytes": total, "peer": f"{peer[0]}:{peer[1]}", "samples": samples}


def _tcp_info(s: socket.socket) -> dict[str, int]:
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    f = _TCPI.unpack_from(raw)
    u = f[8:]
    return {"options": f[5], "snd_mss": u[2], "pmtu": u[13], "rtt_us": u[15], "snd_cwnd": u[18],
            "total_retrans": u[23]}


def tcp_send(dst: str, port: int, seconds: float, sport: int = 0, cc: str = "") -> dict[str, Any]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if cc:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
    s.settimeout(10.0)
    s.connect((dst, port))
    chunk = b"\0" * (1 << 16)
    sent = 0
    start = time.monotonic()
    end = start + seconds
    s.settimeout(max(5.0, seconds))
    while time.monotonic() < end:
        sent += s.send(chunk)
    info = _tcp_info(s)
    algo = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30.0)
    while s.recv(65536):  # wait for the receiver to have read everything
        pass
    s.close()
    return {"bytes": sent, "seconds": seconds, "cc": algo, **info}


def wire_factor(info: dict[str, int]) -> float:
    """Bytes on the link per byte of payload for a bulk stream of full segments (IP, TCP, options, Ethernet)."""
    mss = info["snd_mss"]
    header = 40 + (12 if info["options"] & TCPI_OPT_TIMESTAMPS else 0) + ETH_HEADER
    return (mss + header) / mss


def goodput(samples: Sequence[Sequence[int]], warmup: float, cooldown: float = 0.05) -> float:
    """Bytes/s received between the end of the warm-up (slow start, queue filling) and shortly before the end."""
    if len(samples) < 3:
        return 0.0
    t0 = samples[0][0] + int(warmup * 1e9)
    t1 = samples[-1][0] - int(cooldown * 1e9)
    first = next((s for s in samples if s[0] >= t0), None)
    last = next((s for s in reversed(samples) if s[0] <= t1), None)
    if first is None or last is None or last[0] <= first[0]:
        return 0.0
    return (last[1] - first[1]) / ((last[0] - first[0]) / 1e9)


# --------------------------------------------------------------------------------------------------------
# Running the tools in namespaces


class NsNode:
    """The smallest Mininet-like node for a namespace known only by a process id (or the root namespace)."""

    def __init__(self, pid: int | None, name: str = "") -> None:
        self.pid = pid
        self.name = name or (f"pid{pid}" if pid else "root")

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        prefix = ["nsenter", "-t", str(self.pid), "-n", "--"] if self.pid else []
        return subprocess.Popen([*prefix, *argv], **kwargs)

    def cmd(self, command: str) -> str:
        out = self.popen(["sh", "-c", command], stderr=subprocess.STDOUT).communicate()[0]
        return out.decode(errors="replace")


def _tool(node: Any, *args: str) -> subprocess.Popen[bytes]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return node.popen([sys.executable, "-m", "testbed.verify", *args], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, env=env, cwd=root)


def _await_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if r else b""
    if line.strip() != b"ready":
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace").strip()
        raise RuntimeError(f"{what} did not start: {line!r} {err[-300:]}")


def _result(proc: subprocess.Popen[bytes], what: str, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"{what} timed out"}
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip() and ln.strip() != "ready"]
    if proc.returncode != 0 or not lines:
        return {"error": f"{what} failed ({proc.returncode}): {err.decode(errors='replace').strip()[-300:]}"}
    return json.loads(lines[-1])


@dataclass
class TcpJob:
    src: Any  # node sending
    dst: Any  # node receiving
    dst_ip: str
    port: int
    seconds: float
    sport: int = 0
    label: str = ""
    cc: str = ""
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class UdpJob:
    src: Any
    dst: Any
    dst_ip: str
    port: int
    count: int
    interval: float
    sport: int = 0
    label: str = ""
    result: dict[str, Any] = field(default_factory=dict)


def run_tcp(jobs: Sequence[TcpJob], warmup: float = 1.0) -> None:
    """Run the streams concurrently; each job's result gets goodput, wire rate (B/s) and the sender's TCP info."""
    recvs = []
    try:
        for j in jobs:
            p = _tool(j.dst, "tcp-recv", "--bind", j.dst_ip, "--port", str(j.port),
                      "--timeout", str(j.seconds + 20))
            recvs.append(p)
            _await_ready(p, f"tcp receiver for {j.label}")
        sends = [_tool(j.src, "tcp-send", "--dst", j.dst_ip, "--port", str(j.port), "--seconds", str(j.seconds),
                       "--sport", str(j.sport), "--cc", j.cc) for j in jobs]
        for j, ps, pr in zip(jobs, sends, recvs, strict=True):
            snd = _result(ps, f"tcp sender for {j.label}", j.seconds + 40)
            rcv = _result(pr, f"tcp receiver for {j.label}", 40)
            err = snd.get("error") or rcv.get("error")
            if err:
                j.result = {"error": err}
                continue
            g = goodput(rcv["samples"], warmup)
            j.result = {"goodput": g, "wire": g * wire_factor(snd), "sender": snd, "bytes": rcv["bytes"]}
    finally:
        for p in recvs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run_udp(jobs: Sequence[UdpJob]) -> None:
    """Send timestamped probes concurrently; each job's result gets the one-way latency figures (ms)."""
    recvs = []
    try:
        for j in jobs:
            p = _tool(j.dst, "udp-recv", "--bind", j.dst_ip, "--port", str(j.port), "--count", str(j.count),
                      "--timeout", str(j.count * j.interval + 5))
            recvs.append(p)
            _await_ready(p, f"udp receiver for {j.label}")
        sends = [_tool(j.src, "udp-send", "--dst", j.dst_ip, "--port", str(j.port), "--count", str(j.count),
                       "--interval", str(j.interval), "--sport", str(j.sport)) for j in jobs]
        for j, ps, pr in zip(jobs, sends, recvs, strict=True):
            snd = _result(ps, f"udp sender for {j.label}", j.count * j.interval + 20)
            rcv = _result(pr, f"udp receiver for {j.label}", j.count * j.interval + 20)
            j.result = {"error": snd["error"]} if "error" in snd else rcv
    finally:
        for p in recvs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------------------------------------
# Which endpoints isolate which link (pure: topology in, measurement plan out)

LIFT_BELOW = 1.5  # another shaped link on the data path below 1.5x the target's rate could bite ...
LIFT_TO = 2.0  # ... so for the measurement it is lifted to 2x (and restored afterwards)
ACK_SHARE = 0.1  # a link on the ACK path below 10 % of the target's rate is lifted to that
MAX_PARALLEL = 8  # measurements per round (2 cores: the streams are cheap, their processes are not free)


@dataclass(frozen=True)
class Endpoint:
    """A place a measuring tool runs: a daemon host (slave, master, resource manager) or a border router."""

    name: str  # daemon id, or "router:<dc>"
    dc: str
    rack: str | None  # None for a border router
    slave: bool  # a slave's port is shaped; masters' and the resource manager's are not


@dataclass(frozen=True)
class Measurement:
    target: str  # link id measured
    src: Endpoint
    dst: Endpoint
    data: tuple[str, ...]  # shaped links the stream crosses
    ack: tuple[str, ...]  # shaped links its ACKs cross
    lifts: tuple[tuple[str, float], ...]  # (link, temporary rate) so that the target is the only bottleneck
    trunk: str | None = None  # router-to-router over this trunk's own /30 (trunk targets)

    @property
    def busy(self) -> frozenset[str]:
        return frozenset(self.data) | frozenset(self.ack)

    @property
    def via(self) -> str:
        return f"{self.src.name} -> {self.dst.name}"


def endpoints(topology: Topology) -> list[Endpoint]:
    out = [Endpoint(s.id, s.dc, s.rack, True) for s in topology.slaves.values()]
    for m in topology.masters.values():
        out.append(Endpoint(m.id, topology.racks[m.rack].dc, m.rack, False))
    rm = topology.resource_manager
    out.append(Endpoint(rm.id, topology.racks[rm.rack].dc, rm.rack, False))
    out.extend(Endpoint(f"router:{d}", d, None, False) for d in topology.datacenters)
    return out


def intra_dc_path(a: Endpoint, b: Endpoint) -> tuple[str, ...] | None:
    """Shaped links from ``a`` to ``b`` inside one datacenter (hosts and their border router), else None."""
    if a.dc != b.dc or a.name == b.name or (a.rack is None and b.rack is None):
        return None
    out: list[str] = []
    if a.slave:
        out.append(f"slave/{a.name}/up")
    if a.rack is None:  # the router sends into its datacenter
        out += [f"dc/{a.dc}/down", f"rack/{b.rack}/down"]
    elif b.rack is None:
        out += [f"rack/{a.rack}/up", f"dc/{a.dc}/up"]
    elif a.rack != b.rack:
        out += [f"rack/{a.rack}/up", f"rack/{b.rack}/down"]
    if b.slave:
        out.append(f"slave/{b.name}/down")
    return tuple(out)


def candidates(topology: Topology, target: str, eps: Sequence[Endpoint]) -> list[Measurement]:
    """Ways to measure ``target``, best first: fewest links lifted, then fewest links involved."""
    caps = {k: float(v.physical or v.capacity) for k, v in topology.links.items()}  # what is shaped
    c = caps[target]
    if target.startswith("trunk/"):
        tid = target.split("/")[1]
        t = topology.trunks[tid]
        rev = target.endswith("/rev")
        a, b = (t.end, t.start) if rev else (t.start, t.end)
        other = f"trunk/{tid}" if rev else f"trunk/{tid}/rev"
        lifts = ((other, ACK_SHARE * c),) if caps[other] < ACK_SHARE * c else ()
        return [Measurement(target, Endpoint(f"router:{a}", a, None, False), Endpoint(f"router:{b}", b, None, False),
                            (target,), (other,), lifts, trunk=tid)]
    out: list[tuple[tuple[int, int], Measurement]] = []
    for a in eps:
        for b in eps:
            data = intra_dc_path(a, b)
            if not data or target not in data:
                continue
            ack = intra_dc_path(b, a) or ()
            lifts = [(x, LIFT_TO * c) for x in data if x != target and caps[x] < LIFT_BELOW * c]
            lifts += [(x, ACK_SHARE * c) for x in ack if caps[x] < ACK_SHARE * c]
            m = Measurement(target, a, b, data, ack, tuple(lifts))
            out.append(((len(lifts), len(data) + len(ack)), m))
    out.sort(key=lambda km: km[0])
    return [m for _, m in out]


def schedule(topology: Topology, targets: Sequence[str] | None = None,
             max_parallel: int = MAX_PARALLEL) -> list[list[Measurement]]:
    """Rounds of measurements that share no shaped link (data or ACK direction) within a round."""
    eps = endpoints(topology)
    todo = list(targets if targets is not None else topology.links)
    cands = {t: candidates(topology, t, eps) for t in todo}
    missing = [t for t in todo if not cands[t]]
    if missing:
        raise ValueError(f"no endpoint pair crosses {', '.join(missing)}")
    # the biggest measurements first (they collide with the most others), then the fewest ways to measure
    todo.sort(key=lambda t: (-min(len(m.busy) for m in cands[t]), len(cands[t]), t))
    rounds: list[list[Measurement]] = []
    while todo:
        busy: set[str] = set()
        this: list[Measurement] = []
        rest: list[str] = []
        for t in todo:
            pick = None
            if len(this) < max_parallel and t not in busy:
                pick = next((m for m in cands[t] if not (m.busy & busy)), None)
            if pick is None:
                rest.append(t)
                continue
            this.append(pick)
            busy |= pick.busy
        rounds.append(this)
        todo = rest
    return rounds


# --------------------------------------------------------------------------------------------------------
# verify-links on an EmulatedNetwork


@dataclass
class Row:
    link: str
    configured: float  # bytes/s (the topology's, scaled)
    measured: float | None = None  # bytes/s on the wire (payload + TCP/IP/Ethernet headers: what HTB meters)
    goodput: float | None = None  # bytes/s of payload
    error_pct: float | None = None
    via: str = ""
    lifted: tuple[str, ...] = ()
    note: str = ""
    latency_configured: float | None = None  # seconds, trunk directions only
    latency_measured: float | None = None  # seconds, median one-way
    latency_p99: float | None = None
    latency_error_ms: float | None = None


@dataclass
class VerifyResult:
    rows: list[Row]
    max_bw_error_pct: float
    max_latency_error_ms: float
    latency_method: str = ""
    scale: float = 1.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.max_bw_error_pct <= 5.0 and self.max_latency_error_ms <= 2.0

    def last_line(self) -> str:
        return f"max_bw_error_pct={self.max_bw_error_pct:.2f} max_latency_error_ms={self.max_latency_error_ms:.2f}"


def _mbit(x: float | None) -> str:
    return "-" if x is None else f"{x * 8e-6:.3f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.2f}"


def table(rows: Sequence[Row]) -> list[str]:
    head = ("link", "configured Mbit/s", "measured Mbit/s", "error %", "goodput Mbit/s", "latency cfg ms",
            "latency meas ms", "measured via")
    body = []
    for r in rows:
        via = r.via + (f" (lifted {', '.join(r.lifted)})" if r.lifted else "") + (f" {r.note}" if r.note else "")
        body.append((r.link, _mbit(r.configured), _mbit(r.measured),
                     "-" if r.error_pct is None else f"{r.error_pct:+.2f}", _mbit(r.goodput),
                     _ms(r.latency_configured), _ms(r.latency_measured), via))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    out = []
    for line in [head, *body]:
        cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        out.append("  ".join([*cells, line[-1]]))
    return out


def _qdisc_bytes(net: Any) -> dict[str, int]:
    try:
        return {k: int(v.get("bytes", 0)) for k, v in net.qdisc_stats().items()}
    except Exception:
        return {}


class _Lifter:
    """Temporarily raises a link's HTB rate (so another link on the path is the only bottleneck), and restores it."""

    def __init__(self, links: dict[str, Any]) -> None:
        self.links = links
        self.lifted: dict[str, float] = {}

    def _set(self, link: str, rate: float) -> None:
        from testbed import shaping

        s = self.links[link]
        cfg = shaping.plan_link(link, rate, rtt=1.0)
        with shaping.netns(s.pid) as ipr:
            idx = ipr.link_lookup(ifname=s.intf)
            if not idx:
                raise RuntimeError(f"interface {s.intf} of {link} is gone")
            ipr.tc("change-class", "htb", idx[0], shaping.CLASS, parent=shaping.ROOT, rate=cfg.rate, ceil=cfg.rate,
                   burst=cfg.burst, cburst=cfg.cburst, quantum=cfg.quantum, prio=0, mtu=1600)
            got = shaping.read_config(ipr, s.intf).get("rate")
        if got is not None and abs(int(got) - cfg.rate) > 1:  # type: ignore[call-overload]
            raise RuntimeError(f"{link}: asked HTB for {cfg.rate} B/s, it reports {got}")

    def lift(self, link: str, rate: float) -> None:
        if rate > self.links[link].rate:
            self._set(link, rate)
            self.lifted[link] = rate

    def restore(self) -> list[str]:
        errors = []
        for link in list(self.lifted):
            try:
                self._set(link, self.links[link].rate)
                del self.lifted[link]
            except Exception as e:  # keep restoring the others
                errors.append(f"{link}: {e}")
        return errors


def measure_links(net: Any, topology: Topology, *, seconds: float = 3.0, warmup: float = 1.0,
                  probes: int = 200, probe_interval: float = 0.005, cc: str = "cubic",
                  log: Callable[[str], None] = print) -> list[Row]:
    """Measure every shaped link direction of a started EmulatedNetwork (see the module docstring)."""
    from testbed.addressing import plan as address_plan

    links = net.links()
    addr = address_plan(topology)
    targets = [t for t in topology.links if t in links]
    rows = {t: Row(t, links[t].rate) for t in targets}
    for t in targets:
        if t.startswith("trunk/"):
            rows[t].latency_configured = topology.trunks[t.split("/")[1]].latency

    router_nodes: dict[str, Any] = {}
    for d in topology.datacenters:
        s = links.get(f"dc/{d}/down")
        if s is not None:
            router_nodes[d] = NsNode(s.pid, s.node)

    def place(ep: Endpoint) -> tuple[Any, str]:
        if ep.rack is None:
            return router_nodes[ep.dc], str(addr.router[ep.dc].ip)
        return net.host(ep.name), net.ip(ep.name)

    def trunk_ends(tid: str, rev: bool) -> tuple[Any, Any, str]:
        """(sending router, receiving router, receiving address) for one direction of a trunk."""
        fwd, back = links[f"trunk/{tid}"], links[f"trunk/{tid}/rev"]
        start, end = NsNode(fwd.pid, fwd.node), NsNode(back.pid, back.node)
        a_side, b_side = addr.trunks[tid]
        return (end, start, str(a_side.ip)) if rev else (start, end, str(b_side.ip))

    port = iter(range(20000, 30000))

    # 1. one-way latency of every trunk direction, on idle links, all at once
    udp: list[UdpJob] = []
    for t in targets:
        if t.startswith("trunk/"):
            src, dst, ip = trunk_ends(t.split("/")[1], t.endswith("/rev"))
            udp.append(UdpJob(src, dst, ip, next(port), probes, probe_interval, label=t))
    if udp:
        log(f"latency: {len(udp)} trunk directions, {probes} probes each, in parallel")
        run_udp(udp)
        for j in udp:
            r = rows[j.label]
            if "p50_ms" not in j.result:
                r.note += f" latency: {j.result.get('error', 'no probe arrived')}"
                r.latency_error_ms = float("inf")
                continue
            r.latency_measured = j.result["p50_ms"] / 1e3
            r.latency_p99 = j.result["p99_ms"] / 1e3
            assert r.latency_configured is not None
            r.latency_error_ms = abs(r.latency_measured - r.latency_configured) * 1e3
            lost = j.result["expected"] - j.result["received"]
            if lost or j.result["reorders"]:
                r.note += f" latency probes: {lost} lost, {j.result['reorders']} reordered"

    # 2. throughput, one TCP stream per link direction, in rounds of independent measurements
    plan = schedule(topology, targets)
    lifter = _Lifter(links)
    unlifted: set[str] = set()
    for i, rnd in enumerate(plan, 1):
        log(f"bandwidth round {i}/{len(plan)}: " + ", ".join(m.target for m in rnd))
        jobs: list[TcpJob] = []
        try:
            for m in rnd:
                try:
                    for link, rate in m.lifts:
                        lifter.lift(link, rate)
                except Exception as e:
                    unlifted.add(m.target)
                    rows[m.target].note += f" not isolated, could not lift ({e}): the path's bottleneck was measured"
                src_node, _ = place(m.src) if m.trunk is None else trunk_ends(m.trunk, m.target.endswith("/rev"))[:2]
                if m.trunk is None:
                    dst_node, ip = place(m.dst)
                else:
                    _, dst_node, ip = trunk_ends(m.trunk, m.target.endswith("/rev"))
                jobs.append(TcpJob(src_node, dst_node, ip, next(port), seconds, label=m.target, cc=cc))
            before = _qdisc_bytes(net)
            run_tcp(jobs, warmup=warmup)
            after = _qdisc_bytes(net)
        finally:
            errors = lifter.restore()
            if errors:
                raise RuntimeError("could not restore link rates after a measurement: " + "; ".join(errors))
        for m, j in zip(rnd, jobs, strict=True):
            r = rows[m.target]
            r.via = m.via
            r.lifted = tuple(x for x, _ in m.lifts)
            if "error" in j.result:
                r.measured, r.error_pct = 0.0, -100.0
                r.note += f" {j.result['error']}"
                continue
            r.measured = j.result["wire"]
            r.goodput = j.result["goodput"]
            # the stream must really have crossed the link: its shaper counted at least what arrived
            crossed = after.get(m.target, 0) - before.get(m.target, 0)
            if before and crossed < 0.9 * j.result["bytes"]:
                r.measured, r.error_pct = 0.0, -100.0
                r.note += (f" the stream ({j.result['bytes']} B) did not cross {m.target} "
                           f"(its qdisc counted {crossed} B): wrong path")
                continue
            # the bottleneck in force: the target, unless a link that had to be lifted could not be
            bottleneck = min(links[x].rate for x in m.data) if m.target in unlifted else r.configured
            r.error_pct = (r.measured - bottleneck) / bottleneck * 100.0
    return [rows[t] for t in targets]


def _default_cc(net: Any, topology: Topology) -> str:
    try:
        host = net.host(next(iter(topology.slaves)))
        out = host.popen(["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).communicate(timeout=10)[0]
        return out.decode().strip()
    except Exception:
        return ""


def verify_links(topology_path: str | Path, *, scale: float, latency: str = "auto",
                 log: Callable[[str], None] = print, seconds: float = 3.0, warmup: float = 1.0,
                 probes: int = 200, cc: str = "cubic") -> VerifyResult:
    """Build the network for ``topology_path`` x ``scale``, measure every shaped link direction, print the table.

    The last line printed is ``max_bw_error_pct=X max_latency_error_ms=Y``.
    """
    import shutil
    import tempfile

    from scaledist.topology_schema import load_topology
    from testbed.network import EmulatedNetwork

    t0 = time.monotonic()
    base = load_topology(topology_path)
    topology = base.scaled(scale) if scale != 1.0 else base
    run_dir = Path(tempfile.mkdtemp(prefix="scaledist-verify-"))
    net = EmulatedNetwork(topology, run_dir=run_dir, latency=latency, log=log)
    try:
        net.start()
        method = str(getattr(net, "latency_method", latency))
        log(f"network up: {len(net.links())} shaped link directions, latency by {method}")
        default_cc = _default_cc(net, topology)
        if default_cc == "bbr" and cc != "bbr":
            log("note: the hosts' default TCP congestion control is bbr, which stalls behind a shaper on the "
                f"sender's own interface (about 1 % of the rate in our tests); the measuring streams use {cc}")
        rows = measure_links(net, topology, seconds=seconds, warmup=warmup, probes=probes, cc=cc, log=log)
    finally:
        try:
            net.stop()
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    bw = [abs(r.error_pct) for r in rows if r.error_pct is not None]
    lat = [r.latency_error_ms for r in rows if r.latency_error_ms is not None]
    result = VerifyResult(rows, max(bw, default=0.0), max(lat, default=0.0), method, scale, time.monotonic() - t0)
    for line in table(rows):
        log(line)
    log(f"latency emulated by {method}; bandwidth measured on the wire (TCP payload + headers, what HTB meters) "
        f"from one {cc or 'default'} TCP stream per direction over {seconds - warmup:g} s after {warmup:g} s of "
        f"warm-up; latency = median one-way of {probes} UDP probes; {result.seconds:.0f} s in all")
    log(result.last_line())
    return result


def _tools_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.verify")
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("udp-recv")
    a.add_argument("--bind", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--timeout", type=float, default=10.0)
    a = sub.add_parser("udp-send")
    a.add_argument("--dst", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--interval", type=float, required=True)
    a.add_argument("--sport", type=int, default=0)
    a = sub.add_parser("tcp-recv")
    a.add_argument("--bind", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--timeout", type=float, default=30.0)
    a = sub.add_parser("tcp-send")
    a.add_argument("--dst", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--sport", type=int, default=0)
    a.add_argument("--cc", default="", help="TCP congestion control for the stream (default: the system's)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.cmd == "udp-recv":
        out = udp_recv(args.bind, args.port, args.count, args.timeout)
    elif args.cmd == "udp-send":
        out = udp_send(args.dst, args.port, args.count, args.interval, sport=args.sport)
    elif args.cmd == "tcp-recv":
        out = tcp_recv(args.bind, args.port, args.timeout)
    else:
        out = tcp_send(args.dst, args.port, args.seconds, sport=args.sport, cc=args.cc)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_tools_main(sys.argv[1:]))
