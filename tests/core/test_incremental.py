"""The incremental engine against whole cycles, on seeded random event sequences.

After every event (a workload created or deleted, a running one finishing, time passing, a
node added or removed) the incremental engine decides the new snapshot, and ``decide`` -- a whole
cycle -- decides the same snapshot. Where the greedy rules determine the outcome (no ejection
chains: clusters above ``SWAP_UP_TO_NODES`` nodes) every admission, placement, rejection and
preemption must be identical, and so must the reason of every workload the incremental cycle
decided and every queue position; on small clusters, where the chains' search runs on part of the
queue only, the margin per hour of what runs must stay within 1% of the whole cycle's.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from gpuadmit.core.engine import Changes, IncrementalEngine, decide
from gpuadmit.core.engine.chains import SWAP_UP_TO_NODES
from gpuadmit.core.engine.incremental import _aligned
from gpuadmit.core.engine.prepare import Ranker
from gpuadmit.core.inventory import Inventory
from gpuadmit.core.model import (
    Action,
    CycleResult,
    Decision,
    GpuNode,
    Policy,
    PreemptionRules,
    Snapshot,
    Taint,
    Toleration,
    Workload,
)

NOW = 1_800_000_000.0
PRODUCTS = (("H100", 8, 81920, 2.4), ("A100", 8, 40960, 1.6), ("L4", 4, 23034, 0.7), ("T4", 1, 15360, 0.35))
DEDICATED = Taint("dedicated", "inference", "NoSchedule")


def policy(preemption: bool, reserve: float, aging: float) -> Policy:
    return Policy(
        gpu_cost_per_hour={p: cost for p, _, _, cost in PRODUCTS} | {"default": 1.0},
        price_per_gpu_hour={"inference": 5.0, "training": 2.5},
        tier_multipliers={"gold": 1.5, "bronze": 0.8},
        inference_reserve_fraction=reserve,
        preemption=PreemptionRules(enabled=preemption, min_runtime_seconds=600, min_margin_gain_per_gpu_hour=0.5),
        aging_per_hour=aging,
        default_max_queue_seconds=7200.0,
    )


GIB = 2**30


def node(rng: random.Random, index: int, most_gpus: int = 8, resources: bool = False) -> GpuNode:
    product, gpus, memory, _ = rng.choice(PRODUCTS)
    gpus = min(gpus, most_gpus)
    return GpuNode(
        name=f"node-{index:05d}", allocatable=gpus, product=product, memory_mib=memory,
        taints=(DEDICATED,) if rng.random() < 0.05 else (),
        resources=(("cpu", gpus * 12_000), ("memory", gpus * 96 * GIB)) if resources else (),
    )


class World:
    """The cluster the events change: what the operator's cache would hold."""

    def __init__(self, rng: random.Random, nodes: int, rules: Policy, most_gpus: int, resources: bool = False) -> None:
        self.rng = rng
        self.policy = rules
        self.now = NOW
        self.most_gpus = most_gpus
        self.resources = resources  # CPU and memory on nodes and workloads (issue 11's ledger)
        self.nodes = {n.name: n for n in (node(rng, i, most_gpus, resources) for i in range(nodes))}
        self.next_node = nodes
        self.pending: dict[str, Workload] = {}
        self.holding: dict[str, Workload] = {}
        self.serial = 0
        self.node_events = 0.0  # share of events that add or remove a node, beyond the usual 5%
        self.time_events = 0.0  # share of events that let time pass, beyond the usual 10%
        self.pod_events = 0.0  # share of events where pods come or go without a workload changing
        self.missing: set[tuple[str, str]] = set()  # (workload, node) of running workloads whose pods are gone

    def snapshot(self) -> Snapshot:
        own = {(w.key, e.node): e.gpus for w in self.holding.values() for e in w.placement if (w.key, e.node) not in self.missing}
        own_resources = {(w.key, e.node): e.resources for w in self.holding.values() for e in w.placement
                         if e.resources and (w.key, e.node) not in self.missing}
        return Snapshot(
            nodes=tuple(self.nodes.values()), holding=tuple(self.holding.values()),
            pending=tuple(self.pending.values()), policy=self.policy, now=self.now, gpus_of_own_pods=own,
            resources_of_own_pods=own_resources,
        )

    def new_workload(self) -> None:
        rng = self.rng
        self.serial += 1
        inference = rng.random() < 0.4
        gang = rng.random() < 0.1
        created = self.now - rng.choice((0, 0, 60, 600))
        gpus = min(self.most_gpus, rng.choice((4, 8)) if gang else rng.choice((1, 1, 1, 2, 4, 8)))
        requests = (("cpu", gpus * rng.choice((4_000, 12_000, 16_000))), ("memory", gpus * rng.choice((32, 96, 128)) * GIB))
        workload = Workload(
            namespace=f"team-{rng.randint(0, 3)}", name=f"w-{self.serial:05d}",
            requests=requests if self.resources else (),
            gpus_per_replica=gpus,
            replicas=rng.randint(2, 4) if gang else 1,
            workload_class="inference" if inference else "training",
            gpu_products=tuple(rng.sample([p for p, *_ in PRODUCTS], rng.randint(1, 2))) if rng.random() < 0.3 else (),
            min_gpu_memory_mib=rng.choice((0, 0, 30000)),
            preemptible=not inference,
            max_queue_seconds=7200.0,
            tier=rng.choice((None, "gold", "bronze")),
            tolerations=(Toleration("dedicated", "Equal", "inference", "NoSchedule"),) if inference and rng.random() < 0.5 else (),
            created_at=created, queued_since=created,
        )
        self.pending[workload.key] = workload

    def apply(self, result: CycleResult) -> None:
        """Admissions start running (their pods on the nodes), rejections leave, victims requeue."""
        for preemption in result.preemptions:
            victim = self.holding.pop(preemption.key)
            self.pending[victim.key] = dataclasses.replace(victim, phase="Preempted", placement=(), admitted_at=None, queued_since=self.now)
            self.use(victim, -1)
        for decision in result.decisions:
            workload = self.pending.get(decision.key)
            if workload is None:
                continue
            if decision.action is Action.ADMIT:
                del self.pending[decision.key]
                running = dataclasses.replace(workload, phase="Running", placement=decision.placement, admitted_at=self.now)
                self.holding[running.key] = running
                self.use(running, +1)
            elif decision.action is Action.REJECT:
                del self.pending[decision.key]

    def use(self, workload: Workload, sign: int) -> None:
        """The workload's pods start (+1) or end (-1) on its nodes: GPUs and other resources used there."""
        for entry in workload.placement:
            if (workload.key, entry.node) in self.missing:  # its pod there is gone already
                self.missing.discard((workload.key, entry.node))
                continue
            self.use_on(entry.node, sign * entry.gpus, tuple((r, sign * a) for r, a in entry.resources))

    def use_on(self, name: str, gpus: int, resources: tuple[tuple[str, int], ...] = ()) -> None:
        """Pods on a node take (or give back) GPUs and other resources."""
        n = self.nodes.get(name)
        if n is not None:
            used = dict(n.resources_used_by_pods)
            for resource, amount in resources:
                used[resource] = used.get(resource, 0) + amount
            self.nodes[name] = dataclasses.replace(
                n, gpus_used_by_pods=n.gpus_used_by_pods + gpus,
                resources_used_by_pods=tuple(sorted((r, a) for r, a in used.items() if a)),
            )

    def event(self) -> str:
        rng = self.rng
        roll = rng.random()
        if self.node_events and rng.random() < self.node_events:
            roll = 0.95 + rng.random() * 0.05  # a node added or removed, below
        elif self.time_events and rng.random() < self.time_events:
            roll = 0.85 + rng.random() * 0.1  # time passes: running work becomes preemptible
        elif self.pod_events and rng.random() < self.pod_events:
            return self.pods_come_or_go()
        if roll < 0.45 or not (self.holding or self.pending):
            for _ in range(rng.choice((1, 1, 1, 3))):
                self.new_workload()
            return "new"
        if roll < 0.75 and self.holding:
            finished = self.holding.pop(rng.choice(sorted(self.holding)))
            self.use(finished, -1)
            return "finished"
        if roll < 0.85 and self.pending:
            del self.pending[rng.choice(sorted(self.pending))]
            return "deleted"
        if roll < 0.95:
            self.now += rng.choice((30.0, 300.0, 700.0, 3000.0))
            return "time"
        if roll < 0.975:
            added = node(rng, self.next_node, self.most_gpus, self.resources)
            if self.node_events and rng.random() < 0.5:  # named amid the others: the known nodes' indexes move
                added = dataclasses.replace(added, name=f"node-{rng.randrange(self.next_node):05d}-{self.next_node}")
            self.nodes[added.name] = added
            self.next_node += 1
            return "node added"
        empty = sorted(name for name, n in self.nodes.items() if not any(e.node == name for w in self.holding.values() for e in w.placement))
        if empty:
            del self.nodes[rng.choice(empty)]
        return "node removed"


    def pods_come_or_go(self) -> str:
        """A pod that is not gpuadmit's takes or frees a GPU on a node, or a running workload's pod on
        one of its nodes is gone (its workload still holds the placement): only nodes and own pods change."""
        rng = self.rng
        entries = [(w, e) for w in self.holding.values() for e in w.placement if (w.key, e.node) not in self.missing and e.node in self.nodes]
        if entries and rng.random() < 0.5:
            workload, entry = rng.choice(entries)
            self.missing.add((workload.key, entry.node))
            self.use_on(entry.node, -entry.gpus, tuple((r, -a) for r, a in entry.resources))
            return "own pod gone"
        name = rng.choice(sorted(self.nodes))
        n = self.nodes[name]
        gpus = 1 if n.gpus_used_by_pods < n.allocatable and rng.random() < 0.6 else -1 if n.gpus_used_by_pods > 0 else 0
        self.use_on(name, gpus)
        return "foreign pod"


