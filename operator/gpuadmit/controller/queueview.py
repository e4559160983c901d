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

The exact queue is served on demand from the last cycle (``QueueView``: a whole cycle's decisions,
or the incremental engine's ranked queue with each workload's last decision), as JSON on
the health server's ``GET /queue`` (``gpuadmit queue`` reads it), like Kueue's visibility API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpuadmit.core.engine.messages import queue_position_note
from gpuadmit.core.model import Action, CycleResult, Decision
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


class QueueView:
    """The queue as the last cycle decided it, in position order (``entries``, built on first use:
    most cycles' views are never asked for)."""

    def __init__(self, entries: tuple[QueueEntry, ...] | Callable[[], tuple[QueueEntry, ...]], decided_at: float,
                 cycle: int) -> None:
        self._entries = entries
        self.decided_at = decided_at  # the cycle's clock (epoch seconds)
        self.cycle = cycle

    @functools.cached_property
    def entries(self) -> tuple[QueueEntry, ...]:
        return self._entries if isinstance(self._entries, tuple) else self._entries()

    @classmethod
    def of(cls, result: CycleResult, decided_at: float, cycle: int) -> QueueView:
        """From a whole cycle's decisions (each queued one carries its position)."""
        queued = sorted((d for d in result.decisions if d.action == Action.QUEUE and d.queue_position is not None),
                        key=lambda d: d.queue_position or 0)
        return cls(tuple(QueueEntry(d.namespace, d.name, d.queue_position or 0, d.reason.value, d.message,
                                    d.workload_class, d.margin_per_gpu_hour) for d in queued), decided_at, cycle)

    @classmethod
    def of_queue(cls, keys: list[str], decisions: Mapping[str, Decision], decided_at: float, cycle: int) -> QueueView:
        """From an incremental engine's queue: ``keys`` in rank order (positions from 1), each with
        its last queue decision (reason, class, margin; the message's note at its position now).
        ``keys`` and ``decisions`` must not change afterwards (the entries are built on first use)."""
        def build() -> tuple[QueueEntry, ...]:
            entries = []
            for position, key in enumerate(keys, 1):
                decision = decisions.get(key)
                if decision is None or decision.action != Action.QUEUE:
                    continue  # not decided yet (cannot happen after a cycle): left out rather than guessed
                if decision.queue_position != position:
                    decision = repositioned(decision, position)
                entries.append(QueueEntry(decision.namespace, decision.name, position, decision.reason.value,
                                          decision.message, decision.workload_class, decision.margin_per_gpu_hour))
            return tuple(entries)
        return cls(build, decided_at, cycle)

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


# -- positions that move without a decision (incremental cycles) -------------------------------


def repositioned(decision: Decision, position: int) -> Decision:
    """A queue decision at another position, its message's position note moved along."""
    message = decision.message
    if decision.queue_position is not None:
        old_note = queue_position_note(decision.queue_position)
        if message.endswith(old_note):
            message = message[: -len(old_note)] + queue_position_note(position)
    return replace(decision, queue_position=position, message=message)


def positions_near_band_edges(length: int, moved: int, exact_head: int = DEFAULT_EXACT_HEAD) -> Iterator[int]:
    """The queue positions (1-based, ascending, each once) where a workload may show another
    position than before when no workload moved by more than ``moved`` places: the head (every
    position exact) and ``moved`` either side of every band's edge. Positions elsewhere show the
    same band as before, so their statuses need no look (a one-step move checks about
    ``exact_head + 20`` per decade of queue length, not the whole queue)."""
    if moved <= 0 or length <= 0:
        return
    edges = list(range(1, max(exact_head, 10) + 1))
    step = 10
    while edges[-1] < length:
        edges.extend(high for high in range(2 * step, 10 * step + 1, step) if high > edges[-1])
        step *= 10
    last = 0
    for edge in edges:
        low, high = max(last + 1, edge - moved), min(length, edge + moved + 1)
        yield from range(low, high + 1)
        last = max(last, high)
        if last >= length:
            return
