"""Which copy operations crossed each trunk, and how many bytes each moved: pcaps + slave logs + ledger -> flows.json.

Packets are read with scapy's streaming ``RawPcapReader`` and their Ethernet/IPv4/
TCP/UDP headers unpacked with ``struct`` (full scapy dissection costs ~50x more and
the captures hold only headers anyway).  Bytes are IP bytes: the IPv4 total-length
field, so a 96-byte snapshot still counts the whole packet.

Direction on a trunk: a frame whose source MAC is the start router's trunk
interface left in the primary direction; anything else arrived on the reverse.

Matching: every slave logs ``flow <transfer_id> <src ip>:<port> > <dst ip>:<port>``
for each data connection, in the direction the block bytes flow (both ends log it).
A TCP packet whose 4-tuple is a logged flow belongs to that transfer; the reversed
4-tuple (ACKs, the BlockGet request) belongs to it too, counted apart.  The ledger
gives each transfer's source, destination, block and the bytes reserved on the
trunk (grant + carry records whose link is ``trunk/<id>``).
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaledist.core.ledger import read_ledger

FLOW_RE = re.compile(r" flow (\S+) (\d+\.\d+\.\d+\.\d+):(\d+) > (\d+\.\d+\.\d+\.\d+):(\d+)\s*$")
Tuple4 = tuple[str, int, str, int]


def read_flow_logs(log_dir: Path) -> tuple[dict[Tuple4, str], list[str]]:
    """4-tuple (data direction) -> transfer id from every ``flow`` line of the daemons' logs; plus conflicts."""
    out: dict[Tuple4, str] = {}
    conflicts: list[str] = []
    for p in sorted(log_dir.glob("*.log")):
        with p.open(errors="replace") as f:
            for line in f:
                if " flow " not in line:
                    continue
                m = FLOW_RE.search(line)
                if not m:
                    continue
                tid, src, sport, dst, dport = m.groups()
                key = (src, int(sport), dst, int(dport))
                prev = out.setdefault(key, tid)
                if prev != tid and len(conflicts) < 50:
                    conflicts.append(f"{src}:{sport} > {dst}:{dport} logged for {prev} and {tid}")
    return out, conflicts


@dataclass
class TransferInfo:
    fileset: str = ""
    file_id: str = ""
    block: int = -1
    source: str | None = None
    destination: str = ""
    reserved: dict[str, int] = field(default_factory=dict)  # link -> bytes (grant + carry)


def ledger_transfers(path: Path) -> dict[str, TransferInfo]:
    out: dict[str, TransferInfo] = {}
    if not path.exists():
        return out
    for r in read_ledger(path):
        if r.kind not in ("grant", "carry"):
            continue
        t = out.get(r.transfer_id)
        if t is None:
            t = out[r.transfer_id] = TransferInfo(r.fileset, r.file_id, r.block, r.source, r.destination)
        if r.link is not None:
            t.reserved[r.link] = t.reserved.get(r.link, 0) + r.bytes
    return out


@dataclass
class FlowAgg:
    """Bytes of one 5-tuple in one direction of one trunk."""

    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    primary: bool
    bytes: int = 0
    packets: int = 0
    payload: int = 0
    first: float = math.inf
    last: float = -math.inf


@dataclass
class PcapSummary:
    flows: dict[tuple[int, str, int, str, int, bool], FlowAgg]
    non_ip: dict[bool, list[int]]  # primary? -> [bytes, packets] (ARP and the like; frame length - 14)
    per_epoch: dict[int, dict[str, int]]  # epoch -> counters by class, filled by classify()
    packets: int
    first_ts: float | None
    last_ts: float | None
    # (wall ts, primary, key or None, ip bytes, payload) kept compactly for per-epoch classification
    samples: list[tuple[float, bool, tuple[int, str, int, str, int] | None, int, int]]