def margin_per_hour(world: World, result: CycleResult) -> float:
    """What runs after the result is applied earns, per hour (the engine's own objective)."""
    preempted = {p.key for p in result.preemptions}
    total = 0.0
    running = [w for k, w in world.holding.items() if k not in preempted]
    pending = world.pending
    admitted = [(pending[d.key], d.placement) for d in result.decisions if d.action is Action.ADMIT and d.key in pending]
    for workload, placement in [(w, w.placement) for w in running] + admitted:
        for entry in placement:
            product = world.nodes[entry.node].product
            total += world.policy.margin_per_gpu_hour(workload.workload_class, workload.tier, product) * entry.gpus
    return total


def summary(decision: Decision) -> tuple:
    return decision.action, decision.placement


def told(before: Snapshot | None, after: Snapshot) -> Changes | None:
    """What changed between two snapshots, as a caller that tracks its objects would tell it."""
    if before is None:
        return None

    def diff(old: tuple[Workload, ...], new: tuple[Workload, ...]) -> dict[str, Workload | None]:
        was, now = {w.key: w for w in old}, {w.key: w for w in new}
        changed: dict[str, Workload | None] = {k: None for k in was if k not in now}
        changed.update((k, w) for k, w in now.items() if was.get(k) is not w)
        return changed

    def changed_keys(old: dict, new: dict) -> set:
        return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}

    same_nodes = [n.name for n in before.nodes] == [n.name for n in after.nodes]
    return Changes(
        pending=diff(before.pending, after.pending), holding=diff(before.holding, after.holding),
        nodes=[a.name for a, b in zip(after.nodes, before.nodes, strict=True) if a is not b] if same_nodes else None,
        own_pods=changed_keys(before.gpus_of_own_pods, after.gpus_of_own_pods)
        | changed_keys(before.resources_of_own_pods, after.resources_of_own_pods),
    )


