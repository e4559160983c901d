"""The engine's GPUQuota rules: committed capacity first, the rest sold by margin.

A tenant is the set of namespaces one GPUQuota covers (``core/quota.py``). Its usage is
the GPUs its Admitted/Running workloads hold, per product. Against its ``guaranteed``
GPUs a usage on product p first fills ``guaranteed[p]``, and what overflows fills
``guaranteed["*"]``; so a workload of n GPUs on p is *within guarantee* when
n <= idle[p] + idle["*"]. The rules (docs/engine.md, "Tenant quotas"):

1. Guaranteed work first: pending workloads within guarantee (counted cumulatively per
   tenant, in margin order) rank ahead of all other work; margin ranks inside each group.
2. Lending: an admission outside its own tenant's guarantee must leave enough free GPUs
   to cover the other tenants' idle guarantees — per product, and in all for "*" — except
   the idle guarantees of quotas with ``lendIdle`` when the workload is preemptible.
   Otherwise ``GuaranteeReserved``. Free GPUs are counted, not shaped: fragmentation
   is not modelled, so a guarantee may find its GPUs free but split across nodes.
3. Reclaim: a workload within guarantee that does not fit may preempt borrowers — any
   preemptible work not itself within its tenant's guarantee — whatever they earn, once
   they ran ``minRuntimeSeconds`` (``ReclaimedByGuarantee``). Work within its own
   guarantee is never a victim, of reclaim or of margin preemption.
4. Caps: past ``maxGPUs`` for the tenant, ``OverQuota`` (queued); a workload larger than
   ``maxGPUs`` alone, ``ExceedsQuota`` (rejected).

Everything here is O(quotas) per question; with no GPUQuota the engine never builds a
``Tenants`` and decides exactly as without this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .inventory import Inventory, whole
from .model import ANY_PRODUCT, Quota, Reason, Snapshot, Workload

Usage = dict[str, dict[str, int]]  # quota name -> product -> GPUs held


class Held(Protocol):
    """A preemption victim as the engine describes it (engine.Victim)."""

    @property
    def workload(self) -> Workload: ...

    @property
    def product(self) -> str: ...


class Option(Protocol):
    @property
    def product(self) -> str: ...


OptionT = TypeVar("OptionT", bound=Option)


class Ranked(Protocol):
    workload: Workload
    rank: int

    @property
    def options(self) -> Sequence[Option]: ...


@dataclass(slots=True)
class QuotaLedger:
    """One placement pass's view: usage as admissions and preemptions change it, and why
    queued work was held back (rank -> reason, message)."""

    used: Usage
    blocked: dict[int, tuple[Reason, str]] = field(default_factory=dict)

    def copy(self) -> QuotaLedger:
        return QuotaLedger({name: dict(by_product) for name, by_product in self.used.items()}, dict(self.blocked))


class Tenants:
    """The quotas of one cycle, read-only once built (passes share it)."""

    def __init__(self, snapshot: Snapshot, inventory: Inventory) -> None:
        self.quotas: Mapping[str, Quota] = snapshot.quotas
        self.quota_of_namespace = snapshot.quota_of_namespace
        self.inventory_pools: dict[str, tuple[int, ...]] = {}
        for pool in inventory.pools:
            self.inventory_pools[pool.product] = (*self.inventory_pools.get(pool.product, ()), pool.index)
        self.guaranteed_ranks: set[int] = set()
        self.used_at_start, self.protected = held_by_quota(snapshot, inventory)

    @classmethod
    def of(cls, snapshot: Snapshot, inventory: Inventory) -> Tenants | None:
        """The rules, or None when no quota can change a decision (no guarantee anywhere and no
        cap on a covered namespace): then the engine runs exactly as without quotas."""
        covering = set(snapshot.quota_of_namespace.values())
        binding = any(
            any(gpus > 0 for gpus in quota.guaranteed.values()) or (quota.max_gpus is not None and name in covering)
            for name, quota in snapshot.quotas.items()
        )
        return cls(snapshot, inventory) if binding else None

    def quota_of(self, workload: Workload) -> Quota | None:
        name = self.quota_of_namespace.get(workload.namespace)
        return None if name is None else self.quotas.get(name)

    def ledger(self) -> QuotaLedger:
        return QuotaLedger({name: dict(by_product) for name, by_product in self.used_at_start.items()})

    # --- questions ------------------------------------------------------------

    def exceeds(self, workload: Workload) -> str | None:
        """Why the workload can never run under its tenant's cap, or None."""
        quota = self.quota_of(workload)
        if quota is None or quota.max_gpus is None or workload.total_gpus <= quota.max_gpus:
            return None
        return (
            f"asks for {workload.total_gpus} GPUs, more than the {quota.max_gpus} that GPUQuota {quota.name} "
            f"lets namespace {workload.namespace}'s tenant hold at once (maxGPUs)"
        )

    @staticmethod
    def idle(used: Usage, quota: Quota) -> tuple[dict[str, int], int]:
        """Guaranteed GPUs the tenant does not use: per product, and of any product ("*")."""
        held = used.get(quota.name, {})
        idle = {p: max(0, g - held.get(p, 0)) for p, g in quota.guaranteed.items() if p != ANY_PRODUCT}
        overflow = sum(max(0, gpus - quota.guaranteed.get(p, 0)) for p, gpus in held.items() if p != ANY_PRODUCT)
        return idle, max(0, quota.guaranteed.get(ANY_PRODUCT, 0) - overflow)

    def headroom(self, used: Usage, quota: Quota, product: str) -> int:
        idle, idle_any = self.idle(used, quota)
        return idle.get(product, 0) + idle_any

    def within(self, used: Usage, workload: Workload, product: str) -> bool:
        quota = self.quota_of(workload)
        return quota is not None and workload.total_gpus <= self.headroom(used, quota, product)

    def rank_guaranteed(self, in_margin_order: Iterable[Ranked]) -> None:
        """Mark the candidates within guarantee, each tenant's best-ranked first, on the first
        (best-earning) product where it still fits its guarantee."""
        used = self.ledger().used
        for candidate in in_margin_order:
            quota = self.quota_of(candidate.workload)
            if quota is None:
                continue
            for option in candidate.options:
                product = option.product
                if candidate.workload.total_gpus <= self.headroom(used, quota, product):
                    self.guaranteed_ranks.add(candidate.rank)
                    _add(used, quota.name, product, candidate.workload.total_gpus)
                    break

    def options_in_order(self, ledger: QuotaLedger, workload: Workload, rank: int, options: Sequence[OptionT]) -> Sequence[OptionT]:
        """A guaranteed candidate's products within its guarantee first (by margin among them): it
        was ranked ahead for its guarantee, so it uses the guarantee rather than another product."""
        if rank not in self.guaranteed_ranks:
            return options
        return sorted(options, key=lambda o: not self.within(ledger.used, workload, o.product))

    def blocks(self, ledger: QuotaLedger, inventory: Inventory, workload: Workload, product: str, freed: int = 0) -> tuple[Reason, str] | None:
        """Why admitting ``workload`` on ``product`` now breaks a quota (after ``freed`` GPUs of
        victims come back), or None."""
        quota = self.quota_of(workload)
        total = workload.total_gpus
        if quota is not None and quota.max_gpus is not None:
            held = sum(ledger.used.get(quota.name, {}).values())
            if held + total > quota.max_gpus:
                return Reason.OVER_QUOTA, (
                    f"its tenant (GPUQuota {quota.name}) holds {held} GPUs; {total} more would pass its maxGPUs of {quota.max_gpus}"
                )
        if quota is not None and total <= self.headroom(ledger.used, quota, product):
            return None  # its own guarantee
        # The idle guarantees of the other tenants this workload may not borrow.
        reserved: dict[str, int] = {}
        reserved_any = 0
        owners: list[str] = []
        for other in self.quotas.values():
            if other is quota or (workload.preemptible and other.lend_idle):
                continue
            idle, idle_any = self.idle(ledger.used, other)
            if idle.get(product, 0) or idle_any:
                owners.append(other.name)
            for p, gpus in idle.items():
                reserved[p] = reserved.get(p, 0) + gpus
            reserved_any += idle_any
        if not owners:
            return None
        free_here = inventory.total_free(self.inventory_pools.get(product, ())) + freed - total
        short = free_here < reserved.get(product, 0)
        if not short and reserved_any:
            spare = max(0, free_here - reserved.get(product, 0))
            for p, pools in self.inventory_pools.items():
                if p != product:
                    spare += max(0, inventory.total_free(pools) - reserved.get(p, 0))
            short = spare < reserved_any
        if not short:
            return None
        why = "lent only to preemptible work" if not workload.preemptible else "not lent (lendIdle: false)"
        return Reason.GUARANTEE_RESERVED, (
            f"needs {total} GPUs of {product or 'unlabelled GPUs'}, but the free ones are idle guarantees of "
            f"GPUQuota {', '.join(sorted(owners))}, {why}"
        )

    # --- changes ----------------------------------------------------------------

    def admit(self, ledger: QuotaLedger, workload: Workload, product: str, rank: int) -> None:
        ledger.blocked.pop(rank, None)
        quota = self.quota_of(workload)
        if quota is not None:
            _add(ledger.used, quota.name, product, workload.total_gpus)

    def release(self, ledger: QuotaLedger, victim: Held) -> None:
        quota = self.quota_of(victim.workload)
        if quota is not None:
            _add(ledger.used, quota.name, victim.product, -sum(whole(e.gpus) for e in victim.workload.placement))

    def victims_allowed(self, by_product: Mapping[str, list]) -> dict[str, list]:
        """Preemption candidates without the work that is within its own guarantee."""
        return {p: kept for p, victims in by_product.items() if (kept := [v for v in victims if v.key not in self.protected])}

    def reclaim_message(self, preemptor: Workload, product: str) -> str:
        quota = self.quota_of(preemptor)
        name = quota.name if quota else "?"
        return (
            f"reclaimed by {preemptor.key}, which runs within GPUQuota {name}'s guarantee on "
            f"{product or 'unlabelled GPUs'}; this workload was borrowing those GPUs"
        )


