"""Failure counting, hysteresis and decay (§0089-0091)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaledist.core.health import Health, HealthConfig, HealthTable


def failed_health(failures: int = 50, attempts: int = 0, config: HealthConfig | None = None) -> Health:
    h = Health(config or HealthConfig())
    for _ in range(attempts):
        h.record_attempt()
    for _ in range(failures):
        h.record_failure()
    return h


def test_fifty_failures_fail_the_resource() -> None:
    h = failed_health(49)
    assert h.functioning and h.state == 1
    h.record_failure()
    assert not h.functioning and h.state == 0


def test_patent_decay_sequence_recovers_after_seventh_time_unit() -> None:
    """§0090: 10 % per time unit rounded down, back in service below 25."""
    h = failed_health(50)
    seen = [h.failure_count]
    states = [h.functioning]
    for _ in range(7):
        h.decay()
        seen.append(h.failure_count)
        states.append(h.functioning)
    assert seen == [50, 45, 40, 36, 32, 28, 25, 22]
    assert states == [False] * 7 + [True]


def test_hysteresis_between_recovery_and_failure_threshold() -> None:
    """At 30 failures a failed resource stays failed, a functioning one stays functioning."""
    h = failed_health(50)
    while h.failure_count > 30:
        h.decay()
    assert not h.functioning
    fresh = failed_health(30)
    assert fresh.functioning


def test_many_successes_keep_a_resource_in_service() -> None:
    """§0091: 60 failures out of 1000 attempts (6 %) stay under the 20 % ratio."""
    h = failed_health(60, attempts=1000)
    assert h.functioning
    worse = failed_health(60, attempts=250)  # 24 %
    assert not worse.functioning


def test_counts_never_negative_and_small_counts_reach_zero() -> None:
    h = failed_health(3, attempts=7)
    for _ in range(40):
        h.decay()
    assert (h.failure_count, h.attempts) == (0, 0)
    h.decay()
    assert (h.failure_count, h.attempts) == (0, 0)


def test_fixed_decay_mode() -> None:
    cfg = HealthConfig(decay="fixed")
    h = failed_health(50, attempts=12, config=cfg)
    h.decay()
    assert (h.failure_count, h.attempts) == (49, 7)
    h.decay()
    h.decay()
    assert (h.failure_count, h.attempts) == (47, 0)
    for _ in range(22):
        h.decay()
    assert h.failure_count == 25 and not h.functioning
    h.decay()
    assert h.failure_count == 24 and h.functioning


def test_percent_decay_is_exact_for_multiples_of_ten() -> None:
    """Integer arithmetic: 30 x 0.9 must be 27, not 26 from a float 26.999..."""
    for n in range(0, 2000, 10):
        h = failed_health(0, attempts=n)
        h.decay()
        assert h.attempts == n * 9 // 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recovery_threshold": 60},
        {"failure_threshold": 0},
        {"failure_ratio": 1.5},
        {"decay": "halflife"},
        {"decay_percent": 0.0},
        {"time_unit": 0.0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HealthConfig(**kwargs)


def test_table_decays_once_per_elapsed_time_unit() -> None:
    t: HealthTable[str] = HealthTable(HealthConfig(time_unit=60.0), start=100.0)
    for _ in range(50):
        t.record_failure("T1")
    assert not t.functioning("T1") and t.failed == {"T1"}
    assert t.decay_due(159.0) == 0
    assert t.get("T1").failure_count == 50
    assert t.decay_due(160.0) == 1
    assert t.get("T1").failure_count == 45
    assert t.decay_due(160.0 + 5 * 60 + 30) == 5  # 45 40 36 32 28 25
    assert t.get("T1").failure_count == 25 and not t.functioning("T1")
    assert t.decay_due(160.0 + 6 * 60) == 1  # the half unit left over counts toward this one
    assert t.get("T1").failure_count == 22 and t.functioning("T1") and not t.failed


def test_table_forgets_rows_with_nothing_to_remember() -> None:
    t: HealthTable[str] = HealthTable(HealthConfig(), start=0.0)
    t.record_attempt("S1")
    t.record_failure("S2")
    assert set(t) == {"S1", "S2"}
    t.decay()  # floor(1 x 0.9) = 0
    assert len(t) == 0
    assert t.functioning("S1") and t.get("S1").attempts == 0


def test_table_unknown_resource_is_functioning() -> None:
    t: HealthTable[tuple[str, str]] = HealthTable()
    assert t.functioning(("S9", "f"))
    assert t.get(("S9", "f")).state == 1
    assert len(t) == 0


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.sampled_from(["attempt", "failure", "decay"]), max_size=400),
    mode=st.sampled_from(["percent", "fixed"]),
)
def test_counts_never_negative_and_state_follows_the_thresholds(ops: list[str], mode: str) -> None:
    """Property: any mix of attempts, failures and decays keeps counts >= 0 and the state consistent."""
    cfg = HealthConfig(decay=mode)
    h = Health(cfg)
    for op in ops:
        was = h.functioning
        {"attempt": h.record_attempt, "failure": h.record_failure, "decay": h.decay}[op]()
        assert h.failure_count >= 0 and h.attempts >= 0
        if not h.functioning:
            assert h.failure_count >= cfg.recovery_threshold
        if was and not h.functioning:
            assert h.failure_count >= cfg.failure_threshold
        if not was and h.functioning:
            assert h.failure_count < cfg.recovery_threshold
