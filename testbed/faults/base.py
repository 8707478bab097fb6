"""The contract every drill fault keeps: built from a drill file's entry, injected and repaired on a live run.

A fault acts on the emulated network or the real processes (interfaces, qdiscs, iptables, signals, files on
disk), never on the daemons' internals. ``repair`` is idempotent and is also called at teardown, so a drill
that fails half way leaves nothing broken behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


class FaultSpecError(ValueError):
    """A drill file's fault entry is wrong; the message names the entry and the key."""


@dataclass
class DrillContext:
    """What a fault may touch: the started network, the running cluster, the scaled topology, the run folder."""

    net: Any  # testbed.network.EmulatedNetwork, started
    cluster: Any  # testbed.run.TestbedCluster, daemons running
    topology: Any  # scaledist.topology.Topology, already scaled
    run_dir: Path
    log: Callable[[str], None] = print
    expected_down: set[str] = field(default_factory=set)  # daemon ids a fault stopped on purpose

    def host(self, ident: str) -> Any:
        """The Mininet host running daemon ``ident`` (a generator runs on its slave's host)."""
        return self.net.host(ident)


class Fault:
    """One declared fault. Subclasses set ``kind`` and implement ``inject``/``repair``."""

    kind: ClassVar[str] = ""
    target: str = ""  # what it acts on: a trunk id, a slave id, a link id, a daemon id

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> Fault:
        """Build from a drill file entry's parameters; raise FaultSpecError naming ``where`` and the key."""
        raise NotImplementedError

    def inject(self, ctx: DrillContext) -> None:
        raise NotImplementedError

    def repair(self, ctx: DrillContext) -> None:
        """Undo the fault; idempotent (called again at teardown)."""
        raise NotImplementedError

    def resources(self) -> tuple[str, ...]:
        """Resource ids (as the master names them: slave, rack, datacenter, trunk ids) a master should mark
        failed because of this fault, for the drill's detection times; empty when none is expected."""
        return ()

    def notes(self) -> dict[str, Any]:
        """Counts and facts for the report (packets corrupted, bytes written to fill a disk, ...)."""
        return {}

    # Optional steps a fault may define (the drill runner calls them when present):
    #   before_network(ctx): before Mininet builds the hosts (ctx.net is None; ctx.cluster has run_dir,
    #     scenario and data_dir(slave)): a mount made now is shared by the hosts and the testbed;
    #   prepare(ctx): after the network is up, before the daemons start;
    #   finish(ctx): after the daemons stopped.

    def validate(self, topology: Any) -> None:
        """Raise FaultSpecError when the target is not in ``topology`` (loaded, unscaled); checked at load time,
        before anything is built.  Default: no check."""
        return None


FAULTS: dict[str, type[Fault]] = {}


def register(cls: type[Fault]) -> type[Fault]:
    """Class decorator: makes a fault kind usable in drill files."""
    if not cls.kind or cls.kind in FAULTS:
        raise ValueError(f"fault kind {cls.kind!r} is empty or registered twice")
    FAULTS[cls.kind] = cls
    return cls
