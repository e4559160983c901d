"""The margin-optimal admission set, by mixed-integer programming (scipy's HiGHS).

A yardstick for the greedy engine, for small clusters only: tests and the
documentation measure how close ``decide`` comes to it. It shares the
engine's preparation (``engine.prepare``), so rejections — InvalidSpec,
NoNodeCanFit, MarginBelowFloor, QueueTimeout — are the engine's own, and its
output (``engine.finalize``) has the same format. It does not preempt.

The model, for every placeable workload w, product p it may use, and eligible node n:

    y[w,p] ∈ {0,1}                 w runs on product p (a gang stays on one product)
    r[w,p,n] ∈ 0..min(R_w, free_n // g_w)   replicas of w on node n
    Σ_p y[w,p] ≤ 1
    Σ_n r[w,p,n] = R_w · y[w,p]    all replicas or none
    Σ_w,p g_w · r[w,p,n] ≤ free_n  no overcommit
    Σ_training w g_w R_w y[w,p] ≤ cap_p − held_p   the inference reserve
    maximise Σ margin(w,p) · g_w · R_w · y[w,p]

With GPUQuotas (``core/guarantee.py``), the same rules as the engine's, as linear constraints:
``maxGPUs`` caps each tenant's admissions; the free GPUs of each product (and in all, for "*")
left after the admissions that are not preemptible borrowers must cover the other tenants' idle
guarantees (less what the guaranteed workloads take of their own), and, for quotas with
``lendIdle: false``, after every admission. Guaranteed work first is lexicographic: a first solve
maximises the guaranteed GPUs admitted, a second the margin with that many kept. Reclaim is not
modelled (the solver does not preempt). Queued workloads get the engine's quota reasons.

Products below the floor are never variables: ``prepare`` already dropped them.
scipy is imported inside ``solve_exact`` so the core imports without it.
"""

from __future__ import annotations

import math
from typing import Any

from .engine import Admission, finalize, new_pass, prepare
from .engine.cycle import Candidate, Cycle
from .model import CycleResult, PlacementEntry, Reason, Snapshot

MAX_NODES = 200
MAX_PENDING = 500


