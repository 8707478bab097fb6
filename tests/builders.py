"""Small topologies built in code, for core tests that must not depend on YAML parsing."""

from __future__ import annotations

from scaledist.topology import (
    Datacenter,
    FilesetSpec,
    GeneratorSpec,
    MasterSpec,
    Placement,
    Priority,
    Rack,
    Slave,
    Topology,
    Trunk,
)

MB = 10**6

DEFAULT_PRIORITIES = tuple(Priority(f"P{i}", i, float(i)) for i in range(1, 6))


def make_topology(
    dcs: dict[str, dict[str, int]] | None = None,
    trunks: list[tuple[str, str, str, float, float, float]] | None = None,
    *,
    slave_bw: float = 100 * MB,
    rack_bw: float = 300 * MB,
    dc_bw: float = 500 * MB,
    filesets: dict[str, str] | None = None,
    priorities: tuple[Priority, ...] = DEFAULT_PRIORITIES,
    fileset_file_priority: str = "P5",
    block_size: int = 64 * MB,
    epoch: float = 2.0,
) -> Topology:
    """dcs: {dc: {rack: number of slaves}}; trunks: (id, start, end, bw, reverse bw, latency s).

    Slaves are named '<rack>-s<i>' and need every fileset; one master in the first
    rack owns all filesets; one generator sits on the first slave.
    """
    dcs = dcs or {"DC1": {"R1": 2, "R2": 2}, "DC2": {"R3": 2}}
    trunks = trunks if trunks is not None else [("T1", "DC1", "DC2", 25 * MB, 1 * MB, 0.1)]
    filesets = filesets or {"news": "P3"}
    datacenters = {d: Datacenter(d, dc_bw, dc_bw) for d in dcs}
    racks = {r: Rack(r, d, rack_bw, rack_bw) for d, rs in dcs.items() for r in rs}
    slaves = {
        f"{r}-s{i}": Slave(f"{r}-s{i}", r, d, slave_bw, slave_bw, tuple(filesets))
        for d, rs in dcs.items()
        for r, n in rs.items()
        for i in range(1, n + 1)
    }
    first_rack = next(iter(racks))
    first_slave = next(iter(slaves))
    return Topology(
        name="built",
        datacenters=datacenters,
        racks=racks,
        slaves=slaves,
        trunks={t[0]: Trunk(*t) for t in trunks},
        resource_manager=Placement("rm", first_rack),
        masters={"M1": MasterSpec("M1", first_rack, tuple(filesets))},
        generators={"G1": GeneratorSpec("G1", first_slave, tuple(filesets))},
        filesets={f: FilesetSpec(f, p, "M1") for f, p in filesets.items()},
        priorities=priorities,
        fileset_file_priority=fileset_file_priority,
        block_size=block_size,
        epoch=epoch,
    )


def patent_fig1() -> Topology:
    """FIG. 1 / FIG. 5C: four datacenters and the six trunks, two racks each, two slaves a rack."""
    return make_topology(
        {f"DC{d}": {f"R{d}{r}": 2 for r in (1, 2)} for d in (1, 2, 3, 4)},
        [
            ("T1", "DC1", "DC2", 25 * MB, 1 * MB, 0.100),
            ("T2N", "DC1", "DC3", 50 * MB, 1 * MB, 0.100),
            ("T2S", "DC3", "DC1", 100 * MB, 1 * MB, 0.050),
            ("T3W", "DC3", "DC4", 30 * MB, 1 * MB, 0.045),
            ("T3E", "DC2", "DC4", 30 * MB, 1 * MB, 0.015),
            ("T4", "DC2", "DC3", 30 * MB, 1 * MB, 0.035),
        ],
    )
