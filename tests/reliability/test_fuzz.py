"""Bad input, property-based: malformed, extreme and adversarial GPUWorkloads and MarginPolicies
through the three gates a real object passes (CRD schema, admission webhook, parser + engine).

Whatever the input: no exception escapes, no traceback text reaches a message, and every
refusal carries a machine reason and a message that names the offending field.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from gpuadmit.controller.status import decision_message
from gpuadmit.core.engine import decide
from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import Action, InvalidWorkload, Reason
from gpuadmit.core.policy import DEFAULT_POLICY, parse_policy, select_policy
from gpuadmit.core.snapshot import build_snapshot
from gpuadmit.core.validation import apply_json_patch, mutate_workload, validate_workload
from gpuadmit.core.workload import parse_workload
from kubeapi_emulator.resources import specs_from_crd
from tests.invariants import TRACEBACK_MARKERS
from tests.reliability import figures
from tests.reliability.adversarial import policy_objects, workload_objects
from tests.reliability.figures import fuzz_settings

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
NOW = 1_800_000_000.0
SCHEMA_REASONS = {"FieldValueRequired", "FieldValueNotSupported", "FieldValueInvalid"}


def _schema(filename: str) -> Any:
    crd = yaml.safe_load((CRD_DIR / filename).read_text())
    return specs_from_crd(crd)[0].schema


WORKLOAD_SCHEMA = _schema("gpuworkloads.gpuadmit.io.yaml")
POLICY_SCHEMA = _schema("marginpolicies.gpuadmit.io.yaml")

NODES = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"gpu-{index}", "labels": {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}},
     "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]}}
    for index in range(2)
]
NAMESPACES = [{"metadata": {"name": "team-a", "labels": {"gpuadmit.io/tier": "gold"}}}, {"metadata": {"name": "team-b"}}]


def echoes_input(message: str, obj: Any) -> bool:
    """True when a traceback-looking marker in ``message`` was only copied from the input."""
    return "Traceback (most recent call last)" in repr(obj) or 'File "' in repr(obj)


def assert_no_traceback(message: str, obj: Any, where: str) -> None:
    assert isinstance(message, str) and message.strip(), f"{where}: empty message"
    if echoes_input(message, obj):
        return
    for marker in TRACEBACK_MARKERS:
        assert marker not in message, f"{where}: traceback text in {message!r}"


# -- (a) the CRD schema, as the emulated API server applies it ----------------------------------


@fuzz_settings(300)
@given(workload_objects())
def test_schema_validation_of_workloads_never_raises_and_names_fields(obj: Any) -> None:
    figures.count(figures.MALFORMED_INPUTS)
    if not isinstance(obj, dict):
        return  # the server's JSON decoding refuses it before any schema
    admitted, causes = WORKLOAD_SCHEMA.admit(copy.deepcopy(obj))
    assert isinstance(admitted, dict)
    for cause in causes:
        assert cause["reason"] in SCHEMA_REASONS, cause
        assert cause["field"], cause  # every cause names its field
        assert_no_traceback(cause["message"], obj, "schema")


def is_json(obj: Any) -> bool:
    try:
        json.dumps(obj, allow_nan=False)
    except (ValueError, TypeError):
        return False
    return True


@fuzz_settings(300)
@given(policy_objects())
def test_policies_schema_and_parser_agree_and_never_crash(obj: Any) -> None:
    figures.count(figures.MALFORMED_INPUTS)
    if not is_json(obj):
        # NaN and Infinity cannot travel in JSON: the API server refuses such a body before any schema.
        admitted, causes = obj, ["not JSON"]
    elif isinstance(obj, dict):
        admitted, causes = POLICY_SCHEMA.admit(copy.deepcopy(obj))
        for cause in causes:
            assert cause["reason"] in SCHEMA_REASONS and cause["field"], cause
    else:
        admitted, causes = obj, ["not an object"]
    try:
        policy = parse_policy(admitted)
    except SpecError as error:
        assert error.field.startswith("spec"), error.field
        assert_no_traceback(error.message, obj, "parse_policy")
        # Nothing the server stored may be refused by the operator, or no policy could ever apply.
        assert causes, f"the schema accepts what parse_policy refuses: {error}"
        return
    # Accepted: it must decide a real cycle without trouble.
    workload = {"metadata": {"name": "w", "namespace": "team-a", "uid": "u"},
                "spec": {"gpus": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    result = decide(build_snapshot(NODES, [], NAMESPACES, [workload], [policy], NOW))
    assert [d.key for d in result.decisions] == ["team-a/w"]
    margin = result.decisions[0].margin_per_gpu_hour
    assert margin is None or not math.isnan(margin)


# -- (b) the admission webhook ------------------------------------------------------------------


@fuzz_settings(300)
@given(workload_objects(), st.one_of(st.none(), workload_objects()))
def test_webhook_never_raises_and_every_refusal_names_its_field(obj: Any, old: Any) -> None:
    figures.count(figures.MALFORMED_INPUTS)
    result = validate_workload(obj, old, known_products=["NVIDIA-H100-80GB-HBM3"])
    assert result.allowed in (True, False)
    if not result.allowed:
        assert result.reason and result.field, result
        assert result.message.startswith(result.field), result
        assert_no_traceback(result.message, obj, "webhook")
    for warning in result.warnings:
        assert_no_traceback(warning, obj, "webhook warning")
    patch = mutate_workload(obj)
    if patch:
        apply_json_patch(obj, patch)


@fuzz_settings(300)
@given(workload_objects())
def test_what_schema_and_webhook_let_through_the_engine_can_parse(obj: Any) -> None:
    """The server defaults and prunes, then the validating webhook judges the stored shape: an
    object that passes both must never become an InvalidSpec rejection later."""
    figures.count(figures.MALFORMED_INPUTS)
    if not isinstance(obj, dict):
        return
    obj.pop("status", None)
    admitted, causes = WORKLOAD_SCHEMA.admit(copy.deepcopy(obj))
    if causes:
        return
    mutated = apply_json_patch(admitted, mutate_workload(admitted))
    if not validate_workload(mutated).allowed:
        return
    parsed = parse_workload(mutated, DEFAULT_POLICY, {}, now=NOW)
    assert not isinstance(parsed, InvalidWorkload), parsed


# -- (c) parsers and engine ---------------------------------------------------------------------


@fuzz_settings(200)
@given(st.lists(workload_objects(), min_size=1, max_size=6), st.one_of(st.none(), policy_objects()))
def test_engine_decides_every_malformed_cycle_with_reasons_and_no_overcommit(objs: list[Any], policy: Any) -> None:
    figures.count(figures.MALFORMED_INPUTS, len(objs) + (policy is not None))
    policies = [policy] if policy is not None else []
    # Only an invalid policy may stop a snapshot: judge the policy alone first, so a SpecError
    # raised by anything else (a workload the parser should have turned into InvalidSpec) fails.
    try:
        select_policy(policies)
    except SpecError as error:
        assert error.field.startswith("spec"), error
        assert_no_traceback(error.message, policy, "policy")
        with pytest.raises(SpecError) as stopped:
            build_snapshot(NODES, [], NAMESPACES, _unique(objs), policies, NOW)
        assert (stopped.value.field, stopped.value.message) == (error.field, error.message)
        event("policy refused: the snapshot stops")
        return
    event("policy parsed: the cycle is decided")
    snapshot = build_snapshot(NODES, [], NAMESPACES, _unique(objs), policies, NOW)
    result = decide(snapshot)
    expected_keys = sorted(w.key for w in (*snapshot.pending, *snapshot.invalid))
    assert sorted(d.key for d in result.decisions) == expected_keys  # one decision each, none dropped
    used: dict[str, int] = {node.name: 0 for node in snapshot.nodes}
    for held in snapshot.holding:
        for entry in held.placement:
            if entry.node in used:
                used[entry.node] += entry.gpus
    for decision in result.decisions:
        assert isinstance(decision.reason, Reason) and decision.action in Action
        message = decision_message(decision)
        assert_no_traceback(message, objs, f"decision for {decision.key}")
        if decision.reason == Reason.INVALID_SPEC:
            assert decision.field and message.startswith(decision.field), decision
        if decision.action == Action.ADMIT:
            for entry in decision.placement:
                used[entry.node] += entry.gpus
    for preemption in result.preemptions:
        for entry in preemption.freed:
            used[entry.node] -= entry.gpus
    # Holding workloads come from fuzzed statuses and may already overcommit; the engine must not add to it.
    for node in snapshot.nodes:
        assert used[node.name] <= max(node.allocatable, _held_on(snapshot, node.name)), (node.name, used)


def _held_on(snapshot: Any, node: str) -> int:
    return sum(e.gpus for w in snapshot.holding for e in w.placement if e.node == node)


def _unique(objs: list[Any]) -> list[Any]:
    """Names are unique per namespace in a real cluster: keep the first of each."""
    seen, unique = set(), []
    for obj in objs:
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        key = (repr(metadata.get("namespace")), repr(metadata.get("name"))) if isinstance(metadata, dict) else id(obj)
        if key not in seen:
            seen.add(key)
            unique.append(obj)
    return unique
