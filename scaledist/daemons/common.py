"""What every daemon shell shares: identity, configuration, one-line logs, clean shutdown."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scaledist.cluster import Cluster, load_cluster
from scaledist.topology import Topology
from scaledist.topology_schema import load_topology
from scaledist.wire import Codec


class Logger:
    """One line per event on stderr: time, role, identity, what happened."""

    def __init__(self, role: str, ident: str) -> None:
        self.prefix = f"{role} {ident}"

    def __call__(self, text: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        sys.stderr.write(f"{stamp} {self.prefix} {text}\n")
        sys.stderr.flush()


@dataclass
class Context:
    ident: str
    topology: Topology  # already scaled
    cluster: Cluster
    codec: Codec
    log: Logger

    @property
    def report_interval(self) -> float:
        return self.cluster.report_interval or self.topology.report_interval


def load_context(role: str, topology_path: str, cluster_path: str, ident: str) -> Context:
    log = Logger(role, ident)
    cluster = load_cluster(cluster_path)
    topology = load_topology(topology_path)
    if cluster.scale != 1.0:
        topology = topology.scaled(cluster.scale)
    return Context(ident, topology, cluster, Codec(cluster.key, ident), log)


def now() -> float:
    """The core's clock: monotonic, so a stepped wall clock cannot bend epochs or deadlines."""
    return time.monotonic()


def run(main: Callable[[asyncio.Event], Awaitable[None]], log: Logger) -> int:
    """Runs a daemon until SIGTERM/SIGINT, then lets it stop cleanly."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except OSError as e:
        log(f"fatal: {e}")
        return 1
    except Exception as e:
        log(f"fatal: {type(e).__name__}: {e}")
        return 1
    log("stopped")
    return 0


async def every(stop: asyncio.Event, period: float, tick: Callable[[], None]) -> None:
    """Calls ``tick`` every ``period`` seconds until ``stop`` is set: the core's clock tick."""
    while not stop.is_set():
        tick()
        try:
            await asyncio.wait_for(stop.wait(), period)
        except TimeoutError:
            pass


def spawn(coro: Awaitable[object], log: Logger, what: str) -> asyncio.Task[object]:
    """A background task whose failure is logged instead of lost."""
    task = asyncio.ensure_future(coro)

    def done(t: asyncio.Task[object]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log(f"{what} failed: {t.exception()!r}")

    task.add_done_callback(done)
    return task
