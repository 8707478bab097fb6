"""Epoch arithmetic and the per-link allocation of FIG. 9 (patent §0117, §0150-0153).

An epoch is a fixed interval (``Topology.epoch``, 2 s by default, §0117) for which
the resource manager has divided every link's bytes among priorities. Epoch
``i`` covers ``[start + i * length, start + (i + 1) * length)``.

At the start of each epoch a link's total bytes (capacity x epoch length, §0119)
are split among the priorities that were *requested* on it in the previous epoch,
in proportion to their weights (§0150: P2 weight 2 and P3 weight 3 give
2/(2+3) of 1000 MB = 400 MB and 600 MB).

The patent leaves open a link that saw no request in the previous epoch. Our
rule: its whole epoch goes to one ``OPEN`` pool that every priority draws from
first come first served. A first request on an idle link is therefore never
starved, and the flags it sets give weighted pools from the next epoch on.

Byte counts are integers; the split uses the largest-remainder method so the
pools of a link always add up to exactly its total (no byte is created or lost
to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scaledist.topology import Priority

OPEN = "open"
"""Name of the pool a link gets when no priority was requested on it in the previous epoch."""


def epoch_index(now: float, start: float, length: float) -> int:
    """Index of the epoch containing ``now``; consistent with :func:`epoch_start` despite float rounding."""
    i = math.floor((now - start) / length)
    if start + (i + 1) * length <= now:
        i += 1
    elif start + i * length > now:
        i -= 1
    return i


def epoch_start(index: int, start: float, length: float) -> float:
    """Time at which epoch ``index`` begins."""
    return start + index * length


def epoch_total(capacity: float, length: float) -> int:
    """Bytes a link can carry in one epoch (§0119: bandwidth x epoch length), rounded down."""
    return max(0, int(capacity * length))


def allocate(total: int, priorities: Sequence[Priority]) -> dict[str, int]:
    """Split ``total`` bytes among ``priorities`` by weight (FIG. 9 step 904).

    No priorities -> everything in the ``OPEN`` pool (our rule for an idle link).
    If every weight is zero the split is equal, so a flagged priority always gets a share.
    The result sums to ``total`` exactly: floors first, then the leftover bytes go one
    each to the largest fractional parts (ties: higher level first).
    """
    if total < 0:
        raise ValueError(f"total bytes must be >= 0, got {total}")
    if not priorities:
        return {OPEN: total}
    weights = [max(0.0, float(p.weight)) for p in priorities]
    wsum = sum(weights)
    if wsum <= 0:
        weights = [1.0] * len(priorities)
        wsum = float(len(priorities))
    exact = [total * w / wsum for w in weights]
    shares = [int(x) for x in exact]
    left = total - sum(shares)
    order = sorted(range(len(priorities)), key=lambda i: (-(exact[i] - shares[i]), -priorities[i].level))
    for i in order[: max(0, left)]:
        shares[i] += 1
    return {p.name: s for p, s in zip(priorities, shares, strict=True)}
