"""``status.placement``: the GPUs a holding workload reserved, read one way by every part.

The operator writes ``status.placement`` as ``[{node, gpus, replicas}]`` when it admits a
workload, and everything after reads it back: the workload parser (the reservation the
engine keeps), the controller's loop (which pods to start or follow, which nodes a victim
still holds) and the invariant checker (what the reservations promise). They read it here,
so they agree on what an entry is.

An entry is a mapping with a non-empty ``node`` and a positive whole ``gpus``; ``replicas``,
when absent (older statuses), is ``gpus // gpus per replica``. Entries that are not read are
left out, never guessed.

A placement that does not account for the workload exactly -- missing, empty, an entry left
out, an entry whose GPUs are not its replicas times the GPUs per replica, a node listed twice,
or replicas that do not add up to ``spec.replicas`` -- carries a ``problem``. Such a
reservation must not be trusted while the workload is Admitted or Running: its pods would be
counted against the wrong number of replicas (no replicas at all reads as "every replica
succeeded"). The operator requeues such a workload (reason ``PlacementInvalid``, its pods
deleted) and decides it afresh; until then the GPUs its readable entries name stay reserved,
so nothing is overcommitted in the meantime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import PlacementEntry
from .policy import whole_number


@dataclass(frozen=True, slots=True)
class RecordedPlacement:
    """The readable entries of a ``status.placement``, and why it does not account for the
    workload (None when it does)."""

    entries: tuple[PlacementEntry, ...]
    problem: str | None = None

    @property
    def replicas(self) -> int:
        return sum(entry.replicas for entry in self.entries)


def read_placement(value: object, gpus_per_replica: int | None, replicas: int | None) -> RecordedPlacement:
    """``status.placement`` of a workload of ``replicas`` x ``gpus_per_replica`` GPUs (None: the
    spec's value is not a positive whole number, so the placement cannot be checked against it)."""
    if value is None or value == []:
        return RecordedPlacement((), "status.placement is empty")
    if not isinstance(value, list):
        return RecordedPlacement((), f"status.placement is a {type(value).__name__}, not a list")
    entries: list[PlacementEntry] = []
    problems: list[str] = []
    per_replica = gpus_per_replica if gpus_per_replica is not None and gpus_per_replica > 0 else None
    for position, item in enumerate(value):
        if not isinstance(item, Mapping):
            item = {}
        node, gpus = item.get("node"), whole_number(item.get("gpus"))
        if not isinstance(node, str) or not node or gpus is None or gpus <= 0:
            problems.append(f"status.placement[{position}] is not a node and a positive number of GPUs")
            continue
        count = whole_number(item.get("replicas"))
        if count is None or count <= 0:
            if item.get("replicas") is not None:
                problems.append(f"status.placement[{position}].replicas is not a positive whole number")
            count = max(1, gpus // (per_replica or 1))
        if per_replica is not None and gpus != count * per_replica:
            problems.append(f"status.placement[{position}] holds {gpus} GPUs on {node} for {count} "
                            f"replicas of {per_replica}")
        if any(entry.node == node for entry in entries):
            problems.append(f"status.placement lists node {node} twice")
        entries.append(PlacementEntry(node=node, gpus=gpus, replicas=count))
    placed = sum(entry.replicas for entry in entries)
    if per_replica is None:
        problems.append("spec.gpus is not a positive whole number, so the placement cannot be checked")
    elif replicas is None or replicas <= 0:
        problems.append("spec.replicas is not a positive whole number, so the placement cannot be checked")
    elif placed != replicas:
        problems.append(f"status.placement places {placed} of the {replicas} replicas")
    return RecordedPlacement(tuple(entries), "; ".join(problems) if problems else None)


def placement_of(workload: Mapping[str, Any]) -> RecordedPlacement:
    """The placement recorded in a GPUWorkload object's status, checked against its spec."""
    status = workload.get("status")
    spec = workload.get("spec")
    status = status if isinstance(status, Mapping) else {}
    spec = spec if isinstance(spec, Mapping) else {}
    replicas = spec.get("replicas")
    replicas = 1 if replicas is None else replicas  # the CRD's default, as the workload parser reads it
    return read_placement(status.get("placement"), whole_number(spec.get("gpus")), whole_number(replicas))
