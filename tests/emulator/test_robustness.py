"""Malformed input gets a 4xx Status, never a crash: object-metadata rules and fuzzed bodies."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeapi_emulator import EmulatedApiServer
from tests.emulator.conftest import api_error, call, crd_documents, pod, requires_emulator, workload

pytestmark = pytest.mark.emulator


def test_names_and_label_values_follow_the_metadata_rules(core, namespace):
    code, status = api_error(lambda: core.create_namespaced_pod(namespace, pod("Not_A_Name")))
    assert (code, status["reason"]) == (422, "Invalid") and "metadata.name" in status["message"]
    code, status = api_error(lambda: core.create_namespaced_pod(
        namespace, pod("bad-label", metadata={"labels": {"tier": "has spaces"}})))
    assert (code, status["reason"]) == (422, "Invalid") and "metadata.labels" in status["message"]
    code, status = api_error(lambda: core.create_namespace({"metadata": {"name": "dots.are.not.allowed"}}))
    assert code == 422


def test_owner_references_need_their_identity(cluster, namespace):
    body = pod("orphan", metadata={"ownerReferences": [{"kind": "GPUWorkload", "name": "w"}]})
    code, status = api_error(lambda: call(cluster, "POST", f"/api/v1/namespaces/{namespace}/pods", body))
    assert code == 422
    assert {cause["field"] for cause in status["details"]["causes"]} == {
        "metadata.ownerReferences[0].apiVersion", "metadata.ownerReferences[0].uid"}


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with EmulatedApiServer(crd_objects=crd_documents()) as url:
        yield url


def send(url: str, method: str, body: bytes, content_type: str) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "name", "labels", "spec", "gpus", "status", "op", "path", "value",
                         "finalizers", "ownerReferences", "template", "resourceVersion", "x"]),
        children, max_size=4),
    max_leaves=12,
)


@requires_emulator
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, method=st.sampled_from(["POST", "PUT", "PATCH"]),
       content_type=st.sampled_from(["application/json", "application/merge-patch+json",
                                     "application/json-patch+json", "application/strategic-merge-patch+json"]))
def test_fuzzed_bodies_never_crash_the_server(server_url, body, method, content_type):
    base = f"{server_url}/apis/gpuadmit.io/v1alpha1/namespaces/default/gpuworkloads"
    send(base, "POST", json.dumps(workload("target")).encode(), "application/json")  # 201 or 409: exists
    url = base if method == "POST" else f"{base}/target"
    code, answer = send(url, method, json.dumps(body).encode(), content_type)
    assert code < 500, answer
    if code >= 400:
        assert answer["kind"] == "Status" and answer["code"] == code and answer["message"]


@requires_emulator
@pytest.mark.parametrize("path, body", [
    ("/api/v1/namespaces/default/pods", b"{not json"),
    ("/api/v1/namespaces/default/pods", b"[1, 2]"),
    ("/api/v1/namespaces/default/pods?labelSelector=a%20in%20b", None),
    ("/api/v1/namespaces/default/pods?watch=true&resourceVersion=abc", None),
    ("/apis/nowhere.example/v1/things", None),
])
def test_malformed_requests_are_client_errors(server_url, path, body):
    code, answer = send(server_url + path, "POST" if body is not None else "GET", body or b"", "application/json")
    assert 400 <= code < 500 and answer["kind"] == "Status"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_and_are_refused(server_url, constant):
    # Python's json reads them; a real API server's JSON decoder does not, so nothing stores them.
    body = ('{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "p-%s"},'
            ' "spec": {"minMarginPerGPUHour": %s}}' % (constant.strip("-").lower(), constant)).encode()
    code, status = send(f"{server_url}/apis/gpuadmit.io/v1alpha1/marginpolicies", "POST", body, "application/json")
    assert code == 400 and status["reason"] == "BadRequest", status
