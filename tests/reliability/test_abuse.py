"""Abuse, without a server: a tenant cannot buy priority, cannot write gpuadmit's keys or status,
cannot read other tenants' names from the metrics, and cannot stall others by flooding the queue."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from gpuadmit.core.engine import decide
from gpuadmit.core.model import Action, Reason
from gpuadmit.core.policy import parse_policy
from gpuadmit.core.snapshot import build_snapshot
from gpuadmit.core.validation import RESERVED_KEY, STATUS_NOT_ALLOWED, validate_workload
from gpuadmit.metrics import Metrics
from tests.reliability import figures
from tests.reliability.adversarial import nasty_text, numbers
from tests.reliability.figures import fuzz_settings

NOW = 1_798_761_600.0 + 7200  # 2027-01-01T02:00:00Z: every workload here was created in the last two hours
POLICY = parse_policy({"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0},
                       "tierMultipliers": {"gold": 1.5}})
PRICE_WORDS = ["price", "priority", "margin", "tier", "pricePerGPUHour", "marginPerGPUHour", "queuePosition",
               "scheduling.k8s.io/priority", "gold", "class"]


def node(name: str, gpus: int) -> dict:
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]}}


def workload(namespace: str, name: str, gpus: int = 4, created: str = "2027-01-01T00:00:00Z", **extra: Any) -> dict:
    obj = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
           "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}", "creationTimestamp": created},
           "spec": {"class": "training", "gpus": gpus, "template": {"spec": {"containers": [
               {"name": "trainer", "image": "pytorch/pytorch:latest", "command": ["torchrun", "train.py"]}]}}}}
    for path, value in extra.items():
        target = obj
        *parents, last = path.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return obj


NAMESPACES = [{"metadata": {"name": "bronze-team"}}, {"metadata": {"name": "gold-team", "labels": {"gpuadmit.io/tier": "gold"}}}]


def decision_for(obj: dict, others: list[dict] = (), nodes: list[dict] | None = None) -> Any:
    snapshot = build_snapshot(nodes or [node("gpu-0", 8)], [], NAMESPACES, [*others, obj], [POLICY], NOW)
    return {d.key: d for d in decide(snapshot).decisions}


# -- a tenant cannot raise its own priority -------------------------------------------------------


gaming_maps = st.dictionaries(st.one_of(st.sampled_from(PRICE_WORDS), st.sampled_from(PRICE_WORDS).map(
    lambda word: f"gpuadmit.io/{word}"), nasty_text), st.one_of(st.sampled_from(["1000", "gold", "inference", "high"]),
                                                             nasty_text), min_size=1, max_size=5)


@fuzz_settings(150)
@given(labels=gaming_maps, annotations=gaming_maps, template_labels=gaming_maps,
       fake_status=st.fixed_dictionaries({}, optional={"marginPerGPUHour": numbers, "queuePosition": numbers,
                                                      "class": st.just("inference")}),
       priority_class=st.sampled_from([None, "system-cluster-critical", "high-priority"]))
def test_price_like_labels_annotations_and_status_do_not_change_margin_or_rank(
        labels: dict, annotations: dict, template_labels: dict, fake_status: dict, priority_class: str | None) -> None:
    figures.count(figures.MALFORMED_INPUTS)
    honest = workload("bronze-team", "honest", gpus=8, created="2027-01-01T00:00:00Z")
    baseline = workload("bronze-team", "gamer", gpus=8, created="2027-01-01T00:01:00Z")
    gamer = copy.deepcopy(baseline)
    gamer["metadata"]["labels"] = labels
    gamer["metadata"]["annotations"] = annotations
    gamer["spec"]["template"]["metadata"] = {"labels": template_labels, "annotations": annotations}
    if priority_class:
        gamer["spec"]["template"]["spec"]["priorityClassName"] = priority_class
    if fake_status:
        gamer["status"] = fake_status  # the API server ignores it on create; here the parser must too

    fair = decision_for(baseline, [honest])
    gamed = decision_for(gamer, [honest])
    if gamed["bronze-team/gamer"].reason is Reason.INVALID_SPEC and \
            str(gamed["bronze-team/gamer"].field).startswith("spec.template.metadata."):
        # Template labels or annotations no pod could carry (the API server would refuse it): refused
        # naming the field, which buys nothing either; the webhook refuses it too.
        assert gamed["bronze-team/honest"].action is Action.ADMIT
        assert not validate_workload(gamer).allowed
        return
    elif priority_class and priority_class.startswith("system-"):
        # The cluster's own priority classes are refused outright (core.podsecurity), by parser and webhook.
        refused = gamed["bronze-team/gamer"]
        assert (refused.action, refused.reason) == (Action.REJECT, Reason.INVALID_SPEC)
        assert "spec.template.spec.priorityClassName" in refused.message
        # The webhook names the first thing it refuses: a reserved key, a status, or the priority class.
        refused_by_webhook = validate_workload(gamer)
        assert not refused_by_webhook.allowed
        assert refused_by_webhook.field in ("spec.template.spec.priorityClassName", "status") or (
            refused_by_webhook.reason == "ReservedKey" and '["gpuadmit.io/' in str(refused_by_webhook.field)), refused_by_webhook
        return
    else:
        assert gamed["bronze-team/gamer"].margin_per_gpu_hour == fair["bronze-team/gamer"].margin_per_gpu_hour
        # Both want the only 8 GPUs: the earlier, honest one keeps the slot whatever the gamer wears.
        assert (gamed["bronze-team/honest"].action, gamed["bronze-team/gamer"].action) == \
            (fair["bronze-team/honest"].action, fair["bronze-team/gamer"].action) == (Action.ADMIT, Action.QUEUE)
    # And the webhook refuses every gpuadmit.io/ key it carries (the class label aside, checked below).
    if any(str(key).lower().startswith("gpuadmit.io/") and key != "gpuadmit.io/class"
           for key in [*labels, *annotations, *template_labels]):
        assert validate_workload(gamer).reason in (RESERVED_KEY, STATUS_NOT_ALLOWED)


def test_only_the_namespace_tier_label_changes_the_price() -> None:
    """The control for the test above: the tier label on the namespace does move the margin."""
    bronze = decision_for(workload("bronze-team", "w"))["bronze-team/w"]
    gold = decision_for(workload("gold-team", "w"))["gold-team/w"]
    assert (bronze.margin_per_gpu_hour, gold.margin_per_gpu_hour) == (2.0 - 1.0, 2.0 * 1.5 - 1.0)
    tier_on_workload = workload("bronze-team", "w", metadata__labels={"gpuadmit.io/tier": "gold"})
    assert decision_for(tier_on_workload)["bronze-team/w"].margin_per_gpu_hour == bronze.margin_per_gpu_hour


def test_declaring_the_pricier_class_does_not_buy_its_price() -> None:
    honest = workload("bronze-team", "w")  # torchrun, no ports: the classifier says training
    lying = workload("bronze-team", "w", spec__class="inference")
    refused = not validate_workload(lying).allowed
    honest_margin = decision_for(honest)["bronze-team/w"].margin_per_gpu_hour
    lying_margin = decision_for(lying)["bronze-team/w"].margin_per_gpu_hour
    assert refused or lying_margin <= honest_margin, (honest_margin, lying_margin)


def test_price_fields_in_the_spec_are_refused_not_honoured() -> None:
    for key in ("price", "pricePerGPUHour", "priority", "marginPerGPUHour", "tier"):
        obj = workload("bronze-team", "w", **{f"spec__{key}": 1000})
        result = validate_workload(obj)
        assert not result.allowed and result.field == f"spec.{key}", (key, result)
        decision = decision_for(obj)["bronze-team/w"]
        assert (decision.action, decision.reason, decision.field) == (Action.REJECT, Reason.INVALID_SPEC, f"spec.{key}")


# -- the webhook keeps gpuadmit's keys and status to gpuadmit ------------------------------------


RESERVED = ["gpuadmit.io/tier", "gpuadmit.io/price", "gpuadmit.io/workload", "gpuadmit.io/replica",
            "GPUADMIT.IO/priority", "team.gpuadmit.io/margin"]


@pytest.mark.parametrize("key", RESERVED)
@pytest.mark.parametrize("where", ["metadata__labels", "metadata__annotations",
                                   "spec__template__metadata__labels", "spec__template__metadata__annotations"])
def test_webhook_refuses_reserved_labels_and_annotations(key: str, where: str) -> None:
    result = validate_workload(workload("bronze-team", "w", **{where: {key: "x", "app": "fine"}}))
    assert (result.allowed, result.reason) == (False, RESERVED_KEY)
    assert key in result.field and key in result.message
    # Added on update too, not only on create.
    old = workload("bronze-team", "w")
    new = workload("bronze-team", "w", **{where: {key: "x"}})
    assert validate_workload(new, old).reason == RESERVED_KEY


def test_webhook_refuses_a_class_label_that_lies_and_status_on_create() -> None:
    lying = workload("bronze-team", "w", metadata__labels={"gpuadmit.io/class": "inference"})
    result = validate_workload(lying)
    assert (result.allowed, result.reason, result.field) == (False, RESERVED_KEY, 'metadata.labels["gpuadmit.io/class"]')
    assert validate_workload(workload("bronze-team", "w", metadata__labels={"gpuadmit.io/class": "training"})).allowed
    with_status = workload("bronze-team", "w", status={"phase": "Admitted", "placement": [{"node": "gpu-0", "gpus": 4}]})
    result = validate_workload(with_status)
    assert (result.allowed, result.reason, result.field) == (False, STATUS_NOT_ALLOWED, "status")


# -- metrics do not leak tenants' names -----------------------------------------------------------


SECRET_NAMESPACE, SECRET_NAME = "acme-confidential", "project-nightingale-merger"


def scrape_after_cycles(per_namespace: bool) -> str:
    metrics = Metrics(per_namespace=per_namespace)
    workloads = [workload(SECRET_NAMESPACE, f"{SECRET_NAME}-{index}", gpus=4, created=f"2027-01-01T00:0{index}:00Z")
                 for index in range(4)]
    workloads.append(workload(SECRET_NAMESPACE, "broken-" + SECRET_NAME, gpus=0))
    nodes = [node("gpu-0", 8)]
    for _ in range(3):  # admit, queue, reject, then the same again (counted once)
        snapshot = build_snapshot(nodes, [], NAMESPACES, workloads, [POLICY], NOW)
        result = decide(snapshot)
        metrics.observe_cycle(snapshot, result, 0.01)
        for decision in result.decisions:
            metrics.observe_status_written(decision, 0.05, 1.0)
    metrics.observe_preemption("training", "inference")
    metrics.observe_api_error("patch", 409)
    return generate_latest(metrics.registry).decode()


def test_metrics_carry_no_workload_or_namespace_names_by_default() -> None:
    text = scrape_after_cycles(per_namespace=False)
    assert "gpuadmit_" in text
    assert SECRET_NAME not in text and "nightingale" not in text
    assert SECRET_NAMESPACE not in text and "acme" not in text


def test_per_namespace_metrics_are_opt_in_and_never_name_workloads() -> None:
    text = scrape_after_cycles(per_namespace=True)
    assert SECRET_NAMESPACE in text  # the opt-in does what it says (so the test above could fail)
    assert SECRET_NAME not in text


# -- resource exhaustion --------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_queued_from_one_namespace_do_not_stall_the_others() -> None:
    limit, flood = 100, 10_000
    policy = parse_policy({"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0},
                           "maxQueuedPerNamespace": limit})
    nodes = [node(f"gpu-{index}", 8) for index in range(4)]
    flooders = [workload("flood", f"spam-{index:05d}", gpus=8, created="2027-01-01T00:00:00Z") for index in range(flood)]
    others = [workload(namespace, f"job-{index}", gpus=8, created="2027-01-01T01:00:00Z")
              for namespace in ("team-a", "team-b", "team-c") for index in range(3)]
    started = time.perf_counter()
    snapshot = build_snapshot(nodes, [], NAMESPACES, [*flooders, *others], [policy], NOW)
    result = decide(snapshot)
    elapsed = time.perf_counter() - started
    figures.count("workloads in one engine cycle (exhaustion)", len(flooders) + len(others))
    figures.FIGURES["exhaustion cycle seconds (10,009 workloads)"] = round(elapsed, 2)
    by_key = {d.key: d for d in result.decisions}
    assert len(by_key) == flood + len(others)
    flood_outcomes = [by_key[f"flood/{w['metadata']['name']}"] for w in flooders]
    admitted = sum(d.action == Action.ADMIT for d in flood_outcomes)
    queued = sum(d.action == Action.QUEUE for d in flood_outcomes)
    full = [d for d in flood_outcomes if d.reason == Reason.QUEUE_FULL]
    assert queued == limit and len(full) == flood - admitted - limit
    assert all(d.action == Action.REJECT and "flood" in d.message for d in full)
    for other in others:
        decision = by_key[f"{other['metadata']['namespace']}/{other['metadata']['name']}"]
        assert decision.reason != Reason.QUEUE_FULL
        assert decision.action == Action.ADMIT or decision.queue_position <= limit + len(others)
    # Generous on a loaded 2-core machine: the point is minutes would be a stall, seconds are not.
    assert elapsed < 60, f"one cycle over {flood} queued workloads took {elapsed:.1f}s"
