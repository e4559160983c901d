"""What the reliability suite did, in numbers, for ``make chaos`` (see conftest.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings

FIGURES: Counter[str] = Counter()

WORKLOADS_DRIVEN = "workloads driven"
RESTARTS_SURVIVED = "restarts survived"
MALFORMED_INPUTS = "malformed inputs tried"
VIOLATIONS = "violations found"
FAULT_PREFIX = "faults injected: "


def count(name: str, amount: int = 1) -> None:
    FIGURES[name] += amount


def fault(kind: str, amount: int = 1) -> None:
    FIGURES[FAULT_PREFIX + kind] += amount


def fuzz_settings(examples: int) -> settings:
    """``examples`` in the default run (derandomized), five times more under the chaos profile."""
    scale = max(1, settings.default.max_examples // 100)
    return settings(
        max_examples=examples * scale,
        derandomize=scale == 1,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
