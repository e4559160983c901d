"""decide(): every reason and rule, one small cluster at a time."""

from __future__ import annotations

from gpuadmit.core.engine import decide
from gpuadmit.core.model import Action, InvalidWorkload, PlacementEntry, PreemptionRules, Reason, Toleration

from .strategies import NOW, make_holding, make_node, make_policy, make_snapshot, make_workload


def by_name(result):
    return {d.name: d for d in result.decisions}


def test_admits_with_placement_margin_and_class() -> None:
    workload = make_workload("chat", 4, class_reason="image vllm/vllm-openai")
    decision = decide(make_snapshot([make_node("gpu-1", 8)], [workload])).decisions[0]
    assert (decision.action, decision.reason) == (Action.ADMIT, Reason.ADMITTED)
    assert decision.placement == (PlacementEntry("gpu-1", 4),)
    assert decision.margin_per_gpu_hour == 4.4  # 6.00 - 1.60
    assert (decision.workload_class, decision.class_reason) == ("inference", "image vllm/vllm-openai")
    assert "gpu-1" in decision.message and "4.40" in decision.message
    assert decision.queue_position is None


def test_lands_on_the_product_that_earns_most_then_best_fit() -> None:
    nodes = [make_node("h100", 8, "NVIDIA-H100"), make_node("a100-big", 8), make_node("a100-small", 4), make_node("l4", 4, "NVIDIA-L4")]
    decision = decide(make_snapshot(nodes, [make_workload("w", 2, gpu_products=("NVIDIA-H100", "NVIDIA-A100"))])).decisions[0]
    # L4 is cheaper but not allowed; A100 earns more than H100; the 4-GPU A100 node fits best.
    assert decision.placement == (PlacementEntry("a100-small", 2),)
    assert decision.margin_per_gpu_hour == 4.4


def test_tier_multiplier_scales_the_price() -> None:
    decision = decide(make_snapshot([make_node("n", 8)], [make_workload("w", tier="gold")], policy=make_policy(tier_multipliers={"gold": 1.5}))).decisions[0]
    assert decision.margin_per_gpu_hour == 7.4  # 6 x 1.5 - 1.6


def test_a_gang_is_admitted_whole_on_one_product_or_queued() -> None:
    nodes = [make_node("a1", 4), make_node("a2", 4), make_node("a3", 4, gpus_used_by_pods=4), make_node("h1", 4, "NVIDIA-H100")]
    result = decide(make_snapshot(nodes, [make_workload("gang", 4, 3), make_workload("pair", 4, 2, namespace="team-b")]))
    decisions = by_name(result)
    # Three replicas are free only across products: a gang may not mix them, so it waits.
    assert decisions["gang"].action == Action.QUEUE
    assert "gang of 3x4" in decisions["gang"].message
    assert decisions["pair"].placement == (PlacementEntry("a1", 4), PlacementEntry("a2", 4))


def test_no_node_can_fit_a_replica_even_when_empty() -> None:
    result = decide(make_snapshot([make_node("a", 4), make_node("b", 2)], [make_workload("huge", 8)]))
    decision = result.decisions[0]
    assert (decision.action, decision.reason) == (Action.REJECT, Reason.NO_NODE_CAN_FIT)
    assert decision.message == "needs 8 GPUs per replica; the largest eligible node has 4"


def test_no_node_can_fit_when_the_gang_exceeds_every_product() -> None:
    decision = decide(make_snapshot([make_node("a", 8), make_node("b", 8)], [make_workload("gang", 8, 3)])).decisions[0]
    assert decision.reason == Reason.NO_NODE_CAN_FIT
    assert "at most 2" in decision.message


def test_no_node_offers_the_product() -> None:
    decision = decide(make_snapshot([make_node("a", 8)], [make_workload("w", gpu_products=("NVIDIA-B200",))])).decisions[0]
    assert decision.reason == Reason.NO_NODE_CAN_FIT
    assert decision.message == "no node offers product NVIDIA-B200"


def test_no_node_can_fit_explains_excluded_nodes() -> None:
    nodes = [make_node("cordoned", 8, schedulable=False, unschedulable_reason="cordoned"), make_node("small", 8, "NVIDIA-L4")]
    decision = decide(make_snapshot(nodes, [make_workload("w", min_gpu_memory_mib=40000)])).decisions[0]
    assert decision.reason == Reason.NO_NODE_CAN_FIT
    assert "1 have too little GPU memory" in decision.message and "1 are unschedulable (cordoned)" in decision.message


