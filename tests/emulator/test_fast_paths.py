"""The emulator's fast paths agree with the plain implementations they stand in for.

- Validation: ``fastjsonschema`` (compiled once per schema) decides first and ``jsonschema``
  words the causes; on many valid and mutated objects both must reach the same verdict, and
  ``ObjectSchema.admit``/``admit_status`` must answer exactly what pruning, defaulting and
  ``jsonschema`` alone answer.
- Pruning and defaulting compiled per schema equal ``apply_defaults(prune(...))``.
- Responses and watch events carry the bytes ``json.dumps`` gives, each event once per watcher.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeapi_emulator import EmulatedApiServer
from kubeapi_emulator.schema import ObjectSchema, _causes, apply_defaults, compile_prune_and_default, prune
from tests.emulator.conftest import requires_emulator

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.emulator


def crd_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            for version in crd["spec"]["versions"]:
                schemas[f"{crd['spec']['names']['kind']}/{version['name']}"] = version["schema"]["openAPIV3Schema"]
    return schemas


SYNTHETIC = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "exclusiveMaximum": True, "maximum": 10},
                "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1.5},
                "port": {"x-kubernetes-int-or-string": True},
                "portEnum": {"x-kubernetes-int-or-string": True, "enum": [80, "http"]},
                "note": {"type": "string", "nullable": True, "maxLength": 3, "minLength": 1},
                "mode": {"type": "string", "nullable": True, "enum": ["a", "b"]},
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "flag": {"type": "boolean", "default": False},
                "labels": {"type": "object", "maxProperties": 2, "minProperties": 1,
                           "additionalProperties": {"type": "string", "maxLength": 4}},
                "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "default": "x"}, "n": {"type": "integer"}}}},
                "choice": {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "string", "maxLength": 1}]},
                "notZero": {"type": "integer", "not": {"enum": [0]}},
                "tuple": {"type": "array", "items": {"type": "number", "nullable": True}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "typedLeaf": {"type": "object"},
                "nested": {"type": "object", "default": {"inner": 2}, "properties": {
                    "inner": {"type": "integer", "maximum": 5}, "deep": {"type": "object", "properties": {
                        "leaf": {"type": "string", "default": "d"}}}}},
            },
        },
        "status": {"type": "object", "properties": {
            "phase": {"type": "string", "enum": ["A", "B"]},
            "count": {"type": "integer", "nullable": True, "minimum": 0},
            "conditions": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
                "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False"]}}}},
        }},
    },
}

SCHEMAS = {**crd_schemas(), "Synthetic": SYNTHETIC}
COMPILED = {name: ObjectSchema(schema) for name, schema in SCHEMAS.items()}


def _examples() -> dict[str, list[dict[str, Any]]]:
    policy = yaml.safe_load((REPO / "examples" / "policy.yaml").read_text())
    now = "2024-05-01T12:00:00Z"
    workload = {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
        "metadata": {"name": "w", "namespace": "ns"},
        "spec": {"class": "training", "gpus": 2, "replicas": 1, "gpuProducts": ["NVIDIA-A100"],
                 "minGpuMemoryMiB": 40000, "preemptible": True, "maxQueueSeconds": None,
                 "template": {"spec": {"containers": [{"name": "t", "image": "i", "command": ["torchrun"]}]}}},
        "status": {"phase": "Admitted", "class": "training", "classReason": "torchrun", "reason": "Admitted",
                   "message": "admitted", "marginPerGPUHour": 0.8, "queuePosition": None,
                   "placement": [{"node": "n1", "gpus": 2, "replicas": 1}], "admittedAt": now,
                   "queuedSince": None, "preemptions": 0, "preemptedBy": None, "observedGeneration": 1,
                   "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": "ok",
                                   "lastTransitionTime": now, "observedGeneration": 1}]},
    }
    policy_status = {**policy, "status": {"acceptedSpec": {"a": 1}, "observedGeneration": 2, "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Valid", "message": "", "lastTransitionTime": now}]}}
    synthetic = {
        "apiVersion": "x/v1", "kind": "Synthetic", "metadata": {"name": "s"},
        "spec": {"size": 3, "ratio": 0.5, "port": "http", "portEnum": 80, "note": "ab", "mode": None, "name": "abc",
                 "labels": {"k": "v"}, "items": [{"name": "i", "n": 1}], "choice": 7, "notZero": 1,
                 "tuple": [1.5, None], "free": {"x": [1, {"y": None}]}, "typedLeaf": {"dropped": 1},
                 "nested": {"deep": {}}},
        "status": {"phase": "A", "count": None, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    return {"GPUWorkload/v1alpha1": [workload], "MarginPolicy/v1alpha1": [policy, policy_status],
            "Synthetic": [synthetic]}


EXAMPLES = _examples()


def enum_values(schema: Any) -> set[Any]:
    found: set[Any] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "enum":
                found |= {item for item in value if isinstance(item, (str, int, float, bool, type(None)))}
            else:
                found |= enum_values(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= enum_values(item)
    return found


def property_names(schema: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                found |= set(value)
            found |= property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= property_names(item)
    return found


ENUMS = sorted(enum_values(SCHEMAS), key=repr)
KEYS = sorted(property_names(SCHEMAS))

scalars = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, 1, -1, 2, 5, 9, 10, 11, 63, 64, 65, 1024, 1025, 0.0, 0.5, 1.0, 1.5, -0.0, 1e300, 2**63]),
    st.integers(), st.floats(allow_nan=False),
    st.text(max_size=6), st.sampled_from(["", "a", "abc", "abcd", "ABC", "abc\n", "ä", "x" * 64, "1", "http"]),
    st.sampled_from(ENUMS),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def mutate(data: st.DataObject, obj: dict[str, Any]) -> dict[str, Any]:
    """One to three random edits anywhere below the top level: replace, delete, add, null."""
    obj = copy.deepcopy(obj)
    for _ in range(data.draw(st.integers(1, 3))):
        candidates = [path for path in paths(obj) if path and path[0] != "metadata"]
        path = data.draw(st.sampled_from(candidates))
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        edit = data.draw(st.sampled_from(["replace", "delete", "add", "null"]))
        if edit == "replace":
            parent[path[-1]] = data.draw(json_values)
        elif edit == "null":
            parent[path[-1]] = None
        elif edit == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[data.draw(st.sampled_from(KEYS) | st.text(max_size=4))] = data.draw(json_values)
            elif isinstance(target, list):
                target.append(data.draw(json_values))
            else:
                parent[path[-1]] = data.draw(json_values)
    return obj


def reference_admit(schema: ObjectSchema, obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """``ObjectSchema.admit`` as it was before the fast paths: prune, default, ``jsonschema``."""
    kept = {key: obj[key] for key in ("apiVersion", "kind", "metadata") if key in obj}
    body = {key: value for key, value in obj.items() if key not in kept}
    body = apply_defaults(prune(body, schema.structural), schema.structural)
    causes: list[dict[str, str]] = []
    for error in sorted(schema._validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path]):
        causes.extend(_causes(error))
    return {**kept, **body}, causes


def reference_admit_status(schema: ObjectSchema, obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    if "status" not in obj:
        return obj, []
    part = apply_defaults(prune({"status": obj["status"]}, schema._status_schema), schema._status_schema)
    causes: list[dict[str, str]] = []
    for error in sorted(schema._status_validator.iter_errors(part), key=lambda e: [str(p) for p in e.absolute_path]):
        causes.extend(_causes(error))
    return {**obj, "status": part["status"]}, causes


def same(a: Any, b: Any) -> bool:
    """Equality that also holds for NaN in the same place, and tells 1 from 1.0 and True."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def has_final_newline(value: Any) -> bool:
    if isinstance(value, dict):
        return any(has_final_newline(item) for item in value.values())
    if isinstance(value, list):
        return any(has_final_newline(item) for item in value)
    return isinstance(value, str) and value.endswith("\n")


