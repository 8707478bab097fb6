"""Qdisc statistics and interface indexes over a raw rtnetlink socket opened inside a network namespace.

Why not pyroute2 here: its ``NetNS`` forks a helper process per namespace (about
half a CPU-second per full reading of patent-fig1, see ``testbed.run.TrunkMeter``)
and pyroute2 0.9's ``IPRoute`` opens its socket in its own machinery, so the
setns-in-a-thread trick below does not reach it.  A netlink socket belongs to the
namespace of the thread that created it, for its whole life: a short-lived thread
enters the namespace (``setns`` affects only that thread), creates the socket and
ends; the sampler then dumps classes and qdiscs through it from any thread, at a
cost of microseconds per interface.  Only the few attributes the measurement needs
are parsed (``TCA_KIND``, ``TCA_STATS2`` basic and queue counters).

Close every ``NsNetlink`` before the network is torn down: an open socket keeps
its namespace (and so the namespace's interfaces) alive.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass

from testbed.netns import socket_in_netns

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_NEWLINK = 18, 16
RTM_GETQDISC, RTM_NEWQDISC = 38, 36
RTM_GETTCLASS, RTM_NEWTCLASS = 42, 40
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_ADDRESS, IFLA_IFNAME = 1, 3
TCA_KIND, TCA_STATS2 = 1, 7
TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_PKT64 = 1, 3, 8
HTB_CLASS = 0x10010  # 1:10, testbed.shaping.CLASS
HTB_ROOT = 0x10000  # 1:0
HTB_LEAF = 0x100000  # 10:0


@dataclass
class TcCounters:
    """Counters of one tc object (qdisc or class) as the kernel reports them."""

    kind: str = ""
    bytes: int = 0
    packets: int = 0
    drops: int = 0
    overlimits: int = 0
    backlog: int = 0
    qlen: int = 0
    requeues: int = 0


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[off + 4:off + alen]
        off += (alen + 3) & ~3
    return out


def _tc_counters(attrs: dict[int, bytes]) -> TcCounters:
    c = TcCounters(kind=attrs.get(TCA_KIND, b"").rstrip(b"\0").decode(errors="replace"))
    s2 = attrs.get(TCA_STATS2)
    if s2:
        sub = _attrs(s2, 0, len(s2))
        basic = sub.get(TCA_STATS_BASIC)
        if basic and len(basic) >= 12:
            c.bytes, c.packets = struct.unpack_from("=QI", basic)
        pkt64 = sub.get(TCA_STATS_PKT64)
        if pkt64 and len(pkt64) >= 8:
            c.packets = struct.unpack_from("=Q", pkt64)[0]
        queue = sub.get(TCA_STATS_QUEUE)
        if queue and len(queue) >= 20:
            c.qlen, c.backlog, c.drops, c.requeues, c.overlimits = struct.unpack_from("=5I", queue)
    return c


class NsNetlink:
    """One rtnetlink socket in the network namespace of ``pid`` (None: the caller's namespace)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seq = 0
        self.sock = self._open(pid)
        self._lock = threading.Lock()

    @staticmethod
    def _open(pid: int | None) -> socket.socket:
        if pid is None:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        return socket_in_netns(pid, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                          socket.NETLINK_ROUTE))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NsNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytes]]:
        """(message type, payload) of every reply to one dump request."""
        with self._lock:
            self.seq += 1
            seq = self.seq
            hdr = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            self.sock.send(hdr + body)
            out: list[tuple[int, bytes]] = []
            while True:
                data = self.sock.recv(1 << 20)
                off = 0
                while off + 16 <= len(data):
                    mlen, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                    if mlen < 16:
                        return out
                    if mseq == seq:
                        if mtype == NLMSG_DONE:
                            return out
                        if mtype == NLMSG_ERROR:
                            err = -struct.unpack_from("=i", data, off + 16)[0]
                            if err:
                                raise OSError(err, f"netlink dump {msg_type}: {os.strerror(err)}")
                            return out
                        out.append((mtype, data[off + 16:off + mlen]))
                    off += (mlen + 3) & ~3

    def links(self) -> dict[str, tuple[int, str]]:
        """Interface name -> (ifindex, MAC address)."""
        out: dict[str, tuple[int, str]] = {}
        for mtype, p in self._dump(RTM_GETLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)):
            if mtype != RTM_NEWLINK:
                continue
            index = struct.unpack_from("=i", p, 4)[0]
            a = _attrs(p, 16, len(p))
            name = a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
            mac = ":".join(f"{b:02x}" for b in a.get(IFLA_ADDRESS, b""))
            out[name] = (index, mac)
        return out

    def _tc(self, get: int, new: int, ifindex: int) -> dict[tuple[int, int], TcCounters]:
        """(ifindex, handle) -> counters of every qdisc (or class) the dump returns."""
        out: dict[tuple[int, int], TcCounters] = {}
        for mtype, p in self._dump(get, struct.pack("=BxxxiIII", socket.AF_UNSPEC, ifindex, 0, 0, 0)):
            if mtype != new or len(p) < 20:
                continue
            _fam, idx, handle, _parent, _info = struct.unpack_from("=BxxxiIII", p)
            out[(idx, handle)] = _tc_counters(_attrs(p, 20, len(p)))
        return out

    def qdiscs(self) -> dict[tuple[int, int], TcCounters]:
        """Every qdisc of the namespace, by (ifindex, handle)."""
        return self._tc(RTM_GETQDISC, RTM_NEWQDISC, 0)

    def classes(self, ifindex: int) -> dict[tuple[int, int], TcCounters]:
        """The classes of one interface (the kernel dumps classes per interface)."""
        return self._tc(RTM_GETTCLASS, RTM_NEWTCLASS, ifindex)

    def link_stats(self, ifindex: int, qdiscs: dict[tuple[int, int], TcCounters]) -> dict[str, int]:
        """The testbed's HTB tree on one interface read like ``testbed.shaping.read_stats``.

        bytes/packets/overlimits of class 1:10 (what the shaper let through), drops from the class or the
        leaf, backlog of the class or the leaf, requeues at root and leaf.  An interface without the tree
        (not shaped) gives its root qdisc's counters.
        """
        cls = self.classes(ifindex).get((ifindex, HTB_CLASS))
        root = qdiscs.get((ifindex, HTB_ROOT))
        leaf = qdiscs.get((ifindex, HTB_LEAF))
        base = cls or root or TcCounters()
        return {
            "bytes": base.bytes,
            "packets": base.packets,
            "drops": max(base.drops, leaf.drops if leaf else 0),
            "overlimits": base.overlimits,
            "backlog": max(base.backlog, leaf.backlog if leaf else 0),
            "requeues": (root.requeues if root else 0) + (leaf.requeues if leaf else 0),
        }


def dev_counters(pid: int | None) -> dict[str, tuple[int, int, int, int]]:
    """Interface -> (tx bytes, tx packets, rx bytes, rx packets) in the namespace of ``pid`` (None: ours).

    ``/proc/<pid>/net/dev`` shows the counters of that process's network namespace without entering it
    (the same source psutil.net_io_counters reads for the root namespace).
    """
    path = f"/proc/{pid}/net/dev" if pid else "/proc/self/net/dev"
    out: dict[str, tuple[int, int, int, int]] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, fields = line.partition(":")
        v = fields.split()
        if len(v) >= 10:
            out[name.strip()] = (int(v[8]), int(v[9]), int(v[0]), int(v[1]))
    return out