def test_busy_nodes_do_not_make_a_workload_unfit_only_queued() -> None:
    decision = decide(make_snapshot([make_node("a", 8, gpus_used_by_pods=8)], [make_workload("w", 8)])).decisions[0]
    assert (decision.action, decision.reason) == (Action.QUEUE, Reason.INSUFFICIENT_CAPACITY)
    assert decision.message == "needs 8 GPUs of NVIDIA-A100; the best eligible node has 0 free (queue position 1)"
    assert decision.margin_per_gpu_hour == 4.4


def test_margin_below_floor_is_rejected_with_best_margin_and_floor() -> None:
    policy = make_policy(min_margin_per_gpu_hour=1.5)
    nodes = [make_node("a", 8), make_node("l4", 8, "NVIDIA-L4")]
    result = decide(make_snapshot(nodes, [make_workload("cheap", 1, workload_class="training"), make_workload("fine", 1)], policy=policy))
    decision = by_name(result)["cheap"]
    assert (decision.action, decision.reason) == (Action.REJECT, Reason.MARGIN_BELOW_FLOOR)
    # The best it could earn is 2.00 - 0.70 on L4.
    assert decision.message == "earns at most 1.30 per GPU-hour (as training on NVIDIA-L4), below the policy floor of 1.50"
    assert decision.margin_per_gpu_hour == 1.3
    assert by_name(result)["fine"].action == Action.ADMIT


def test_a_product_below_the_floor_is_skipped_for_one_above_it() -> None:
    policy = make_policy(min_margin_per_gpu_hour=0.0)
    nodes = [make_node("h100", 8, "NVIDIA-H100")]  # training earns 2.00 - 2.40 < 0 there
    decision = decide(make_snapshot(nodes, [make_workload("t", workload_class="training")], policy=policy)).decisions[0]
    assert decision.reason == Reason.MARGIN_BELOW_FLOOR
    assert decision.margin_per_gpu_hour == -0.4


def test_queue_timeout_rejects_a_workload_that_waited_too_long() -> None:
    workloads = [
        make_workload("old", 1, queued_since=NOW - 7200, max_queue_seconds=3600.0),
        make_workload("young", 1, queued_since=NOW - 60, max_queue_seconds=3600.0),
        make_workload("patient", 1, queued_since=NOW - 10**6, max_queue_seconds=None),
    ]
    decisions = by_name(decide(make_snapshot([make_node("a", 8)], workloads)))
    assert (decisions["old"].action, decisions["old"].reason) == (Action.REJECT, Reason.QUEUE_TIMEOUT)
    assert "2h 0m" in decisions["old"].message and "1h 0m" in decisions["old"].message
    assert decisions["young"].action == Action.ADMIT
    assert decisions["patient"].action == Action.ADMIT


def test_queue_full_rejects_the_lowest_ranked_excess_of_a_namespace() -> None:
    policy = make_policy(max_queued_per_namespace=1, tier_multipliers={"gold": 1.5})
    workloads = [
        make_workload("fits", 8, namespace="team-a"),
        make_workload("first", 8, namespace="team-a", tier="gold"),
        make_workload("second", 8, namespace="team-a"),
        make_workload("other", 8, namespace="team-b"),
    ]
    decisions = by_name(decide(make_snapshot([make_node("a", 8)], workloads, policy=policy)))
    assert decisions["first"].action == Action.ADMIT  # gold ranks first
    assert decisions["fits"].reason == Reason.INSUFFICIENT_CAPACITY
    assert (decisions["second"].action, decisions["second"].reason) == (Action.REJECT, Reason.QUEUE_FULL)
    assert decisions["other"].reason == Reason.INSUFFICIENT_CAPACITY
    assert [decisions[n].queue_position for n in ("fits", "other")] == [1, 2]


def test_rank_by_margin_then_age_then_key_and_positions_count_up() -> None:
    workloads = [
        make_workload("b-train", 8, workload_class="training", created_at=NOW - 500),
        make_workload("a-train", 8, workload_class="training", created_at=NOW - 500),
        make_workload("older-train", 8, workload_class="training", created_at=NOW - 900),
        make_workload("infer", 8, created_at=NOW - 10),
    ]
    result = decide(make_snapshot([make_node("busy", 8, gpus_used_by_pods=8)], workloads))
    assert [d.name for d in result.decisions] == ["infer", "older-train", "a-train", "b-train"]
    assert [d.queue_position for d in result.decisions] == [1, 2, 3, 4]


