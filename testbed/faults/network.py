"""Network faults: they act on the emulated network's interfaces, qdiscs and packet filters, never on a daemon.

* ``trunk_down``: both ends of a trunk's veth administratively down (the kernel drops the routes through it;
  repair brings them up and puts the testbed's routes back, then reads every router's tables back);
* ``trunk_degraded``: the trunk's HTB class rate cut and/or its latency raised, live;
* ``link_loss``: random packet loss on one link direction (iptables ``statistic`` match, netem is absent here);
* ``link_flap``: a trunk going down and up on a period until repaired;
* ``host_cut``: a host's data interface (and management interface) down, so the daemon is alive but unreachable.

Commands run as their own processes (``mnexec -a <pid>``), never through a Mininet node's shell, so a fault
may act from the drill's scheduler thread while the main thread shows progress.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from scaledist.units import UnitError, parse_duration, parse_rate
from testbed.faults.base import DrillContext, Fault, FaultSpecError, register

COMMENT = "scaledist-drill"  # every iptables rule a drill adds; testbed.cleanup removes leftovers by it
DRILL_QUEUE_OFFSET = 50  # NFQUEUE numbers of a drill's extra delay: 100 x datacenter index + 50 + n


class FaultError(RuntimeError):
    """A fault could not be injected or repaired on the live network; the message says what failed."""


def ns_run(pid: int | None, argv: list[str], timeout: float = 10.0, check: bool = True) -> str:
    """Run ``argv`` in the network namespace of ``pid`` (None: ours) as its own process; stdout."""
    cmd = argv if pid is None else ["mnexec", "-a", str(pid), *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise FaultError(f"{' '.join(argv)} (namespace of {pid}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


# --- reading a fault entry's parameters ---------------------------------------------------------------


def _params(params: Mapping[str, Any], where: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for k in params:
        if k not in allowed:
            raise FaultSpecError(f"{where}.{k}: unknown key {k!r} (this fault takes: {', '.join(allowed)})")
    for k in required:
        if k not in params:
            raise FaultSpecError(f"{where}.{k}: required key is missing")


def _text(params: Mapping[str, Any], key: str, where: str) -> str:
    v = params[key]
    if not isinstance(v, str) or not v:
        raise FaultSpecError(f"{where}.{key}: expected an id, got {v!r}")
    return v


def _seconds(params: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    if key not in params:
        if default is None:
            raise FaultSpecError(f"{where}.{key}: required key is missing")
        return default
    try:
        v = parse_duration(str(params[key]))
    except UnitError as e:
        raise FaultSpecError(f"{where}.{key}: {e}") from None
    if v <= 0:
        raise FaultSpecError(f"{where}.{key}: must be > 0, got {params[key]!r}")
    return v


def _fraction(value: Any, key: str, where: str) -> float:
    """'2%' or 0.02 -> 0.02, refusing anything outside (0, 1]."""
    text = str(value).strip()
    try:
        f = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise FaultSpecError(f"{where}.{key}: expected a fraction such as 2% or 0.02, got {value!r}") from None
    if not 0 < f <= 1:
        raise FaultSpecError(f"{where}.{key}: must be more than 0 and at most 100%, got {value!r}")
    return f


def _check_trunk(topology: Any, trunk: str, where: str) -> None:
    if trunk not in topology.trunks:
        raise FaultSpecError(f"{where}.trunk: unknown trunk {trunk!r} (topology {topology.name} has "
                             f"{', '.join(sorted(topology.trunks)) or 'none'})")


# --- trunk interfaces and routes -----------------------------------------------------------------------


def _trunk_ends(ctx: DrillContext, trunk: str) -> list[tuple[int | None, str]]:
    """(router namespace pid, interface) of both ends of a trunk's veth."""
    links = ctx.net.links()
    return [(links[lid].pid, links[lid].intf) for lid in (f"trunk/{trunk}", f"trunk/{trunk}/rev")]


def _set_trunk(ctx: DrillContext, trunk: str, up: bool) -> None:
    for pid, intf in _trunk_ends(ctx, trunk):
        ns_run(pid, ["ip", "link", "set", "dev", intf, "up" if up else "down"])