def run(seed: int, nodes: int, events: int, rules: Policy, *, most_gpus: int = 8, backlog: int = 0, exact: bool,
        tell: bool = False, resources: bool = False, node_events: float = 0.0, time_events: float = 0.0,
        pod_events: float = 0.0) -> dict[str, int]:
    """``backlog`` workloads first (more than fits: the queue is long), then ``events`` events;
    ``exact``: decisions must be identical (else: margin within 1%); ``tell``: the changes are
    told (``Changes``) rather than found by the engine."""
    rng = random.Random(seed)
    world = World(rng, nodes, rules, most_gpus, resources)
    world.node_events = node_events
    world.time_events = time_events
    world.pod_events = pod_events
    for _ in range(backlog):
        world.new_workload()
    engine = IncrementalEngine()
    view: dict[str, Decision] = {}
    counts = {"incremental": 0, "whole": 0, "differed": 0, "admitted": 0, "preempted": 0, "nodes added incrementally": 0}
    previous: Snapshot | None = None
    event = ""
    for step in range(events):
        snapshot = world.snapshot()
        mine = engine.decide(snapshot, told(previous, snapshot) if tell else None)
        previous = snapshot
        whole = decide(snapshot)
        counts["incremental" if not engine.last_full else "whole"] += 1
        counts["nodes added incrementally"] += event == "node added" and not engine.last_full
        if not engine.last_full:
            counts["admitted"] += sum(1 for d in mine.decisions if d.action is Action.ADMIT)
            counts["preempted"] += len(mine.preemptions)
        if engine.last_full:
            view = {d.key: d for d in mine.decisions}
        else:
            view.update((d.key, d) for d in mine.decisions)
        expected = {d.key: d for d in whole.decisions}
        context = f"seed {seed}, step {step}"
        if exact:
            for key, decision in expected.items():
                assert summary(view[key]) == summary(decision), f"{context}: {key}: {view[key]} != {decision}"
                if decision.action is Action.QUEUE:
                    assert engine.queue_position(key) == decision.queue_position, f"{context}: position of {key}"
            for decision in mine.decisions:
                assert decision.reason == expected[decision.key].reason, f"{context}: reason of {decision.key}"
                assert decision.message == expected[decision.key].message or decision.action is Action.QUEUE, context
            assert sorted(p.key for p in mine.preemptions) == sorted(p.key for p in whole.preemptions), context
        else:
            mine_margin, whole_margin = margin_per_hour(world, mine), margin_per_hour(world, whole)
            assert mine_margin >= whole_margin - 0.01 * abs(whole_margin) - 1e-6, f"{context}: {mine_margin} < {whole_margin}"
            if any(summary(view[k]) != summary(d) for k, d in expected.items() if k in view):
                counts["differed"] += 1
        world.apply(mine)
        for key in [k for k in view if k not in world.pending]:
            del view[key]
        event = world.event()
    return counts


