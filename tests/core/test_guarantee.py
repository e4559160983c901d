"""GPUQuota rules in the engine, on random snapshots (hypothesis) and small exact cases.

The decide-level scenarios, one per rule, are in tests/cli/test_decide_quota.py.
"""

from __future__ import annotations

from dataclasses import replace

from gpuadmit.core.engine import decide
from gpuadmit.core.model import ANY_PRODUCT, Action, Quota, Reason, Snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from .strategies import PRODUCTS, snapshots
from .test_engine_properties import FAST, gpus_placed_by_node

TEAMS = ("team-a", "team-b")


@st.composite
def with_quotas(draw, **snapshot_options) -> Snapshot:
    snapshot = draw(snapshots(**snapshot_options))
    quotas = {}
    for team in draw(st.lists(st.sampled_from(TEAMS), unique=True, min_size=1)):
        guaranteed = draw(st.dictionaries(st.sampled_from(PRODUCTS + (ANY_PRODUCT,)), st.integers(0, 12), max_size=2))
        quotas[team] = Quota(team, guaranteed, draw(st.one_of(st.none(), st.integers(0, 16))), draw(st.booleans()))
    return replace(snapshot, quotas=quotas, quota_of_namespace={team: team for team in quotas})


def held_by_tenant(snapshot: Snapshot, result, after: bool) -> dict[str, int]:
    gone = {p.key for p in result.preemptions} if after else set()
    held: dict[str, int] = {}
    for workload in snapshot.holding:
        if workload.key not in gone and workload.namespace in snapshot.quota_of_namespace:
            held[workload.namespace] = held.get(workload.namespace, 0) + sum(e.gpus for e in workload.placement)
    if after:
        for decision in result.decisions:
            if decision.action == Action.ADMIT and decision.namespace in snapshot.quota_of_namespace:
                held[decision.namespace] = held.get(decision.namespace, 0) + sum(e.gpus for e in decision.placement)
    return held


def overflow(quota: Quota, usage: dict[str, int]) -> int:
    """GPUs of a usage beyond the per-product guarantees: what "*" must cover."""
    return sum(max(0, g - quota.guaranteed.get(p, 0)) for p, g in usage.items())


def within_guarantee(snapshot: Snapshot) -> set[str]:
    """Holding work within its tenant's guarantee, modelled independently: oldest admissions fill
    the product's guarantee, then "*"."""
    nodes = {node.name: node.product for node in snapshot.nodes}
    used: dict[str, dict[str, int]] = {}
    protected = set()
    for workload in sorted(snapshot.holding, key=lambda w: (w.admitted_at or 0.0, w.key)):
        quota = snapshot.quotas.get(snapshot.quota_of_namespace.get(workload.namespace, ""))
        if quota is None:
            continue
        product, gpus = nodes[workload.placement[0].node], workload.total_gpus
        mine = used.setdefault(quota.name, {})
        after = {**mine, product: mine.get(product, 0) + gpus}

        before_over, after_over = overflow(quota, mine), overflow(quota, after)
        if after_over - before_over <= max(0, quota.guaranteed.get(ANY_PRODUCT, 0) - before_over):
            protected.add(workload.key)
        used[quota.name] = after
    return protected


@FAST
@given(with_quotas(preemption=True))
def test_quotas_never_overcommit_never_preempt_guaranteed_work_and_keep_caps(snapshot: Snapshot) -> None:
    result = decide(snapshot)
    nodes = {node.name: node for node in snapshot.nodes}
    for name, gpus in gpus_placed_by_node(snapshot, result).items():
        assert gpus <= nodes[name].allocatable - nodes[name].gpus_used_by_pods, name
    assert sorted(d.key for d in result.decisions) == sorted([w.key for w in snapshot.pending] + [i.key for i in snapshot.invalid])
    protected = within_guarantee(snapshot)
    holding = {w.key: w for w in snapshot.holding}
    for preemption in result.preemptions:
        assert preemption.key not in protected, preemption
        victim = holding[preemption.key]
        assert victim.preemptible and snapshot.now - (victim.admitted_at or 0) >= snapshot.policy.preemption.min_runtime_seconds
    before, after = held_by_tenant(snapshot, result, False), held_by_tenant(snapshot, result, True)
    for tenant, quota in snapshot.quotas.items():
        if quota.max_gpus is not None:
            assert after.get(tenant, 0) <= max(quota.max_gpus, before.get(tenant, 0)), (tenant, before, after)
    for decision in result.decisions:
        quota = snapshot.quotas.get(snapshot.quota_of_namespace.get(decision.namespace, ""))
        if decision.reason in (Reason.OVER_QUOTA, Reason.EXCEEDS_QUOTA):
            assert quota is not None and quota.max_gpus is not None


