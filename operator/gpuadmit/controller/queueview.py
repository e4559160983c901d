"""Queue positions as a status shows them, and the exact queue on demand.

Why banded: an exact ``status.queuePosition`` on every queued workload means that one pod
finishing (one workload admitted from the head) moves every position behind it by one, and the
cycle writes one status per queued workload: the cost of an event was the queue's length in
writes. So a status carries the exact position only for the head of the queue (the first
``exact_head`` positions, ``gpuadmit run --exact-queue-positions``); beyond it, the band the
position falls in: 11-20, 21-30, ... 91-100, then 101-200, ... 901-1000, then 1001-2000, and so
on (a band is a tenth of the decade it starts). A one-step move then rewrites only the head and
the one workload at the lower edge of each band: about ``exact_head + 9`` writes per decade of
queue length, whatever its length.

What a queued status says (docs/api.md): ``queuePosition`` is the exact position in the head,
else the band's upper end (an upper bound: at most that many, itself included, are ahead);
``queuePositionApproximate`` is true for a band; ``queue`` is the text for people and for
`kubectl get gw` ("3" or "101-200"); the message's "(queue position ...)" note says the same.

The exact queue is served on demand from the last cycle's decisions (``QueueView``), as JSON on
the health server's ``GET /queue`` (``gpuadmit queue`` reads it), like Kueue's visibility API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpuadmit.core.engine.messages import queue_position_note
from gpuadmit.core.model import Action, CycleResult
from gpuadmit.core.timefmt import format_rfc3339

DEFAULT_EXACT_HEAD = 10
MAX_LIMIT = 100_000  # what one /queue answer lists at most


@dataclass(frozen=True, slots=True)
class ShownPosition:
    """A queue position as a status shows it."""

    value: int        # the exact position, or the upper end of its band
    text: str         # "3" or "101-200"
    approximate: bool


def shown_position(position: int, exact_head: int = DEFAULT_EXACT_HEAD) -> ShownPosition:
    """``position`` (1 = next) exactly within the head, else the band it lies in. Positions up to
    10 are their own band (1 wide) either way, so they are always exact."""
    if position <= exact_head:
        return ShownPosition(position, str(position), False)
    step = 10 ** (len(str(position - 1)) - 1)  # 11..100 -> 10, 101..1000 -> 100, ...
    if step == 1:
        return ShownPosition(position, str(position), False)
    low = max((position - 1) // step * step + 1, exact_head + 1)
    high = (position - 1) // step * step + step
    return ShownPosition(high, f"{low}-{high}", True)


def queued_message(message: str, position: int, shown: ShownPosition) -> str:
    """The engine's queue message with its position note as the status shows the position
    (unchanged when exact): the message must not change where the position does not."""
    note = queue_position_note(position)
    if not shown.approximate or not message.endswith(note):
        return message
    return message[: -len(note)] + queue_position_note(shown.text)


# -- the exact queue, on demand ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueEntry:
    namespace: str
    name: str
    position: int
    reason: str
    message: str
    workload_class: str | None
    margin_per_gpu_hour: float | None


@dataclass(frozen=True)
class QueueView:
    """The queue as the last cycle decided it, in position order."""

    entries: tuple[QueueEntry, ...]
    decided_at: float  # the cycle's clock (epoch seconds)
    cycle: int

    @classmethod
    def of(cls, result: CycleResult, decided_at: float, cycle: int) -> QueueView:
        queued = sorted((d for d in result.decisions if d.action == Action.QUEUE and d.queue_position is not None),
                        key=lambda d: d.queue_position or 0)
        return cls(tuple(QueueEntry(d.namespace, d.name, d.queue_position or 0, d.reason.value, d.message,
                                    d.workload_class, d.margin_per_gpu_hour) for d in queued), decided_at, cycle)

    def answer(self, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for ``GET /queue?namespace=NS&limit=N``: the exact positions in
        the whole queue and within the workload's namespace, in queue order."""
        unknown = sorted(set(query) - {"namespace", "limit"})
        if unknown:
            return 400, problem("BadRequest", f"unknown query parameter {unknown[0]!r} (known: namespace, limit)")
        namespace = query.get("namespace") or None
        limit_text = query.get("limit", "")
        try:
            limit = int(limit_text) if limit_text else MAX_LIMIT
        except ValueError:
            return 400, problem("BadRequest", f"limit must be a whole number, got {limit_text!r}")
        if not 1 <= limit <= MAX_LIMIT:
            return 400, problem("BadRequest", f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        items: list[dict[str, Any]] = []
        in_namespace: dict[str, int] = {}
        matched = 0
        for entry in self.entries:
            in_namespace[entry.namespace] = in_namespace.get(entry.namespace, 0) + 1
            if namespace is not None and entry.namespace != namespace:
                continue
            matched += 1
            if len(items) < limit:
                items.append({
                    "namespace": entry.namespace, "name": entry.name, "position": entry.position,
                    "positionInNamespace": in_namespace[entry.namespace], "reason": entry.reason,
                    "class": entry.workload_class, "marginPerGPUHour": entry.margin_per_gpu_hour,
                    "message": entry.message,
                })
        return 200, {
            "kind": "GPUWorkloadQueue", "decidedAt": format_rfc3339(self.decided_at), "cycle": self.cycle,
            "namespace": namespace, "queued": len(self.entries), "matched": matched, "items": items,
        }


def problem(reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "reason": reason, "message": message}


NOT_DECIDED = problem("NotDecided", "this replica has not decided a cycle yet (starting, or on standby under "
                                    "peering: ask the active replica)")