def solve_exact(snapshot: Snapshot, time_limit_s: float = 30) -> CycleResult:
    """Admit the set of pending workloads that earns the most margin per hour.

    Raises ``ValueError`` when the snapshot is beyond what a MILP solves
    quickly (more than 200 nodes or 500 pending workloads).
    """
    if len(snapshot.nodes) > MAX_NODES or len(snapshot.pending) > MAX_PENDING:
        raise ValueError(
            f"solve_exact handles at most {MAX_NODES} nodes and {MAX_PENDING} pending workloads; "
            f"this snapshot has {len(snapshot.nodes)} nodes and {len(snapshot.pending)} pending"
        )
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    cycle = prepare(snapshot)
    inventory = cycle.inventory.copy()
    candidates = cycle.placeable

    # Variable layout: each (candidate, option) gets y, followed by its r per node.
    objective: list[float] = []
    lower: list[float] = []
    upper: list[float] = []
    integrality: list[int] = []
    choices: list[tuple[int, int, int, list[tuple[int, int]]]] = []  # (candidate i, option j, y column, [(node, r column)])
    for i, candidate in enumerate(candidates):
        g, replicas = candidate.workload.gpus_per_replica, candidate.workload.replicas
        bonus = candidate.effective_margin - candidate.best_margin
        for j, option in enumerate(candidate.options):
            room = {
                index: inventory.free[index] // g if option.need is None else inventory.replicas_fitting_on(index, g, option.need)
                for p in option.pools
                for index in inventory.pools[p].node_indices
                if inventory.free[index] >= g
            }
            nodes = [index for index, fit in room.items() if fit > 0]
            if sum(min(replicas, room[n]) for n in nodes) < replicas:
                continue
            y_column = len(objective)
            objective.append(-(option.margin + bonus) * candidate.workload.total_gpus)
            lower.append(0)
            upper.append(1)
            integrality.append(1)
            replica_columns = []
            for index in sorted(nodes):
                replica_columns.append((index, len(objective)))
                objective.append(0.0)
                lower.append(0)
                upper.append(min(replicas, room[index]))
                integrality.append(1)
            choices.append((i, j, y_column, replica_columns))

    admitted: dict[int, Admission] = {}
    guaranteed_gpus: list[tuple[int, float]] = []  # (y column, GPUs) of work within guarantee
    if choices:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        row_lower: list[float] = []
        row_upper: list[float] = []

        def add_row(terms: list[tuple[int, float]], lo: float, hi: float) -> None:
            row = len(row_lower)
            for column, coefficient in terms:
                rows.append(row)
                cols.append(column)
                vals.append(coefficient)
            row_lower.append(lo)
            row_upper.append(hi)

        by_candidate: dict[int, list[int]] = {}
        by_node: dict[int, list[tuple[int, float]]] = {}
        # One more knapsack row per node and resource beyond GPUs that some replica there requests.
        by_node_resource: dict[tuple[int, str], list[tuple[int, float]]] = {}
        training_by_product: dict[str, list[tuple[int, float]]] = {}
        for i, j, y_column, replica_columns in choices:
            candidate = candidates[i]
            g, replicas = candidate.workload.gpus_per_replica, candidate.workload.replicas
            by_candidate.setdefault(i, []).append(y_column)
            add_row([(c, 1.0) for _, c in replica_columns] + [(y_column, -float(replicas))], 0.0, 0.0)
            need = candidate.options[j].need
            for index, column in replica_columns:
                by_node.setdefault(index, []).append((column, float(g)))
                for resource, amount in need.requests if need is not None else ():
                    if resource in inventory.resource_free[index]:
                        by_node_resource.setdefault((index, resource), []).append((column, float(amount)))
            product = candidate.options[j].product
            if candidate.is_training and product in cycle.training_cap:
                training_by_product.setdefault(product, []).append((y_column, float(candidate.workload.total_gpus)))
        for columns in by_candidate.values():
            if len(columns) > 1:
                add_row([(c, 1.0) for c in columns], 0.0, 1.0)
        for index, terms in sorted(by_node.items()):
            add_row(terms, 0.0, float(inventory.free[index]))
        for (index, resource), terms in sorted(by_node_resource.items()):
            add_row(terms, 0.0, float(max(0, inventory.resource_free[index][resource])))
        for product, terms in sorted(training_by_product.items()):
            headroom = max(0, cycle.training_cap[product] - cycle.training_used.get(product, 0))
            add_row(terms, 0.0, float(headroom))
        if cycle.tenants is not None:
            for terms, lo, hi in _quota_rows(cycle, candidates, choices):
                add_row(terms, lo, hi)
            guaranteed_gpus = [
                (y_column, float(candidates[i].workload.total_gpus))
                for i, _, y_column, _ in choices if candidates[i].rank in cycle.tenants.guaranteed_ranks
            ]

        def solve(costs: list[float]) -> Any:
            matrix = coo_array((vals, (rows, cols)), shape=(len(row_lower), len(objective))).tocsr()
            solution = milp(
                c=np.array(costs),
                constraints=LinearConstraint(matrix, np.array(row_lower), np.array(row_upper)),
                integrality=np.array(integrality),
                bounds=Bounds(np.array(lower, dtype=float), np.array(upper, dtype=float)),
                options={"time_limit": float(time_limit_s), "presolve": True},
            )
            if solution.x is None:
                raise RuntimeError(f"the MILP solver found no solution: {solution.message}")
            return solution.x

        if guaranteed_gpus:  # guaranteed work first: the most guaranteed GPUs, then the most margin
            first = [0.0] * len(objective)
            for column, gpus in guaranteed_gpus:
                first[column] = -gpus
            most = sum(gpus * solve(first)[column] for column, gpus in guaranteed_gpus)
            add_row(guaranteed_gpus, most - 0.5, math.inf)
        x = solve(objective)
        for i, j, y_column, replica_columns in choices:
            if x[y_column] < 0.5:
                continue
            candidate = candidates[i]
            g = candidate.workload.gpus_per_replica
            need = candidate.options[j].need
            asks = need.requests if need is not None else ()
            placement = tuple(
                PlacementEntry(node=inventory.nodes[index].name, gpus=count * g, replicas=count,
                               resources=tuple((r, a * count) for r, a in asks))
                for index, column in replica_columns
                for count in (int(round(x[column])),)  # noqa: RUF046 - numpy before 2.0 rounds to a float
                if count > 0
            )
            admitted[candidate.rank] = Admission(candidate.options[j], placement)

    result = new_pass(cycle)
    result.inventory = inventory
    by_rank = {c.rank: c for c in candidates}
    for rank, admission in sorted(admitted.items()):
        candidate = by_rank[rank]
        inventory.take(admission.placement)
        if cycle.tenants is not None and result.quota is not None:
            cycle.tenants.admit(result.quota, candidate.workload, admission.option.product, rank)
        if candidate.is_training:
            product = admission.option.product
            result.training_used[product] = result.training_used.get(product, 0) + candidate.workload.total_gpus
        result.admitted[rank] = admission
        result.value += (admission.option.margin + candidate.effective_margin - candidate.best_margin) * candidate.workload.total_gpus
    if cycle.tenants is not None and result.quota is not None:
        # What holds the rest back, in the engine's words (first product that says so).
        for candidate in candidates:
            if candidate.rank in result.admitted:
                continue
            for option in candidate.options:
                blocked = cycle.tenants.blocks(result.quota, inventory, candidate.workload, option.product)
                if blocked is not None and (blocked[0] is Reason.OVER_QUOTA or inventory.fits(option.pools, candidate.workload.gpus_per_replica, candidate.workload.replicas)):
                    result.quota.blocked[candidate.rank] = blocked
                    break
    return finalize(cycle, result)


