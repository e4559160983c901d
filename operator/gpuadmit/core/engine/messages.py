"""Step 3 of a cycle, the decisions: one ``Decision`` per workload in rank order, with the
reason and the human message (what it needs, what the cluster has, what it earns)."""

from __future__ import annotations

import math

from ..inventory import Inventory
from ..model import (
    Action,
    CycleResult,
    Decision,
    PlacementEntry,
    Preemption,
    Reason,
    Workload,
)
from .cycle import Admission, Candidate, Cycle, PassResult, number_or


def finalize(cycle: Cycle, result: PassResult) -> CycleResult:
    """Turn the chosen pass into one decision per workload, in rank order, invalid ones last."""
    limit = cycle.policy.max_queued_per_namespace
    queued_in_namespace: dict[str, int] = {}
    capacity_note_cache: dict[int, str] = {}
    decisions: list[Decision] = []
    preemptions: list[Preemption] = []
    position = 0
    for candidate in cycle.ranked:
        workload = candidate.workload
        if candidate.rejection is not None:
            decisions.append(candidate.rejection)
            continue
        admission = result.admitted.get(candidate.rank)
        if admission is not None:
            decisions.append(_admit_decision(workload, admission))
            for victim in admission.victims:
                preemptions.append(
                    Preemption(
                        namespace=victim.workload.namespace,
                        name=victim.workload.name,
                        preempted_by=workload.key,
                        reason=Reason.RECLAIMED_BY_GUARANTEE if admission.reclaim else Reason.PREEMPTED_BY_HIGHER_MARGIN,
                        message=(
                            cycle.tenants.reclaim_message(workload, victim.product)
                            if admission.reclaim and cycle.tenants is not None
                            else f"preempted by {workload.key}, which earns {admission.option.margin:.2f} per GPU-hour "
                            f"on {product_label(victim.product)} against {victim.margin:.2f} here"
                        ),
                        freed=victim.workload.placement,
                    )
                )
            continue
        queued_in_namespace[workload.namespace] = queued_in_namespace.get(workload.namespace, 0) + 1
        if limit is not None and queued_in_namespace[workload.namespace] > limit:
            decisions.append(
                decision_for(
                    workload,
                    Action.REJECT,
                    Reason.QUEUE_FULL,
                    f"namespace {workload.namespace} already has {limit} queued workloads ranked ahead of it "
                    f"(the policy's limit per namespace)",
                    margin=candidate.best_margin,
                )
            )
            continue
        position += 1
        blocked_product = result.reserve_blocked.get(candidate.rank)
        quota_block = result.quota.blocked.get(candidate.rank) if result.quota is not None else None
        if quota_block is not None:
            reason, message = quota_block
        elif blocked_product is not None:
            reason = Reason.INFERENCE_RESERVE
            message = _reserve_message(cycle, result, workload, blocked_product)
        else:
            reason = Reason.INSUFFICIENT_CAPACITY
            message = _capacity_message(result.inventory, candidate, capacity_note_cache)
        decisions.append(
            decision_for(workload, Action.QUEUE, reason, f"{message} (queue position {position})", margin=candidate.best_margin, position=position)
        )
    decisions.extend(cycle.static_rejections)
    decisions.extend(cycle.invalid)
    preemptions.sort(key=lambda p: p.key)
    return CycleResult(decisions=tuple(decisions), preemptions=tuple(preemptions))


def _admit_decision(workload: Workload, admission: Admission) -> Decision:
    placement = admission.placement
    gpus = "GPU" if workload.total_gpus == 1 else "GPUs"
    where = ", ".join(f"{e.node} ({e.gpus})" for e in placement[:5]) + (f" and {len(placement) - 5} more nodes" if len(placement) > 5 else "")
    message = (
        f"admitted {workload.total_gpus} {gpus} of {product_label(admission.option.product)} on {where}, "
        f"earning {admission.option.margin:.2f} per GPU-hour"
    )
    if admission.victims:
        names = ", ".join(f"{v.key} ({v.margin:.2f} per GPU-hour)" for v in admission.victims[:5])
        more = f" and {len(admission.victims) - 5} more" if len(admission.victims) > 5 else ""
        message += f", by preempting {names}{more}"
    return decision_for(workload, Action.ADMIT, Reason.ADMITTED, message, margin=admission.option.margin, placement=placement)