@FAST
@given(snapshots())
def test_quotas_that_cannot_bind_change_nothing(snapshot: Snapshot) -> None:
    """No guarantee anywhere, caps only on namespaces no workload uses: today's decisions exactly."""
    inert = replace(
        snapshot,
        quotas={"empty": Quota("empty"), "elsewhere": Quota("elsewhere", {}, max_gpus=0)},
        quota_of_namespace={"team-a": "empty", "team-b": "empty"},
    )
    assert decide(inert) == decide(snapshot)


def test_reports_say_guaranteed_used_and_lent_per_product_and_overcommitment() -> None:
    from gpuadmit.core.guarantee import ProductUsage, quota_reports

    from .strategies import make_holding, make_node, make_snapshot

    nodes = [make_node("h1", 8, "NVIDIA-H100"), make_node("a1", 8, "NVIDIA-A100")]
    holding = [
        make_holding("mine", {"h1": 2}, namespace="research"),  # research uses 2 of its 6 on H100
        make_holding("borrower", {"h1": 5}, namespace="misc"),  # leaves 1 free: 3 of research's 4 idle are lent
    ]
    snapshot = make_snapshot(
        nodes, holding=holding,
        quotas={"research": Quota("research", {"NVIDIA-H100": 6, ANY_PRODUCT: 4}), "big": Quota("big", {"NVIDIA-A100": 9}, created_at=1.0)},
        quota_of_namespace={"research": "research"},
    )  # fmt: skip
    reports = quota_reports(snapshot)
    research = reports["research"]
    # The 8 free A100 are all promised to "big" (9 guaranteed: overcommitted, 1 not covered), so
    # research's "*" guarantee finds no free GPU beyond the per-product ones: all 4 count as lent.
    assert research.products == (ProductUsage("*", 4, 0, 4), ProductUsage("NVIDIA-H100", 6, 2, 3))
    assert (research.guaranteed, research.used, research.lent) == (10, 2, 7)
    assert research.overcommitted == ("*",)  # 19 GPUs guaranteed in all on a cluster of 16
    assert reports["big"].overcommitted == ("NVIDIA-A100",)
    assert reports["big"].products == (ProductUsage("NVIDIA-A100", 9, 0, 1),)
    # Without "big", the free A100 cover the "*" guarantee.
    alone = quota_reports(replace(snapshot, quotas={"research": snapshot.quotas["research"]}))["research"]
    assert alone.products == (ProductUsage("*", 4, 0, 0), ProductUsage("NVIDIA-H100", 6, 2, 3))
    assert alone.overcommitted == ()


@st.composite
def with_strict_quotas(draw) -> Snapshot:
    """Quotas that lend nothing, with per-product guarantees only."""
    snapshot = draw(with_quotas())
    strict = {
        name: replace(quota, guaranteed={p: g for p, g in quota.guaranteed.items() if p != ANY_PRODUCT}, lend_idle=False)
        for name, quota in snapshot.quotas.items()
    }
    return replace(snapshot, quotas=strict)


def lending_slack(snapshot: Snapshot, holding: list, admitted: list) -> dict[str, int]:
    """Per product: free GPUs on schedulable nodes minus the idle guarantees on it."""
    products = {node.name: node.product for node in snapshot.nodes}
    taken: dict[str, int] = {}
    used: dict[str, dict[str, int]] = {}
    for workload, placement in [*holding, *admitted]:
        for entry in placement:
            taken[entry.node] = taken.get(entry.node, 0) + entry.gpus
        tenant = snapshot.quota_of_namespace.get(workload.namespace)
        if tenant is not None and placement:
            product = products[placement[0].node]
            used.setdefault(tenant, {})[product] = used.setdefault(tenant, {}).get(product, 0) + sum(e.gpus for e in placement)
    slack: dict[str, int] = {}
    for node in snapshot.nodes:
        if node.schedulable:
            free = max(0, node.allocatable - node.gpus_used_by_pods - taken.get(node.name, 0))
            slack[node.product] = slack.get(node.product, 0) + free
    for name, quota in snapshot.quotas.items():
        for product, gpus in quota.guaranteed.items():
            if product in slack:
                slack[product] -= max(0, gpus - used.get(name, {}).get(product, 0))
    return slack


@settings(FAST, max_examples=400)  # a borrower meeting an idle guarantee is a rare draw
@given(with_strict_quotas())
def test_nothing_is_lent_by_quotas_that_do_not_lend(snapshot: Snapshot) -> None:
    """With lendIdle false everywhere, a cycle never lets other work into idle guarantees: the
    free GPUs of a product minus its idle guarantees never fall below where they started (or 0)."""
    result = decide(snapshot)
    pending = {w.key: w for w in snapshot.pending}
    preempted = {p.key for p in result.preemptions}
    before = lending_slack(snapshot, [(w, w.placement) for w in snapshot.holding], [])
    after = lending_slack(
        snapshot,
        [(w, w.placement) for w in snapshot.holding if w.key not in preempted],
        [(pending[d.key], d.placement) for d in result.decisions if d.action == Action.ADMIT],
    )
    for product, slack in after.items():
        assert slack >= min(0, before[product]), (product, before[product], slack)
