"""The emulator's pure parts on their own: patches, selectors, schemas, path parsing."""

from __future__ import annotations

import pytest

from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.handler import parse_api_path
from kubeapi_emulator.patching import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, apply_patch
from kubeapi_emulator.schema import ObjectSchema
from kubeapi_emulator.selectors import object_selector, parse_label_selector


@pytest.mark.parametrize("path, expected", [
    ("/api/v1/namespaces", ("", "v1", "namespaces", None, None, None)),
    ("/api/v1/namespaces/team-a", ("", "v1", "namespaces", None, "team-a", None)),
    ("/api/v1/namespaces/team-a/status", ("", "v1", "namespaces", None, "team-a", "status")),
    ("/api/v1/namespaces/team-a/pods", ("", "v1", "pods", "team-a", None, None)),
    ("/api/v1/namespaces/team-a/pods/p/status", ("", "v1", "pods", "team-a", "p", "status")),
    ("/api/v1/nodes/n1", ("", "v1", "nodes", None, "n1", None)),
    ("/apis/gpuadmit.io/v1alpha1/gpuworkloads", ("gpuadmit.io", "v1alpha1", "gpuworkloads", None, None, None)),
    ("/apis/gpuadmit.io/v1alpha1/namespaces/ns/gpuworkloads/w/status",
     ("gpuadmit.io", "v1alpha1", "gpuworkloads", "ns", "w", "status")),
])
def test_paths_parse_including_namespaces_themselves(path, expected):
    parsed = parse_api_path(path)
    assert (parsed.group, parsed.version, parsed.plural, parsed.namespace, parsed.name, parsed.subresource) == expected


def test_merge_patch_merges_dicts_replaces_lists_and_deletes_nulls():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "gone": True}
    patched = apply_patch(target, {"a": {"c": 3, "d": 4}, "l": [9], "gone": None}, MERGE_PATCH)
    assert patched == {"a": {"b": 1, "c": 3, "d": 4}, "l": [9]}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "gone": True}  # not modified in place


def test_strategic_merge_patch_drops_directives():
    patched = apply_patch({"a": 1}, {"b": 2, "$patch": "merge", "c": {"$retainKeys": ["x"], "x": 1}},
                          STRATEGIC_MERGE_PATCH)
    assert patched == {"a": 1, "b": 2, "c": {"x": 1}}


def test_json_patch_operations():
    target = {"spec": {"list": [1, 3], "name": "a"}}
    patched = apply_patch(target, [
        {"op": "add", "path": "/spec/list/1", "value": 2},
        {"op": "add", "path": "/spec/list/-", "value": 4},
        {"op": "copy", "from": "/spec/name", "path": "/spec/copied"},
        {"op": "move", "from": "/spec/name", "path": "/spec/moved"},
        {"op": "replace", "path": "/spec/copied", "value": "b"},
        {"op": "remove", "path": "/spec/list/0"},
        {"op": "test", "path": "/spec/moved", "value": "a"},
        {"op": "add", "path": "/metadata~1x", "value": 1},
    ], JSON_PATCH)
    assert patched == {"spec": {"list": [2, 3, 4], "copied": "b", "moved": "a"}, "metadata/x": 1}


@pytest.mark.parametrize("operations", [
    [{"op": "test", "path": "/a", "value": 2}],
    [{"op": "remove", "path": "/missing"}],
    [{"op": "replace", "path": "/a/b/c", "value": 1}],
])
def test_failed_json_patch_is_invalid(operations):
    with pytest.raises(ApiError) as info:
        apply_patch({"a": 1}, operations, JSON_PATCH)
    assert info.value.code == 422


@pytest.mark.parametrize("body, content_type, code", [
    ({"a": 1}, JSON_PATCH, 400),
    ([{"op": "add"}], MERGE_PATCH, 400),
    ({"a": 1}, "text/plain", 415),
])
def test_malformed_patches_are_client_errors(body, content_type, code):
    with pytest.raises(ApiError) as info:
        apply_patch({}, body, content_type)
    assert info.value.code == code


@pytest.mark.parametrize("selector, labels, expected", [
    ("", {}, True),
    ("a=1", {"a": "1"}, True),
    ("a=1", {"a": "2"}, False),
    ("a==1,b", {"a": "1"}, False),
    ("a!=1", {}, True),
    ("a in (1, 2)", {"a": "2"}, True),
    ("a notin (1,2),b", {"a": "3", "b": ""}, True),
    ("!a", {"a": "x"}, False),
    ("gpuadmit.io/class=training", {"gpuadmit.io/class": "training"}, True),
])
def test_label_selectors(selector, labels, expected):
    assert parse_label_selector(selector)(labels) is expected


