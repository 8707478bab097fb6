"""Process faults: real signals to real daemons, and real restarts of the same command in the same host.

* ``slave_kill``: SIGKILL a slave (mid-transfer: its data and checksum files are as the kernel left them);
  repair starts it again, and it recovers from its own disk;
* ``master_replace``: SIGKILL a master; repair starts a new master with the same id, which starts empty
  and rebuilds its tables from slave reports (§0155);
* ``rm_restart``: SIGKILL the resource manager; repair starts it again (empty: grants in flight are gone).

The drill marks the daemon expected-down before the kill, so the run does not stop on its death.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from typing import Any

from testbed.faults.base import DrillContext, Fault, FaultSpecError, register
from testbed.faults.network import FaultError


class _Restart(Fault):
    """SIGKILL on inject, the same daemon started again on repair."""

    role = ""  # 'slave' | 'master' | 'resource manager'
    key = ""

    def __init__(self, ident: str) -> None:
        self.target = ident
        self.killed = False
        self.killed_pid: int | None = None
        self.new_pid: int | None = None
        self.restart_s: float | None = None  # restart issued -> listening again

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> Fault:
        allowed = (cls.key,)
        for k in params:
            if k not in allowed:
                raise FaultSpecError(f"{where}.{k}: unknown key {k!r} (this fault takes: {', '.join(allowed)})")
        if cls.key not in params and cls.kind != "rm_restart":
            raise FaultSpecError(f"{where}.{cls.key}: required key is missing")
        v = params.get(cls.key, "")
        if not isinstance(v, str):
            raise FaultSpecError(f"{where}.{cls.key}: expected an id, got {v!r}")
        return cls(v)

    def _known(self, topology: Any) -> dict[str, Any]:
        raise NotImplementedError

    def validate(self, topology: Any) -> None:
        known = self._known(topology)
        if self.target not in known:
            raise FaultSpecError(f"{self.kind}.{self.key}: {self.target!r} is not a {self.role} of topology "
                                 f"{topology.name} ({', '.join(sorted(known))})")

    def inject(self, ctx: DrillContext) -> None:
        proc = ctx.cluster.procs.get(self.target)
        if proc is None or proc.poll() is not None:
            raise FaultError(f"{self.target} is not running; nothing to kill")
        ctx.expected_down.add(self.target)  # before the kill: the run's wait loop must not take it for a crash
        self.killed_pid = proc.pid
        ctx.cluster.kill(self.target, signal.SIGKILL)
        self.killed = True

    def repair(self, ctx: DrillContext) -> None:
        if not self.killed:
            return
        proc = ctx.cluster.procs.get(self.target)
        if proc is None or proc.poll() is not None:
            t0 = time.monotonic()
            ctx.cluster.start_daemon(self.target)
            self.new_pid = ctx.cluster.procs[self.target].pid
            ctx.cluster.wait_listening([self.target], timeout=30.0)
            self.restart_s = round(time.monotonic() - t0, 3)
        self.killed = False
        ctx.expected_down.discard(self.target)

    def notes(self) -> dict[str, Any]:
        return {"killed_pid": self.killed_pid, "new_pid": self.new_pid, "restart_to_listening_s": self.restart_s}


@register
class SlaveKill(_Restart):
    kind = "slave_kill"
    role = "slave"
    key = "slave"

    def _known(self, topology: Any) -> dict[str, Any]:
        return dict(topology.slaves)

    def resources(self) -> tuple[str, ...]:
        return (self.target,)


@register
class MasterReplace(_Restart):
    kind = "master_replace"
    role = "master"
    key = "master"

    def _known(self, topology: Any) -> dict[str, Any]:
        return dict(topology.masters)


@register
class RmRestart(_Restart):
    kind = "rm_restart"
    role = "resource manager"
    key = "rm"

    def _known(self, topology: Any) -> dict[str, Any]:
        if not self.target:
            self.target = topology.resource_manager.id
        return {topology.resource_manager.id: topology.resource_manager}
