"""Egress shaping of one interface: HTB root, one class at the link's rate, a byte-limited leaf queue.

Why not Mininet's TCLink: a shared ``bw=`` overwrites params1/params2, rates above
1000 Mbit/s are silently ignored, and ``intf.config()`` rebuilds the qdisc from
only the arguments it is given.  So the testbed shapes every interface itself,
over netlink (pyroute2), with every parameter explicit:

    htb 1: (default 1:10) -> class 1:10 rate=ceil=<link rate> quantum, burst, cburst explicit
                          -> leaf 10: bfifo limit=<queue_bytes>   (or netem delay=<trunk latency>)

Interfaces inside a Mininet host are reached with pyroute2's ``NetNS`` opened on
``/proc/<pid>/ns/net`` (pyroute2 >= 0.9 accepts a path, so no bind mount under
/run/netns is needed and none can be left behind by a killed run).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import plugins as _tc_plugins
from pyroute2.netlink.rtnl.tcmsg import sched_pfifo

from testbed.addressing import TestbedError

# bfifo's options are pfifo's (struct tc_fifo_qopt {u32 limit}); pyroute2 only knows pfifo by name.
_tc_plugins.setdefault("bfifo", sched_pfifo)

__all__ = [
    "MIN_RATE",
    "HtbConfig",
    "ShapedLink",
    "install",
    "netns",
    "plan_link",
    "read_config",
    "read_stats",
    "remove",
]

MIN_RATE = 1000.0  # bytes/s = 8 kbit/s, below which HTB's arithmetic and TCP both stop making sense
FRAME = 1514  # bytes on the wire of a full-size Ethernet frame (MTU 1500 + 14)
MIN_RTT = 0.005  # seconds; queue sizing floor for links that carry no trunk latency
ROOT, CLASS, LEAF = 0x10000, 0x10010, 0x100000  # 1:0, 1:10, 10:0


@dataclass(frozen=True)
class ShapedLink:
    link: str  # topology link id
    node: str  # Mininet node name whose interface shapes it (egress)
    intf: str  # interface name
    pid: int | None  # pid of the node's namespace, None = root namespace
    rate: float  # bytes/s configured
    delay: float  # seconds of latency applied to this direction (trunks only, else 0)
    queue_bytes: int  # queue limit sized from the bandwidth-delay product


@dataclass(frozen=True)
class HtbConfig:
    """Everything written to the kernel for one link direction, kept for the audit."""

    link: str
    rate: int  # bytes/s, rate = ceil
    burst: int  # bytes
    cburst: int
    quantum: int  # bytes, explicit so the kernel never warns "quantum of class is big/small"
    queue_bytes: int  # bandwidth-delay product of the leaf queue
    rtt: float  # seconds the queue was sized for
    leaf: str  # "bfifo" | "netem"
    delay: float  # seconds (netem leaf only; 0 otherwise)
    netem_limit: int  # packets (netem leaf only)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plan_link(link: str, rate: float, *, rtt: float, delay: float = 0.0, netem: bool = False,
              mtu: int = 1500) -> HtbConfig:
    """HTB parameters for one link direction; refuses rates too small to shape."""
    if not rate >= MIN_RATE:  # also catches NaN
        raise TestbedError(
            f"link {link} would be shaped to {rate * 8 / 1000:.3f} kbit/s, below the {MIN_RATE * 8 / 1000:.0f} kbit/s "
            f"HTB can shape; raise the topology's bandwidth or the --scale"
        )
    frame = mtu + 14
    r = round(rate)
    quantum = max(frame, min(60000, r // 10))
    # burst: enough tokens for ~5 ms at the rate, so timer and softirq latency on a busy 2-core box do not
    # cost throughput, and never less than a few frames.
    burst = max(4 * frame, int(r * 0.005))
    rtt = max(rtt, MIN_RTT)
    queue = max(math.ceil(2 * r * rtt), 20 * frame)
    netem_limit = 0
    if netem and delay > 0:
        # netem's queue holds what is in flight on the wire (rate x delay) plus the BDP queue, in packets;
        # ACK-sized packets count as packets too, hence the generous floor.
        netem_limit = max(1000, math.ceil(2 * (r * delay + queue) / 100))
    return HtbConfig(link, r, burst, burst, quantum, queue, rtt, "netem" if netem and delay > 0 else "bfifo",
                     delay if netem else 0.0, netem_limit)


@contextmanager
def netns(pid: int | None) -> Iterator[IPRoute]:
    """A netlink socket in the root namespace (pid None) or in the network namespace of process ``pid``."""
    ipr: IPRoute = IPRoute() if pid is None else NetNS(f"/proc/{pid}/ns/net", flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TestbedError(f"interface {ifname} does not exist; the network was not built or was torn down")
    return int(found[0])


def install(ipr: IPRoute, ifname: str, cfg: HtbConfig) -> None:
    """Replace whatever root qdisc ``ifname`` has with the HTB tree of ``cfg``."""
    idx = _index(ipr, ifname)
    try:
        ipr.tc("del", index=idx, handle=0, parent=0xFFFFFFFF)  # default/noqueue root: nothing to delete is fine
    except NetlinkError:
        pass
    try:
        ipr.tc("add", "htb", idx, ROOT, default=CLASS & 0xFFFF, r2q=10)
        ipr.tc("add-class", "htb", idx, CLASS, parent=ROOT, rate=cfg.rate, ceil=cfg.rate,
               burst=cfg.burst, cburst=cfg.cburst, quantum=cfg.quantum, prio=0, mtu=1600)
        if cfg.leaf == "netem":
            ipr.tc("add", "netem", idx, LEAF, parent=CLASS, delay=round(cfg.delay * 1e6),
                   limit=cfg.netem_limit)
        else:
            ipr.tc("add", "bfifo", idx, LEAF, parent=CLASS, limit=cfg.queue_bytes)
    except NetlinkError as e:
        raise TestbedError(f"shaping {cfg.link} on {ifname} failed: {e}; check `tc qdisc show dev {ifname}` "
                           f"and that the kernel has sch_htb and sch_{cfg.leaf}") from e


def remove(ipr: IPRoute, ifname: str) -> bool:
    """Delete the root qdisc of ``ifname``; False when the interface or the qdisc is already gone."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return False
    try:
        ipr.tc("del", index=int(found[0]), handle=0, parent=0xFFFFFFFF)
        return True
    except NetlinkError:
        return False


