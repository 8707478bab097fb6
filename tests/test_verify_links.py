"""verify-links: the measurement plan (pure), and the real thing on topologies/small.yaml (root only).

At scale 1/16 every link of small.yaml is between 1 Mbit/s (trunk reverse directions) and 50 Mbit/s (racks,
datacenters); the issue's targets are every link's bandwidth within 5 % and every trunk's one-way latency
within 2 ms of the topology.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from scaledist.topology_schema import load_topology
from testbed.verify import LIFT_BELOW, candidates, endpoints, intra_dc_path, schedule
from tests.needs import why_no_testbed

SMALL = Path(__file__).resolve().parent.parent / "topologies" / "small.yaml"
SCALE = 1 / 16
LAST_LINE = re.compile(r"^max_bw_error_pct=(\d+\.\d\d) max_latency_error_ms=(\d+\.\d\d)$")


def _root_reason() -> str | None:
    return why_no_testbed("netfilterqueue")


@pytest.mark.parametrize("name", ["small.yaml", "patent-fig1.yaml"])
def test_plan_measures_every_link_once_isolated_and_independent(name):
    topo = load_topology(SMALL.parent / name).scaled(SCALE)
    rounds = schedule(topo)
    measured = [m.target for r in rounds for m in r]
    assert sorted(measured) == sorted(topo.links)  # every direction, exactly once
    caps = {k: v.capacity for k, v in topo.links.items()}
    for rnd in rounds:
        seen: set[str] = set()
        for m in rnd:
            assert not (m.busy & seen), f"{m.target} shares a link with another measurement of its round"
            seen |= m.busy
            assert m.target in m.data
            lifted = dict(m.lifts)
            # with the lifts applied, the target is the only link on the data path near its rate
            for x in m.data:
                if x != m.target:
                    assert lifted.get(x, caps[x]) >= LIFT_BELOW * caps[m.target]
    assert len(rounds) <= (8 if name == "small.yaml" else 14)


def test_paths_follow_the_physical_layout():
    topo = load_topology(SMALL)
    eps = {e.name: e for e in endpoints(topo)}
    assert intra_dc_path(eps["dc1-r1-s1"], eps["M1"]) == ("slave/dc1-r1-s1/up",)  # masters' ports are unshaped
    assert intra_dc_path(eps["dc1-r2-s1"], eps["dc1-r1-s2"]) == (
        "slave/dc1-r2-s1/up", "rack/R2/up", "rack/R1/down", "slave/dc1-r1-s2/down")
    assert intra_dc_path(eps["router:DC2"], eps["dc2-r3-s1"]) == (
        "dc/DC2/down", "rack/R3/down", "slave/dc2-r3-s1/down")
    assert intra_dc_path(eps["dc1-r1-s1"], eps["dc2-r3-s1"]) is None  # trunks are measured router to router
    (t,) = candidates(topo, "trunk/T4/rev", list(eps.values()))
    assert (t.src.name, t.dst.name, t.data, t.ack) == ("router:DC1", "router:DC2", ("trunk/T4/rev",), ("trunk/T4",))


def _our_leftovers(tag: str) -> list[str]:
    from testbed.cleanup import NAME_RE, REGISTRY

    out = [n for n in os.listdir("/sys/class/net") if (m := NAME_RE.match(n)) and m.group(1) == tag]
    if (REGISTRY / f"{tag}.json").exists():
        out.append(f"registry {tag}")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    out += [ln for ln in ps.splitlines() if "testbed.verify tcp-" in ln or "testbed.verify udp-" in ln
            or f"mininet:sd{tag}" in ln]
    return out


def test_verify_links_small_meets_the_targets():
    reason = _root_reason()
    if reason:
        pytest.skip(reason)
    from testbed.verify import verify_links

    topo = load_topology(SMALL).scaled(SCALE)
    rates = [link.capacity * 8 for link in topo.links.values()]
    assert min(rates) >= 1e6 and max(rates) <= 50e6  # the scale the issue asks for

    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    result = verify_links(SMALL, scale=SCALE, log=log)

    assert {r.link for r in result.rows} == set(topo.links)
    for r in result.rows:
        assert r.measured is not None and r.error_pct is not None, r
        if r.link.startswith("trunk/"):
            assert r.latency_measured is not None, r
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    assert lines[-1] == result.last_line()
    assert float(m.group(1)) == pytest.approx(result.max_bw_error_pct, abs=0.005)
    assert float(m.group(2)) == pytest.approx(result.max_latency_error_ms, abs=0.005)
    assert result.max_bw_error_pct <= 5.0
    assert result.max_latency_error_ms <= 2.0

    tag = next(t.group(1) for ln in lines if (t := re.match(r"network (\w\w):", ln)))
    assert _our_leftovers(tag) == []
