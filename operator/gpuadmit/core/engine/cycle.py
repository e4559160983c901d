"""What one cycle computes once and passes from step to step: the candidates and their
options, the victims preemption may take, one placement pass's result (see the package
docstring for the steps). Plain data, no logic beyond small helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..guarantee import QuotaLedger, Tenants
from ..inventory import Inventory, Need
from ..model import Decision, PlacementEntry, Policy, Snapshot, Workload

EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Option:
    """A product a candidate may land on, what it earns there, and its eligible pools."""

    product: str
    margin: float
    pools: tuple[int, ...]
    need: Need | None = None  # what a replica needs beyond GPUs (resources, allowed nodes); None: GPUs only


@dataclass(slots=True)
class Candidate:
    workload: Workload
    rank: int
    options: tuple[Option, ...]  # best margin first, then product name
    best_margin: float
    effective_margin: float
    shape: int  # numbers the workload's shape (products, memory, tolerations) for caches
    kind: int  # numbers (shape, size, class, tier): workloads of one kind have the same options
    is_training: bool
    rejection: Decision | None = None  # QueueTimeout: ranked (for order) but never placed
    order: tuple = ()  # prepare.rank_order: the ranking's sort key, the same at any time


@dataclass(frozen=True, slots=True)
class Victim:
    workload: Workload
    key: str
    product: str
    margin: float
    gpus: int
    lost_per_hour: float
    freed: tuple[tuple[int, int], ...]  # (node index, GPUs freed), ascending


@dataclass(slots=True)
class Cycle:
    """Everything computed once per snapshot, shared by the placement passes and the exact solver."""

    snapshot: Snapshot
    policy: Policy
    inventory: Inventory
    ranked: list[Candidate]
    static_rejections: list[Decision]
    invalid: list[Decision]
    training_cap: dict[str, int]  # product -> GPUs training may hold in all (absent: no cap)
    reserve_gpus: dict[str, int]
    training_used: dict[str, int]  # product -> GPUs held by training workloads
    victims_by_product: dict[str, list[Victim]]
    cheapest_victim_margin: dict[str, float] = field(default_factory=dict)
    tenants: Tenants | None = None  # GPUQuota rules (core/guarantee.py); None without quotas
    ranker: object = None  # the prepare.Ranker that made the candidates (kept by the incremental engine)

    @property
    def placeable(self) -> list[Candidate]:
        return [c for c in self.ranked if c.rejection is None]


@dataclass(slots=True)
class Admission:
    option: Option
    placement: tuple[PlacementEntry, ...]
    victims: tuple[Victim, ...] = ()
    reclaim: bool = False  # the victims were borrowing the preemptor's guarantee


@dataclass(slots=True)
class PassResult:
    inventory: Inventory
    admitted: dict[int, Admission] = field(default_factory=dict)  # by candidate rank
    reserve_blocked: dict[int, str] = field(default_factory=dict)  # rank -> product whose reserve stopped it
    training_used: dict[str, int] = field(default_factory=dict)
    value: float = 0.0
    quota: QuotaLedger | None = None
    # (shape, product, GPUs per replica, reclaim) -> (replicas, threshold) of preemptions that failed
    # in this pass (passes.run_pass); the incremental engine's walk skips what would fail so.
    preempt_failed: dict[tuple, list[tuple[int, float]]] = field(default_factory=dict)


def new_pass(cycle: Cycle) -> PassResult:
    """An empty pass on a fresh copy of the cycle's ledgers."""
    return PassResult(
        inventory=cycle.inventory.copy(),
        training_used=dict(cycle.training_used),
        quota=cycle.tenants.ledger() if cycle.tenants is not None else None,
    )


def number_or(value: object, fallback: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return fallback
    return fallback if math.isnan(number) else number