def _stats(msg: Any) -> dict[str, int]:
    out = {"bytes": 0, "packets": 0, "drops": 0, "overlimits": 0, "backlog": 0, "requeues": 0, "qlen": 0}
    s2 = msg.get("TCA_STATS2")
    if s2 is not None:
        basic = s2.get("TCA_STATS_BASIC") or {}
        queue = s2.get("TCA_STATS_QUEUE") or {}
        out["bytes"] = int(basic.get("bytes", 0))
        out["packets"] = int(basic.get("packets", 0))
        out["drops"] = int(queue.get("drops", 0))
        out["overlimits"] = int(queue.get("overlimits", 0))
        out["backlog"] = int(queue.get("backlog", 0))
        out["requeues"] = int(queue.get("requeues", 0))
        out["qlen"] = int(queue.get("qlen", 0))
    return out


def read_stats(ipr: IPRoute, ifname: str) -> dict[str, int]:
    """Counters of the shaping class (bytes, packets, drops, overlimits) and its queue (backlog, requeues).

    Drops are counted by HTB on the class when the leaf refuses a packet; backlog
    is the leaf's; requeues happen at the root qdisc, so they come from there.
    """
    idx = _index(ipr, ifname)
    cls = next((_stats(c) for c in ipr.get_classes(index=idx) if c["handle"] == CLASS), None)
    if cls is None:
        raise TestbedError(f"{ifname} has no shaping class 1:10; was the network torn down?")
    root = leaf = None
    for q in ipr.get_qdiscs(index=idx):
        if q["handle"] == ROOT:
            root = _stats(q)
        elif q["handle"] == LEAF:
            leaf = _stats(q)
    out = {k: cls[k] for k in ("bytes", "packets", "drops", "overlimits")}
    out["backlog"] = max(cls["backlog"], leaf["backlog"] if leaf else 0)
    out["requeues"] = (root["requeues"] if root else 0) + (leaf["requeues"] if leaf else 0)
    if leaf:
        out["drops"] = max(out["drops"], leaf["drops"])
    return out


def read_config(ipr: IPRoute, ifname: str) -> dict[str, object]:
    """What the kernel reports for the shaping class and leaf (rate, ceil, quantum, buffers, leaf limit)."""
    idx = _index(ipr, ifname)
    out: dict[str, object] = {}
    for c in ipr.get_classes(index=idx):
        if c["handle"] != CLASS:
            continue
        opts = c.get("TCA_OPTIONS")
        parms = opts.get("TCA_HTB_PARMS") if opts is not None else None
        if parms:
            out.update(rate=int(parms["rate"]), ceil=int(parms["ceil"]), quantum=int(parms["quantum"]),
                       buffer_ticks=int(parms["buffer"]), cbuffer_ticks=int(parms["cbuffer"]),
                       prio=int(parms["prio"]))
    for q in ipr.get_qdiscs(index=idx):
        if q["handle"] == LEAF:
            out["leaf"] = q.get("TCA_KIND")
            opts = q.get("TCA_OPTIONS")
            if opts is not None and hasattr(opts, "get"):
                limit = opts.get("limit")
                if limit is not None:
                    out["leaf_limit"] = int(limit)
        elif q["handle"] == ROOT:
            out["root"] = q.get("TCA_KIND")
    return out