def assert_same_verdict(fast_valid: Any, validator: Any, instance: Any) -> None:
    """The compiled validator accepts exactly what jsonschema accepts. One known difference:
    fastjsonschema anchors a pattern's ``$`` at the very end, where Python's ``re`` (and so
    jsonschema) also matches before a final newline; it rejects "abc\n" for ``^[a-z]+$`` then,
    and jsonschema, asked next, accepts it. Never the other way round, which would matter."""
    valid = not any(True for _ in validator.iter_errors(instance))
    if fast_valid(instance):
        assert valid, instance
    else:
        assert not valid or has_final_newline(instance), instance


def check_agreement(name: str, obj: dict[str, Any]) -> None:
    schema = COMPILED[name]
    before = copy.deepcopy(obj)
    admitted, causes = schema.admit(obj)
    expected, expected_causes = reference_admit(schema, obj)
    assert same(admitted, expected)
    assert causes == expected_causes
    # The raw verdicts too: the compiled validator and jsonschema on the pruned, defaulted body.
    body = {key: value for key, value in admitted.items() if key not in ("apiVersion", "kind", "metadata")}
    assert_same_verdict(schema._fast_valid, schema._validator, body)

    admitted, causes = schema.admit_status(obj)
    expected, expected_causes = reference_admit_status(schema, obj)
    assert same(admitted, expected)
    assert causes == expected_causes
    if "status" in obj:
        part = {"status": admitted["status"]}
        assert_same_verdict(schema._fast_status_valid, schema._status_validator, part)
    assert same(obj, before)  # admitting never modifies what it is given


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_valid_both_ways(name):
    for obj in EXAMPLES[name]:
        assert COMPILED[name].admit(obj)[1] == []
        check_agreement(name, obj)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_objects_get_the_same_verdict_and_causes(name, data):
    obj = mutate(data, data.draw(st.sampled_from(EXAMPLES[name])))
    check_agreement(name, obj)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_arbitrary_values_prune_and_default_like_the_plain_functions(name, value):
    schema = COMPILED[name].structural
    expected = apply_defaults(prune(value, schema), schema)
    assert same(compile_prune_and_default(schema)(value), expected)
    check_agreement(name, {"apiVersion": "v", "kind": "K", "metadata": {"name": "o"},
                           **(value if isinstance(value, dict) else {"spec": value})})