def held_by_quota(snapshot: Snapshot, inventory: Inventory) -> tuple[Usage, set[str]]:
    """GPUs each quota's tenant holds per product, and the holding workloads within their
    guarantee: a tenant's oldest admissions fill its guarantee first."""
    used: Usage = {name: {} for name in snapshot.quotas}
    protected: set[str] = set()
    for workload in sorted(snapshot.holding, key=lambda w: (w.admitted_at or 0.0, w.key)):
        quota = snapshot.quotas.get(snapshot.quota_of_namespace.get(workload.namespace, ""))
        product = _product_held(workload, inventory)
        if quota is None or product is None:
            continue
        gpus = sum(whole(e.gpus) for e in workload.placement)
        idle, idle_any = Tenants.idle(used, quota)
        if gpus <= idle.get(product, 0) + idle_any:
            protected.add(workload.key)
        _add(used, quota.name, product, gpus)
    return used, protected


@dataclass(frozen=True, slots=True)
class ProductUsage:
    product: str  # or ANY_PRODUCT
    guaranteed: int
    used: int
    lent: int  # idle guaranteed GPUs that are not free: other work holds them now


@dataclass(frozen=True, slots=True)
class QuotaReport:
    """What a GPUQuota's status and metrics say about it, from one snapshot."""

    name: str
    products: tuple[ProductUsage, ...]
    overcommitted: tuple[str, ...] = ()  # products (or "*") whose guarantees exceed the cluster's GPUs

    @property
    def guaranteed(self) -> int:
        return sum(p.guaranteed for p in self.products)

    @property
    def used(self) -> int:
        return sum(p.used for p in self.products)

    @property
    def lent(self) -> int:
        return sum(p.lent for p in self.products)


