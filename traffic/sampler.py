"""Every link direction's counters once per resource-manager epoch -> ``epochs.jsonl``.

The resource manager's epoch ``i`` covers ``[origin + i*L, origin + (i+1)*L)`` of
``time.monotonic()`` in its process (``scaledist.core.epochs``); every process on
this machine shares that clock (network namespaces do not change it), so the
sampler reads the RM's ``epoch``/``epoch_start``/``epoch_length`` once over a
StatusQuery and then wakes at each boundary.  Per link direction
(``EmulatedNetwork.links()``: the interface whose egress shapes it) it reads:

- the interface's transmit counters from ``/proc/<pid>/net/dev`` (the root
  namespace's bridge ports from ``/proc/self/net/dev``, psutil's source): the
  bytes and packets that left through that link direction, Ethernet headers
  included;
- the HTB tree's counters (bytes, packets, drops, overlimits, backlog, requeues)
  over one rtnetlink socket per namespace (``traffic.nl``).

The sampler runs as its own process (``python -m traffic.sampler``, started by
``SamplerProcess``): as a thread of the run it woke up to a third of an epoch
late, waiting for the GIL behind the run's progress display.  The parent sends it
one JSON configuration line on stdin, then ``origin <monotonic> <epoch length>``
once the resource manager answered, then ``stop``; it writes ``epochs.jsonl`` as it
goes and its own figures (CPU, lateness) to a JSON file at the end.  One reading of
the 42 link directions of small.yaml costs about 7 ms of CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from testbed.netns import in_netns
from traffic.nl import NsNetlink, dev_counters

COUNTERS = ("bytes", "packets", "qdisc_bytes", "qdisc_packets", "drops", "overlimits", "requeues")


@dataclass(frozen=True)
class Port:
    """Where one link direction is read: the egress interface and its namespace."""

    link: str
    pid: int | None
    intf: str


def query_rm_epoch(pid: int | None, host: str, port: int, key: bytes, timeout: float = 2.0) -> dict[str, float]:
    """``epoch``, ``epoch_start``, ``epoch_length`` from the resource manager's StatusQuery, asked from its host."""
    from scaledist import netio
    from scaledist.messages import StatusQuery, StatusReply
    from scaledist.wire import Codec

    async def ask() -> dict[str, float]:
        reply = await netio.call(host, port, Codec(key, "status"), StatusQuery(), timeout=timeout)
        if not isinstance(reply, StatusReply):
            raise OSError(f"resource manager answered {type(reply).__name__}")
        b = reply.body
        return {"epoch": int(b["epoch"]), "epoch_start": float(b["epoch_start"]),
                "epoch_length": float(b["epoch_length"])}

    return in_netns(pid, lambda: asyncio.run(ask()))  # type: ignore[no-any-return]