def restore_routes(ctx: DrillContext, trunk: str, verify: bool = True) -> int:
    """Put back the routes of the two routers at a trunk's ends, from the network's own routing plan.

    An administratively downed interface takes every route through it out of the kernel; bringing it up
    only restores the connected /30.  Returns the number of routes written (``replace`` is idempotent).
    """
    net = ctx.net
    t = ctx.topology.trunks[trunk]
    tables = net._route_tables()  # (dc, table) -> destination dc -> first hop (the testbed's routing plan)
    n = 0
    for dc in (t.start, t.end):
        pid = net.links()[f"dc/{dc}/down"].pid  # the border router's namespace
        for (here, table), routes in tables.items():
            if here != dc:
                continue
            for dst, hop in routes.items():
                ns_run(pid, ["ip", "route", "replace", str(net.plan.dc_subnet[dst]), "via", net._gateway(hop),
                             "table", str(table)])
                n += 1
    if verify:
        net._verify_installed_routes()  # walks every router's tables as the kernel will; raises if wrong
    return n


@register
class TrunkDown(Fault):
    """A trunk cut: no packet crosses it in either direction until repaired."""

    kind = "trunk_down"

    def __init__(self, trunk: str) -> None:
        self.target = trunk
        self.down = False
        self.routes_restored = 0

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> TrunkDown:
        _params(params, where, ("trunk",), ("trunk",))
        return cls(_text(params, "trunk", where))

    def validate(self, topology: Any) -> None:
        _check_trunk(topology, self.target, "trunk_down")

    def inject(self, ctx: DrillContext) -> None:
        self.down = True
        _set_trunk(ctx, self.target, up=False)

    def repair(self, ctx: DrillContext) -> None:
        if not self.down:
            return
        _set_trunk(ctx, self.target, up=True)
        self.routes_restored = restore_routes(ctx, self.target)
        self.down = False

    def resources(self) -> tuple[str, ...]:
        return (self.target,)

    def notes(self) -> dict[str, Any]:
        return {"routes_restored": self.routes_restored}


class _ExtraDelay:
    """More latency on packets arriving over one trunk interface, live.

    With netem: the trunk's netem leaf is changed in place.  With the NFQUEUE delay line (no netem here) the
    running worker's delay is fixed at its start, so a second delay line holds the packets first, in the raw
    table (which runs before mangle, where the trunk's own delay line sits): the two delays add up.
    """

    def __init__(self, ctx: DrillContext, link: str, extra: float) -> None:
        self.ctx, self.link, self.extra = ctx, link, extra
        self.line: Any = None
        self.netem_changed = False

    def start(self) -> None:
        net, sl = self.ctx.net, self.ctx.net.links()[self.link]
        if net.latency_method == "netem":
            from testbed import shaping

            cfg = net._htb[self.link]
            with shaping.netns(sl.pid) as ipr:
                idx = ipr.link_lookup(ifname=sl.intf)[0]
                ipr.tc("change", "netem", idx, shaping.LEAF, parent=shaping.CLASS,
                       delay=round((sl.delay + self.extra) * 1e6), limit=cfg.netem_limit)
            self.netem_changed = True
            return
        if net.latency_method != "nfqueue":
            raise FaultError(f"{self.link}: the run has no latency emulation (latency={net.latency_method})")
        from testbed.delayline import DelayLine

        class RawDelayLine(DelayLine):
            def _spec(self, intf: str, queue: int) -> list[str]:
                return ["-t", "raw", *super()._spec(intf, queue)[2:]]

        trunk = self.ctx.topology.trunks[self.link.split("/")[1]]
        reverse = self.link.endswith("/rev")
        arrive_dc = trunk.start if reverse else trunk.end
        other = net.links()[f"trunk/{trunk.id}" if reverse else f"trunk/{trunk.id}/rev"]  # the arriving end
        queue = 100 * net.plan.dc_index[arrive_dc] + DRILL_QUEUE_OFFSET + sorted(net.links()).index(self.link) % 40
        self.line = RawDelayLine(net.net[other.node], [(other.intf, self.extra)], queue,
                                 self.ctx.run_dir / f"delayline-drill-{self.link.replace('/', '-')}.json")
        self.line.start()

    def stop(self) -> None:
        if self.line is not None:
            line, self.line = self.line, None
            line.stop()
        if self.netem_changed:
            from testbed import shaping

            sl = self.ctx.net.links()[self.link]
            cfg = self.ctx.net._htb[self.link]
            with shaping.netns(sl.pid) as ipr:
                idx = ipr.link_lookup(ifname=sl.intf)[0]
                ipr.tc("change", "netem", idx, shaping.LEAF, parent=shaping.CLASS, delay=round(sl.delay * 1e6),
                       limit=cfg.netem_limit)
            self.netem_changed = False