def read_pcap(path: Path, primary_mac: str | None) -> PcapSummary:
    """Aggregate one capture per 5-tuple and direction (streaming: memory grows with flows, not packets)."""
    from scapy.utils import RawPcapReader

    mac = bytes.fromhex(primary_mac.replace(":", "")) if primary_mac else None
    flows: dict[tuple[int, str, int, str, int, bool], FlowAgg] = {}
    non_ip: dict[bool, list[int]] = {True: [0, 0], False: [0, 0]}
    samples: list[tuple[float, bool, tuple[int, str, int, str, int] | None, int, int]] = []
    n = 0
    first = last = None
    unpack_ip = struct.Struct("!BxHxxxxxBxx4s4s").unpack_from
    unpack_ports = struct.Struct("!HH").unpack_from
    ip_cache: dict[bytes, str] = {}
    with RawPcapReader(str(path)) as reader:
        for data, meta in reader:
            n += 1
            ts = meta.sec + meta.usec / 1e6
            if first is None:
                first = ts
            last = ts
            primary = mac is not None and data[6:12] == mac
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                wire = max(0, meta.wirelen - 14)
                non_ip[primary][0] += wire
                non_ip[primary][1] += 1
                samples.append((ts, primary, None, wire, 0))
                continue
            vihl, iplen, proto, s, d = unpack_ip(data, 14)
            ihl = (vihl & 0x0F) * 4
            src = ip_cache.get(s) or ip_cache.setdefault(s, ".".join(str(b) for b in s))
            dst = ip_cache.get(d) or ip_cache.setdefault(d, ".".join(str(b) for b in d))
            sport = dport = 0
            payload = 0
            off = 14 + ihl
            if proto in (6, 17) and len(data) >= off + 4:
                sport, dport = unpack_ports(data, off)
                if proto == 6 and len(data) >= off + 13:
                    payload = max(0, iplen - ihl - (data[off + 12] >> 4) * 4)
                elif proto == 17:
                    payload = max(0, iplen - ihl - 8)
            key5 = (proto, src, sport, dst, dport)
            k = (*key5, primary)
            agg = flows.get(k)
            if agg is None:
                agg = flows[k] = FlowAgg(proto, src, sport, dst, dport, primary)
            agg.bytes += iplen
            agg.packets += 1
            agg.payload += payload
            if ts < agg.first:
                agg.first = ts
            if ts > agg.last:
                agg.last = ts
            samples.append((ts, primary, key5, iplen, payload))
    return PcapSummary(flows, non_ip, {}, n, first, last, samples)


