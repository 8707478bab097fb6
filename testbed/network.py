"""The emulated network: a topology file's datacenters, racks, trunks and hosts as Mininet namespaces.

Layout per datacenter (docs/TESTBED-API.md): every host (slave, master, resource
manager) -- rack bridge -- DC bridge -- border router (a Mininet host with
ip_forward=1); trunks are point-to-point veths between border routers.  Bridges
are Linux bridges in the root namespace (no Open vSwitch datapath here).  Every
link direction of ``Topology.links`` is shaped on the egress of the sending side
of its hop with an explicit HTB tree (``testbed.shaping``); trunk latency comes
from netem where the kernel has it, else from a user-space NFQUEUE delay line at
the receiving router (``testbed.delayline``).

Routing follows the topology, not shortest hops: block data (TCP sport 7101 or
dport 7102, marked fwmark 1 in every router's mangle PREROUTING) is routed by
table 100 ("data") along ``trunk_path(here, B)``; everything else (ACKs, control)
by the main table along the reverse of ``trunk_path(B, here)``, else the primary
path.  ``start()`` reads the installed tables back and refuses a topology whose
hop-by-hop routes would not follow ``trunk_path`` exactly.

Names: nodes are ``sd<tag><kind><n>`` and their interfaces ``<node>e<port>``
(at most 15 characters), ``<tag>`` two characters per run, so ``testbed.cleanup``
can recognise a killed run's leftovers without touching anyone else's.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaledist.cluster import DATA_PORT
from scaledist.topology import Topology
from testbed import cleanup, shaping
from testbed.addressing import AddressPlan, TestbedError, plan
from testbed.shaping import HtbConfig, ShapedLink

__all__ = ["DATA_TABLE", "EmulatedNetwork", "ShapedLink", "TestbedError"]

DATA_TABLE = 100  # "data": primary-direction routes for marked block data
MAIN_TABLE = 254
RULE_PRIORITY = 100
FWMARK = 1
PUSH_PORT = DATA_PORT + 1
ROUTE_COMMENT = "scaledist-route"
BRIDGE_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")
LATENCY_METHODS = ("auto", "netem", "nfqueue", "none")
MAX_IFNAME = 15


@dataclass(frozen=True)
class _Hop:
    """One trunk hop a route takes: the link id it shapes and the datacenter it reaches."""

    link: str
    to: str


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while tearing down, so a second Ctrl-C cannot leave half a network behind."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (ValueError, OSError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _host_cc() -> str:
    """Congestion control inside every emulated host and router (recorded in audit()).

    Not the machine's BBR: BBR behind a shaper on the sender's own interface at LAN RTTs stalled slave
    uplinks to ~1 % of their rate (measured by verify-links), cubic and reno reach ~95 %. A namespace may
    only pick what the root namespace allows, so cubic when allowed, else reno (always allowed).
    """
    try:
        allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    except OSError:
        allowed = []
    return "cubic" if "cubic" in allowed else "reno"


HOST_CC = _host_cc()


def _read_sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    (Path("/proc/sys") / key.replace(".", "/")).write_text(f"{value}\n")


class EmulatedNetwork:
    """A topology (already scaled) built as a Mininet network; see the module docstring and docs/TESTBED-API.md."""

    def __init__(self, topology: Topology, *, run_dir: Path, latency: str = "auto",
                 log: Callable[[str], None] = print, hil: Mapping[str, str] | None = None) -> None:
        if latency not in LATENCY_METHODS:
            raise TestbedError(f"latency must be one of {', '.join(LATENCY_METHODS)}, got {latency!r}")
        self.topology = topology
        self.run_dir = Path(run_dir)
        self.latency = latency
        self.log = log
        self.hil = dict(hil or {})
        self.latency_method = "none" if latency == "none" else ""
        self.plan: AddressPlan = plan(topology)
        self.net: Any = None
        self._tag = ""
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._host_node: dict[str, str] = {}  # daemon host id -> node name
        self._router: dict[str, str] = {}  # dc -> node name
        self._rack_bridge: dict[str, str] = {}
        self._dc_bridge: dict[str, str] = {}
        self._mgmt_bridge = ""
        self._roles: dict[str, str] = {}  # node name -> what it is in the topology
        self._ports: dict[str, int] = {}
        self._ifaces: dict[str, list[str]] = {}  # node name -> interfaces we created on it
        self._data_if: dict[str, str] = {}  # daemon host id -> data interface (in its namespace)
        self._mgmt_if: dict[str, str] = {}
        self._router_dc_if: dict[str, str] = {}  # dc -> router's DC-side interface
        self._trunk_if: dict[str, tuple[str, str]] = {}  # trunk -> (start router intf, end router intf)
        self._links: dict[str, ShapedLink] = {}
        self._htb: dict[str, HtbConfig] = {}
        self._unshaped: dict[str, str] = {}  # link id -> why it is not shaped here (hardware in the loop)
        self._hil_attached: dict[str, str] = {}
        self._delaylines: list[Any] = []
        self._iptables: list[tuple[str, list[str]]] = []  # (router node, rule spec after -A/-D)
        self._rules: list[str] = []  # router nodes with our ip rule
        self._sysctl_saved: dict[str, str] = {}
        self._registry_file: Path | None = None
        self._routes: dict[str, dict[str, list[str]]] = {"data": {}, "main": {}}
        self._offloads_set: dict[str, str] = {}
        self._atexit = False

    # --- public API -------------------------------------------------------

    def __enter__(self) -> EmulatedNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Build, shape, route and start the delay lines; on any failure (or Ctrl-C) tear down and raise."""
        if self._started:
            raise TestbedError("this network was already started; build a new EmulatedNetwork for another run")
        self._started = True
        t0 = time.monotonic()
        try:
            self._preflight()
            intended = self._route_tables()
            self._walk_all(lambda dc, table, dst: intended[(dc, table)].get(dst), "planned")
            self._plan_shaping()
            self._claim_tag()
            atexit.register(self.stop)
            self._atexit = True
            self._set_bridge_nf()
            self._build()
            self._configure_hosts()
            self._configure_routers(intended)
            self._disable_offloads()
            self._shape()
            self._start_latency()
            self._verify_installed_routes()
        except BaseException:
            self.log("network start failed; tearing down what was built")
            self.stop()
            raise
        self.log(f"network {self._tag}: {len(self._host_node)} hosts, {len(self._router)} routers, "
                 f"{len(self._links)} shaped link directions, latency={self.latency_method}, "
                 f"built in {time.monotonic() - t0:.1f}s")

    def stop(self) -> None:
        """Remove everything start() created; idempotent, safe from atexit and with signals arriving."""
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
            with _signals_deferred():
                self._teardown()

    def host(self, ident: str) -> Any:
        """Mininet host running daemon ``ident`` (a generator runs on its slave's host)."""
        ident = self._resolve(ident)
        if ident in self._hil_attached:
            raise TestbedError(f"{ident} is hardware in the loop on {self._hil_attached[ident]}; it has no "
                               f"Mininet host, run its daemon on that machine")
        if self.net is None or ident not in self._host_node:
            raise TestbedError(f"no host for {ident!r}; is the network started?")
        return self.net[self._host_node[ident]]

    def ip(self, ident: str) -> str:
        """Data-network address of daemon ``ident``."""
        return str(self.plan.hosts[self._resolve(ident)].ip)

    def mgmt_ip(self, ident: str) -> str | None:
        """Management-network address of ``ident``, None without a management network (or for hardware)."""
        ident = self._resolve(ident)
        if ident in self.hil:
            return None
        addr = self.plan.mgmt.get(ident)
        return str(addr.ip) if addr else None

    @property
    def running(self) -> bool:
        """Started, fully built and not stopped."""
        return self.net is not None and not self._stopped and bool(self._links)

    def links(self) -> dict[str, ShapedLink]:
        return dict(self._links)

    def node_roles(self) -> dict[str, str]:
        """Mininet node name -> what it is in the topology (e.g. 'slave:dc1-r1-s1', 'router:DC1')."""
        return dict(self._roles)

    def routes(self) -> dict[str, dict[str, list[str]]]:
        """The trunk link ids each datacenter pair's routes take, read back from the kernel at start."""
        return {k: dict(v) for k, v in self._routes.items()}

    def qdisc_stats(self) -> dict[str, dict[str, int]]:
        """Per link id: bytes, packets, drops, overlimits, backlog, requeues of its HTB class and leaf."""
        if not self.running:
            raise TestbedError("qdisc statistics need a running network (it was stopped or never started)")
        out: dict[str, dict[str, int]] = {}
        by_pid: dict[int | None, list[ShapedLink]] = {}
        for sl in self._links.values():
            by_pid.setdefault(sl.pid, []).append(sl)
        for pid, sls in by_pid.items():
            with shaping.netns(pid) as ipr:
                for sl in sls:
                    out[sl.link] = shaping.read_stats(ipr, sl.intf)
        if self._unshaped:
            with shaping.netns(None) as ipr:
                for link in self._unshaped:
                    out[link] = self._rx_counters(ipr, self._hil_attached[link.split("/")[1]])
        return out

    def audit(self) -> dict[str, object]:
        """What the run actually had: offloads per shaped interface, sysctls, kernel, HTB configuration.

        After stop() only what was planned and recorded is left (``running`` False, no kernel read-back).
        """
        offloads: dict[str, dict[str, str]] = {}
        config: dict[str, dict[str, object]] = {
            link: {"intf": sl.intf, "node": sl.node, "planned": self._htb[link].as_dict()}
            for link, sl in self._links.items()}
        by_node: dict[str, list[ShapedLink]] = {}
        for sl in self._links.values():
            by_node.setdefault(sl.node, []).append(sl)
        for node_name, sls in by_node.items() if self.running else ():
            node = self.net[node_name]
            for sl in sls:
                offloads[f"{node_name}:{sl.intf}"] = self._offloads(node, sl.intf)
            with shaping.netns(sls[0].pid) as ipr:
                for sl in sls:
                    config[sl.link]["kernel"] = shaping.read_config(ipr, sl.intf)
        sysctls: dict[str, object] = {
            "root": {k: _read_sysctl(k) for k in (
                "net.ipv4.tcp_congestion_control", "net.core.rmem_max", "net.core.wmem_max",
                "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", *(f"net.bridge.{k}" for k in BRIDGE_NF))},
            "bridge_nf_saved": dict(self._sysctl_saved),
        }
        keys = ("net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.ip_forward",
                "net.ipv4.conf.all.rp_filter")
        for node_name in [*self._router.values(), *list(self._host_node.values())[:1]] if self.running else ():
            out = self.net[node_name].cmd("sysctl -n " + " ".join(keys))
            sysctls[node_name] = dict(zip(keys, (ln.strip() for ln in out.splitlines()), strict=False))
        delay: dict[str, object] = {}
        for dl in self._delaylines:
            with contextlib.suppress(Exception):
                delay[getattr(dl, "node", None).name if hasattr(dl, "node") else str(dl)] = dl.stats()
        return {
            "running": self.running,
            "kernel": os.uname().release,
            "mininet": _mininet_version(),
            "switch": "LinuxBridge",
            "latency_method": self.latency_method,
            "tag": self._tag,
            "offloads": offloads,
            "offloads_set": dict(self._offloads_set),
            "sysctls": sysctls,
            "qdisc": config,
            "unshaped": dict(self._unshaped),
            "hil": dict(self._hil_attached),
            "routes": self.routes(),
            "delay_lines": delay,
            "nodes": self.node_roles(),
            "notes": [
                "bridge-nf-call-* set to 0 for the run so bridged frames skip the root namespace's iptables",
                "Mininet raises (never lowers) rmem/wmem/tcp_rmem/tcp_wmem and a few limits when it starts",
                "TSO/GSO/GRO are off on every interface the testbed created, so HTB sees wire-size packets",
            ],
        }

    # --- start: checks and plans -------------------------------------------

    def _resolve(self, ident: str) -> str:
        if ident in self.topology.generators:
            return self.topology.generators[ident].slave
        if ident not in self.plan.hosts:
            raise TestbedError(f"{ident!r} is not a slave, master, resource manager or generator of "
                               f"{self.topology.name}")
        return ident

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise TestbedError("the emulated network needs root (namespaces, bridges, tc); run it with sudo")
        try:
            import mininet.net  # noqa: F401
        except ImportError as e:
            raise TestbedError("Mininet is not importable; install it (apt-get install --no-install-recommends "
                               "mininet) and use the repository's .venv/bin/python (bash scripts/setup.sh)") from e
        if self.hil and self.topology.control == "management":
            raise TestbedError("a hardware-in-the-loop slave has no interface on the management network, so its "
                               "reports could not reach its master; use 'control: trunks' in the topology")
        for slave, ifname in self.hil.items():
            if slave not in self.topology.slaves:
                raise TestbedError(f"hardware in the loop names {slave!r}, which is not a slave of the topology")
            if not Path(f"/sys/class/net/{ifname}").exists():
                raise TestbedError(f"hardware-in-the-loop interface {ifname} for {slave} does not exist in the "
                                   f"root namespace")
            if cleanup.NAME_RE.match(ifname):
                raise TestbedError(f"hardware-in-the-loop interface {ifname} uses the testbed's own naming "
                                   f"scheme and would be deleted on cleanup; rename it")
        if self.latency in ("auto", "netem", "nfqueue"):
            try:
                from testbed import delayline
            except ImportError as e:
                raise TestbedError(f"latency={self.latency} needs testbed/delayline.py ({e}); use latency='none' "
                                   f"only for tests that do not need trunk latency") from e
            netem = bool(delayline.netem_available()) if self.latency in ("auto", "netem") else False
            if self.latency == "netem" and not netem:
                raise TestbedError("latency=netem but this kernel has no netem qdisc; use latency=auto or nfqueue")
            self.latency_method = "netem" if netem else "nfqueue"

    def _plan_shaping(self) -> None:
        """HTB parameters for every link direction, before anything is built (refuses unshapeable rates)."""
        netem = self.latency_method == "netem"
        delayed = self.latency_method in ("netem", "nfqueue")
        for link in self.topology.links.values():
            if link.kind == "trunk":
                t = self.topology.trunks[link.owner]
                cfg = shaping.plan_link(link.id, float(link.physical or link.capacity), rtt=2 * t.latency,
                                        delay=t.latency if delayed else 0.0, netem=netem)
            else:
                cfg = shaping.plan_link(link.id, float(link.physical or link.capacity), rtt=shaping.MIN_RTT)
            self._htb[link.id] = cfg

    def _route_tables(self) -> dict[tuple[str, int], dict[str, _Hop]]:
        """(dc, table) -> destination dc -> first hop, from ``trunk_path`` alone."""
        topo = self.topology
        tables: dict[tuple[str, int], dict[str, _Hop]] = {}
        for here in topo.datacenters:
            data: dict[str, _Hop] = {}
            main: dict[str, _Hop] = {}
            for dst in topo.datacenters:
                if dst == here:
                    continue
                fwd = topo.trunk_path(here, dst)
                if fwd:
                    t = topo.trunks[fwd[0]]
                    data[dst] = _Hop(f"trunk/{t.id}", t.end)
                back = topo.trunk_path(dst, here)
                if back:
                    t = topo.trunks[back[-1]]
                    main[dst] = _Hop(f"trunk/{t.id}/rev", t.start)
                elif fwd:
                    main[dst] = data[dst]
            tables[(here, DATA_TABLE)] = data
            tables[(here, MAIN_TABLE)] = main
        return tables

    def _walk_all(self, lookup: Callable[[str, int, str], _Hop | None], what: str) -> None:
        """Follow every pair's routes hop by hop; data must equal trunk_path, main must reach without loops."""
        topo = self.topology
        n = len(topo.datacenters)
        problems: list[str] = []
        for src in topo.datacenters:
            for dst in topo.datacenters:
                if src == dst:
                    continue
                for table, name in ((DATA_TABLE, "data"), (MAIN_TABLE, "main")):
                    hops: list[str] = []
                    here = src
                    while here != dst and len(hops) <= n:
                        hop = lookup(here, table, dst)
                        if hop is None and table == DATA_TABLE:
                            hop = lookup(here, MAIN_TABLE, dst)  # marked packets fall through to main
                        if hop is None:
                            break
                        hops.append(hop.link)
                        here = hop.to
                    key = f"{src}->{dst}"
                    self._routes[name][key] = hops
                    fwd = topo.trunk_path(src, dst)
                    back = topo.trunk_path(dst, src)
                    if here != dst:
                        if fwd or back:
                            problems.append(f"{name} route {key} does not arrive ({' '.join(hops) or 'no route'})")
                        continue
                    if name == "data" and fwd is not None:
                        want = [f"trunk/{t}" for t in fwd]
                        if hops != want:
                            problems.append(f"data route {key} takes {' '.join(hops)} but trunk_path says "
                                            f"{' '.join(want)}")
                    if name == "main" and back is not None:
                        want = [f"trunk/{t}/rev" for t in reversed(back)]
                        if hops != want:
                            problems.append(f"main route {key} takes {' '.join(hops)} but the reverse of "
                                            f"trunk_path({dst}, {src}) is {' '.join(want)}")
        if problems:
            raise TestbedError(
                f"{topo.source or topo.name}: the {what} hop-by-hop routes would not follow trunk_path "
                f"({'; '.join(problems[:4])}); trunk_path ties must break consistently -- make the latencies "
                f"of the competing trunk paths differ"
            )

    # --- start: building ----------------------------------------------------

    def _claim_tag(self) -> None:
        cleanup.REGISTRY.mkdir(parents=True, exist_ok=True)
        in_use = {p.stem for p in cleanup.REGISTRY.glob("*.json")}
        in_use |= {m.group(1) for name in os.listdir("/sys/class/net") if (m := cleanup.NAME_RE.match(name))}
        in_use |= {m.group(1) for pid in os.listdir("/proc") if pid.isdigit()
                   if (m := cleanup.NAME_RE.match(cleanup.shell_node(int(pid)) or ""))}
        alphabet = string.ascii_lowercase + string.digits
        rng = random.Random(os.getpid() ^ time.monotonic_ns())
        for _ in range(2000):
            tag = rng.choice(string.ascii_lowercase) + rng.choice(alphabet)
            if tag in in_use:
                continue
            path = cleanup.REGISTRY / f"{tag}.json"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            self._tag = tag
            self._registry_file = path
            self._save_registry()
            return
        raise TestbedError(f"no free run tag; run `scaledist-testbed clean` (registry {cleanup.REGISTRY})")

    def _save_registry(self) -> None:
        if self._registry_file is None:
            return
        entry = {"tag": self._tag, "pid": os.getpid(), "start_time": cleanup.proc_start_time(os.getpid()),
                 "created": time.time(), "topology": self.topology.name, "run_dir": str(self.run_dir),
                 "sysctl_saved": self._sysctl_saved, "hil": self.hil}
        tmp = self._registry_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=1))
        tmp.replace(self._registry_file)

    def _set_bridge_nf(self) -> None:
        """Bridged frames must not traverse the root namespace's iptables (it may drop or NAT them)."""
        inherited: dict[str, str] = {}
        for tag in cleanup.live_tags() - {self._tag}:
            with contextlib.suppress(OSError, ValueError):
                entry = json.loads((cleanup.REGISTRY / f"{tag}.json").read_text())
                inherited.update(entry.get("sysctl_saved") or {})
        for k in BRIDGE_NF:
            key = f"net.bridge.{k}"
            value = _read_sysctl(key)
            if value is None:
                continue  # no br_netfilter: nothing to turn off
            self._sysctl_saved[key] = inherited.get(key, value)
        self._save_registry()
        for key in self._sysctl_saved:
            _write_sysctl(key, "0")

    def _name(self, kind: str, n: int) -> str:
        return cleanup.node_name(self._tag, kind, n)

    def _intf_name(self, node: str) -> str:
        port = self._ports.get(node, 0)
        self._ports[node] = port + 1
        name = f"{node}e{port}"
        if len(name) > MAX_IFNAME:
            raise TestbedError(f"interface name {name} is longer than {MAX_IFNAME} characters; the topology has "
                               f"too many nodes or ports for the naming scheme")
        return name

    def _link(self, a: str, b: str) -> tuple[str, str]:
        ia, ib = self._intf_name(a), self._intf_name(b)
        self.net.addLink(a, b, intfName1=ia, intfName2=ib)
        self._ifaces.setdefault(a, []).append(ia)
        self._ifaces.setdefault(b, []).append(ib)
        return ia, ib

    def _build(self) -> None:
        from mininet.link import Intf, Link
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.nodelib import LinuxBridge

        setLogLevel("warning")
        topo, p = self.topology, self.plan
        self.net = Mininet(topo=None, switch=LinuxBridge, controller=None, link=Link, build=False,
                           autoSetMacs=False, waitConnected=False)
        net = self.net
        for dc, d in p.dc_index.items():
            self._router[dc] = r = self._name("r", d)
            net.addHost(r, ip=None)
            self._roles[r] = f"router:{dc}"
            self._dc_bridge[dc] = b = self._name("d", d)
            net.addSwitch(b, stp=False)
            self._roles[b] = f"dc:{dc}"
        for n, rack in enumerate(topo.racks.values(), start=1):
            self._rack_bridge[rack.id] = b = self._name("b", n)
            net.addSwitch(b, stp=False)
            self._roles[b] = f"rack:{rack.id}"
        if p.mgmt:
            self._mgmt_bridge = self._name("m", 0)
            net.addSwitch(self._mgmt_bridge, stp=False)
            self._roles[self._mgmt_bridge] = "management"
        kinds = {**{m: "master" for m in topo.masters}, topo.resource_manager.id: "resource_manager"}
        n = 0
        for ident in p.hosts:
            if ident in self.hil:
                continue
            n += 1
            self._host_node[ident] = h = self._name("h", n)
            net.addHost(h, ip=None)
            self._roles[h] = f"{kinds.get(ident, 'slave')}:{ident}"

        # links: hosts -> rack bridge (and management bridge), rack -> DC bridge, DC bridge -> router, trunks
        self._bridge_port: dict[str, str] = {}  # link id or "port:<host id>" -> bridge-side interface
        for ident, h in self._host_node.items():
            hi, bi = self._link(h, self._rack_bridge[p.host_rack[ident]])
            self._data_if[ident] = hi
            self._bridge_port[f"port:{ident}"] = bi
            if p.mgmt:
                mi, _ = self._link(h, self._mgmt_bridge)
                self._mgmt_if[ident] = mi
        for rack in topo.racks.values():
            up, down = self._link(self._rack_bridge[rack.id], self._dc_bridge[rack.dc])
            self._bridge_port[f"rack/{rack.id}/up"] = up
            self._bridge_port[f"rack/{rack.id}/down"] = down
        for dc in topo.datacenters:
            up, down = self._link(self._dc_bridge[dc], self._router[dc])
            self._bridge_port[f"dc/{dc}/up"] = up
            self._router_dc_if[dc] = down
        for t in sorted(topo.trunks.values(), key=lambda t: t.id):
            self._trunk_if[t.id] = self._link(self._router[t.start], self._router[t.end])

        net.build()
        net.start()  # Linux bridges: brctl addbr + addif of their own ports
        for slave, ifname in self.hil.items():
            bridge = self._rack_bridge[topo.slaves[slave].rack]
            Intf(ifname, node=net[bridge])
            self._hil_attached[slave] = ifname
            with shaping.netns(None) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0], state="up")
            self.log(f"hardware in the loop: {slave} is {ifname} on {bridge}; configure "
                     f"{p.hosts[slave]} with gateway {p.router[p.host_dc[slave]].ip} on the far end")
        # every interface up, bridges without IPv6 chatter
        with shaping.netns(None) as ipr:
            for sw in net.switches:
                for name in [sw.name, *self._ifaces.get(sw.name, [])]:
                    idx = ipr.link_lookup(ifname=name)
                    if idx:
                        ipr.link("set", index=idx[0], state="up")
        for name in [n for sw in net.switches for n in (sw.name, *self._ifaces.get(sw.name, []))]:
            with contextlib.suppress(OSError):
                _write_sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1")

    def _configure_hosts(self) -> None:
        p = self.plan
        for ident, h in self._host_node.items():
            node = self.net[h]
            # HOST_CC, not the machine's BBR (see _host_cc)
            node.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
                     f" net.ipv4.tcp_congestion_control={HOST_CC}")
            with shaping.netns(node.pid) as ipr:
                for name in self._ifaces[h]:
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                addr = p.hosts[ident]
                ipr.addr("add", index=ipr.link_lookup(ifname=self._data_if[ident])[0], address=str(addr.ip),
                         prefixlen=addr.network.prefixlen)
                if ident in self._mgmt_if:
                    m = p.mgmt[ident]
                    ipr.addr("add", index=ipr.link_lookup(ifname=self._mgmt_if[ident])[0], address=str(m.ip),
                             prefixlen=m.network.prefixlen)
                ipr.route("add", dst="0.0.0.0/0", gateway=str(p.router[p.host_dc[ident]].ip))

    def _configure_routers(self, tables: dict[tuple[str, int], dict[str, _Hop]]) -> None:
        p, topo = self.plan, self.topology
        for dc, r in self._router.items():
            node = self.net[r]
            ifs = self._ifaces[r]
            # forwarding on; strict reverse-path filtering off: data and ACKs of one flow use different trunks
            keys = ["net.ipv4.ip_forward=1", f"net.ipv4.tcp_congestion_control={HOST_CC}",
                    "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                    *(f"net.ipv4.conf.{i}.rp_filter=0" for i in ifs)]
            out = node.cmd("sysctl -qw " + " ".join(keys))
            if out.strip():
                raise TestbedError(f"router {dc} ({r}): sysctl failed: {out.strip()}")
            with shaping.netns(node.pid) as ipr:
                for name in ifs:
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                a = p.router[dc]
                ipr.addr("add", index=ipr.link_lookup(ifname=self._router_dc_if[dc])[0], address=str(a.ip),
                         prefixlen=a.network.prefixlen)
                for t, (start_if, end_if) in self._trunk_if.items():
                    trunk = topo.trunks[t]
                    for side_dc, ifname, addr in ((trunk.start, start_if, p.trunks[t][0]),
                                                  (trunk.end, end_if, p.trunks[t][1])):
                        if side_dc == dc:
                            ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=str(addr.ip),
                                     prefixlen=addr.network.prefixlen)
                for table in (DATA_TABLE, MAIN_TABLE):
                    for dst, hop in tables[(dc, table)].items():
                        ipr.route("add", dst=str(p.dc_subnet[dst]), gateway=self._gateway(hop), table=table)
                ipr.rule("add", table=DATA_TABLE, priority=RULE_PRIORITY, fwmark=FWMARK, fwmask=0xFFFFFFFF,
                         family=socket.AF_INET)
                self._rules.append(r)
            for spec in (["-p", "tcp", "--sport", str(DATA_PORT)], ["-p", "tcp", "--dport", str(PUSH_PORT)]):
                rule = ["PREROUTING", *spec, "-m", "comment", "--comment", ROUTE_COMMENT,
                        "-j", "MARK", "--set-mark", str(FWMARK)]
                out = node.cmd("iptables -w -t mangle -A " + " ".join(rule) + " 2>&1")
                if out.strip():
                    raise TestbedError(f"router {dc} ({r}): iptables failed: {out.strip()}")
                self._iptables.append((r, rule))

    def _gateway(self, hop: _Hop) -> str:
        """Next-hop address of a trunk hop: the far end of the trunk in the hop's direction."""
        parts = hop.link.split("/")
        start_side, end_side = self.plan.trunks[parts[1]]
        return str(start_side.ip if len(parts) == 3 else end_side.ip)

    def _disable_offloads(self) -> None:
        """TSO/GSO/GRO off on every interface we made, so each qdisc sees (and counts) wire-size packets."""
        for node_name, all_ifs in self._ifaces.items():
            node = self.net[node_name]
            # In chunks: a Mininet shell reads commands through a pty, whose line limit (4095 bytes) hangs
            # node.cmd on a long line (the management bridge of a 128-slave network has 130+ ports).
            for k in range(0, len(all_ifs), 16):
                ifs = all_ifs[k:k + 16]
                script = "; ".join(f"ethtool -K {i} tso off gso off gro off 2>&1 | tr '\\n' ' '; echo" for i in ifs)
                lines = node.cmd(script).splitlines()
                for ifname, line in zip(ifs, lines, strict=False):
                    self._offloads_set[ifname] = line.strip() or "tso/gso/gro off"
        for slave, ifname in self._hil_attached.items():
            r = subprocess.run(["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"],
                               capture_output=True, text=True, check=False)
            self._offloads_set[ifname] = (r.stdout + r.stderr).strip() or "tso/gso/gro off"
            del slave

    def _shape(self) -> None:
        topo = self.topology
        where: dict[str, tuple[str, str]] = {}  # link id -> (node name, interface)
        for s in topo.slaves.values():
            if s.id in self._hil_attached:
                bridge = self._rack_bridge[s.rack]
                where[f"slave/{s.id}/down"] = (bridge, self._hil_attached[s.id])
                self._unshaped[f"slave/{s.id}/up"] = (
                    f"hardware in the loop: {s.id}'s uplink is the far end's egress on "
                    f"{self._hil_attached[s.id]}; shape it there (counters here are the bridge port's receive side)")
                continue
            h = self._host_node[s.id]
            where[f"slave/{s.id}/up"] = (h, self._data_if[s.id])
            where[f"slave/{s.id}/down"] = (self._rack_bridge[s.rack], self._bridge_port[f"port:{s.id}"])
        for rack in topo.racks.values():
            where[f"rack/{rack.id}/up"] = (self._rack_bridge[rack.id], self._bridge_port[f"rack/{rack.id}/up"])
            where[f"rack/{rack.id}/down"] = (self._dc_bridge[rack.dc], self._bridge_port[f"rack/{rack.id}/down"])
        for dc in topo.datacenters:
            where[f"dc/{dc}/up"] = (self._dc_bridge[dc], self._bridge_port[f"dc/{dc}/up"])
            where[f"dc/{dc}/down"] = (self._router[dc], self._router_dc_if[dc])
        for t, (start_if, end_if) in self._trunk_if.items():
            trunk = topo.trunks[t]
            where[f"trunk/{t}"] = (self._router[trunk.start], start_if)
            where[f"trunk/{t}/rev"] = (self._router[trunk.end], end_if)

        by_pid: dict[int | None, list[tuple[str, str, str]]] = {}
        for link, (node_name, ifname) in where.items():
            node = self.net[node_name]
            pid = node.pid if node.inNamespace else None
            by_pid.setdefault(pid, []).append((link, node_name, ifname))
        delayed = self.latency_method in ("netem", "nfqueue")
        for pid, items in by_pid.items():
            with shaping.netns(pid) as ipr:
                for link, node_name, ifname in items:
                    cfg = self._htb[link]
                    shaping.install(ipr, ifname, cfg)
                    delay = 0.0
                    if link.startswith("trunk/") and delayed:
                        delay = topo.trunks[link.split("/")[1]].latency
                    self._links[link] = ShapedLink(link, node_name, ifname, pid, float(cfg.rate), delay,
                                                   cfg.queue_bytes)

    def _start_latency(self) -> None:
        if self.latency_method != "nfqueue":
            return
        from testbed.delayline import DelayLine

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for dc, r in self._router.items():
            rules: list[tuple[str, float]] = []
            for t, (start_if, end_if) in sorted(self._trunk_if.items()):
                trunk = self.topology.trunks[t]
                if trunk.start == dc:
                    rules.append((start_if, trunk.latency))  # reverse-direction packets arrive here
                if trunk.end == dc:
                    rules.append((end_if, trunk.latency))  # primary-direction packets arrive here
            rules = [(i, d) for i, d in rules if d > 0]
            if not rules:
                continue
            dl = DelayLine(self.net[r], rules, 100 * self.plan.dc_index[dc],
                           self.run_dir / f"delayline-{dc}.json")
            self._delaylines.append(dl)
            dl.start()
        # our MARK rules must see every packet: put them first in mangle PREROUTING in case a delay line's
        # NFQUEUE sits in the same chain (a re-injected packet resumes after the queueing rule's table)
        for r, rule in self._iptables:
            node = self.net[r]
            node.cmd("iptables -w -t mangle -D " + " ".join(rule) + " 2>&1")
        for r, rule in reversed(self._iptables):
            node = self.net[r]
            out = node.cmd("iptables -w -t mangle -I " + rule[0] + " 1 " + " ".join(rule[1:]) + " 2>&1")
            if out.strip():
                raise TestbedError(f"{r}: iptables failed re-inserting the routing marks: {out.strip()}")

    def _verify_installed_routes(self) -> None:
        """Read the routing tables back from every router and walk them (what the kernel will do)."""
        installed: dict[tuple[str, int], dict[str, _Hop]] = {}
        subnet_dc = {str(net.network_address): dc for dc, net in self.plan.dc_subnet.items()}
        gw_hop: dict[str, tuple[str, bool]] = {}  # gateway address -> (trunk id, is reverse)
        for t, (a, b) in self.plan.trunks.items():
            gw_hop[str(b.ip)] = (t, False)
            gw_hop[str(a.ip)] = (t, True)
        for dc, r in self._router.items():
            with shaping.netns(self.net[r].pid) as ipr:
                for table in (DATA_TABLE, MAIN_TABLE):
                    entries: dict[str, _Hop] = {}
                    for route in ipr.get_routes(family=socket.AF_INET, table=table):
                        dst, gw = route.get("RTA_DST"), route.get("RTA_GATEWAY")
                        if dst not in subnet_dc or gw not in gw_hop or route["dst_len"] != 16:
                            continue
                        t, rev = gw_hop[gw]
                        trunk = self.topology.trunks[t]
                        entries[subnet_dc[dst]] = (_Hop(f"trunk/{t}/rev", trunk.start) if rev
                                                   else _Hop(f"trunk/{t}", trunk.end))
                    installed[(dc, table)] = entries
                rules = [x for x in ipr.get_rules(family=socket.AF_INET)
                         if x.get("FRA_FWMARK") == FWMARK and x.get("FRA_TABLE") == DATA_TABLE]
                if not rules:
                    raise TestbedError(f"router {dc}: the fwmark rule for table {DATA_TABLE} is missing")
        self._walk_all(lambda dc, table, dst: installed[(dc, table)].get(dst), "installed")

    # --- helpers for stats and audit -------------------------------------------

    @staticmethod
    def _rx_counters(ipr: Any, ifname: str) -> dict[str, int]:
        idx = ipr.link_lookup(ifname=ifname)
        out = {"bytes": 0, "packets": 0, "drops": 0, "overlimits": 0, "backlog": 0, "requeues": 0}
        if idx:
            stats = ipr.get_links(idx[0])[0].get("IFLA_STATS64") or {}
            out.update(bytes=int(stats.get("rx_bytes", 0)), packets=int(stats.get("rx_packets", 0)),
                       drops=int(stats.get("rx_dropped", 0)))
        return out

    @staticmethod
    def _offloads(node: Any, ifname: str) -> dict[str, str]:
        out = node.cmd(f"ethtool -k {ifname} 2>&1")
        wanted = {"tcp-segmentation-offload": "tso", "generic-segmentation-offload": "gso",
                  "generic-receive-offload": "gro"}
        res: dict[str, str] = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in wanted:
                res[wanted[key.strip()]] = value.strip()
        return res

    # --- stop --------------------------------------------------------------------

    def _teardown(self) -> None:
        problems: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep tearing down; say what could not be undone
                problems.append(f"{what}: {e}")

        for dl in self._delaylines:
            step("stop a delay line", dl.stop)
        self._delaylines.clear()
        # No node.cmd() from here on: a signal that landed inside one leaves that shell's pty mid-command,
        # and reading it again would hang.  Commands run as separate processes (mnexec -a) with a timeout.
        for r, rule in self._iptables:
            pid = self._live_pid(r)
            if pid is not None:
                step(f"iptables on {r}", lambda p=pid, ru=rule: _ns_run(
                    p, ["iptables", "-w", "-t", "mangle", "-D", *ru]))
        for r in self._rules:
            pid = self._live_pid(r)
            if pid is not None:
                step(f"ip rule on {r}", lambda p=pid: self._del_rule(p))
        self._iptables.clear()
        self._rules.clear()
        for slave, ifname in list(self._hil_attached.items()):
            step(f"release {ifname}", lambda s=slave, i=ifname: self._release_hil(s, i))
        if self._tag:  # kills our shells and everything in our namespaces, deletes bridges and veths
            step("sweep", lambda: cleanup.sweep_tag(self._tag))
        if self.net is not None:
            step("release Mininet nodes", self._release_nodes)
        step("restore sysctls", self._restore_sysctls)
        if self._registry_file is not None:
            with contextlib.suppress(OSError):
                self._registry_file.unlink()
            with contextlib.suppress(OSError):
                self._registry_file.with_suffix(".tmp").unlink()
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False
        for p in problems:
            self.log(f"teardown: {p}")
        self.log(f"network {self._tag or '(not built)'} torn down")

    @staticmethod
    def _del_rule(pid: int) -> None:
        with shaping.netns(pid) as ipr:
            ipr.rule("del", table=DATA_TABLE, priority=RULE_PRIORITY, fwmark=FWMARK, fwmask=0xFFFFFFFF,
                     family=socket.AF_INET)

    def _release_hil(self, slave: str, ifname: str) -> None:
        with shaping.netns(None) as ipr:
            shaping.remove(ipr, ifname)
            idx = ipr.link_lookup(ifname=ifname)
            if idx:
                ipr.link("set", index=idx[0], master=0)
        bridge = self.net[self._rack_bridge[self.topology.slaves[slave].rack]] if self.net else None
        if bridge is not None:
            for intf in list(bridge.intfList()):
                if intf.name == ifname:
                    bridge.delIntf(intf)  # so Mininet's stop never deletes the borrowed interface
        del self._hil_attached[slave]

    def _live_pid(self, node_name: str) -> int | None:
        node = self.net.nameToNode.get(node_name) if self.net is not None else None
        if node is None or node.shell is None or node.shell.poll() is not None:
            return None
        return int(node.pid)

    def _release_nodes(self) -> None:
        """Reap Mininet's shells (already killed by the sweep) and close their ptys; never read from them."""
        from mininet.node import Node

        net, self.net = self.net, None
        for node in [*net.hosts, *net.switches]:
            shell = node.shell
            if shell is None:
                continue
            if shell.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(shell.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                shell.wait(timeout=5)
            for fd_map in (Node.outToNode, Node.inToNode):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    fd_map.pop(node.stdout.fileno(), None)
            with contextlib.suppress(OSError, AttributeError):
                node.stdin.close()
            with contextlib.suppress(OSError, TypeError):
                os.close(node.slave)
            node.shell = None

    def _restore_sysctls(self) -> None:
        if not self._sysctl_saved:
            return
        others = cleanup.live_tags() - {self._tag}
        if others:
            self.log(f"bridge-nf sysctls left at 0: runs {', '.join(sorted(others))} still use them")
            return
        for key, value in self._sysctl_saved.items():
            _write_sysctl(key, value)


def _ns_run(pid: int, argv: list[str], timeout: float = 10.0) -> None:
    """Run a command in the network namespace of ``pid`` as its own process (never through a node's pty)."""
    r = subprocess.run(["mnexec", "-a", str(pid), *argv], capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} in namespace of {pid}: {r.stderr.strip()}")


def _mininet_version() -> str:
    try:
        from mininet.net import VERSION

        return str(VERSION)
    except ImportError:
        return "missing"
