"""Where each daemon listens and which key the cluster shares.

The topology says what exists; a cluster file says where it runs: loopback
addresses for ``scaledist local``, namespace addresses for the testbed, real
hosts in production. Every daemon reads the same file, so one launcher decides
the whole address plan.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from scaledist.topology import Topology

CONTROL_PORT = 7100
DATA_PORT = 7101


class ClusterError(ValueError):
    """A cluster file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    control: int = CONTROL_PORT
    data: int = DATA_PORT

    @property
    def push(self) -> int:
        """Push-mode blocks arrive here, so a network can tell data (sport=data or dport=push) from ACKs."""
        return self.data + 1


@dataclass(frozen=True)
class Cluster:
    topology: str  # path of the topology file
    scale: float
    key: bytes
    endpoints: dict[str, Endpoint]
    management: dict[str, str] = field(default_factory=dict)  # id -> address on the management network (§0043)
    report_interval: float | None = None  # overrides the topology's
    mode: str = "pull"
    source: str = ""

    def endpoint(self, ident: str) -> Endpoint:
        try:
            return self.endpoints[ident]
        except KeyError:
            raise ClusterError(f"{self.source}: no address for {ident!r} in 'endpoints'") from None

    def control_host(self, ident: str) -> str:
        """Address to send control messages to: the management network when there is one."""
        return self.management.get(ident) or self.endpoint(ident).host

    def to_json(self, key_file: str) -> dict[str, object]:
        return {
            "version": 1,
            "topology": self.topology,
            "scale": self.scale,
            "key_file": key_file,
            "mode": self.mode,
            "report_interval": self.report_interval,
            "endpoints": {k: {"host": e.host, "control": e.control, "data": e.data} for k, e in self.endpoints.items()},
            "management": self.management,
        }


def load_cluster(path: str | Path) -> Cluster:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"{path}: no such cluster file") from None
    except json.JSONDecodeError as e:
        raise ClusterError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise ClusterError(f"{path}: version: expected 1")
    try:
        key_file = Path(raw["key_file"])
        if not key_file.is_absolute():
            key_file = path.parent / key_file
        key = bytes.fromhex(key_file.read_text().strip())
        if len(key) < 16:
            raise ClusterError(f"{path}: key_file: key shorter than 16 bytes")
        endpoints = {}
        for ident, e in raw["endpoints"].items():
            ipaddress.ip_address(e["host"])
            control, data = int(e.get("control", CONTROL_PORT)), int(e.get("data", DATA_PORT))
            endpoints[ident] = Endpoint(str(e["host"]), control, data)
        scale = float(raw.get("scale", 1.0))
        if scale <= 0:
            raise ClusterError(f"{path}: scale: must be > 0")
        mode = raw.get("mode", "pull")
        if mode not in ("pull", "push"):
            raise ClusterError(f"{path}: mode: must be 'pull' or 'push', got {mode!r}")
        ri = raw.get("report_interval")
        return Cluster(
            topology=str(raw["topology"]),
            scale=scale,
            key=key,
            endpoints=endpoints,
            management={str(k): str(v) for k, v in (raw.get("management") or {}).items()},
            report_interval=float(ri) if ri is not None else None,
            mode=mode,
            source=str(path),
        )
    except KeyError as e:
        raise ClusterError(f"{path}: missing key {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        if isinstance(e, ClusterError):
            raise
        raise ClusterError(f"{path}: {e}") from None


def loopback_plan(topology: Topology, octet: int | None = None) -> dict[str, Endpoint]:
    """One 127.x.y.z address per daemon so each is told apart in logs and sockets, no root needed.

    The second octet is drawn at random per run, so runs side by side never share an address.
    """
    if octet is None:
        octet = 2 + secrets.randbelow(250)
    idents = [topology.resource_manager.id, *topology.masters, *topology.slaves, *topology.generators]
    out: dict[str, Endpoint] = {}
    for n, ident in enumerate(idents, start=1):
        out[ident] = Endpoint(f"127.{octet}.{n // 250}.{n % 250 + 1}")
    return out


def write_cluster(run_dir: Path, cluster: Cluster) -> Path:
    """Writes cluster.json and a 0600 key file beside it; returns the cluster file path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key_path = run_dir / "cluster.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cluster.key.hex() + "\n")
    path = run_dir / "cluster.json"
    path.write_text(json.dumps(cluster.to_json("cluster.key"), indent=1) + "\n")
    return path


def new_key() -> bytes:
    return secrets.token_bytes(32)
