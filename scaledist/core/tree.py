"""Tree propagation inside a datacenter (§0154).

The slaves of one datacenter that need one fileset are sorted by how much of
the fileset they hold, most first, and laid out as a k-ary tree: the root holds
the most, the leaves the least. A slave's potential sources are its parent and
slaves on its own level, so files flow down the tree level by level and the
sending load is spread over many slaves instead of the few that hold the most.
"""

from __future__ import annotations

from collections.abc import Mapping


class Tree:
    """One snapshot of the tree; the master rebuilds it periodically as sizes change."""

    __slots__ = ("_index", "_level_of", "_levels", "fanout", "order")

    def __init__(self, sizes: Mapping[str, int], fanout: int = 2) -> None:
        if fanout < 1:
            raise ValueError("fanout must be >= 1")
        self.fanout = fanout
        # most bytes first; equal sizes by slave id so every master builds the same tree
        self.order: tuple[str, ...] = tuple(sorted(sizes, key=lambda s: (-sizes[s], s)))
        self._index = {s: i for i, s in enumerate(self.order)}
        levels: list[tuple[int, int]] = []  # [start, end) of each level
        start, width = 0, 1
        while start < len(self.order):
            end = min(len(self.order), start + width)
            levels.append((start, end))
            start, width = end, width * fanout
        self._levels = levels
        self._level_of: list[int] = [0] * len(self.order)
        for n, (a, b) in enumerate(levels):
            for i in range(a, b):
                self._level_of[i] = n

    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, slave: object) -> bool:
        return slave in self._index

    def parent(self, slave: str) -> str | None:
        i = self._index.get(slave)
        if not i:  # unknown or the root
            return None
        return self.order[(i - 1) // self.fanout]

    def children(self, slave: str) -> tuple[str, ...]:
        i = self._index.get(slave)
        if i is None:
            return ()
        a = i * self.fanout + 1
        return self.order[a : a + self.fanout]

    def level_of(self, slave: str) -> int | None:
        i = self._index.get(slave)
        return None if i is None else self._level_of[i]

    def level(self, n: int) -> tuple[str, ...]:
        if not 0 <= n < len(self._levels):
            return ()
        a, b = self._levels[n]
        return self.order[a:b]

    def tree_sources(self, slave: str, max_peers: int | None = None) -> tuple[str, ...]:
        """The parent, then the other slaves of the same level, nearest in the ordering first.

        ``max_peers`` bounds the level peers returned: deep levels hold thousands of slaves
        and the master only needs a few candidates per request.
        """
        i = self._index.get(slave)
        if i is None:
            return ()
        out: list[str] = []
        if i > 0:
            out.append(self.order[(i - 1) // self.fanout])
        a, b = self._levels[self._level_of[i]]
        limit = (b - a - 1) if max_peers is None else min(max_peers, b - a - 1)
        # alternate outward from i: i-1, i+1, i-2, i+2, ... (neighbours hold similar amounts)
        step = 1
        while len(out) - (1 if i > 0 else 0) < limit:
            lo, hi = i - step, i + step
            if lo >= a:
                out.append(self.order[lo])
                if len(out) - (1 if i > 0 else 0) >= limit:
                    break
            if hi < b:
                out.append(self.order[hi])
            if lo < a and hi >= b:
                break
            step += 1
        return tuple(out)
