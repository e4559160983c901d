"""CPython's cyclic garbage collector kept off the cache's objects.

The operator holds the cluster in memory: every workload, pod and node as parsed JSON, a million
small dicts and lists at a few thousand workloads and their pods. The cyclic collector examines
every container that survives a young collection again in the next generation's collections, and
scans the whole heap whenever the survivors have grown by a quarter. A burst of watch events and
write answers did that every second or two, a full scan 0.2-0.35 s with the event loop stopped,
and the young collections as much again: a third or more of the operator's CPU in the live burst
of ``benchmarks/e2e.py`` (measured with ``gc.callbacks`` timings, 2026-12-07). Parsed JSON holds
no reference cycles, so reference counting frees a cached object as soon as the cache lets go of
it: examining it again and again finds nothing.

So, while the operator runs (``HeapKeeper.install``), what survives a collection is frozen
(``gc.freeze``: out of the collector's sight, still freed by reference counting): each object is
examined once, by the young collection after its allocation, and garbage that forms a cycle
while young is found by it as before. A cycle that becomes garbage only later (an object kept a
while, then dropped along with an exception's traceback, say: about 700 objects after 4,000
admissions) waits for ``full_scan``, which thaws everything into one full collection. The runtime
calls it at start-up and at every resync, a moment that already re-lists the cluster and is
followed by a whole cycle, so a full collection of a big cache (a pause that grows with it)
never lands in the cycle of an ordinary event.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


class HeapKeeper:
    def __init__(self) -> None:
        self.freezes = 0  # collections whose survivors were frozen (tests, logs)
        self.full_scans = 0
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> None:
        """From now on (in this process) until ``uninstall``; the heap as it is now (the seeded
        cache, at start-up) is scanned once and frozen."""
        if self._installed:
            return
        self._installed = True
        gc.callbacks.append(self._on_collection)
        self.full_scan()

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        gc.callbacks.remove(self._on_collection)
        gc.unfreeze()

    def full_scan(self) -> None:
        """Everything thawed and collected once (what survives frozen again); nothing when not installed."""
        if not self._installed:
            return
        started = time.monotonic()
        gc.unfreeze()
        gc.collect()  # _on_collection freezes what survives
        self.full_scans += 1
        logger.info("Full garbage collection: %.3fs, %d objects kept out of later collections",
                    time.monotonic() - started, gc.get_freeze_count())

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            gc.freeze()  # what survived this collection: never examined again until the next full scan
            self.freezes += 1
