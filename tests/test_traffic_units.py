"""Measurement pieces that need no root: trunk budgets (§0114), cross-traffic declarations, flow matching of a
pcap against the slaves' flow lines and the ledger, netlink/tcpdump parsing, the paced UDP sender."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from scaledist.core.ledger import LedgerRecord, encode_jsonl
from scaledist.core.resource_manager import ResourceManager
from scaledist.daemons.slave import log_flow
from scaledist.messages import CopyRequest, Grant
from scaledist.scenario import ScenarioError, load_scenario_text
from scaledist.topology_schema import TopologyError, load_topology_text
from traffic.capture import Capture, parse_tcpdump_stats
from traffic.flows import FLOW_RE, analyse
from traffic.nl import TCA_KIND, TCA_STATS2, TCA_STATS_BASIC, TCA_STATS_QUEUE, _tc_counters

REPO = Path(__file__).resolve().parents[1]
SMALL = (REPO / "topologies" / "small.yaml").read_text()
T1 = "  - {id: T1, from: DC1, to: DC2, bandwidth: 20MB/s, reverse_bandwidth: 2MB/s, latency: 10ms}"


def small(t1: str = T1):
    assert T1 in SMALL
    return load_topology_text(SMALL.replace(T1, t1), "small.yaml")


def with_budget(budget: str = "5MB/s", extra: str = "") -> str:
    return T1.replace("latency: 10ms}", f"latency: 10ms, budget: {budget}{extra}}}")


# --- budgets ----------------------------------------------------------------------------------------


def test_budget_is_the_rm_capacity_and_bandwidth_the_physical_one() -> None:
    t = small(with_budget("5MB/s", ", reverse_budget: 1MB/s"))
    fwd, rev, other = t.links["trunk/T1"], t.links["trunk/T1/rev"], t.links["trunk/T2"]
    assert (fwd.capacity, fwd.physical) == (5e6, 20e6)
    assert (rev.capacity, rev.physical) == (1e6, 2e6)
    assert other.capacity == other.physical == 10e6  # no budget: the bandwidth is both
    assert t.links["slave/dc1-r1-s1/up"].physical == t.links["slave/dc1-r1-s1/up"].capacity
    s = t.scaled(0.25)
    assert (s.links["trunk/T1"].capacity, s.links["trunk/T1"].physical) == (1.25e6, 5e6)
    assert s.links["trunk/T1/rev"].capacity == 0.25e6
    # an adjusted budget replaces the budget; the link stays as fast as it physically is
    adj = t.with_capacity("trunk/T1", 3e6)
    assert (adj.links["trunk/T1"].capacity, adj.links["trunk/T1"].physical) == (3e6, 20e6)
    plain = small().with_capacity("trunk/T1", 3e6)  # no budget: as before, the bandwidth itself
    assert plain.links["trunk/T1"].physical == 3e6


def _trunk_grant(topology) -> Grant:
    rm = ResourceManager(topology, start=0.0)
    g = rm.request(0.1, CopyRequest("x1", "M1", "dc2-r3-s1", ("dc1-r1-s1",), "news", "f", 1, 0, 2**20))
    assert isinstance(g, Grant), g
    assert "trunk/T1" in g.path
    return g


def test_resource_manager_reserves_against_the_budget_not_the_bandwidth() -> None:
    honest = _trunk_grant(small())
    budgeted = small(with_budget("2MB/s"))
    g = _trunk_grant(budgeted)
    assert g.rate <= 2e6 < honest.rate  # the 20 MB/s trunk is only 2 MB/s to the resource manager
    rm = ResourceManager(budgeted, start=0.0)
    rm.request(0.1, CopyRequest("x2", "M1", "dc2-r3-s1", ("dc1-r1-s1",), "news", "f", 1, 0, 2**20))
    assert rm.snapshot()["links"]["trunk/T1"]["capacity"] == 2e6  # type: ignore[index]
    # an overstated budget (2x the link) is believed: that is what the results must catch as FAIL
    liar = small(with_budget("40MB/s"))
    assert liar.links["trunk/T1"].capacity == 2 * liar.links["trunk/T1"].physical


@pytest.mark.parametrize(("field", "expect"), [
    ("budget: 0MB/s", "budget must be > 0"),
    ("budget: fast", "budget"),
    ("reverse_budget: -1MB/s", "reverse budget must be > 0"),
    ("budgte: 5MB/s", "did you mean 'budget'"),
])
def test_bad_budgets_name_line_and_key(field: str, expect: str) -> None:
    with pytest.raises(TopologyError) as e:
        small(T1.replace("latency: 10ms}", f"latency: 10ms, {field}}}"))
    assert expect in str(e.value)
    assert e.value.line is not None and "trunks[0]" in e.value.key


# --- cross traffic in scenarios ---------------------------------------------------------------------

SCEN = """version: 1
name: x
filesets:
  news:
    files: [{id: a, size: 1MiB}]