@pytest.mark.parametrize("selector", ["a=(", "a in b", "=x", "!a in (b)"])
def test_malformed_label_selector_is_bad_request(selector):
    with pytest.raises(ApiError) as info:
        parse_label_selector(selector)
    assert info.value.code == 400


def test_field_and_label_selectors_combined():
    obj = {"metadata": {"name": "p", "labels": {"app": "x"}}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    assert object_selector("app=x", "spec.nodeName=n1,status.phase!=Failed")(obj)
    assert not object_selector("app=x", "metadata.name=q")(obj)


SCHEMA = ObjectSchema({
    "type": "object",
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "exclusiveMaximum": True, "maximum": 10},
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True, "maxLength": 3},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {
                    "type": "object", "properties": {"name": {"type": "string", "default": "x"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    },
})


def admit(spec):
    return SCHEMA.admit({"apiVersion": "v", "kind": "K", "metadata": {"name": "o", "anything": 1}, "spec": spec})


def test_schema_extensions_nullable_and_int_or_string():
    for spec in ({"size": 2, "port": 80, "note": None}, {"size": 2, "port": "http"}):
        _, causes = admit(spec)
        assert causes == []
    _, causes = admit({"size": 2, "port": 1.5})
    assert [cause["field"] for cause in causes] == ["spec.port"]


def test_schema_defaults_prunes_and_keeps_metadata():
    obj, causes = admit({"size": 3, "items": [{}, {"name": "y", "extra": 1}], "free": {"a": {"b": 1}},
                         "labels": {"k": "v"}, "unknown": 1})
    assert causes == []
    assert obj["spec"] == {"size": 3, "items": [{"name": "x"}, {"name": "y"}], "free": {"a": {"b": 1}},
                           "labels": {"k": "v"}}
    assert obj["metadata"] == {"name": "o", "anything": 1}


def test_schema_messages_name_fields_like_the_real_server():
    _, causes = admit({"size": 10, "note": "long", "items": [{"name": 5}]})
    messages = {cause["field"]: cause["message"] for cause in causes}
    assert messages["spec.size"] == "Invalid value: 10: spec.size in body should be less than 10"
    assert messages["spec.note"] == 'Invalid value: "long": spec.note in body should be at most 3 chars long'
    assert messages["spec.items[0].name"].startswith("Invalid value: 5: spec.items[0].name in body must be of type string")
    _, causes = admit({})
    assert causes == [{"reason": "FieldValueRequired", "field": "spec.size", "message": "Required value"}]


def test_strategic_merge_patch_merges_a_built_in_kinds_keyed_lists() -> None:
    from kubeapi_emulator.patching import STRATEGIC_MERGE_PATCH, apply_patch

    pod = {"spec": {"containers": [{"name": "a", "image": "x", "command": ["run"]}, {"name": "b", "image": "y"}],
                    "schedulingGates": [{"name": "g1"}, {"name": "g2"}], "tolerations": [{"key": "t"}]}}
    patched = apply_patch(pod, {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
        "containers": [{"name": "a", "image": "x2"}, {"name": "c", "image": "z"}],
        "schedulingGates": [{"$patch": "delete", "name": "g1"}],
        "tolerations": [{"key": "u"}]}}, STRATEGIC_MERGE_PATCH, keyed_lists=True)
    assert patched["spec"]["containers"] == [{"name": "b", "image": "y"}, {"name": "a", "image": "x2", "command": ["run"]},
                                             {"name": "c", "image": "z"}]
    assert patched["spec"]["schedulingGates"] == [{"name": "g2"}]
    assert patched["spec"]["tolerations"] == [{"key": "u"}]  # no merge key: replaced
    assert pod["spec"]["containers"][0]["image"] == "x"  # not modified in place
    replaced = apply_patch(pod, {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o"}]}},
                           STRATEGIC_MERGE_PATCH, keyed_lists=True)
    assert replaced["spec"]["containers"] == [{"name": "only", "image": "o"}]
    # a custom resource's lists are replaced whatever their name
    assert apply_patch(pod, {"spec": {"containers": [{"name": "c"}]}}, STRATEGIC_MERGE_PATCH)["spec"]["containers"] == \
        [{"name": "c"}]