# Where the rules decide: the ejection chains run only without preemption, without an inference
# reserve and on at most SWAP_UP_TO_NODES nodes; every other case must match exactly.
@pytest.mark.parametrize(("seed", "nodes", "preemption", "tell", "resources"), [
    (1, SWAP_UP_TO_NODES + 200, False, False, False), (2, SWAP_UP_TO_NODES + 200, True, True, False),
    (3, 60, True, False, False), (4, 60, True, True, False), (5, 60, True, False, True), (10, 60, True, True, True),
])
def test_identical_to_whole_cycles_where_the_rules_decide(seed: int, nodes: int, preemption: bool, tell: bool, resources: bool) -> None:
    large = nodes > SWAP_UP_TO_NODES
    counts = run(seed, nodes=nodes, events=100 if large else 150, rules=policy(preemption, reserve=0.1, aging=0.05),
                 most_gpus=2 if large else 8, backlog=1_500 if large else 150, exact=True, tell=tell, resources=resources)
    # The test exercises the incremental path: it admits there, and preempts when it may.
    assert counts["incremental"] > 5 * counts["whole"] and counts["admitted"] > 10, counts
    assert counts["preempted"] > 5 or not preemption, counts


@pytest.mark.parametrize(("seed", "nodes", "preemption", "tell", "resources"), [
    (11, SWAP_UP_TO_NODES + 200, True, True, False), (12, 60, True, False, False), (13, 60, True, True, True), (14, 60, False, True, False),
])
def test_nodes_added_are_decided_incrementally_and_identically(seed: int, nodes: int, preemption: bool, tell: bool, resources: bool) -> None:
    # A node that joins a pool of alike nodes is decided incrementally (the state moves onto the new
    # layout); a removal, or a node that makes a new pool, is a whole cycle.
    large = nodes > SWAP_UP_TO_NODES
    counts = run(seed, nodes=nodes, events=100 if large else 150, rules=policy(preemption, reserve=0.1, aging=0.05),
                 most_gpus=2 if large else 8, backlog=1_500 if large else 150, exact=True, tell=tell, resources=resources,
                 node_events=0.2)
    assert counts["nodes added incrementally"] >= 5 and counts["admitted"] > 10, counts