def analyse(run_dir: Path, topology: Any, trunk_macs: Mapping[str, str], *, origin_wall: float | None,
            epoch_length: float, capture_stats: Mapping[str, Mapping[str, object]],
            cross: Iterable[Mapping[str, object]] = ()) -> dict[str, object]:
    """flows.json's content for every trunk captured in ``run_dir/capture``."""
    t0 = time.thread_time()
    tuples, conflicts = read_flow_logs(run_dir / "logs")
    transfers = ledger_transfers(run_dir / "ledger.jsonl")
    cross_keys: dict[tuple[str, str, int], str] = {}
    for c in cross:
        cross_keys[(str(c["src"]), str(c["dst"]), int(c["dport"]))] = str(c["link"])  # type: ignore[call-overload]

    def rel(ts: float) -> float | None:
        return None if origin_wall is None or not math.isfinite(ts) else round(ts - origin_wall, 4)

    out_trunks: dict[str, object] = {}
    for tid in sorted(topology.trunks):
        link = f"trunk/{tid}"
        pcap = run_dir / "capture" / f"{tid}.pcap"
        stats = dict(capture_stats.get(tid, {}))
        if not pcap.exists() or pcap.stat().st_size < 24:  # 24 bytes: a pcap header, no packet (an idle trunk)
            out_trunks[tid] = {"link": link, "error": "no capture", "capture_drops": stats.get("dropped_by_kernel"),
                               "flows": [], "unreserved_bytes": None}
            continue
        s = read_pcap(pcap, trunk_macs.get(link))
        flows: list[dict[str, object]] = []
        rev_of: dict[Tuple4, FlowAgg] = {}
        for agg in s.flows.values():
            if agg.proto == 6:
                rev_of[(agg.dst, agg.dport, agg.src, agg.sport)] = agg  # keyed by the data direction it answers
        seen_tids: set[str] = set()
        unreserved = {"cross": 0, "tcp": 0, "udp": 0, "other": s.non_ip[True][0]}
        reverse = {"transfer": 0, "other": s.non_ip[False][0]}
        unmatched: list[tuple[int, str]] = []
        acks_on_primary = 0
        cross_out: dict[str, dict[str, object]] = {}
        key_class: dict[tuple[int, str, int, str, int, bool], str] = {}
        for k, agg in s.flows.items():
            t4 = (agg.src, agg.sport, agg.dst, agg.dport)
            tid_ = tuples.get(t4) if agg.proto == 6 else None
            rtid = tuples.get((agg.dst, agg.dport, agg.src, agg.sport)) if agg.proto == 6 else None
            ck = cross_keys.get((agg.src, agg.dst, agg.dport)) if agg.proto == 17 else None
            if ck is not None:
                c = cross_out.setdefault(f"{agg.src}>{agg.dst}:{agg.dport}", {
                    "link": ck, "src": agg.src, "dst": agg.dst, "dport": agg.dport, "primary_bytes": 0,
                    "reverse_bytes": 0, "packets": 0, "first_t": rel(agg.first), "last_t": rel(agg.last)})
                c["primary_bytes" if agg.primary else "reverse_bytes"] += agg.bytes  # type: ignore[operator]
                c["packets"] += agg.packets  # type: ignore[operator]
            if agg.primary:
                if tid_ is not None:
                    key_class[k] = "data"
                    seen_tids.add(tid_)
                    info = transfers.get(tid_, TransferInfo())
                    back = rev_of.get(t4)
                    flows.append({
                        "transfer_id": tid_, "src": agg.src, "sport": agg.sport, "dst": agg.dst, "dport": agg.dport,
                        "bytes": agg.bytes, "packets": agg.packets, "payload_bytes": agg.payload,
                        "first_t": rel(agg.first), "last_t": rel(agg.last),
                        "reserved_bytes_on_this_trunk": info.reserved.get(link, 0),
                        "in_ledger": tid_ in transfers,
                        "source": info.source, "destination": info.destination, "fileset": info.fileset,
                        "file_id": info.file_id, "block": info.block,
                        "reverse_bytes": back.bytes if back and not back.primary else 0,
                    })
                elif rtid is not None:  # a transfer's answering direction (ACKs) routed over the primary
                    key_class[k] = "acks"
                    acks_on_primary += agg.bytes
                else:
                    key_class[k] = "cross" if ck is not None else "unreserved"
                    cat = "cross" if ck is not None else "tcp" if agg.proto == 6 else "udp" if agg.proto == 17 \
                        else "other"
                    unreserved[cat] += agg.bytes
                    if cat == "tcp":
                        unmatched.append((agg.bytes, f"{agg.src}:{agg.sport} > {agg.dst}:{agg.dport}"))
            else:
                key_class[k] = "reverse"
                if tid_ is not None or rtid is not None:
                    reverse["transfer"] += agg.bytes
                else:
                    reverse["other"] += agg.bytes
        # per epoch: data (IP and payload bytes), unreserved and cross on the primary; everything on the reverse
        per_epoch: dict[int, dict[str, int]] = {}
        if origin_wall is not None:
            for ts, primary, key5, ipb, pay in s.samples:
                e = math.floor((ts - origin_wall) / epoch_length)
                row = per_epoch.get(e)
                if row is None:
                    row = per_epoch[e] = {"data_bytes": 0, "data_payload_bytes": 0, "unreserved_bytes": 0,
                                          "cross_bytes": 0, "reverse_bytes": 0}
                if not primary:
                    row["reverse_bytes"] += ipb
                    continue
                cls = key_class.get((*key5, True), "unreserved") if key5 is not None else "unreserved"
                if cls == "acks":
                    continue
                if cls == "data":
                    row["data_bytes"] += ipb
                    row["data_payload_bytes"] += pay
                elif cls == "cross":
                    row["cross_bytes"] += ipb
                    row["unreserved_bytes"] += ipb
                else:
                    row["unreserved_bytes"] += ipb
        reserved_here = {t: i.reserved[link] for t, i in transfers.items() if i.reserved.get(link)}
        not_seen = sorted(t for t in reserved_here if t not in seen_tids)
        flows.sort(key=lambda f: (f["first_t"] if f["first_t"] is not None else 0.0, str(f["transfer_id"])))
        primary_bytes = sum(a.bytes for a in s.flows.values() if a.primary) + s.non_ip[True][0]
        out_trunks[tid] = {
            "link": link,
            "capture_drops": stats.get("dropped_by_kernel"),
            "captured_packets": s.packets,
            "primary_bytes": primary_bytes,
            "data_bytes": sum(int(f["bytes"]) for f in flows),  # type: ignore[call-overload]
            "data_payload_bytes": sum(int(f["payload_bytes"]) for f in flows),  # type: ignore[call-overload]
            "reserved_bytes": sum(reserved_here.values()),
            "unreserved_bytes": sum(unreserved.values()),
            "unreserved": unreserved,
            "transfer_acks_on_primary": acks_on_primary,  # belongs to transfers, not to their reservations
            "cross": sorted(cross_out.values(), key=lambda c: str(c["src"])),
            "reverse_bytes": sum(reverse.values()),
            "reverse": reverse,
            "transfers": len({f["transfer_id"] for f in flows}),
            "reserved_transfers_not_seen": not_seen[:100],
            "reserved_transfers_not_seen_count": len(not_seen),
            "unmatched_tcp": [u for _, u in sorted(unmatched, reverse=True)[:20]],
            "per_epoch": {str(e): row for e, row in sorted(per_epoch.items())},
            "flows": flows,
        }
    return {
        "trunks": out_trunks,
        "flow_lines": len(tuples),
        "flow_conflicts": conflicts,
        "ledger_transfers": len(transfers),
        "cpu_s": round(time.thread_time() - t0, 4),
    }


def write_flows(path: Path, content: Mapping[str, object]) -> None:
    path.write_text(json.dumps(content, indent=1) + "\n")


__all__ = ["FLOW_RE", "analyse", "ledger_transfers", "read_flow_logs", "read_pcap", "write_flows"]
