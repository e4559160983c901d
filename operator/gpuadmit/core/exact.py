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

Products below the floor are never variables: ``prepare`` already dropped them.
scipy is imported inside ``solve_exact`` so the core imports without it.
"""

from __future__ import annotations

from .engine import Admission, PassResult, finalize, prepare
from .model import CycleResult, PlacementEntry, Snapshot

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
            nodes = [
                index
                for p in option.pools
                for index in inventory.pools[p].node_indices
                if inventory.free[index] >= g
            ]
            if sum(min(replicas, inventory.free[n] // g) for n in nodes) < replicas:
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
                upper.append(min(replicas, inventory.free[index] // g))
                integrality.append(1)
            choices.append((i, j, y_column, replica_columns))

    admitted: dict[int, Admission] = {}
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
        training_by_product: dict[str, list[tuple[int, float]]] = {}
        for i, j, y_column, replica_columns in choices:
            candidate = candidates[i]
            g, replicas = candidate.workload.gpus_per_replica, candidate.workload.replicas
            by_candidate.setdefault(i, []).append(y_column)
            add_row([(c, 1.0) for _, c in replica_columns] + [(y_column, -float(replicas))], 0.0, 0.0)
            for index, column in replica_columns:
                by_node.setdefault(index, []).append((column, float(g)))
            product = candidate.options[j].product
            if candidate.is_training and product in cycle.training_cap:
                training_by_product.setdefault(product, []).append((y_column, float(candidate.workload.total_gpus)))
        for columns in by_candidate.values():
            if len(columns) > 1:
                add_row([(c, 1.0) for c in columns], 0.0, 1.0)
        for index, terms in sorted(by_node.items()):
            add_row(terms, 0.0, float(inventory.free[index]))
        for product, terms in sorted(training_by_product.items()):
            headroom = max(0, cycle.training_cap[product] - cycle.training_used.get(product, 0))
            add_row(terms, 0.0, float(headroom))

        matrix = coo_array((vals, (rows, cols)), shape=(len(row_lower), len(objective))).tocsr()
        solution = milp(
            c=np.array(objective),
            constraints=LinearConstraint(matrix, np.array(row_lower), np.array(row_upper)),
            integrality=np.array(integrality),
            bounds=Bounds(np.array(lower, dtype=float), np.array(upper, dtype=float)),
            options={"time_limit": float(time_limit_s), "presolve": True},
        )
        if solution.x is None:
            raise RuntimeError(f"the MILP solver found no solution: {solution.message}")
        x = solution.x
        for i, j, y_column, replica_columns in choices:
            if x[y_column] < 0.5:
                continue
            candidate = candidates[i]
            g = candidate.workload.gpus_per_replica
            placement = tuple(
                PlacementEntry(node=inventory.nodes[index].name, gpus=count * g, replicas=count)
                for index, column in replica_columns
                for count in (int(round(x[column])),)  # noqa: RUF046 - numpy before 2.0 rounds to a float
                if count > 0
            )
            admitted[candidate.rank] = Admission(candidate.options[j], placement)

    result = PassResult(inventory=inventory, training_used=dict(cycle.training_used))
    by_rank = {c.rank: c for c in candidates}
    for rank, admission in sorted(admitted.items()):
        candidate = by_rank[rank]
        inventory.take(admission.placement)
        if candidate.is_training:
            product = admission.option.product
            result.training_used[product] = result.training_used.get(product, 0) + candidate.workload.total_gpus
        result.admitted[rank] = admission
        result.value += (admission.option.margin + candidate.effective_margin - candidate.best_margin) * candidate.workload.total_gpus
    return finalize(cycle, result)
