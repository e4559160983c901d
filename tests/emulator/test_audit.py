"""The request audit: each request recorded with the RBAC verb, group, resource and subresource."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from kubeapi_emulator import EmulatedApiServer
from kubeapi_emulator.audit import rbac_verb, read_audit_log

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("method, has_name, params, verb", [
    ("GET", True, {}, "get"),
    ("GET", False, {}, "list"),
    ("GET", False, {"watch": "true"}, "watch"),
    ("GET", True, {"watch": "1"}, "watch"),
    ("GET", False, {"watch": "false"}, "list"),
    ("POST", False, {}, "create"),
    ("PUT", True, {}, "update"),
    ("PATCH", True, {}, "patch"),
    ("DELETE", True, {}, "delete"),
    ("DELETE", False, {}, "deletecollection"),
])
def test_http_methods_map_to_rbac_verbs(method, has_name, params, verb):
    assert rbac_verb(method, has_name, params) == verb


def call(url: str, method: str, path: str, body: object = None,
         content_type: str = "application/merge-patch+json") -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Content-Type": content_type if method == "PATCH" else "application/json", "User-Agent": "audit-test"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.emulator
def test_every_request_is_recorded_as_rbac_sees_it(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    server = EmulatedApiServer(crds=[CRDS_DIR], audit=True, audit_log=log)
    gw = "/apis/gpuadmit.io/v1alpha1/namespaces/team-a/gpuworkloads"
    workload = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": "w"},
                "spec": {"gpus": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    with server as url:
        assert call(url, "GET", "/apis") == 200
        assert call(url, "POST", gw, workload) == 201
        assert call(url, "GET", gw + "/w") == 200
        assert call(url, "GET", "/apis/gpuadmit.io/v1alpha1/gpuworkloads") == 200
        assert call(url, "GET", gw + "?watch=true&timeoutSeconds=0") == 200
        assert call(url, "PATCH", gw + "/w/status", {"status": {"phase": "Queued"}}) == 200
        assert call(url, "PATCH", gw + "/w", {"metadata": {"labels": {"a": "b"}}}) == 200
        assert call(url, "PUT", "/api/v1/nodes/n1", {"metadata": {"name": "n1"}}) == 404  # refused, still asked
        assert call(url, "DELETE", gw + "/w") == 200
        assert call(url, "DELETE", "/api/v1/namespaces/team-a/pods") == 200
        assert call(url, "GET", "/api/v1/namespaces/team-a") in (200, 404)
        records = server.audit_records

    seen = [(r["verb"], r.get("apiGroup"), r.get("resource"), r.get("subresource"), r.get("namespace"))
            for r in records]
    assert seen == [
        ("get", None, None, None, None),
        ("create", "gpuadmit.io", "gpuworkloads", None, "team-a"),
        ("get", "gpuadmit.io", "gpuworkloads", None, "team-a"),
        ("list", "gpuadmit.io", "gpuworkloads", None, None),
        ("watch", "gpuadmit.io", "gpuworkloads", None, "team-a"),
        ("patch", "gpuadmit.io", "gpuworkloads", "status", "team-a"),
        ("patch", "gpuadmit.io", "gpuworkloads", None, "team-a"),
        ("update", "", "nodes", None, None),
        ("delete", "gpuadmit.io", "gpuworkloads", None, "team-a"),
        ("deletecollection", "", "pods", None, "team-a"),
        ("get", "", "namespaces", None, None),  # a namespace itself is a cluster-scoped object
    ]
    assert records[0]["nonResourceURL"] == "/apis"
    assert records[2]["name"] == "w" and records[2]["apiVersion"] == "v1alpha1"
    assert {r["userAgent"] for r in records} == {"audit-test"}
    assert read_audit_log(log) == json.loads(json.dumps(records))  # the file holds the same, one per line
    assert len(log.read_text().splitlines()) == len(records)


@pytest.mark.emulator
def test_no_audit_unless_asked() -> None:
    server = EmulatedApiServer()
    with server as url:
        assert call(url, "GET", "/api/v1/nodes") == 200
        assert server.audit is None and server.audit_records == []
