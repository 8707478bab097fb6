"""Ranking of potential sources for one block (FIG. 8, §0143-0149).

Each candidate gets four scores, lower is better, and a weighted composite:

- distance (§0143): network distance from the source to the destination;
- entropy (§0144): 1 when the source is the one the destination last copied
  from, so copies spread over many sources;
- idleness (§0145-0146): the source's current outbound transmissions, plus a
  large penalty above a threshold so an overburdened source is practically
  never chosen;
- data (§0147): blocks the source holds beyond the destination, so a source
  with less (but enough) is preferred and sources with more stay free for
  slaves that need the later blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from scaledist.topology import Topology


@dataclass(frozen=True)
class RankWeights:
    distance: float = 1.0
    entropy: float = 2.0
    idleness: float = 1.0
    data: float = 0.5
    overload_threshold: int = 4  # outbound count above which a source is penalised (§0146)
    overload_penalty: float = 1000.0


class Candidate(NamedTuple):
    """A potential source: the bytes of the needed file version it holds, and what the destination holds."""

    slave: str
    source_bytes: int
    destination_bytes: int = 0


class Scores(NamedTuple):
    distance: float
    entropy: float
    idleness: float
    data: float
    composite: float


DistanceFn = Callable[[str, str], float | None]


def score(
    topology: Topology,
    destination: str,
    candidate: Candidate,
    last_copied_from: str | None,
    outbound: Mapping[str, int],
    weights: RankWeights = RankWeights(),
    *,
    distance: DistanceFn | None = None,
) -> Scores | None:
    """The four FIG. 8 scores and the composite for one candidate; None when there is no path."""
    d = (distance or topology.distance)(candidate.slave, destination)
    if d is None:
        return None
    entropy = 1.0 if candidate.slave == last_copied_from else 0.0
    out = outbound.get(candidate.slave, 0)
    idle = float(out) + (weights.overload_penalty if out > weights.overload_threshold else 0.0)
    data = (candidate.source_bytes - candidate.destination_bytes) / topology.block_size
    composite = weights.distance * d + weights.entropy * entropy + weights.idleness * idle + weights.data * data
    return Scores(d, entropy, idle, data, composite)


def rank_sources(
    topology: Topology,
    destination: str,
    candidates: Iterable[Candidate],
    last_copied_from: str | None,
    outbound: Mapping[str, int],
    weights: RankWeights = RankWeights(),
    *,
    distance: DistanceFn | None = None,
) -> list[str]:
    """Candidate slave ids best first (FIG. 8 step 822); ties by slave id, unreachable ones left out.

    ``distance`` may replace ``topology.distance`` with a cached equivalent (the master caches per rack pair).
    """
    dist = distance or topology.distance
    w_d, w_e, w_i, w_b = weights.distance, weights.entropy, weights.idleness, weights.data
    threshold, penalty = weights.overload_threshold, weights.overload_penalty
    block = topology.block_size
    scored: list[tuple[float, str]] = []
    seen: set[str] = set()
    for c in candidates:
        src = c.slave
        if src == destination or src in seen:
            continue
        seen.add(src)
        d = dist(src, destination)
        if d is None:
            continue
        out = outbound.get(src, 0)
        composite = w_d * d + w_i * (out + (penalty if out > threshold else 0.0))
        if src == last_copied_from:
            composite += w_e
        composite += w_b * (c.source_bytes - c.destination_bytes) / block
        scored.append((composite, src))
    scored.sort()
    return [s for _, s in scored]
