"""Fault injection for reliability tests: make a share of writes fail, or cut watch streams.

A ``FaultPlan`` is plain data read on every request, so a test may change it while the server
runs (also from another thread). Choices are drawn from a seeded generator: the same plan and
the same request sequence fail the same requests.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from kubeapi_emulator.errors import ApiError

WRITE_ACTIONS = frozenset({"CREATE", "UPDATE", "DELETE"})

_REASONS = {
    409: ("Conflict", "Operation cannot be fulfilled: the object has been modified (injected fault)"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later "
                             "(injected fault)"),
    500: ("InternalError", "an error on the server has prevented the request from succeeding (injected fault)"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request (injected fault)"),
    504: ("Timeout", "the server was unable to return a response in the time allotted (injected fault)"),
}


@dataclass
class FaultPlan:
    """What to break, and how often.

    - ``write_failure_rate``: share (0..1) of writes (create, update/patch, delete) answered with
      an error instead of being applied; the code is drawn from ``write_failure_codes``.
    - ``fail_next_writes``: this many next writes fail for sure (counts down), then the rate applies.
    - ``resources``: if not empty, only writes to these plurals (e.g. ``{"gpuworkloads"}``) fail.
    - ``cut_watches_after``: every watch stream ends after sending this many events (clients re-watch).
    - ``injected``: how many faults were injected so far (read it in assertions).
    """
    write_failure_rate: float = 0.0
    write_failure_codes: tuple[int, ...] = (500,)
    fail_next_writes: int = 0
    resources: set[str] = field(default_factory=set)
    cut_watches_after: int | None = None
    seed: int = 0
    injected: int = 0
    _random: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def reset(self) -> None:
        """Stop injecting (the counter of injected faults is kept)."""
        with self._lock:
            self.write_failure_rate = 0.0
            self.fail_next_writes = 0
            self.resources = set()
            self.cut_watches_after = None

    def fault_for(self, action: str | None, plural: str | None) -> ApiError | None:
        """The error to answer instead of serving this request, or None to serve it."""
        if action not in WRITE_ACTIONS or (self.resources and plural not in self.resources):
            return None
        with self._lock:
            if self.fail_next_writes > 0:
                self.fail_next_writes -= 1
            elif not (self.write_failure_rate > 0 and self._random.random() < self.write_failure_rate):
                return None
            self.injected += 1
            code = self._random.choice(self.write_failure_codes or (500,))
        reason, message = _REASONS.get(code, ("InternalError", f"injected fault {code}"))
        details: dict[str, Any] = {"retryAfterSeconds": 1} if code in (429, 503) else {}
        return ApiError(code, reason, message, details)