@pytest.mark.parametrize(("seed", "nodes", "tell", "resources"), [
    (15, SWAP_UP_TO_NODES + 200, True, False), (16, 60, False, False), (17, 60, True, True),
])
def test_victims_that_come_of_age_are_decided_identically(seed: int, nodes: int, tell: bool, resources: bool) -> None:
    # Time passes often, so running work keeps becoming preemptible: each new victim brings in only
    # the queued kinds that may choose it, and a pass skips kinds whose preemption failed alike.
    large = nodes > SWAP_UP_TO_NODES
    counts = run(seed, nodes=nodes, events=100 if large else 150, rules=policy(True, reserve=0.1, aging=0.05),
                 most_gpus=2 if large else 8, backlog=1_500 if large else 150, exact=True, tell=tell, resources=resources,
                 time_events=0.3)
    assert counts["incremental"] > 5 * counts["whole"] and counts["preempted"] > 5, counts


@pytest.mark.parametrize(("seed", "nodes", "tell", "resources"), [
    (18, SWAP_UP_TO_NODES + 200, True, False), (19, 60, True, False), (20, 60, False, True), (22, 60, True, True),
])
def test_pods_that_come_or_go_alone_are_decided_identically(seed: int, nodes: int, tell: bool, resources: bool) -> None:
    # Nodes and own pods change without a workload changing (other pods, a running workload's pod
    # gone): told as Changes.nodes and Changes.own_pods, or found by the engine.
    large = nodes > SWAP_UP_TO_NODES
    counts = run(seed, nodes=nodes, events=100 if large else 150, rules=policy(True, reserve=0.1, aging=0.05),
                 most_gpus=2 if large else 8, backlog=1_500 if large else 150, exact=True, tell=tell, resources=resources,
                 pod_events=0.4)
    assert counts["incremental"] > 5 * counts["whole"] and counts["admitted"] > 10, counts


def test_relayout_keeps_the_kinds_exactly_when_their_options_stay() -> None:
    # Ranker.relayout checks only the kinds that may gain an option (its index); the verdict must be
    # what checking every kind against the grown layout says.
    verdicts = {True: 0, False: 0}
    for seed in range(40):
        rng = random.Random(seed)
        rules = policy(False, reserve=0.0, aging=0.0)
        world = World(rng, rng.randint(3, 12), rules, most_gpus=8)
        for _ in range(60):
            world.new_workload()
        snapshot = world.snapshot()
        ranker = Ranker(rules, Inventory.from_snapshot(snapshot))
        members: dict[int, Workload] = {}
        for workload in snapshot.pending:
            made = ranker.candidate(workload, NOW)
            if not isinstance(made, Decision):
                members.setdefault(made.kind, workload)
        before = dict(ranker.options_of_kind)
        known = {(n.product, n.memory_mib, n.taints) for n in snapshot.nodes}
        added = [n for n in (node(rng, 1000 + i) for i in range(rng.randint(1, 3))) if (n.product, n.memory_mib, n.taints) in known]
        if not added:
            continue
        grown = Inventory.from_snapshot(dataclasses.replace(snapshot, nodes=snapshot.nodes + tuple(added)))
        pools = {grown.pool_of[grown.index_by_name[n.name]] for n in added} - {-1}
        kept = ranker.relayout(grown, members.get, pools)
        fresh = Ranker(rules, grown)
        same = all(fresh.options_of_kind[made.kind] == before[kind]
                   for kind, workload in members.items() for made in (fresh.candidate(workload, NOW),) if not isinstance(made, Decision))
        same = same and not any(isinstance(fresh.candidate(w, NOW), Decision) for w in members.values())
        assert kept == same, f"seed {seed}: relayout says {kept}, every kind checked says {same}"
        verdicts[kept] += 1
    assert verdicts[True] > 5 and verdicts[False] > 2, verdicts  # both answers were exercised