def _capacity_message(inventory: Inventory, candidate: Candidate, cache: dict[int, str]) -> str:
    workload = candidate.workload
    g, replicas = workload.gpus_per_replica, workload.replicas
    key = candidate.kind
    if key not in cache:
        products = " or ".join(product_label(o.product) for o in candidate.options)
        if replicas == 1:
            best_free = max(inventory.max_free(o.pools) for o in candidate.options)
            unit = "GPU" if g == 1 else "GPUs"
            cache[key] = f"needs {g} {unit} of {products}; the best eligible node has {best_free} free"
        else:
            fit = max(inventory.replicas_that_fit(o.pools, g, enough=replicas) for o in candidate.options)
            cache[key] = (
                f"needs a gang of {replicas}x{g} GPUs on one product ({products}); "
                f"only {fit} of the {replicas} replicas fit in free GPUs now"
            )
    return cache[key]


def _reserve_message(cycle: Cycle, result: PassResult, workload: Workload, product: str) -> str:
    reserve = cycle.reserve_gpus.get(product, 0)
    cap = cycle.training_cap.get(product, 0)
    used = result.training_used.get(product, 0)
    percent = 100 * number_or(cycle.policy.inference_reserve_fraction, 0.0)
    return (
        f"needs {workload.total_gpus} GPUs of {product_label(product)}, which are free only in the "
        f"{reserve} GPUs kept for inference ({percent:g}% reserve); training holds {used} of the {cap} it may use"
    )


def decision_for(
    workload: Workload,
    action: Action,
    reason: Reason,
    message: str,
    *,
    margin: float | None = None,
    placement: tuple[PlacementEntry, ...] = (),
    position: int | None = None,
) -> Decision:
    return Decision.about(
        workload, action, reason, message,
        placement=placement, margin_per_gpu_hour=_rounded(margin), queue_position=position,
    )


def rejection(reason: Reason, message: str, margin: float | None = None) -> Decision:
    """A rejection not yet bound to a workload (shared by workloads of the same shape)."""
    return Decision(namespace="", name="", action=Action.REJECT, reason=reason, message=message, margin_per_gpu_hour=_rounded(margin))


def bound_to(template: Decision, workload: Workload) -> Decision:
    return Decision.about(
        workload, template.action, template.reason, template.message, margin_per_gpu_hour=template.margin_per_gpu_hour,
    )


def _rounded(margin: float | None) -> float | None:
    if margin is None or not math.isfinite(margin):
        return None
    return round(margin, 4)


def product_label(product: str) -> str:
    return product or "unlabelled GPUs"


def duration_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24}h"
    if hours:
        return f"{hours}h {rest // 60}m"
    if rest >= 60:
        return f"{rest // 60}m {rest % 60}s"
    return f"{rest}s"


def no_fit_message(inventory: Inventory, workload: Workload, by_product: dict, largest_node: int, most_replicas: tuple[int, str]) -> str:
    g, replicas = workload.gpus_per_replica, workload.replicas
    wanted = ", ".join(product_label(p) for p in sorted(set(workload.gpu_products)))
    if not by_product:
        if not inventory.nodes:
            return "the cluster has no GPU nodes"
        why = inventory.exclusions(workload).describe()
        if workload.gpu_products and not inventory.products_offered & set(workload.gpu_products):
            return f"no node offers product {wanted}"
        return f"no node is eligible: of {len(inventory.nodes)} nodes, {why}"
    if largest_node < g:
        unit = "GPU" if g == 1 else "GPUs"
        return f"needs {g} {unit} per replica; the largest eligible node has {largest_node}"
    holds, product = most_replicas
    return (
        f"a gang of {replicas}x{g} GPUs must run on one product, but the eligible nodes of "
        f"{product_label(product)} hold at most {holds} such replicas even when empty"
    )