"""


def test_cross_traffic_is_parsed_validated_and_scaled() -> None:
    topo = small()
    sc = load_scenario_text(SCEN + "cross_traffic:\n  - {link: trunk/T1, rate: 2MB/s, start: 5s, duration: 20s}\n"
                            "  - {link: slave/dc1-r1-s1/down, rate: 100KB/s, duration: 1s}\n", topo)
    c = sc.cross_traffic
    assert [(x.link, x.rate, x.start, x.duration) for x in c] == [("trunk/T1", 2e6, 5.0, 20.0),
                                                                   ("slave/dc1-r1-s1/down", 1e5, 0.0, 1.0)]
    s = sc.scaled(0.25)
    assert s.cross_traffic[0].rate == 0.5e6 and s.cross_traffic[0].start == 5.0
    assert load_scenario_text(SCEN, topo).cross_traffic == ()


@pytest.mark.parametrize(("item", "expect"), [
    ("{link: trunk/T9, rate: 2MB/s, duration: 1s}", "unknown link 'trunk/T9'"),
    ("{link: trunk/T1, rate: 0MB/s, duration: 1s}", "rate must be > 0"),
    ("{link: trunk/T1, rate: 1MB/s, duration: 0s}", "duration must be > 0"),
    ("{link: trunk/T1, rate: 1MB/s}", "cross_traffic[0].duration: required key is missing"),
    ("{link: trunk/T1, rate: 1MB/s, duration: 1s, sart: 1s}", "did you mean 'start'"),
])
def test_bad_cross_traffic_is_refused_with_its_line(item: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario_text(SCEN + f"cross_traffic:\n  - {item}\n", small(), "s.yaml")
    assert expect in str(e.value)
    assert e.value.line == 7  # the list item


# --- flow lines, pcap matching ----------------------------------------------------------------------


def test_slave_flow_line_is_in_the_data_direction_and_parses() -> None:
    lines: list[str] = []
    conn = SimpleNamespace(local="10.2.1.2:40000", peer="10.1.1.2:7101")  # the puller's end of a pull
    log_flow(lines.append, "M1.a.7", conn, sending=False)  # type: ignore[arg-type]
    served = SimpleNamespace(local="10.1.1.2:7101", peer="10.2.1.2:40000")  # the source's end
    log_flow(lines.append, "M1.a.7", served, sending=True)  # type: ignore[arg-type]
    assert lines[0] == lines[1] == "flow M1.a.7 10.1.1.2:7101 > 10.2.1.2:40000"
    m = FLOW_RE.search("12:00:00.000 slave dc2-r3-s1 " + lines[0])
    assert m and m.groups() == ("M1.a.7", "10.1.1.2", "7101", "10.2.1.2", "40000")


START_MAC, END_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _rec(kind: str, tid: str, link: str | None, nbytes: int, epoch: int = 0) -> LedgerRecord:
    return LedgerRecord(kind, epoch, 1.0, link, "P3", nbytes, 1e6, tid, "dc1-r1-s1", "dc2-r3-s1", "news", "f", 0,
                        True)


def test_pcap_flows_are_matched_to_transfers_and_the_rest_is_unreserved(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.utils import wrpcap

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "capture").mkdir()
    (run / "logs" / "dc1-r1-s1.log").write_text("12:00:00.000 slave dc1-r1-s1 flow M1.a.1 10.1.1.2:7101 > "
                                                 "10.2.1.2:40000\nnoise line\n")
    (run / "logs" / "dc2-r3-s1.log").write_text("12:00:00.001 slave dc2-r3-s1 flow M1.a.1 10.1.1.2:7101 > "
                                                 "10.2.1.2:40000\n")
    (run / "ledger.jsonl").write_bytes(encode_jsonl([
        _rec("grant", "M1.a.1", "trunk/T1", 3000), _rec("carry", "M1.a.1", "trunk/T1", 500, 1),
        _rec("grant", "M1.a.1", "slave/dc1-r1-s1/up", 3500), _rec("grant", "M1.a.9", "trunk/T1", 100)]))
    origin = 1000.0
    pk = []

    def at(p, t: float):
        p.time = origin + t
        pk.append(p)

    fwd = Ether(src=START_MAC, dst=END_MAC)
    back = Ether(src=END_MAC, dst=START_MAC)
    for i in range(3):  # 3 data segments of 1000 payload bytes in epoch 0, one in epoch 1
        at(fwd / IP(src="10.1.1.2", dst="10.2.1.2") / TCP(sport=7101, dport=40000) / bytes(1000), 0.1 + i * 0.1)
    at(fwd / IP(src="10.1.1.2", dst="10.2.1.2") / TCP(sport=7101, dport=40000) / bytes(500), 1.2)
    at(back / IP(src="10.2.1.2", dst="10.1.1.2") / TCP(sport=40000, dport=7101, flags="A"), 0.5)  # its ACK
    at(fwd / IP(src="172.30.0.1", dst="172.30.0.2") / UDP(sport=5555, dport=7200) / bytes(1372), 0.6)  # cross
    at(fwd / IP(src="10.1.9.9", dst="10.2.9.9") / TCP(sport=1234, dport=80) / bytes(100), 0.7)  # nobody's
    at(fwd / ARP(), 0.8)
    wrpcap(str(run / "capture" / "T1.pcap"), pk)
    wrpcap(str(run / "capture" / "T2.pcap"), [])  # an idle trunk: header only
    topo = SimpleNamespace(trunks={"T1": None, "T2": None})
    cross = [{"src": "172.30.0.1", "dst": "172.30.0.2", "dport": 7200, "link": "trunk/T1"}]
    out = analyse(run, topo, {"trunk/T1": START_MAC}, origin_wall=origin, epoch_length=1.0,
                  capture_stats={"T1": {"dropped_by_kernel": 0}}, cross=cross)
    t1 = out["trunks"]["T1"]  # type: ignore[index]
    assert out["flow_lines"] == 1 and out["flow_conflicts"] == []
    [flow] = t1["flows"]
    assert flow["transfer_id"] == "M1.a.1" and (flow["sport"], flow["dport"]) == (7101, 40000)
    assert flow["payload_bytes"] == 3500 and flow["packets"] == 4
    assert flow["bytes"] == 3500 + 4 * 40  # IP bytes: 20 IP + 20 TCP header each
    assert flow["reserved_bytes_on_this_trunk"] == 3500  # grant + carry on trunk/T1 only
    assert flow["reverse_bytes"] == 40 and flow["first_t"] == pytest.approx(0.1, abs=1e-3)
    assert t1["capture_drops"] == 0 and t1["reserved_bytes"] == 3600
    assert t1["reserved_transfers_not_seen"] == ["M1.a.9"]
    assert t1["unreserved"]["cross"] == 1400 and t1["unreserved"]["tcp"] == 140
    assert t1["unreserved"]["other"] == len(ARP())  # non-IP frames: their length without Ethernet
    assert t1["unreserved_bytes"] == 1400 + 140 + len(ARP())
    assert t1["cross"][0]["primary_bytes"] == 1400
    assert t1["reverse"]["transfer"] == 40
    assert t1["per_epoch"]["0"]["data_payload_bytes"] == 3000 and t1["per_epoch"]["1"]["data_payload_bytes"] == 500
    assert t1["per_epoch"]["0"]["cross_bytes"] == 1400
    t2 = out["trunks"]["T2"]  # type: ignore[index]
    assert t2["flows"] == [] and t2["unreserved_bytes"] == 0 and "error" not in t2


# --- parsers ----------------------------------------------------------------------------------------


def _attr(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + bytes((4 - n % 4) % 4)


def test_tc_statistics_are_read_from_netlink_attributes() -> None:
    stats2 = _attr(TCA_STATS_BASIC, struct.pack("=QI", 123456789012, 4242) + bytes(4)) + _attr(
        TCA_STATS_QUEUE, struct.pack("=5I", 3, 4500, 7, 1, 99))
    buf = _attr(TCA_KIND, b"htb\0") + _attr(TCA_STATS2 | 0x8000, stats2)  # nested flag set, as the kernel does
    from traffic.nl import _attrs

    c = _tc_counters(_attrs(buf, 0, len(buf)))
    assert (c.kind, c.bytes, c.packets) == ("htb", 123456789012, 4242)
    assert (c.qlen, c.backlog, c.drops, c.requeues, c.overlimits) == (3, 4500, 7, 1, 99)


def test_tcpdump_closing_lines_give_the_capture_drops() -> None:
    c = Capture("T1", "x", 1, Path("/nonexistent"))
    parse_tcpdump_stats(c, "tcpdump: listening on x\n1200 packets captured\n1300 packets received by filter\n"
                           "100 packets dropped by kernel\n")
    assert (c.captured, c.received, c.dropped, c.error) == (1200, 1300, 100, "")
    bad = Capture("T1", "x", 1, Path("/nonexistent"))
    parse_tcpdump_stats(bad, "tcpdump: x: No such device exists\n")
    assert bad.dropped is None and "No such device" in bad.error


# --- the paced sender ---------------------------------------------------------------------------------


def test_paced_udp_sender_keeps_its_rate_and_the_sink_counts_it(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "traffic.crossload"]
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([*base, "sink", "--port", str(port), "--duration", "3", "--out",
                             str(tmp_path / "sink.json")], cwd=REPO)
    time.sleep(0.5)
    rate = 300_000.0
    subprocess.run([*base, "send", "--dst", "127.0.0.1", "--port", str(port), "--rate", str(rate), "--duration", "1.5",
                    "--out", str(tmp_path / "send.json")], cwd=REPO, check=True, timeout=20)
    sink.wait(timeout=20)
    sent = json.loads((tmp_path / "send.json").read_text())
    got = json.loads((tmp_path / "sink.json").read_text())
    assert sent["ip_bytes"] == sent["packets"] * 1400
    assert abs(sent["ip_bytes"] - rate * 1.5) <= 0.05 * rate * 1.5 + 1400
    assert got["ip_bytes"] == sent["ip_bytes"]  # loopback loses nothing at this rate


def test_cross_traffic_endpoints_cross_the_declared_link_direction() -> None:
    from ipaddress import IPv4Interface

    from traffic.crossload import endpoints

    topo = small()
    pids = {"trunk/T1": 11, "trunk/T1/rev": 22, "dc/DC1/down": 11, "dc/DC2/down": 22}
    net = SimpleNamespace(
        plan=SimpleNamespace(trunks={"T1": (IPv4Interface("172.30.0.1/30"), IPv4Interface("172.30.0.2/30"))},
                             router={"DC1": IPv4Interface("10.1.0.1/16"), "DC2": IPv4Interface("10.2.0.1/16")}),
        links=lambda: {k: SimpleNamespace(pid=v) for k, v in pids.items()},
        host=lambda ident: SimpleNamespace(pid={"dc1-r1-s1": 101, "dc1-r2-s1": 102, "dc2-r3-s1": 201}[ident]),
        ip=lambda ident: {"dc1-r1-s1": "10.1.1.2", "dc1-r2-s1": "10.1.2.2", "dc2-r3-s1": "10.2.1.2"}[ident])
    assert endpoints("trunk/T1", net, topo) == (11, "172.30.0.1", 22, "172.30.0.2")  # start router -> end router
    assert endpoints("trunk/T1/rev", net, topo) == (22, "172.30.0.2", 11, "172.30.0.1")
    assert endpoints("slave/dc1-r1-s1/up", net, topo) == (101, "10.1.1.2", 11, "10.1.0.1")  # host -> its router
    assert endpoints("rack/R2/down", net, topo) == (11, "10.1.0.1", 102, "10.1.2.2")  # router -> a host of R2
    assert endpoints("dc/DC2/up", net, topo) == (201, "10.2.1.2", 22, "10.2.0.1")