def _change_rate(ctx: DrillContext, link: str, rate: float) -> None:
    """The link's HTB class to ``rate`` bytes/s in place (queued packets stay queued)."""
    from testbed import shaping

    sl = ctx.net.links()[link]
    old = ctx.net._htb[link]
    cfg = shaping.plan_link(link, rate, rtt=old.rtt)
    with shaping.netns(sl.pid) as ipr:
        idx = ipr.link_lookup(ifname=sl.intf)[0]
        ipr.tc("change-class", "htb", idx, shaping.CLASS, parent=shaping.ROOT, rate=cfg.rate, ceil=cfg.rate,
               burst=cfg.burst, cburst=cfg.cburst, quantum=cfg.quantum, prio=0, mtu=1600)


def read_class_rate(ctx: DrillContext, link: str) -> int | None:
    """The rate (bytes/s) the kernel reports for a link's shaping class."""
    from testbed import shaping

    sl = ctx.net.links()[link]
    with shaping.netns(sl.pid) as ipr:
        rate = shaping.read_config(ipr, sl.intf).get("rate")
    return int(rate) if rate is not None else None


@register
class TrunkDegraded(Fault):
    """A trunk still up but worse: bandwidth cut to a fraction (or a rate), latency raised."""

    kind = "trunk_degraded"

    def __init__(self, trunk: str, bandwidth: float | None, rate: float | None, extra_latency: float,
                 direction: str) -> None:
        self.target = trunk
        self.fraction, self.rate, self.extra_latency, self.direction = bandwidth, rate, extra_latency, direction
        self.applied: dict[str, float] = {}  # link -> rate set
        self.delays: list[_ExtraDelay] = []
        self.kernel_rates: dict[str, int | None] = {}

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> TrunkDegraded:
        _params(params, where, ("trunk", "bandwidth", "latency_add", "direction"), ("trunk",))
        frac = rate = None
        if "bandwidth" in params:
            text = str(params["bandwidth"]).strip()
            if text.endswith("%") or re.fullmatch(r"[0-9.]+", text):
                frac = _fraction(text, "bandwidth", where)
            else:
                try:
                    rate = parse_rate(text)
                except UnitError as e:
                    raise FaultSpecError(f"{where}.bandwidth: {e} (or a share such as 25%)") from None
        extra = _seconds(params, "latency_add", where, default=0.0) if "latency_add" in params else 0.0
        direction = str(params.get("direction", "both"))
        if direction not in ("both", "primary", "reverse"):
            raise FaultSpecError(f"{where}.direction: must be both, primary or reverse, got {direction!r}")
        if frac is None and rate is None and not extra:
            raise FaultSpecError(f"{where}: give bandwidth (a share such as 25% or a rate) and/or latency_add")
        return cls(_text(params, "trunk", where), frac, rate, extra, direction)

    def validate(self, topology: Any) -> None:
        _check_trunk(topology, self.target, "trunk_degraded")

    def _links(self) -> list[str]:
        t = f"trunk/{self.target}"
        return {"both": [t, f"{t}/rev"], "primary": [t], "reverse": [f"{t}/rev"]}[self.direction]

    def inject(self, ctx: DrillContext) -> None:
        for link in self._links():
            sl = ctx.net.links()[link]
            if self.fraction is not None or self.rate is not None:
                # a rate in the drill file is in the topology's units, scaled like every bandwidth of the run
                new = sl.rate * self.fraction if self.fraction is not None else self.rate * ctx.topology.scale
                self.applied[link] = max(1000.0, new)
                _change_rate(ctx, link, self.applied[link])
                self.kernel_rates[link] = read_class_rate(ctx, link)
            if self.extra_latency:
                d = _ExtraDelay(ctx, link, self.extra_latency)
                self.delays.append(d)
                d.start()

    def repair(self, ctx: DrillContext) -> None:
        problems = []
        for link in list(self.applied):
            try:
                _change_rate(ctx, link, ctx.net.links()[link].rate)
                del self.applied[link]
            except Exception as e:
                problems.append(f"{link}: {e}")
        while self.delays:
            try:
                self.delays.pop().stop()
            except Exception as e:
                problems.append(str(e))
        if problems:
            raise FaultError("; ".join(problems))

    def notes(self) -> dict[str, Any]:
        return {"rates_set_Bps": dict(self.kernel_rates), "latency_added_s": self.extra_latency,
                "latency_method": "netem leaf changed" if any(d.netem_changed for d in self.delays)
                else "second NFQUEUE delay line (raw table)" if self.extra_latency else None}