class EpochSampler:
    """Samples every port at each epoch boundary of the resource manager (runs in the sampler process)."""

    def __init__(self, ports: Mapping[str, Port], out: Path, epoch_length: float, commands: int = 0) -> None:
        self.ports = dict(ports)
        self.out_path = out
        self.length = float(epoch_length)
        self.commands = commands  # fd the parent's lines arrive on
        self._buf = b""
        self.origin: float | None = None
        self.stopping = False
        self._nl: dict[int | None, NsNetlink] = {}
        self._ifindex: dict[str, int] = {}
        self.samples = 0
        self.sample_cpu_ms: list[float] = []
        self.sample_wall_ms: list[float] = []
        self.lateness_ms: list[float] = []
        self.records = 0
        self.errors: list[str] = []
        self._f: IO[str] | None = None

    def open(self) -> None:
        """One netlink socket per namespace and the interface indexes."""
        for pid in {p.pid for p in self.ports.values()}:
            self._nl[pid] = NsNetlink(pid)
        for p in self.ports.values():
            idx = self._nl[p.pid].links().get(p.intf)
            if idx is not None:
                self._ifindex[p.link] = idx[0]

    def close(self) -> None:
        for nl in self._nl.values():
            with contextlib.suppress(OSError):
                nl.close()
        self._nl.clear()
        if self._f is not None:
            self._f.close()
            self._f = None

    # --- commands from the parent -----------------------------------------------

    def _wait(self, timeout: float) -> None:
        """Sleeps up to ``timeout`` s, or until a command line arrives (origin / stop / EOF = stop)."""
        deadline = time.monotonic() + timeout
        while not self.stopping:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.commands], [], [], max(0.0, left))
            if not r:
                return
            chunk = os.read(self.commands, 4096)
            if not chunk:
                self.stopping = True
                return
            self._buf += chunk
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                words = line.decode().split()
                if words[:1] == ["stop"]:
                    self.stopping = True
                elif words[:1] == ["origin"] and len(words) == 3:
                    self.origin, self.length = float(words[1]), float(words[2])
                    return
            if left <= 0:
                return

    # --- reading --------------------------------------------------------------

    def read(self) -> dict[str, dict[str, int]]:
        """Cumulative counters of every port now."""
        devs: dict[int | None, dict[str, tuple[int, int, int, int]]] = {}
        qd: dict[int | None, Any] = {}
        out: dict[str, dict[str, int]] = {}
        for link, p in self.ports.items():
            if p.pid not in devs:
                devs[p.pid] = dev_counters(p.pid)
                try:
                    qd[p.pid] = self._nl[p.pid].qdiscs()
                except OSError as e:
                    qd[p.pid] = None
                    if len(self.errors) < 20:
                        self.errors.append(f"qdiscs in {p.pid}: {e}")
            d = devs[p.pid].get(p.intf)
            rec = {"bytes": d[0], "packets": d[1]} if d else {}
            idx = self._ifindex.get(link)
            if idx is not None and qd[p.pid] is not None:
                try:
                    st = self._nl[p.pid].link_stats(idx, qd[p.pid])
                    rec.update(qdisc_bytes=st["bytes"], qdisc_packets=st["packets"], drops=st["drops"],
                               overlimits=st["overlimits"], backlog=st["backlog"], requeues=st["requeues"])
                except OSError as e:
                    if len(self.errors) < 20:
                        self.errors.append(f"{link}: {e}")
            out[link] = rec
        return out

    def _sample(self) -> tuple[float, dict[str, dict[str, int]]]:
        c0, w0 = time.process_time(), time.monotonic()
        cur = self.read()
        w1 = time.monotonic()
        self.samples += 1
        self.sample_cpu_ms.append((time.process_time() - c0) * 1e3)
        self.sample_wall_ms.append((w1 - w0) * 1e3)
        return (w0 + w1) / 2, cur

    # --- the loop ---------------------------------------------------------------

    def run(self) -> None:
        self._f = self.out_path.open("w")
        base_t, base = self._sample()  # before the daemons: everything after this is the run's
        while self.origin is None and not self.stopping:
            self._wait(3600.0)
        if self.origin is None:  # stopped before the RM ever answered
            return
        origin, length = self.origin, self.length
        first = max(0, math.floor((base_t - origin) / length))  # normally 0: sampled before the RM started
        prev_t, prev, prev_epoch = origin + first * length, base, first
        k = math.floor((time.monotonic() - origin) / length) + 1  # next boundary to sample at
        while True:
            boundary = origin + k * length
            while not self.stopping and time.monotonic() < boundary:
                self._wait(boundary - time.monotonic())
            t, cur = self._sample()
            if self.stopping:
                self._emit(prev_epoch, max(1, k - prev_epoch), prev_t, t, prev, cur, partial=True)
                return
            self.lateness_ms.append((t - boundary) * 1e3)
            self._emit(prev_epoch, k - prev_epoch, prev_t, t, prev, cur, partial=False)
            prev_t, prev, prev_epoch = boundary, cur, k
            k = max(k + 1, math.floor((time.monotonic() - origin) / length) + 1)

    def _emit(self, epoch: int, span: int, t0: float, t1: float, before: Mapping[str, Mapping[str, int]],
              after: Mapping[str, Mapping[str, int]], *, partial: bool) -> None:
        assert self.origin is not None and self._f is not None
        links: dict[str, dict[str, int]] = {}
        for link, a in after.items():
            b = before.get(link, {})
            d = {k: a[k] - b.get(k, 0) for k in COUNTERS if k in a}
            if "backlog" in a:
                d["backlog"] = a["backlog"]
            links[link] = d
        rec = {"epoch": epoch, "epochs": span, "t_start": round(t0 - self.origin, 4),
               "t_end": round(t1 - self.origin, 4), "partial": partial, "links": links}
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()
        self.records += 1

    def summary(self) -> dict[str, object]:
        cpu, wall, late = sorted(self.sample_cpu_ms), sorted(self.sample_wall_ms), sorted(self.lateness_ms)

        def pct(xs: list[float], q: float) -> float | None:
            return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None

        return {
            "samples": self.samples,
            "records": self.records,
            "ports": len(self.ports),
            "namespaces": len({p.pid for p in self.ports.values()}),
            "sample_cpu_ms_mean": round(sum(cpu) / len(cpu), 3) if cpu else None,
            "sample_cpu_ms_max": pct(cpu, 1.0),
            "sample_wall_ms_p50": pct(wall, 0.5),
            "sample_wall_ms_max": pct(wall, 1.0),
            "lateness_ms_p50": pct(late, 0.5),
            "lateness_ms_p95": pct(late, 0.95),
            "lateness_ms_max": pct(late, 1.0),
            "errors": self.errors,
        }


