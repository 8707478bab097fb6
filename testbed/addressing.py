"""A deterministic address plan for the emulated network, derived from the topology alone.

The same topology always gets the same addresses, so a run's records, captures
and cluster file can be read without the network that produced them:

    datacenter d (1-based, file order)    10.d.0.0/16, one L2 segment (rack bridges + DC bridge)
    border router of d                    10.d.0.1/16
    host h (1-based) in rack r of d       10.d.r.(h+1)/16   (slaves in file order, then masters, then the RM)
    trunk k (0-based, sorted by id)       172.30.0.0/16 carved into /30s: start router .1, end router .2
    management network (control: management)  172.31.0.0/16, one bridge, hosts numbered in the order above

Trunks and the management network use 172.30/172.31 so they never overlap a
datacenter's /16, and stay out of 192.168/16, which hardware in the loop is
likely to bring along.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from scaledist.topology import Topology

__all__ = ["MAX_DCS", "MGMT_NET", "TRUNK_NET", "AddressPlan", "TestbedError", "plan"]

TRUNK_NET = IPv4Network("172.30.0.0/16")
MGMT_NET = IPv4Network("172.31.0.0/16")
MAX_DCS = 250
MAX_RACKS_PER_DC = 254
MAX_HOSTS_PER_RACK = 253


class TestbedError(RuntimeError):
    """The emulated network cannot be built or used as asked: one clear sentence and the fix."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class AddressPlan:
    dc_index: dict[str, int]  # dc id -> d
    dc_subnet: dict[str, IPv4Network]  # dc id -> 10.d.0.0/16
    router: dict[str, IPv4Interface]  # dc id -> 10.d.0.1/16
    hosts: dict[str, IPv4Interface]  # daemon host id (slave, master, resource manager) -> 10.d.r.x/16
    host_dc: dict[str, str]  # daemon host id -> dc id
    host_rack: dict[str, str]  # daemon host id -> rack id
    trunks: dict[str, tuple[IPv4Interface, IPv4Interface]]  # trunk id -> (start side, end side)
    mgmt: dict[str, IPv4Interface]  # daemon host id -> management address (empty without a management network)
    router_addresses: dict[str, str]  # every border-router address (DC side, trunk ends) -> its dc id

    def router_of(self, address: str) -> str | None:
        """The datacenter whose border router owns ``address`` (a DC side or a trunk end), or None."""
        return self.router_addresses.get(str(ipaddress.ip_address(address)))


def plan(topology: Topology) -> AddressPlan:
    """Addresses for every host, router side and trunk of ``topology`` (see the module docstring)."""
    if len(topology.datacenters) > MAX_DCS:
        raise TestbedError(
            f"{topology.source or topology.name}: {len(topology.datacenters)} datacenters, the address plan "
            f"holds {MAX_DCS}; split the topology or use the simulation for this size"
        )
    dc_index = {dc: i + 1 for i, dc in enumerate(topology.datacenters)}
    dc_subnet = {dc: IPv4Network(f"10.{d}.0.0/16") for dc, d in dc_index.items()}
    router = {dc: IPv4Interface(f"10.{d}.0.1/16") for dc, d in dc_index.items()}

    # who sits in which rack, in a fixed order
    members: dict[str, list[str]] = {r: [] for r in topology.racks}
    for s in topology.slaves.values():
        members[s.rack].append(s.id)
    for m in topology.masters.values():
        members[m.rack].append(m.id)
    members[topology.resource_manager.rack].append(topology.resource_manager.id)

    hosts: dict[str, IPv4Interface] = {}
    host_dc: dict[str, str] = {}
    host_rack: dict[str, str] = {}
    rack_no: dict[str, int] = {}
    for rack in topology.racks.values():
        r = rack_no[rack.dc] = rack_no.get(rack.dc, 0) + 1
        if r > MAX_RACKS_PER_DC:
            raise TestbedError(f"datacenter {rack.dc} has more than {MAX_RACKS_PER_DC} racks; the address plan "
                               f"gives each rack one /24 of 10.{dc_index[rack.dc]}.0.0/16")
        ids = members[rack.id]
        if len(ids) > MAX_HOSTS_PER_RACK:
            raise TestbedError(f"rack {rack.id} holds {len(ids)} hosts, the address plan holds "
                               f"{MAX_HOSTS_PER_RACK} per rack; split the rack")
        for h, ident in enumerate(ids, start=1):
            hosts[ident] = IPv4Interface(f"10.{dc_index[rack.dc]}.{r}.{h + 1}/16")
            host_dc[ident] = rack.dc
            host_rack[ident] = rack.id

    trunk_ids = sorted(topology.trunks)
    if len(trunk_ids) * 4 > TRUNK_NET.num_addresses:
        raise TestbedError(f"{len(trunk_ids)} trunks do not fit the trunk range {TRUNK_NET}")
    trunks: dict[str, tuple[IPv4Interface, IPv4Interface]] = {}
    base = int(TRUNK_NET.network_address)
    for k, t in enumerate(trunk_ids):
        a = ipaddress.IPv4Address(base + 4 * k + 1)
        trunks[t] = (IPv4Interface(f"{a}/30"), IPv4Interface(f"{a + 1}/30"))
    owners = {str(i.ip): dc for dc, i in router.items()}
    for t, (a_side, b_side) in trunks.items():
        owners[str(a_side.ip)] = topology.trunks[t].start
        owners[str(b_side.ip)] = topology.trunks[t].end

    mgmt: dict[str, IPv4Interface] = {}
    if topology.control == "management":
        mbase = int(MGMT_NET.network_address)
        order = sorted(hosts, key=lambda i: (int(hosts[i].ip), i))
        if len(order) + 2 > MGMT_NET.num_addresses:
            raise TestbedError(f"{len(order)} hosts do not fit the management network {MGMT_NET}")
        for n, ident in enumerate(order, start=1):
            mgmt[ident] = IPv4Interface(f"{ipaddress.IPv4Address(mbase + n)}/{MGMT_NET.prefixlen}")

    return AddressPlan(dc_index, dc_subnet, router, hosts, host_dc, host_rack, trunks, mgmt, owners)
