"""Queue and reject decisions whose status already says them, skipped without rebuilding it.

A whole cycle (the start, each resync: controller.loop) decides the whole queue again, and
building a workload's desired status to find that nothing changed costs about as much as the
decision: at 20,000 workloads with 4,000 queued, a quarter of a second per cycle. A decision is
settled for a workload when the last cycle found (or wrote) its status saying exactly that and the
workload's object has not changed since (same resourceVersion): the status as shown (queue
positions banded past the head, controller.queueview) would be the same, so there is nothing to
build or write. Admissions are never skipped (they are written once, then the workload holds).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from gpuadmit.controller.queueview import queued_message, shown_position
from gpuadmit.core.model import Decision


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class SettledStatuses:
    def __init__(self, exact_head: int) -> None:
        self.exact_head = exact_head
        self._settled: dict[str, tuple[str, tuple[Any, ...]]] = {}  # key -> (resourceVersion, what it says)

    def _says(self, decision: Decision) -> tuple[Any, ...]:
        """What of the decision reaches the status (the position as shown)."""
        text, message = None, decision.message
        if decision.queue_position is not None:
            shown = shown_position(decision.queue_position, self.exact_head)
            text, message = shown.text, queued_message(decision.message, decision.queue_position, shown)
        return (decision.action, decision.reason, message, decision.workload_class, decision.class_reason,
                decision.margin_per_gpu_hour, decision.field, text)

    def unchanged(self, decision: Decision, workload: Mapping[str, Any] | None) -> bool:
        held = self._settled.get(decision.key)
        return held is not None and workload is not None and held == (_version(workload), self._says(decision))

    def settle(self, decision: Decision, workload: Mapping[str, Any]) -> None:
        """The workload's status (this object version) says the decision."""
        self._settled[decision.key] = (_version(workload), self._says(decision))

    def forget(self, key: str) -> None:
        self._settled.pop(key, None)

    def keep_only(self, keys: Container[str]) -> None:
        self._settled = {key: held for key, held in self._settled.items() if key in keys}
