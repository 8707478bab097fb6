"""Failure counting for resources (§0089-0091, FIG. 4D): attempts, failures, state with hysteresis.

A resource (slave, rack, datacenter, trunk, or a slave's copy of one file) is
taken out of service when its failure count reaches a threshold that also
weighs its attempts (§0091: a resource with many more successes stays in
service), and comes back only when decay has pulled the failure count below a
lower recovery threshold, which gives a failed device time to be reset or
replaced (§0090).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class HealthConfig:
    failure_threshold: int = 50
    recovery_threshold: int = 25
    failure_ratio: float = 0.2  # failures must also be at least this share of attempts
    decay: Literal["percent", "fixed"] = "percent"
    decay_percent: float = 0.10  # percent mode: each non-zero count loses 10 %, rounded down
    decay_fixed_failures: int = 1  # fixed mode: amounts subtracted per time unit
    decay_fixed_attempts: int = 5
    time_unit: float = 60.0  # seconds between decays

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not 0 <= self.recovery_threshold <= self.failure_threshold:
            raise ValueError("recovery_threshold must be between 0 and failure_threshold")
        if not 0 <= self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in [0, 1]")
        if self.decay not in ("percent", "fixed"):
            raise ValueError(f"unknown decay mode {self.decay!r}")
        if not 0 < self.decay_percent <= 1:
            raise ValueError("decay_percent must be in (0, 1]")
        if self.decay_fixed_failures < 0 or self.decay_fixed_attempts < 0:
            raise ValueError("fixed decay amounts must be >= 0")
        if self.time_unit <= 0:
            raise ValueError("time_unit must be positive")

    @property
    def keep_fraction(self) -> tuple[int, int]:
        """1 - decay_percent as an exact (numerator, denominator), so 10 % off 50 is exactly 45."""
        return _keep(self.decay_percent)


@lru_cache(maxsize=16)
def _keep(percent: float) -> tuple[int, int]:
    keep = 1 - Fraction(str(percent))
    return keep.numerator, keep.denominator


DEFAULT_HEALTH = HealthConfig()


@dataclass(slots=True)
class Health:
    """One row of the fileset state table: State, Attempts, Failure Count."""

    config: HealthConfig = DEFAULT_HEALTH
    failure_count: int = 0
    attempts: int = 0
    functioning: bool = True

    @property
    def state(self) -> int:
        """FIG. 4D's State column: 1 functioning, 0 not."""
        return 1 if self.functioning else 0

    def record_attempt(self) -> None:
        self.attempts += 1
        self._update()

    def record_failure(self) -> None:
        self.failure_count += 1
        self._update()

    def decay(self) -> None:
        """One time unit of decay (§0090); counts never go below zero."""
        c = self.config
        if c.decay == "percent":
            num, den = c.keep_fraction
            self.failure_count = self.failure_count * num // den
            self.attempts = self.attempts * num // den
        else:
            self.failure_count = max(0, self.failure_count - c.decay_fixed_failures)
            self.attempts = max(0, self.attempts - c.decay_fixed_attempts)
        self._update()

    @property
    def idle(self) -> bool:
        """Nothing to remember: the row can be dropped without changing any decision."""
        return self.functioning and self.failure_count == 0 and self.attempts == 0

    def _update(self) -> None:
        c = self.config
        if self.functioning:
            if self.failure_count >= c.failure_threshold and self.failure_count >= c.failure_ratio * self.attempts:
                self.functioning = False
        elif self.failure_count < c.recovery_threshold:
            self.functioning = True


@dataclass
class HealthTable(Generic[K]):
    """Health rows keyed by resource id, decayed once per elapsed time unit.

    Rows with nothing to remember are dropped, so the table stays as small as
    the set of resources with recent activity; ``failed`` is kept up to date
    so "is anything on this path down?" costs nothing while nothing is.
    """

    config: HealthConfig = DEFAULT_HEALTH
    start: float = 0.0
    rows: dict[K, Health] = field(default_factory=dict)
    failed: set[K] = field(default_factory=set)
    changes: list[tuple[K, bool]] = field(default_factory=list)  # (key, functioning) since the owner drained it

    def __post_init__(self) -> None:
        self._last_decay = self.start

    def get(self, key: K) -> Health:
        """The row for ``key`` (a fresh functioning one when unknown; not stored)."""
        row = self.rows.get(key)
        return row if row is not None else Health(self.config)

    def functioning(self, key: K) -> bool:
        return key not in self.failed

    def record_attempt(self, key: K) -> None:
        self._row(key).record_attempt()

    def record_failure(self, key: K) -> None:
        row = self._row(key)
        row.record_failure()
        if not row.functioning and key not in self.failed:
            self.failed.add(key)
            self.changes.append((key, False))

    def decay(self) -> None:
        """Apply one time unit of decay to every row."""
        drop: list[K] = []
        for key, row in self.rows.items():
            row.decay()
            if row.functioning:
                if key in self.failed:
                    self.failed.discard(key)
                    self.changes.append((key, True))
                if row.idle:
                    drop.append(key)
        for key in drop:
            del self.rows[key]

    def decay_due(self, now: float) -> int:
        """Apply one decay per whole time unit elapsed since the last one; returns how many."""
        unit = self.config.time_unit
        n = int((now - self._last_decay) // unit)
        if n <= 0:
            return 0
        self._last_decay += n * unit
        for _ in range(min(n, 10_000)):  # a long pause: enough decays to bring any count to zero
            if not self.rows:
                break
            self.decay()
        return n

    def __iter__(self) -> Iterator[K]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _row(self, key: K) -> Health:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Health(self.config)
        return row