def loss_point(ctx: DrillContext, link: str) -> tuple[int | None, str, str, list[str]]:
    """Where iptables sees a link direction's packets: (namespace pid, table, chain, interface match).

    Bridged hops (rack links, the DC bridge's ports) cross no namespace's iptables (bridge-nf is off for
    the run), so loss is placed on a routed or host end of the hop instead.
    """
    links = ctx.net.links()
    parts = link.split("/")
    if parts[0] == "trunk":
        other = links[f"trunk/{parts[1]}" if link.endswith("/rev") else f"trunk/{parts[1]}/rev"]
        return other.pid, "raw", "PREROUTING", ["-i", other.intf]  # arriving at the far router
    if parts[0] == "slave" and parts[2] == "up":
        sl = links[link]
        return sl.pid, "mangle", "POSTROUTING", ["-o", sl.intf]
    if parts[0] == "slave" and parts[2] == "down":
        sl = links[f"slave/{parts[1]}/up"]  # the slave's data interface, where these packets arrive
        return sl.pid, "raw", "PREROUTING", ["-i", sl.intf]
    if parts[0] == "dc" and parts[2] == "down":
        sl = links[link]
        return sl.pid, "mangle", "POSTROUTING", ["-o", sl.intf]
    if parts[0] == "dc" and parts[2] == "up":
        sl = links[f"dc/{parts[1]}/down"]  # the router's DC-side interface receives the DC's uplink
        return sl.pid, "raw", "PREROUTING", ["-i", sl.intf]
    raise FaultError(f"{link}: no namespace's iptables sees this hop")


LOSS_LINKS = re.compile(r"^(trunk/[^/]+(/rev)?|slave/[^/]+/(up|down)|dc/[^/]+/(up|down))$")


@register
class LinkLoss(Fault):
    """Random loss of a share of the packets on one link direction."""

    kind = "link_loss"

    def __init__(self, link: str, probability: float) -> None:
        self.target = link
        self.probability = probability
        self.rule: tuple[int | None, list[str]] | None = None
        self.dropped_packets = 0

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> LinkLoss:
        _params(params, where, ("link", "loss"), ("link", "loss"))
        link = _text(params, "link", where)
        if not LOSS_LINKS.match(link):
            raise FaultSpecError(f"{where}.link: {link!r}: loss goes on a trunk, slave or datacenter link "
                                 f"(trunk/T, trunk/T/rev, slave/S/up|down, dc/D/up|down); rack links are "
                                 f"bridged and no iptables sees them")
        return cls(link, _fraction(params["loss"], "loss", where))

    def validate(self, topology: Any) -> None:
        if self.target not in topology.links:
            raise FaultSpecError(f"link_loss.link: unknown link {self.target!r} in topology {topology.name}")

    def inject(self, ctx: DrillContext) -> None:
        pid, table, chain, match = loss_point(ctx, self.target)
        spec = [chain, *match, "-m", "statistic", "--mode", "random", "--probability", f"{self.probability:.6f}",
                "-m", "comment", "--comment", f"{COMMENT} {self.target}", "-j", "DROP"]
        ns_run(pid, ["iptables", "-w", "-t", table, "-I", *spec[:1], "1", *spec[1:]])
        self.rule = (pid, ["-t", table, *spec])

    def _count(self) -> int:
        assert self.rule is not None
        pid, spec = self.rule
        out = ns_run(pid, ["iptables", "-w", "-t", spec[1], "-L", spec[2], "-v", "-x", "-n"], check=False)
        for line in out.splitlines():
            if f"{COMMENT} {self.target}" in line:
                return int(line.split()[0])
        return 0

    def repair(self, ctx: DrillContext) -> None:
        if self.rule is None:
            return
        self.dropped_packets = self._count()
        pid, spec = self.rule
        ns_run(pid, ["iptables", "-w", spec[0], spec[1], "-D", *spec[2:]])
        self.rule = None

    def notes(self) -> dict[str, Any]:
        return {"loss": self.probability, "packets_dropped": self.dropped_packets}


