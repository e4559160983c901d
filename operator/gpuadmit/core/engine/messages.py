"""Step 3 of a cycle, the decisions: one ``Decision`` per workload in rank order, with the
reason and the human message (what it needs, what the cluster has, what it earns)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..inventory import Inventory, Need
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


def finalize(cycle: Cycle, result: PassResult, position_of: Callable[[Candidate], int] | None = None) -> CycleResult:
    """Turn the chosen pass into one decision per workload, in rank order, invalid ones last.
    ``position_of``: the queue position of a queued candidate when the cycle holds only part of
    the queue (the incremental engine); None: counted here."""
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
        position = position + 1 if position_of is None else position_of(candidate)
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
            decision_for(workload, Action.QUEUE, reason, f"{message}{queue_position_note(position)}", margin=candidate.best_margin, position=position)
        )
    decisions.extend(cycle.static_rejections)
    decisions.extend(cycle.invalid)
    preemptions.sort(key=lambda p: p.key)
    return CycleResult(decisions=tuple(decisions), preemptions=tuple(preemptions))


def queue_position_note(position: int | str) -> str:
    """The note a queue message ends with; the operator's status shows it banded past the head
    (controller.queueview), so this is the one place its words are."""
    return f" (queue position {position})"


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
        need = candidate.options[0].need
        short = _short_now(inventory, candidate, need) if need is not None else None
        if short is not None:
            cache[key] = short
        elif replicas == 1:
            best_free = max(inventory.max_free(o.pools, o.need) for o in candidate.options)
            unit = "GPU" if g == 1 else "GPUs"
            cache[key] = f"needs {g} {unit} of {products}; the best eligible node has {best_free} free"
        else:
            fit = max(inventory.replicas_that_fit(o.pools, g, enough=replicas, need=o.need) for o in candidate.options)
            cache[key] = (
                f"needs a gang of {replicas}x{g} GPUs on one product ({products}); "
                f"only {fit} of the {replicas} replicas fit in free GPUs now"
            )
    return cache[key]


def _short_now(inventory: Inventory, candidate: Candidate, need: Need) -> str | None:
    """When free GPUs would hold the workload but a resource beyond them does not: which one."""
    workload = candidate.workload
    g, replicas = workload.gpus_per_replica, workload.replicas
    if not any(inventory.fits(o.pools, g, replicas) for o in candidate.options):
        return None  # GPUs bind
    pools = [p for o in candidate.options for p in o.pools]
    short = inventory.shortage(pools, g, need)
    if short is None:
        fit = max(inventory.replicas_that_fit(o.pools, g, enough=replicas, need=o.need) for o in candidate.options)
        return (f"needs {replicas}x({g} GPUs, {requests_text(need.requests)}); only {fit} of the {replicas} "
                "replicas fit in what the eligible nodes have free now")
    resource, most = short
    amount = dict(need.requests)[resource]
    return (f"needs {amount_text(resource, amount)} per replica beside its GPUs; the most an eligible node with "
            f"{g} free GPUs has free now is {amount_text(resource, most)}")


def need_message(inventory: Inventory, workload: Workload, need: Need, pools: list[int], most_replicas: tuple[int, str]) -> str:
    """Why no eligible node could ever hold a replica although GPUs alone would: the binding resource
    and the largest amount any eligible node offers, or the node constraints."""
    g, replicas = workload.gpus_per_replica, workload.replicas
    if need.allowed is not None and not any(i in need.allowed for p in pools for i in inventory.pools[p].node_indices):
        return (f"no node is eligible: {need.constrained_out} nodes with the GPUs it needs do not match its "
                "nodeSelector or required node affinity (or are avoided after an Unschedulable report)")
    short = inventory.shortage(pools, g, need, if_empty=True)
    if short is not None:
        resource, most = short
        amount = dict(need.requests)[resource]
        return (f"needs {amount_text(resource, amount)} per replica; the largest amount any eligible node "
                f"offers is {amount_text(resource, most)}")
    holds, product = most_replicas
    return (f"a gang of {replicas}x({g} GPUs, {requests_text(need.requests)}) must run on one product, but the "
            f"eligible nodes of {product_label(product)} hold at most {holds} such replicas even when empty")


# The opening both messages above give when one resource beside GPUs binds: "needs 4 CPUs per replica".
_BOUND_BY = re.compile(r"needs (?P<amount>[^;]+?) per replica(?: beside its GPUs)?;")


def bound_by(message: str) -> str | None:
    """The resource beside GPUs that binds, read from a decision's message as this module words it
    (``cpu``, ``memory``, an extended resource...), or None when GPUs or node constraints bind."""
    match = _BOUND_BY.match(message)
    if match is None:
        return None
    words = match["amount"].split()
    if len(words) != 2:
        return None
    if words[1] in ("CPU", "CPUs"):
        return "cpu"
    return None if words[1] in ("GPU", "GPUs") else words[1]


def amount_text(resource: str, amount: int) -> str:
    """An amount in the ledger's unit, as a person reads it: CPUs, bytes in binary units, plain counts."""
    if resource == "cpu":
        cpus = amount / 1000
        return f"{cpus:g} CPU" + ("" if cpus == 1 else "s")
    if resource in ("memory", "ephemeral-storage"):
        for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if amount >= size:
                return f"{amount / size:.4g}{unit} {resource}"
        return f"{amount} bytes {resource}"
    return f"{amount} {resource}"


def requests_text(requests: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(amount_text(r, a) for r, a in requests)


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
