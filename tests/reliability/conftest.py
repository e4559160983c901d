"""Reliability suite set-up: hypothesis profiles and the figures `make chaos` prints.

Profiles: the default run keeps to ~2,000 fuzzed objects, derandomized so CI is deterministic;
``--hypothesis-profile=chaos`` (what ``python -m tests.reliability.chaos`` passes) multiplies every
budget by five. Tests scale their own ``max_examples`` with ``fuzz_settings``.

Figures: tests add to ``FIGURES`` (workloads driven, faults injected by kind, restarts
survived, malformed inputs tried, violations found); when ``GPUADMIT_CHAOS_FIGURES`` names a
file, they are written there as JSON at the end of the session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import settings

from tests.reliability import figures

settings.register_profile("chaos", max_examples=500, derandomize=False, deadline=None)
FIGURES_ENV = "GPUADMIT_CHAOS_FIGURES"


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001 - pytest's hook signature
    path = os.environ.get(FIGURES_ENV)
    if path:
        Path(path).write_text(json.dumps(figures.FIGURES, indent=2, sort_keys=True))