def test_aging_lifts_a_long_waiting_workload_in_rank() -> None:
    workloads = [
        make_workload("waited", 8, workload_class="training", queued_since=NOW - 10 * 3600),
        make_workload("fresh", 8, queued_since=NOW),
    ]
    node = [make_node("a", 8)]
    assert by_name(decide(make_snapshot(node, workloads)))["fresh"].action == Action.ADMIT
    aged = decide(make_snapshot(node, workloads, policy=make_policy(aging_per_hour=1.0)))
    assert by_name(aged)["waited"].action == Action.ADMIT  # 0.4 + 10 x 1.0 outranks 4.4
    assert by_name(aged)["waited"].margin_per_gpu_hour == 0.4  # the margin it earns, aging aside


def test_no_head_of_line_blocking() -> None:
    workloads = [make_workload("big", 8, tier="gold"), make_workload("small-1", 2), make_workload("small-2", 2)]
    decisions = by_name(decide(make_snapshot([make_node("a", 4)], workloads, policy=make_policy(tier_multipliers={"gold": 2.0}))))
    assert decisions["big"].reason == Reason.NO_NODE_CAN_FIT
    decisions = by_name(decide(make_snapshot([make_node("a", 8, gpus_used_by_pods=4)], workloads, policy=make_policy(tier_multipliers={"gold": 2.0}))))
    assert decisions["big"].action == Action.QUEUE
    assert decisions["small-1"].action == decisions["small-2"].action == Action.ADMIT


def test_inference_reserve_keeps_training_off_the_last_gpus() -> None:
    policy = make_policy(inference_reserve_fraction=0.25)  # of 16 A100 GPUs, 4 for inference
    nodes = [make_node("a", 8), make_node("b", 8)]
    holding = [make_holding("running", {"a": 8})]
    workloads = [make_workload("train", 8, workload_class="training"), make_workload("small", 4, workload_class="training", namespace="team-c")]
    decisions = by_name(decide(make_snapshot(nodes, workloads, holding=holding, policy=policy)))
    assert (decisions["train"].action, decisions["train"].reason) == (Action.QUEUE, Reason.INFERENCE_RESERVE)
    assert "4 GPUs kept for inference" in decisions["train"].message
    assert decisions["small"].action == Action.ADMIT  # 8 + 4 = 12 = 16 - 4
    inference = decide(make_snapshot(nodes, [make_workload("serve", 8)], holding=holding, policy=policy)).decisions[0]
    assert inference.action == Action.ADMIT


def test_reserve_is_not_blamed_when_the_gpus_are_simply_not_free() -> None:
    policy = make_policy(inference_reserve_fraction=0.5)
    decision = decide(make_snapshot([make_node("a", 8, gpus_used_by_pods=8)], [make_workload("t", 8, workload_class="training")], policy=policy)).decisions[0]
    assert decision.reason == Reason.INSUFFICIENT_CAPACITY


def test_holding_reservations_count_once_with_their_own_pods() -> None:
    nodes = [make_node("a", 8, gpus_used_by_pods=2)]
    holding = [make_holding("job", {"a": 6})]
    pending = [make_workload("w", 2)]
    assert decide(make_snapshot(nodes, pending, holding=holding)).decisions[0].action == Action.QUEUE
    # Two of the six reserved GPUs are the job's own pods, already counted in gpus_used_by_pods.
    snapshot = make_snapshot(nodes, pending, holding=holding, gpus_of_own_pods={("team-b/job", "a"): 2})
    assert decide(snapshot).decisions[0].placement == (PlacementEntry("a", 2),)


def test_tolerations_let_a_workload_use_a_tainted_node() -> None:
    from gpuadmit.core.model import Taint

    nodes = [make_node("tainted", 8, taints=(Taint("dedicated", "inference", "NoSchedule"),))]
    plain = decide(make_snapshot(nodes, [make_workload("w")])).decisions[0]
    assert plain.reason == Reason.NO_NODE_CAN_FIT and "taint" in plain.message
    tolerant = make_workload("w", tolerations=(Toleration("dedicated", "Equal", "inference", "NoSchedule"),))
    assert decide(make_snapshot(nodes, [tolerant])).decisions[0].action == Action.ADMIT