def quota_reports(snapshot: Snapshot, inventory: Inventory | None = None) -> dict[str, QuotaReport]:
    """Guaranteed, used and lent GPUs per quota and product. Lent: on each product the idle
    guarantees that the free GPUs (schedulable nodes) do not cover; the older quotas are counted
    covered first, as they win a contested namespace too. The "*" guarantees are covered by what
    is free beyond the per-product idle guarantees."""
    inventory = inventory or Inventory.from_snapshot(snapshot)
    used, _ = held_by_quota(snapshot, inventory)
    free: dict[str, int] = {}
    capacity: dict[str, int] = {}
    for index, node in enumerate(inventory.nodes):
        capacity[node.product] = capacity.get(node.product, 0) + inventory.allocatable[index]
        if inventory.pool_of[index] >= 0:
            free[node.product] = free.get(node.product, 0) + inventory.free[index]
    oldest_first = sorted(snapshot.quotas.values(), key=lambda q: (q.created_at, q.name))
    idle = {q.name: Tenants.idle(used, q) for q in oldest_first}
    lent: dict[tuple[str, str], int] = {}
    left = dict(free)
    for quota in oldest_first:
        for product, gpus in sorted(idle[quota.name][0].items()):
            covered = min(gpus, left.get(product, 0))
            left[product] = left.get(product, 0) - covered
            lent[(quota.name, product)] = gpus - covered
    spare = sum(left.values())
    for quota in oldest_first:
        covered = min(idle[quota.name][1], spare)
        spare -= covered
        lent[(quota.name, ANY_PRODUCT)] = idle[quota.name][1] - covered
    promised: dict[str, int] = {}
    for quota in oldest_first:
        for product, gpus in quota.guaranteed.items():
            promised[product] = promised.get(product, 0) + gpus
    overcommitted = sorted(p for p, gpus in promised.items() if p != ANY_PRODUCT and gpus > capacity.get(p, 0))
    if sum(promised.values()) > sum(capacity.values()) and promised.get(ANY_PRODUCT):
        overcommitted.append(ANY_PRODUCT)
    reports: dict[str, QuotaReport] = {}
    for quota in oldest_first:
        held = used.get(quota.name, {})
        products = sorted(set(quota.guaranteed) | set(held))
        rows = []
        for product in products:
            rows.append(ProductUsage(product, quota.guaranteed.get(product, 0), held.get(product, 0), lent.get((quota.name, product), 0)))
        reports[quota.name] = QuotaReport(
            quota.name, tuple(rows), tuple(p for p in overcommitted if p in quota.guaranteed)
        )
    return dict(sorted(reports.items()))


def _add(used: Usage, name: str, product: str, gpus: int) -> None:
    by_product = used.setdefault(name, {})
    by_product[product] = by_product.get(product, 0) + gpus


def _product_held(workload: Workload, inventory: Inventory) -> str | None:
    for entry in workload.placement:
        product = inventory.product_of(entry.node)
        if product is not None:
            return product
    return None
