"""One object the testbed run drives: start before the daemons, stop after them, write the files at the end.

Order inside ``testbed.run.run_testbed``:

1. ``Measurement(net, plan, run_dir)`` once the network is up;
2. ``start(cluster)`` before ``cluster.start()``: netlink sockets, tcpdump on every
   trunk, the epoch sampler's baseline, and a thread that asks the resource manager
   for its epoch origin as soon as it listens (then aligns the sampler and
   schedules the cross traffic);
3. ``stop()`` after the daemons stopped, before the network is torn down: last
   partial epoch, cross traffic ended, tcpdump stopped (SIGINT), every socket into
   the namespaces closed;
4. ``finish()`` after the teardown: pcaps read, ``flows.json``, ``crossload.json``
   and ``measurement.json`` written.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traffic.capture import TrunkCaptures
from traffic.crossload import CrossLoad
from traffic.flows import analyse, write_flows
from traffic.sampler import Port, SamplerProcess, query_rm_epoch

ORIGIN_TIMEOUT = 60.0


class Measurement:
    def __init__(self, net: Any, topology: Any, run_dir: Path, *, scenario: Any = None, scale: float = 1.0,
                 capture: bool = True, log: Callable[[str], None] = print) -> None:
        self.net = net
        self.topology = topology
        self.run_dir = Path(run_dir)
        self.log = log
        shaped = net.links()
        self.ports = {link: Port(link, sl.pid, sl.intf) for link, sl in sorted(shaped.items())}
        self.sampler = SamplerProcess(self.ports, self.run_dir / "epochs.jsonl", topology.epoch, log=log)
        trunk_ports = {t: (shaped[f"trunk/{t}"].pid, shaped[f"trunk/{t}"].intf)
                       for t in sorted(topology.trunks) if f"trunk/{t}" in shaped}
        self.captures = TrunkCaptures(trunk_ports, self.run_dir / "capture") if capture else None
        loads = tuple(getattr(scenario, "cross_traffic", ()) or ())
        self.cross = CrossLoad(loads, scale, net, topology, self.run_dir / "crossload", log=log)
        self.macs: dict[str, str] = {}
        self.origin: float | None = None
        self.origin_info: dict[str, object] = {}
        self.wall_offset = time.time() - time.monotonic()  # pcap timestamps are wall clock
        self._origin_thread: threading.Thread | None = None
        self._origin_stop = threading.Event()
        self.cpu = {"setup_s": 0.0, "origin_s": 0.0, "stop_s": 0.0, "postprocess_s": 0.0}
        self.errors: list[str] = []
        self.started = False

    def start(self, cluster: Any) -> None:
        t0 = time.thread_time()
        self.wall_offset = time.time() - time.monotonic()
        self.macs = self.sampler.macs(f"trunk/{t}" for t in self.topology.trunks)
        if self.captures is not None:
            self.captures.start()
            for c in self.captures.captures.values():
                if c.error:
                    self.errors.append(f"capture {c.trunk}: {c.error}")
                    self.log(f"warning: capture on trunk {c.trunk} failed: {c.error}")
        self.sampler.start()
        rm = self.topology.resource_manager.id
        pid = self.net.host(rm).pid
        host, port = cluster.cluster.control_host(rm), cluster.cluster.endpoint(rm).control
        key = cluster.cluster.key
        self._origin_thread = threading.Thread(target=self._find_origin, args=(pid, host, port, key),
                                               name="rm-origin", daemon=True)
        self._origin_thread.start()
        self.started = True
        self.cpu["setup_s"] += time.thread_time() - t0

    def _find_origin(self, pid: int, host: str, port: int, key: bytes) -> None:
        c0 = time.thread_time()
        deadline = time.monotonic() + ORIGIN_TIMEOUT
        tries = 0
        last = ""
        try:
            while not self._origin_stop.is_set() and time.monotonic() < deadline:
                tries += 1
                try:
                    t_ask = time.monotonic()
                    st = query_rm_epoch(pid, host, port, key)
                except Exception as e:  # not listening yet
                    last = f"{type(e).__name__}: {e}"
                    self._origin_stop.wait(0.05)
                    continue
                origin = st["epoch_start"] - st["epoch"] * st["epoch_length"]
                self.origin = origin
                self.origin_info = {"source": "rm StatusQuery", "epoch": st["epoch"],
                                    "epoch_start": st["epoch_start"], "epoch_length": st["epoch_length"],
                                    "asked_at": round(t_ask - origin, 4), "tries": tries}
                if abs(st["epoch_length"] - self.topology.epoch) > 1e-9:
                    self.errors.append(f"RM epoch {st['epoch_length']} s differs from the topology's "
                                       f"{self.topology.epoch} s")
                self.sampler.set_origin(origin, "rm StatusQuery", st["epoch_length"])
                self.cross.start(origin)
                return
            if not self._origin_stop.is_set():
                self.errors.append(f"resource manager epoch origin unknown after {tries} tries: {last}")
        finally:
            self.cpu["origin_s"] += time.thread_time() - c0

    def stop(self) -> None:
        """Everything the measurement started inside the network ends here (before the network does)."""
        if not self.started:
            return
        t0 = time.thread_time()
        self._origin_stop.set()
        if self._origin_thread is not None:
            self._origin_thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.cross.stop()
        self.sampler.stop()
        if self.captures is not None:
            self.captures.stop()
        self.cpu["stop_s"] += time.thread_time() - t0

    def finish(self) -> dict[str, object]:
        """flows.json, crossload.json, measurement.json; returns measurement.json's content."""
        if not self.started:
            return {}
        t0 = time.thread_time()
        cross = self.cross.summary()
        if cross:
            (self.run_dir / "crossload.json").write_text(json.dumps({"loads": cross}, indent=1) + "\n")
        flows_cpu = 0.0
        if self.captures is not None:
            try:
                content = analyse(self.run_dir, self.topology, self.macs,
                                  origin_wall=None if self.origin is None else self.origin + self.wall_offset,
                                  epoch_length=self.sampler.length, capture_stats=self.captures.summary(),
                                  cross=cross)
                flows_cpu = float(content.get("cpu_s", 0.0))  # type: ignore[arg-type]
                write_flows(self.run_dir / "flows.json", content)
            except Exception as e:
                self.errors.append(f"flows: {type(e).__name__}: {e}")
                self.log(f"warning: flow analysis failed: {type(e).__name__}: {e}")
        self.cpu["postprocess_s"] += time.thread_time() - t0
        parts = {
            "sampler_s": round(self.sampler.cpu_s, 4),
            "capture_s": round(self.captures.cpu_s if self.captures else 0.0, 4),
            "crossload_s": round(self.cross.cpu_s, 4),
            "origin_query_s": round(self.cpu["origin_s"], 4),
            "setup_s": round(self.cpu["setup_s"], 4),
            "stop_s": round(self.cpu["stop_s"], 4),
            "postprocess_s": round(self.cpu["postprocess_s"], 4),
            "flows_analysis_s": round(flows_cpu, 4),  # part of postprocess_s
        }
        sampler = self.sampler.summary()
        with contextlib.suppress(OSError):
            self.sampler.summary_path.unlink()  # merged here
        total = sum(v for k, v in parts.items() if k != "flows_analysis_s")
        out: dict[str, object] = {
            "cpu_s": round(total, 4),
            "cpu": parts,
            "epoch_origin": self.origin_info,
            "epoch_length": self.sampler.length,
            "wall_minus_monotonic": self.wall_offset,
            "sampler": sampler,
            "capture": self.captures.summary() if self.captures else {},
            "crossload": [{k: v for k, v in c.items() if k in ("link", "rate_bytes_per_s", "cpu_s")} for c in cross],
            "files": {"epochs": "epochs.jsonl", "flows": "flows.json" if (self.run_dir / "flows.json").exists()
                      else None, "crossload": "crossload.json" if cross else None},
            "errors": self.errors,
        }
        (self.run_dir / "measurement.json").write_text(json.dumps(out, indent=1) + "\n")
        return out