@pytest.mark.parametrize("name, obj", [
    ("Synthetic", {"spec": {"size": 3, "name": "abc\n"}}),            # "$" before a final newline
    ("Synthetic", {"spec": {"size": True}}),                          # a bool is not an integer
    ("Synthetic", {"spec": {"size": 3.0}}),                           # nor is 3.0, in Draft 4
    ("Synthetic", {"spec": {"size": 3, "portEnum": True}}),           # True == 1 in Python, not in JSON
    ("Synthetic", {"spec": {"size": 3, "ratio": float("nan")}}),
    ("Synthetic", {"spec": {"size": 3, "ratio": float("inf")}}),
    ("Synthetic", {"spec": {"size": 3, "note": "ääää"}}),             # lengths in characters
    ("Synthetic", {"spec": {"size": 2**70}}),
    ("Synthetic", {"spec": {"size": 3, "labels": {}}}),
    ("Synthetic", {"spec": {"size": 3, "choice": 4}}),
    ("Synthetic", {"spec": {"size": 3, "notZero": 0}}),
    ("GPUWorkload/v1alpha1", {"spec": {"gpus": 1, "template": {}, "preemptible": 1}}),
    ("GPUWorkload/v1alpha1", {"spec": {"gpus": 1, "template": {}}, "status": {"class": None, "placement": None}}),
    ("GPUWorkload/v1alpha1", {"spec": {"gpus": 1, "template": {}}, "status": {"placement": [{"gpus": 0}]}}),
    ("GPUWorkload/v1alpha1", {"spec": None}),
    ("GPUWorkload/v1alpha1", {}),
])
def test_edge_cases(name, obj):
    check_agreement(name, {"apiVersion": "v", "kind": "K", "metadata": {"name": "o"}, **obj})


# -- encoding: once per object, the bytes json.dumps gives ----------------------------------------

CRDS = [REPO / "crds"]
WORKLOADS = "/apis/gpuadmit.io/v1alpha1/namespaces/default/gpuworkloads"


async def _read_events(response: aiohttp.ClientResponse, count: int) -> list[bytes]:
    lines = []
    while len(lines) < count:
        line = await response.content.readline()
        assert line, "the watch ended early"
        lines.append(line)
    return lines