def test_snapshots_compared_side_by_side_find_what_sets_of_ids_find() -> None:
    # The engine compares a snapshot's workloads with the last one's by walking both lists where
    # they hold the same objects; the added and removed must be what set differences find, and an
    # object out of order (or listed twice) must send it to the sets.
    rng = random.Random(21)
    made = [Workload(namespace="team", name=f"w-{i:04d}", gpus_per_replica=1, replicas=1, workload_class="training") for i in range(400)]
    answered = 0
    for trial in range(300):
        old = tuple(rng.sample(made, rng.randint(0, 60)))
        new = list(old)
        for _ in range(rng.choice((0, 1, 2, 5, 70))):
            roll = rng.random()
            if roll < 0.4 and new:
                del new[rng.randrange(len(new))]
            elif roll < 0.8:
                new.insert(rng.randint(0, len(new)), dataclasses.replace(rng.choice(made)))  # a new object
            elif roll < 0.9 and len(new) > 1:
                new.insert(rng.randint(0, len(new)), new.pop(rng.randrange(len(new))))  # moved
            elif new:
                new.insert(rng.randint(0, len(new)), rng.choice(new))  # listed twice
        known = set(map(id, old))
        found = _aligned(old, tuple(new), known)
        if found is None:
            continue
        added, removed = found
        answered += 1
        assert len(set(map(id, new))) == len(new) or len(set(map(id, added))) < len(added), f"trial {trial}: a duplicate passed"
        assert {id(w) for w in added} == set(map(id, new)) - known, f"trial {trial}: added"
        assert {id(w) for w in removed} == known - set(map(id, new)), f"trial {trial}: removed"
        assert len(removed) == len({id(w) for w in removed}), f"trial {trial}"
    assert answered > 100


@pytest.mark.parametrize(("seed", "preemption", "resources"), [(6, False, False), (7, False, True), (8, False, False), (117, True, False)])
def test_margin_within_one_percent_where_the_search_decides(seed: int, preemption: bool, resources: bool) -> None:
    # Without a reserve the chains run whenever nothing may be preempted (with preemption on: until
    # running work is old enough).
    counts = run(seed, nodes=60, events=150, rules=policy(preemption, reserve=0.0, aging=0.0 if not preemption else 0.05),
                 backlog=150, exact=False, resources=resources)
    assert counts["incremental"] > 5 * counts["whole"] and counts["admitted"] > 10, counts


def test_an_incremental_result_holds_only_what_changed_and_positions_are_served() -> None:
    world = World(random.Random(9), 40, policy(False, reserve=0.0, aging=0.0), most_gpus=8)
    for _ in range(200):
        world.new_workload()
    engine = IncrementalEngine()
    world.apply(engine.decide(world.snapshot()))
    assert engine.last_full and engine.last_full_reason == "first cycle"
    world.apply(engine.decide(world.snapshot()))  # the admissions seen running: nothing to decide
    queued_before = list(engine.queued())
    world.new_workload()
    newcomer = next(k for k, w in world.pending.items() if w.name == f"w-{world.serial:05d}")
    snapshot = world.snapshot()
    result = engine.decide(snapshot)
    whole = decide(snapshot)
    assert not engine.last_full
    assert [d.key for d in result.decisions] == [newcomer]  # nobody else's decision changed
    expected = {d.key: d for d in whole.decisions}
    assert result.decisions[0].action is expected[newcomer].action
    queued = [d.key for d in sorted(whole.decisions, key=lambda d: d.queue_position or 0) if d.action is Action.QUEUE]
    assert list(engine.queued()) == queued and len(engine) == len(queued)
    assert [k for k in queued if k != newcomer] == queued_before
    assert all(engine.queue_position(k) == expected[k].queue_position for k in queued)
    assert engine.queue_position("nobody/here") is None


def test_a_caller_that_told_less_than_changed_gets_a_whole_cycle_not_an_error() -> None:
    # A workload replaced by an equal object but not listed in Changes: the engine keeps the old
    # object; when a later comparison meets the new one, it runs a whole cycle.
    world = World(random.Random(23), 20, policy(True, reserve=0.1, aging=0.05), most_gpus=8)
    for _ in range(80):
        world.new_workload()
    engine = IncrementalEngine()
    world.apply(engine.decide(world.snapshot()))
    world.apply(engine.decide(world.snapshot()))
    key = sorted(world.pending)[0]
    world.pending[key] = dataclasses.replace(world.pending[key])  # equal, not the same object
    engine.decide(world.snapshot(), Changes())  # told nothing
    del world.pending[sorted(world.pending)[0]]
    snapshot = world.snapshot()
    mine = engine.decide(snapshot)  # compared: meets the object it was not told of
    assert engine.last_full
    expected = {d.key: summary(d) for d in decide(snapshot).decisions}
    assert {d.key: summary(d) for d in mine.decisions} == expected