def main() -> int:
    """The sampler process: configuration on stdin, then commands; see the module docstring."""
    cfg = json.loads(sys.stdin.buffer.readline())
    with contextlib.suppress(OSError):
        os.nice(-5)  # wakes on time at the boundaries; it uses well under 1 % of a core
    ports = {p["link"]: Port(p["link"], p["pid"], p["intf"]) for p in cfg["ports"]}
    s = EpochSampler(ports, Path(cfg["out"]), cfg["epoch_length"], commands=sys.stdin.fileno())
    try:
        s.open()
        print("ready", flush=True)
        s.run()
    except Exception as e:
        s.errors.append(f"sampler stopped: {type(e).__name__}: {e}")
    finally:
        s.close()
        Path(cfg["summary"]).write_text(json.dumps(s.summary()) + "\n")
    return 0


class SamplerProcess:
    """The parent's handle on the sampler process (same machine, root namespace)."""

    def __init__(self, ports: Mapping[str, Port], out: Path, epoch_length: float,
                 log: Callable[[str], None] = print) -> None:
        self.ports = dict(ports)
        self.out_path = out
        self.summary_path = out.with_name("sampler-summary.json")
        self.length = float(epoch_length)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_s = 0.0
        self.origin: float | None = None
        self.origin_source = ""
        self.errors: list[str] = []

    def macs(self, links: Iterable[str]) -> dict[str, str]:
        """Link id -> MAC of its egress interface (short-lived sockets, closed at once)."""
        out: dict[str, str] = {}
        wanted = [self.ports[link] for link in links if link in self.ports]
        for pid in {p.pid for p in wanted}:
            with NsNetlink(pid) as nl:
                table = nl.links()
            for p in wanted:
                if p.pid == pid and p.intf in table:
                    out[p.link] = table[p.intf][1]
        return out

    def start(self, timeout: float = 20.0) -> None:
        """Starts the process and waits for its first (baseline) reading to be possible."""
        from traffic.capture import ns_popen

        self.proc = ns_popen(None, [sys.executable, "-m", "traffic.sampler"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        cfg = {"ports": [{"link": p.link, "pid": p.pid, "intf": p.intf} for p in self.ports.values()],
               "out": str(self.out_path), "summary": str(self.summary_path), "epoch_length": self.length}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else b""
        if line.strip() != b"ready":
            self.errors.append(f"sampler did not start: {line[:200]!r}")
            self.log(f"warning: epoch sampler did not start ({line[:200]!r})")

    def _send(self, line: str) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def set_origin(self, origin: float, source: str, length: float) -> None:
        self.origin, self.origin_source, self.length = origin, source, length
        self._send(f"origin {origin!r} {length!r}")

    def stop(self) -> None:
        """Last (partial) epoch; the process closes its sockets (they pin their namespaces) and exits."""
        from traffic.capture import wait_rusage

        if self.proc is None or self.proc.returncode is not None:
            return
        self._send("stop")
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.cpu_s += wait_rusage(self.proc, 15.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"cpu_s": round(self.cpu_s, 4), "origin_source": self.origin_source}
        with contextlib.suppress(OSError, ValueError):
            out.update(json.loads(self.summary_path.read_text()))
        if self.errors:
            out["errors"] = [*self.errors, *out.get("errors", [])]  # type: ignore[misc]
        return out


if __name__ == "__main__":
    raise SystemExit(main())