def _quota_rows(cycle: Cycle, candidates: list[Candidate], choices: list[tuple[int, int, int, list[tuple[int, int]]]]) -> list[tuple[list[tuple[int, float]], float, float]]:
    """The GPUQuota constraints on the choice columns: (terms, lower, upper) per row."""
    tenants = cycle.tenants
    assert tenants is not None
    inventory = cycle.inventory
    used = tenants.used_at_start
    rows: list[tuple[list[tuple[int, float]], float, float]] = []
    by_tenant: dict[str, list[tuple[int, float]]] = {}
    for i, _, y_column, _ in choices:
        quota = tenants.quota_of(candidates[i].workload)
        if quota is not None:
            by_tenant.setdefault(quota.name, []).append((y_column, float(candidates[i].workload.total_gpus)))
    for name, tenant_terms in sorted(by_tenant.items()):
        cap = tenants.quotas[name].max_gpus
        if cap is not None:
            rows.append((tenant_terms, -math.inf, float(cap - sum(used.get(name, {}).values()))))
    free = {product: inventory.total_free(pools) for product, pools in tenants.inventory_pools.items()}
    # Per product p ("" = every product, for the "*" guarantees): free - taken >= idle - own guaranteed,
    # i.e. taken - own guaranteed <= free - idle, once for every quota (taken: all but preemptible
    # borrowers) and once for the quotas that do not lend (taken: every admission).
    for product in [*sorted(free), ""]:
        for strict in (False, True):
            quotas = [q for q in tenants.quotas.values() if not strict or not q.lend_idle]
            idle_by_product: dict[str, int] = {}
            idle_any = 0
            for quota in quotas:
                per_product, any_product = tenants.idle(used, quota)
                for p, gpus in per_product.items():
                    idle_by_product[p] = idle_by_product.get(p, 0) + gpus
                idle_any += any_product
            if product:
                idle = idle_by_product.get(product, 0)
            elif idle_any:  # "*": what is free beyond each product's own idle guarantees
                idle = idle_any + sum(min(free[p], gpus) for p, gpus in idle_by_product.items() if p in free)
            else:
                idle = 0
            if not idle:
                continue
            names = {q.name for q in quotas}
            row_terms: list[tuple[int, float]] = []
            for i, j, y_column, _ in choices:
                candidate = candidates[i]
                if product and candidate.options[j].product != product:
                    continue
                size = float(candidate.workload.total_gpus)
                owner = tenants.quota_of(candidate.workload)
                guaranteed = candidate.rank in tenants.guaranteed_ranks
                if guaranteed and owner is not None and owner.name in names:
                    continue  # takes its own idle guarantee: free and idle shrink alike
                if strict or guaranteed or not candidate.workload.preemptible:
                    row_terms.append((y_column, size))
            available = sum(free.values()) if not product else free[product]
            if row_terms:
                rows.append((row_terms, -math.inf, float(available - idle)))
    return rows