@requires_emulator
async def test_responses_and_watch_events_are_json_dumps_of_the_objects():
    async with EmulatedApiServer(crds=CRDS) as url, aiohttp.ClientSession() as session:
        everything = await session.get(url + "/apis/gpuadmit.io/v1alpha1/gpuworkloads?watch=true")
        selected = await session.get(url + WORKLOADS + "?watch=true&labelSelector=pick%3Dyes")
        bodies = []
        for index, labels in enumerate([{"pick": "yes"}, {"pick": "no"}]):
            response = await session.post(url + WORKLOADS, json={
                "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
                "metadata": {"name": f"w{index}", "labels": labels},
                "spec": {"gpus": 1, "template": {"spec": {"containers": []}}, "unknown": "pruned"}})
            assert response.status == 201
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            bodies.append(await response.read())
        patched = await session.patch(url + WORKLOADS + "/w0/status", data=json.dumps(
            {"metadata": {"resourceVersion": json.loads(bodies[0])["metadata"]["resourceVersion"]},
             "status": {"phase": "Admitted", "placement": [{"node": "n", "gpus": 1}]}}),
            headers={"Content-Type": "application/merge-patch+json"})
        assert patched.status == 200 and patched.headers["Content-Type"] == "application/json; charset=utf-8"
        bodies.append(await patched.read())
        # The label leaves the selection: DELETED for the selective watcher, MODIFIED for the other.
        relabelled = await session.patch(url + WORKLOADS + "/w0", data=json.dumps({"metadata": {"labels": {"pick": "no"}}}),
                                         headers={"Content-Type": "application/merge-patch+json"})
        bodies.append(await relabelled.read())

        for body in bodies:
            assert body == json.dumps(json.loads(body)).encode()
        all_events = await _read_events(everything, 4)
        assert [json.loads(line)["type"] for line in all_events] == ["ADDED", "ADDED", "MODIFIED", "MODIFIED"]
        for line, body in zip(all_events, bodies):
            event = json.loads(line)
            assert line == json.dumps(event).encode() + b"\n"
            assert json.dumps(event["object"]).encode() == body  # the object as its response showed it
        selected_events = await _read_events(selected, 3)
        assert [(json.loads(line)["type"], json.loads(line)["object"]["metadata"]["name"]) for line in selected_events] \
            == [("ADDED", "w0"), ("MODIFIED", "w0"), ("DELETED", "w0")]
        assert selected_events[1] == all_events[2]  # the same event, the same bytes
        assert selected_events[2] == all_events[3].replace(b'"MODIFIED"', b'"DELETED"', 1)

        # Resuming from the first version replays the history, each object as it was then.
        first = json.loads(bodies[0])["metadata"]["resourceVersion"]
        resumed = await session.get(url + f"/apis/gpuadmit.io/v1alpha1/gpuworkloads?watch=true&resourceVersion={first}")
        assert await _read_events(resumed, 3) == all_events[1:]
        got = await (await session.get(url + WORKLOADS + "/w0")).read()
        assert got == bodies[-1]
        for response in (everything, selected, resumed):
            response.close()


@requires_emulator
async def test_stored_objects_are_not_changed_by_later_writes():
    """Writes share unchanged parts with the stored object: neither may change the other."""
    async with EmulatedApiServer(crds=CRDS) as url, aiohttp.ClientSession() as session:
        created = await (await session.post(url + WORKLOADS, json={
            "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": "w"},
            "spec": {"gpus": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}})).json()
        snapshots = [created]
        for patch, path in [({"status": {"phase": "Queued", "conditions": [{"type": "A", "status": "True"}]}}, "/w/status"),
                            ({"spec": {"gpus": 2}}, "/w"),
                            ({"status": {"conditions": [{"type": "B", "status": "False"}]}}, "/w/status"),
                            ({"metadata": {"labels": {"a": "b"}}, "spec": {"template": {"x": 1}}}, "/w")]:
            response = await session.patch(url + WORKLOADS + path, data=json.dumps(patch),
                                           headers={"Content-Type": "application/merge-patch+json"})
            assert response.status == 200, await response.text()
            snapshots.append(await response.json())
        watch = await session.get(url + "/apis/gpuadmit.io/v1alpha1/gpuworkloads?watch=true&resourceVersion="
                                  + created["metadata"]["resourceVersion"])
        events = [json.loads(line)["object"] for line in await _read_events(watch, 4)]
        assert events == snapshots[1:]
        assert snapshots[1]["spec"]["gpus"] == 1 and snapshots[2]["spec"]["gpus"] == 2
        assert snapshots[1]["status"]["conditions"][0]["type"] == "A"
        assert snapshots[3]["status"]["conditions"] == [{"type": "B", "status": "False"}]
        assert "labels" not in snapshots[3]["metadata"] and snapshots[4]["spec"]["template"]["x"] == 1
        assert [s["metadata"]["generation"] for s in snapshots] == [1, 1, 2, 2, 3]
        watch.close()