@register
class LinkFlap(Fault):
    """A trunk going down for ``down`` seconds every ``period`` seconds until repaired."""

    kind = "link_flap"

    def __init__(self, trunk: str, down: float, period: float) -> None:
        self.target, self.down_for, self.period = trunk, down, period
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.flaps = 0
        self.error = ""
        self.is_down = False
        self.lock = threading.Lock()

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> LinkFlap:
        _params(params, where, ("trunk", "down", "period"), ("trunk", "down", "period"))
        down, period = _seconds(params, "down", where), _seconds(params, "period", where)
        if down >= period:
            raise FaultSpecError(f"{where}.down: must be shorter than period ({params['down']} >= {params['period']})")
        return cls(_text(params, "trunk", where), down, period)

    def validate(self, topology: Any) -> None:
        _check_trunk(topology, self.target, "link_flap")

    def _loop(self, ctx: DrillContext) -> None:
        try:
            while not self.stop_event.is_set():
                with self.lock:
                    if self.stop_event.is_set():
                        break
                    _set_trunk(ctx, self.target, up=False)
                    self.is_down = True
                    self.flaps += 1
                if self.stop_event.wait(self.down_for):
                    break
                with self.lock:
                    _set_trunk(ctx, self.target, up=True)
                    restore_routes(ctx, self.target, verify=False)
                    self.is_down = False
                self.stop_event.wait(self.period - self.down_for)
        except Exception as e:  # reported by repair(); the link is put back there
            self.error = f"{type(e).__name__}: {e}"

    def inject(self, ctx: DrillContext) -> None:
        self.thread = threading.Thread(target=self._loop, args=(ctx,), name=f"flap-{self.target}", daemon=True)
        self.thread.start()

    def repair(self, ctx: DrillContext) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None
        with self.lock:
            _set_trunk(ctx, self.target, up=True)
            restore_routes(ctx, self.target)
            self.is_down = False
        if self.error:
            raise FaultError(f"flapping {self.target}: {self.error}")

    def resources(self) -> tuple[str, ...]:
        return (self.target,)

    def notes(self) -> dict[str, Any]:
        return {"flaps": self.flaps, "down_s": self.down_for, "period_s": self.period}


@register
class HostCut(Fault):
    """A host cut off: its data interface (and its management interface) down; the daemon keeps running."""

    kind = "host_cut"

    def __init__(self, host: str) -> None:
        self.target = host
        self.role = ""  # slave | master | resource manager, set by validate()
        self.cut: list[tuple[int, str]] = []

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], where: str) -> HostCut:
        _params(params, where, ("host",), ("host",))
        return cls(_text(params, "host", where))

    def validate(self, topology: Any) -> None:
        hosts = {*topology.slaves, *topology.masters, topology.resource_manager.id}
        if self.target not in hosts:
            raise FaultSpecError(f"host_cut.host: {self.target!r} is not a slave, master or resource manager of "
                                 f"topology {topology.name}")
        self.role = ("slave" if self.target in topology.slaves else "master" if self.target in topology.masters
                     else "resource manager")

    def inject(self, ctx: DrillContext) -> None:
        net = ctx.net
        pid = int(net.host(self.target).pid)
        ifs = [net._data_if[self.target]]  # the testbed's record of the host's interfaces
        if self.target in net._mgmt_if:
            ifs.append(net._mgmt_if[self.target])
        for intf in ifs:
            self.cut.append((pid, intf))
            ns_run(pid, ["ip", "link", "set", "dev", intf, "down"])

    def repair(self, ctx: DrillContext) -> None:
        if not self.cut:
            return
        net = ctx.net
        for pid, intf in self.cut:
            ns_run(pid, ["ip", "link", "set", "dev", intf, "up"])
        pid = self.cut[0][0]
        gw = str(net.plan.router[net.plan.host_dc[self.target]].ip)
        # the default route went with the interface; wait for the address to be usable again
        deadline = time.monotonic() + 5.0
        while True:
            r = subprocess.run(["mnexec", "-a", str(pid), "ip", "route", "replace", "default", "via", gw],
                               capture_output=True, text=True, check=False)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise FaultError(f"{self.target}: default route via {gw} not restored: {r.stderr.strip()}")
            time.sleep(0.1)
        self.cut.clear()

    def resources(self) -> tuple[str, ...]:
        """A cut slave is what its master should mark failed; a cut master or resource manager is no resource."""
        return (self.target,) if self.role == "slave" else ()
