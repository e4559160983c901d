"""One scheduling cycle: ``decide(snapshot) -> CycleResult``. Pure and deterministic.

The cycle, top to bottom:

1. Static checks per pending workload, from the nodes alone: ``InvalidSpec``
   (nonsense sizes), ``NoNodeCanFit`` (no eligible node could hold a replica
   even when empty, or the gang exceeds every eligible product),
   ``MarginBelowFloor`` (every product that could hold it earns less than the
   floor), then ``QueueTimeout``.
2. Rank the rest by effective margin: the best margin per GPU-hour among the
   products it may use, plus aging; ties by creation time, then key.
3. Place greedily, many per cycle, without head-of-line blocking: each
   workload goes on the product that earns most, best fit inside it, a gang all
   at once or not at all, training never into the inference reserve. One that
   does not fit may preempt cheaper, preemptible, long-enough-running work.
   Greedy in one order can lose margin (a 1-GPU job at 3.1 before an 8-GPU job
   at 3.0 on one 8-GPU node), so the placement runs in a few orders, the best
   ones are improved by ejection chains (move admitted work to make room for
   queued work when that earns more), and the one admitting the most margin
   per hour wins; ties go to rank order.
4. What did not fit is queued (``InsufficientCapacity`` or
   ``InferenceReserve``) with its position; past a namespace's queue limit,
   ``QueueFull``.

Nothing iterates over a dict or set whose order depends on the input order:
nodes are sorted by name, workloads by key, so a shuffled snapshot gives the
same result.

With GPUQuotas (``core/guarantee.py``), work within its tenant's guarantee ranks ahead of the
rest in every order, lending and caps are checked before each placement, a guaranteed workload
that does not fit may reclaim from borrowers, and the ejection chains are skipped.

The package follows the steps: ``prepare`` (1 and 2), ``passes`` (3: the greedy in
several orders, with preemption), ``chains`` (3: the ejection chains that improve the
best passes), ``choose`` (3: the orders run, the best pass chosen), ``messages`` (4: one
decision per workload, with its words); ``cycle`` holds the data they pass along.

``decide`` is a whole cycle, from the snapshot alone. ``IncrementalEngine`` (``incremental``)
keeps its state between cycles -- the free capacity, the ranked queue by kind, the victims,
the inference-reserve ledger -- and for a cycle caused by a few changes runs the same passes on
only the kinds of workload those changes can affect: the same rules and reasons, identical
decisions where the rules determine them, whole cycles when its state cannot be trusted
(policy or node-shape change, restart, quotas). The operator and the simulator run it; its
module docstring gives the contract (an incremental result holds only the decisions that
changed; queue positions are served by ``queue_position``/``queued``).
"""

from __future__ import annotations

import gc

from ..inventory import LayoutMemo
from ..model import CycleResult, Snapshot
from .choose import choose_pass
from .cycle import Admission, Cycle, PassResult, new_pass
from .incremental import Changes, IncrementalEngine
from .messages import bound_by, finalize
from .prepare import prepare

__all__ = ["Admission", "Changes", "Cycle", "IncrementalEngine", "LayoutMemo", "PassResult", "bound_by", "choose_pass", "decide", "finalize", "new_pass", "prepare"]


def decide(snapshot: Snapshot, *, layouts: LayoutMemo | None = None) -> CycleResult:
    """Admit, queue, reject and preempt for one cycle; the same snapshot gives the same result.

    ``layouts``: a caller deciding cycle after cycle on the same nodes (the operator, a replay)
    keeps one, so the node pools and eligibility caches are not derived again each cycle."""
    # A cycle allocates many small objects and frees few: the cyclic collector would rescan
    # the growing heap again and again (a quarter of a 100k cycle) for nothing to collect.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decide(snapshot, layouts)
    finally:
        if collecting:
            gc.enable()


def _decide(snapshot: Snapshot, layouts: LayoutMemo | None) -> CycleResult:
    cycle = prepare(snapshot, layouts)
    return finalize(cycle, choose_pass(cycle))