def test_packs_for_margin_not_only_by_margin_per_gpu() -> None:
    # Greedy by margin per GPU-hour would admit the 1-GPU job (3.1) and strand 7 GPUs;
    # the 8-GPU job at 3.0 earns 24.0 per hour against 3.1.
    policy = make_policy(price_per_gpu_hour={"inference": 4.7, "training": 4.6})
    workloads = [make_workload("one", 1), make_workload("eight", 8, workload_class="training")]
    decisions = by_name(decide(make_snapshot([make_node("a", 8)], workloads, policy=policy)))
    assert decisions["eight"].action == Action.ADMIT
    assert decisions["one"].action == Action.QUEUE
    assert [d.name for d in decide(make_snapshot([make_node("a", 8)], workloads, policy=policy)).decisions] == ["one", "eight"]


def test_a_flexible_workload_leaves_the_only_suitable_product_to_a_picky_one() -> None:
    nodes = [make_node("h", 4, "NVIDIA-H100"), make_node("l4", 4, "NVIDIA-L4")]
    workloads = [make_workload("flexible", 4, tier="gold"), make_workload("picky", 4, gpu_products=("NVIDIA-L4",))]
    decisions = by_name(decide(make_snapshot(nodes, workloads, policy=make_policy(tier_multipliers={"gold": 1.5}))))
    assert decisions["flexible"].placement == (PlacementEntry("h", 4),)
    assert decisions["picky"].placement == (PlacementEntry("l4", 4),)


PREEMPTION = PreemptionRules(enabled=True, min_runtime_seconds=600, min_margin_gain_per_gpu_hour=0.5)


def test_preempts_the_cheapest_victims_and_says_so() -> None:
    nodes = [make_node("a", 8), make_node("b", 8)]
    holding = [
        make_holding("cheap", {"a": 8}, tier="bronze"),
        make_holding("dear", {"b": 8}),
    ]
    policy = make_policy(preemption=PREEMPTION, tier_multipliers={"bronze": 0.5})
    result = decide(make_snapshot(nodes, [make_workload("chat", 8)], holding=holding, policy=policy))
    decision = result.decisions[0]
    assert decision.action == Action.ADMIT and decision.placement == (PlacementEntry("a", 8),)
    assert "team-b/cheap" in decision.message
    assert [(p.key, p.preempted_by, p.reason, p.freed) for p in result.preemptions] == [
        ("team-b/cheap", "team-a/chat", Reason.PREEMPTED_BY_HIGHER_MARGIN, (PlacementEntry("a", 8),))
    ]


def test_preemption_respects_runtime_preemptibility_and_gain() -> None:
    nodes = [make_node("a", 8)]
    pending = [make_workload("chat", 8)]
    policy = make_policy(preemption=PREEMPTION)
    cases = {
        "too young": make_holding("v", {"a": 8}, ran_seconds=60),
        "not preemptible": make_holding("v", {"a": 8}, preemptible=False),
        "gain too small": make_holding("v", {"a": 8}, workload_class="inference", tier="bronze"),
    }
    for case, victim in cases.items():
        policy_here = make_policy(preemption=PREEMPTION, tier_multipliers={"bronze": 0.95}) if case == "gain too small" else policy
        result = decide(make_snapshot(nodes, pending, holding=[victim], policy=policy_here))
        assert result.decisions[0].action == Action.QUEUE, case
        assert result.preemptions == (), case
    result = decide(make_snapshot(nodes, pending, holding=[make_holding("v", {"a": 8})], policy=make_policy(preemption=PreemptionRules(enabled=False))))
    assert result.preemptions == ()


def test_preemption_prunes_unneeded_victims_and_frees_only_what_is_needed() -> None:
    nodes = [make_node("a", 4), make_node("b", 4)]
    holding = [make_holding("v1", {"a": 2}), make_holding("v2", {"a": 2}), make_holding("v3", {"b": 4}, tier="bronze")]
    policy = make_policy(preemption=PREEMPTION, tier_multipliers={"bronze": 0.5})
    result = decide(make_snapshot(nodes, [make_workload("chat", 4)], holding=holding, policy=policy))
    # v3 loses 4 x (1.0 - 1.6) < 0, the cheapest loss; one victim on one node is enough.
    assert [p.name for p in result.preemptions] == ["v3"]
    assert result.decisions[0].placement == (PlacementEntry("b", 4),)


def test_a_victim_is_preempted_once_and_a_gang_victim_frees_all_its_nodes() -> None:
    nodes = [make_node("a", 4), make_node("b", 4)]
    holding = [make_holding("gang", {"a": 4, "b": 4})]
    policy = make_policy(preemption=PREEMPTION)
    result = decide(make_snapshot(nodes, [make_workload("x", 4), make_workload("y", 4)], holding=holding, policy=policy))
    assert [p.name for p in result.preemptions] == ["gang"]
    assert result.preemptions[0].freed == (PlacementEntry("a", 4), PlacementEntry("b", 4))
    assert {d.name: d.action for d in result.decisions} == {"x": Action.ADMIT, "y": Action.ADMIT}


