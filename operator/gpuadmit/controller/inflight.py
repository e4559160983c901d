"""Decisions whose status writes are on their way, assumed by the cycle that overlaps them.

The loop pipelines its cycles (controller.loop): the next cycle's snapshot and decision run
while the previous cycle's status writes are still in flight, so the API server is kept busy
while the operator thinks and the operator thinks while the server writes. For that cycle not to
hand out GPUs twice, it assumes what is in flight (Kueue's "assume" step, one level further
than the cache's: the cache assumes a write once its answer is in):

- an admission in flight counts as holding its placement: the workload's object is seen with
  phase ``Admitted`` and the decided ``status.placement`` until the answer replaces it;
- whatever that cycle decides for a workload with a write in flight is not applied: the next
  cycle, on the answered object, decides it again (nothing is decided twice, and a decision is
  never written onto a version it was not computed from).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuadmit.controller.cache import object_key
from gpuadmit.core.model import PENDING_PHASES, Action, Decision
from gpuadmit.core.timefmt import format_rfc3339

ASSUMED_SUFFIX = "+assumed"  # on the resourceVersion of an assumed copy: never parsed as the real one


class InFlight:
    def __init__(self) -> None:
        self._decisions: dict[str, Decision] = {}

    def add(self, decisions: Iterable[Decision]) -> None:
        self._decisions.update((decision.key, decision) for decision in decisions)

    def done(self, key: str) -> None:
        self._decisions.pop(key, None)

    def clear(self) -> None:
        self._decisions.clear()

    def keys(self) -> frozenset[str]:
        return frozenset(self._decisions)

    def __len__(self) -> int:
        return len(self._decisions)

    def assumed_objects(self, workloads: Mapping[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
        """The workloads a cycle should see otherwise than cached, by key: each admission in
        flight whose answer is not in, already holding."""
        assumed: dict[str, dict[str, Any]] = {}
        for key, decision in self._decisions.items():
            obj = workloads.get(key) if decision.action == Action.ADMIT else None
            if obj is not None and (seen := self._assumed(obj, now)) is not obj:
                assumed[key] = seen
        return assumed

    def _assumed(self, obj: dict[str, Any], now: float) -> dict[str, Any]:
        decision = self._decisions.get(object_key(obj))
        status = obj.get("status")
        phase = status.get("phase") if isinstance(status, Mapping) else None
        if decision is None or decision.action != Action.ADMIT or phase not in PENDING_PHASES:
            return obj  # nothing assumed, or the answer is in: the cached object says it all
        metadata = dict(obj.get("metadata") or {})
        metadata["resourceVersion"] = f"{metadata.get('resourceVersion', '')}{ASSUMED_SUFFIX}"
        placement = [{"node": e.node, "gpus": e.gpus, "replicas": e.replicas} for e in decision.placement]
        return {**obj, "metadata": metadata,
                "status": {**(status if isinstance(status, Mapping) else {}), "phase": "Admitted", "placement": placement,
                                                                                "admittedAt": format_rfc3339(now)}}
