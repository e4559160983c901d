"""MarginPolicy objects -> Policy: defaults, bounds, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import Policy, PreemptionRules
from gpuadmit.core.policy import DEFAULT_POLICY, parse_policy, select_policy

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


def policy_object(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": name}, "spec": spec}


def test_the_example_policy_file_is_the_default_policy() -> None:
    assert parse_policy(yaml.safe_load(EXAMPLE_POLICY.read_text())) == DEFAULT_POLICY


def test_an_empty_spec_is_the_default_policy() -> None:
    assert parse_policy(policy_object()) == DEFAULT_POLICY
    assert parse_policy({}) == DEFAULT_POLICY
    assert parse_policy({"kind": "MarginPolicy", "metadata": {"name": "default"}, "spec": None}) == DEFAULT_POLICY


def test_a_full_spec_is_read_field_by_field() -> None:
    policy = parse_policy(
        policy_object(
            name="aggressive",
            gpuCostPerHour={"NVIDIA-L4": 0.5, "default": 1},
            pricePerGPUHour={"inference": 7, "training": 2.5},
            tierMultipliers={"gold": 2, "bronze": 0.5},
            minMarginPerGPUHour=0.25,
            inferenceReserveFraction=0.2,
            preemption={"enabled": False, "minRuntimeSeconds": 60, "minMarginGainPerGPUHour": 1},
            agingPerHour=0.1,
            defaultMaxQueueSeconds=3600,
            maxQueuedPerNamespace=50,
        )
    )
    assert policy == Policy(
        gpu_cost_per_hour={"NVIDIA-L4": 0.5, "default": 1.0},
        price_per_gpu_hour={"inference": 7.0, "training": 2.5},
        tier_multipliers={"gold": 2.0, "bronze": 0.5},
        min_margin_per_gpu_hour=0.25,
        inference_reserve_fraction=0.2,
        preemption=PreemptionRules(enabled=False, min_runtime_seconds=60.0, min_margin_gain_per_gpu_hour=1.0),
        aging_per_hour=0.1,
        default_max_queue_seconds=3600.0,
        max_queued_per_namespace=50,
        name="aggressive",
    )
    assert policy.margin_per_gpu_hour("inference", "gold", "NVIDIA-L4") == pytest.approx(13.5)
    assert policy.margin_per_gpu_hour("training", None, "NVIDIA-A100") == pytest.approx(1.5)


def test_a_bare_spec_is_accepted() -> None:
    policy = parse_policy({"pricePerGPUHour": {"inference": 9}})
    assert policy.price_per_gpu_hour == {"inference": 9.0, "training": 0.0}
    assert policy.name == "default"


def test_a_cost_map_without_default_costs_nothing_for_other_products() -> None:
    policy = parse_policy(policy_object(gpuCostPerHour={"NVIDIA-H100-80GB-HBM3": 3}))
    assert policy.cost_of("NVIDIA-H100-80GB-HBM3") == 3.0
    assert policy.cost_of("NVIDIA-L4") == 0.0


def test_partial_preemption_keeps_the_other_defaults() -> None:
    policy = parse_policy(policy_object(preemption={"enabled": False}))
    assert policy.preemption == PreemptionRules(
        enabled=False,
        min_runtime_seconds=DEFAULT_POLICY.preemption.min_runtime_seconds,
        min_margin_gain_per_gpu_hour=DEFAULT_POLICY.preemption.min_margin_gain_per_gpu_hour,
    )


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"gpuCostPerHour": {"default": -1}}, "spec.gpuCostPerHour.default"),
        ({"gpuCostPerHour": {"NVIDIA-L4": "cheap"}}, "spec.gpuCostPerHour.NVIDIA-L4"),
        ({"gpuCostPerHour": [1, 2]}, "spec.gpuCostPerHour"),
        ({"gpuCostPerHour": {1: 1}}, "spec.gpuCostPerHour"),
        ({"gpuCostPerHour": {f"p{i}": 1 for i in range(257)}}, "spec.gpuCostPerHour"),
        ({"pricePerGPUHour": {"batch": 1}}, "spec.pricePerGPUHour.batch"),
        ({"pricePerGPUHour": {"inference": True}}, "spec.pricePerGPUHour.inference"),
        ({"pricePerGPUHour": {"inference": float("nan")}}, "spec.pricePerGPUHour.inference"),
        ({"pricePerGPUHour": {"inference": float("inf")}}, "spec.pricePerGPUHour.inference"),
        ({"tierMultipliers": {"gold": -2}}, "spec.tierMultipliers.gold"),
        ({"minMarginPerGPUHour": "1"}, "spec.minMarginPerGPUHour"),
        ({"minMarginPerGPUHour": -0.5}, "spec.minMarginPerGPUHour"),
        ({"inferenceReserveFraction": 1.5}, "spec.inferenceReserveFraction"),
        ({"inferenceReserveFraction": -0.1}, "spec.inferenceReserveFraction"),
        ({"preemption": True}, "spec.preemption"),
        ({"preemption": {"enabled": "yes"}}, "spec.preemption.enabled"),
        ({"preemption": {"minRuntimeSeconds": -1}}, "spec.preemption.minRuntimeSeconds"),
        ({"preemption": {"minMarginGain": 1}}, "spec.preemption.minMarginGain"),
        ({"agingPerHour": None}, "spec.agingPerHour"),
        ({"defaultMaxQueueSeconds": -1}, "spec.defaultMaxQueueSeconds"),
        ({"maxQueuedPerNamespace": 0}, "spec.maxQueuedPerNamespace"),
        ({"maxQueuedPerNamespace": 2.5}, "spec.maxQueuedPerNamespace"),
        ({"maxQueuedPerNamespace": "10"}, "spec.maxQueuedPerNamespace"),
        ({"pricePerGpuHour": {"inference": 1}}, "spec.pricePerGpuHour"),
    ],
)
def test_invalid_fields_raise_spec_error_naming_them(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_policy(policy_object(**spec))
    assert raised.value.field == field
    assert raised.value.message


def test_a_spec_that_is_not_a_mapping_is_an_error() -> None:
    for obj in ({"kind": "MarginPolicy", "spec": [1]}, "default", None, 3):
        with pytest.raises(SpecError) as raised:
            parse_policy(obj)  # type: ignore[arg-type]
        assert raised.value.field == "spec"


def test_whole_floats_are_whole_numbers() -> None:
    assert parse_policy(policy_object(maxQueuedPerNamespace=10.0)).max_queued_per_namespace == 10


def test_select_policy_picks_the_named_one() -> None:
    objects = [policy_object("other", minMarginPerGPUHour=9), policy_object("default", minMarginPerGPUHour=1)]
    assert select_policy(objects).min_margin_per_gpu_hour == 1.0
    assert select_policy(objects, "other").min_margin_per_gpu_hour == 9.0
    assert select_policy(objects, "absent") == DEFAULT_POLICY
    assert select_policy([]) == DEFAULT_POLICY


def test_select_policy_passes_policy_instances_through_and_skips_junk() -> None:
    kept = Policy(min_margin_per_gpu_hour=4.0, name="default")
    assert select_policy(["junk", None, kept]) is kept


def test_select_policy_raises_when_the_chosen_one_is_invalid() -> None:
    with pytest.raises(SpecError):
        select_policy([policy_object("default", agingPerHour=-1), policy_object("other")])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
spec_keys = st.sampled_from(
    ["gpuCostPerHour", "pricePerGPUHour", "tierMultipliers", "minMarginPerGPUHour", "inferenceReserveFraction",
     "preemption", "agingPerHour", "defaultMaxQueueSeconds", "maxQueuedPerNamespace", "other"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(spec_keys, json_values, max_size=4))
def test_arbitrary_specs_parse_or_raise_spec_error_only(spec: dict[str, Any]) -> None:
    try:
        policy = parse_policy(policy_object(**spec))
    except SpecError as error:
        assert error.field.startswith("spec")
        return
    assert 0.0 <= policy.inference_reserve_fraction <= 1.0
    assert all(value >= 0 for value in policy.gpu_cost_per_hour.values())
    assert set(policy.price_per_gpu_hour) == {"inference", "training"}


@pytest.mark.parametrize("value, shown", [(10**400, "about 1e+400"), (1e308, "1e+308"), (-(10**30), "-1e+30")])
def test_huge_numbers_are_refused_with_an_abbreviated_message(value: object, shown: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_policy({"spec": {"inferenceReserveFraction": value}})
    assert raised.value.field == "spec.inferenceReserveFraction" and shown in raised.value.message
    assert len(str(raised.value)) < 120