def test_invalid_workloads_are_rejected_last_with_their_field() -> None:
    invalid = (InvalidWorkload("team-z", "bad", "spec.gpus", "spec.gpus must be between 1 and 64"),)
    result = decide(make_snapshot([make_node("a", 8)], [make_workload("ok"), make_workload("zero", 0)], invalid=invalid))
    assert [d.name for d in result.decisions] == ["ok", "zero", "bad"]
    zero, bad = result.decisions[1], result.decisions[2]
    assert (zero.reason, zero.field) == (Reason.INVALID_SPEC, "spec.gpus")
    assert (bad.action, bad.reason, bad.field, bad.message) == (Action.REJECT, Reason.INVALID_SPEC, "spec.gpus", "spec.gpus must be between 1 and 64")


def test_empty_cluster_and_empty_queue() -> None:
    assert decide(make_snapshot()).decisions == ()
    decision = decide(make_snapshot([], [make_workload("w")])).decisions[0]
    assert decision.reason == Reason.NO_NODE_CAN_FIT and decision.message == "the cluster has no GPU nodes"


def test_many_admissions_in_one_cycle() -> None:
    nodes = [make_node(f"n{i:02d}", 8) for i in range(10)]
    result = decide(make_snapshot(nodes, [make_workload(f"w{i:02d}", 2) for i in range(40)]))
    assert all(d.action == Action.ADMIT for d in result.decisions)
    assert sum(e.gpus for d in result.decisions for e in d.placement) == 80


def test_nonsense_numbers_in_nodes_and_placements_do_not_crash_the_cycle() -> None:
    nodes = [
        make_node("nan", float("nan")),  # type: ignore[arg-type]
        make_node("none", None, memory_mib=None),  # type: ignore[arg-type]
        make_node("ok", 4, gpus_used_by_pods="2"),  # type: ignore[arg-type]
    ]
    from dataclasses import replace

    holding = [replace(make_holding("odd", {"ok": 1, "gone": 3}), placement=(PlacementEntry("ok", None), PlacementEntry("gone", 3)))]  # type: ignore[arg-type]
    result = decide(make_snapshot(nodes, [make_workload("w", 2), make_workload("big", 4)], holding=holding, gpus_of_own_pods={("team-b/odd", "ok"): "x"}))
    decisions = by_name(result)
    assert decisions["w"].placement == (PlacementEntry("ok", 2),)
    assert decisions["big"].action == Action.QUEUE


def test_nonsense_times_and_limits_do_not_crash_the_cycle() -> None:
    workloads = [make_workload("a", created_at=None, queued_since=None), make_workload("b", max_queue_seconds="soon")]  # type: ignore[arg-type]
    decisions = by_name(decide(make_snapshot([make_node("n", 8)], workloads)))
    assert decisions["a"].action == decisions["b"].action == Action.ADMIT


def test_a_failed_preemption_gives_back_exactly_what_it_released(monkeypatch) -> None:
    """The victim's own pods request 6 GPUs on a reservation of 2: releasing it frees 6. Should the
    placement after that fail, the undo must take back those 6 (``take`` of the placement would take
    back only 2 and leave 4 GPUs free that pods still use)."""
    from gpuadmit.core.engine import passes, prepare
    from gpuadmit.core.inventory import Inventory

    nodes = [make_node("a", 8, gpus_used_by_pods=6)]
    holding = [make_holding("cheap", {"a": 2}, tier="bronze")]
    policy = make_policy(preemption=PREEMPTION, tier_multipliers={"bronze": 0.5})
    snapshot = make_snapshot(nodes, [make_workload("chat", 8)], holding=holding, policy=policy,
                             gpus_of_own_pods={("team-b/cheap", "a"): 6})
    assert decide(snapshot).decisions[0].action == Action.ADMIT  # the preemption works when placing works
    cycle = prepare(snapshot)
    before = (list(cycle.inventory.raw_free), list(cycle.inventory.free))
    monkeypatch.setattr(Inventory, "place", lambda self, pools, g, replicas: None)
    result = passes.run_pass(cycle, cycle.placeable, allow_preemption=True)
    assert result.admitted == {}
    assert (result.inventory.raw_free, result.inventory.free) == before
    assert result.training_used == cycle.training_used
