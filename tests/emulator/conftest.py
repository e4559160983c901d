"""Fixtures for the emulator tests.

The conformance tests (those using ``cluster`` and ``namespace``) use only the official client
and HTTP, so they hold on a real cluster too: set GPUADMIT_E2E_KUBECONFIG to a kubeconfig and
they run there (the CRDs from crds/ are applied if missing). Tests of emulator-only features
(faults, history size, the process) use ``EmulatedApiServer`` directly and are skipped then.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
REAL_CLUSTER_KUBECONFIG = os.environ.get("GPUADMIT_E2E_KUBECONFIG")
requires_emulator = pytest.mark.skipif(
    bool(REAL_CLUSTER_KUBECONFIG), reason="exercises an emulator-only feature")

# Used only until crds/gpuworkloads.gpuadmit.io.yaml exists: the fields these tests rely on.
MINIMAL_GPUWORKLOAD_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gpuworkloads.gpuadmit.io"},
    "spec": {
        "group": "gpuadmit.io",
        "scope": "Namespaced",
        "names": {"kind": "GPUWorkload", "plural": "gpuworkloads", "singular": "gpuworkload", "shortNames": ["gw"]},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["gpus", "template"],
                        "properties": {
                            "gpus": {"type": "integer", "minimum": 1},
                            "replicas": {"type": "integer", "minimum": 1, "default": 1},
                            "class": {"type": "string", "enum": ["auto", "training", "inference"], "default": "auto"},
                            "template": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    },
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}


def crd_documents() -> list[dict[str, Any]]:
    """The project's CRDs, or the minimal stand-in while they are not written yet."""
    if (CRDS_DIR / "gpuworkloads.gpuadmit.io.yaml").exists():
        return [doc for path in sorted(CRDS_DIR.glob("*.yaml"))
                for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [MINIMAL_GPUWORKLOAD_CRD]


def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until ``check()`` returns something truthy; generous deadline, no fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if REAL_CLUSTER_KUBECONFIG:
        yield Path(REAL_CLUSTER_KUBECONFIG)
        return
    with EmulatedApiServer(crd_objects=crd_documents()) as url:
        yield write_kubeconfig(url, tmp_path_factory.mktemp("emulator") / "kubeconfig")


@pytest.fixture(scope="session")
def cluster(kubeconfig: Path) -> kubernetes.client.ApiClient:
    """An official-client ApiClient on the emulator (or the real cluster), CRDs installed."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    extensions = kubernetes.client.ApiextensionsV1Api(client)
    for crd in crd_documents():
        try:
            extensions.create_custom_resource_definition(crd)
        except kubernetes.client.ApiException as e:
            if e.status != 409:
                raise
    eventually(lambda: all(
        any(c.type == "Established" and c.status == "True"
            for c in (extensions.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []))
        for crd in crd_documents()))
    return client


@pytest.fixture()
def core(cluster: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster)


@pytest.fixture()
def custom(cluster: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(cluster)


@pytest.fixture()
def namespace(core: kubernetes.client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except kubernetes.client.ApiException:
        pass


def workload(name: str, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": name},
        "spec": {"gpus": gpus, "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}, **spec},
    }


def pod(name: str, **extra: Any) -> dict[str, Any]:
    """A pod bound to a node that does not exist, so that on a real cluster no scheduler or
    kubelet touches it while a test watches (``spec={"nodeName": None}`` for an unbound one)."""
    spec = {"containers": [{"name": "main", "image": "busybox"}], "nodeName": "no-such-node",
            **extra.pop("spec", {})}
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, **extra.pop("metadata", {})},
        "spec": {key: value for key, value in spec.items() if value is not None},
    }
    body.update(extra)
    return body


def call(cluster: kubernetes.client.ApiClient, method: str, path: str, body: Any = None,
         content_type: str = "application/json", query: list[tuple[str, Any]] | None = None) -> Any:
    """A raw API call through the official client (its auth works on a real cluster too)."""
    import json

    serialized = cluster.param_serialize(
        method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
        header_params={"Content-Type": content_type, "Accept": "application/json"})
    response = cluster.call_api(*serialized)
    response.read()
    if not 200 <= response.status < 300:
        raise kubernetes.client.ApiException(http_resp=response)
    return json.loads(response.data)


def api_error(action: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    """Run ``action``, expecting an API error; return its code and Status body."""
    import json

    with pytest.raises(kubernetes.client.ApiException) as info:
        action()
    return info.value.status, json.loads(info.value.body)
