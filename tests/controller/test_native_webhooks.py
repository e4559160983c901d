"""The Job and pod webhooks (``/mutate-job``, ``/mutate-pod``) over real HTTPS, through ``AdmissionServer``.

Real ``admission.k8s.io/v1`` AdmissionReviews of the kind an API server sends for a CREATE in a
managed namespace; the server is the one ``gpuadmit run`` configures (the ``webhook`` fixture).
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import pytest

from gpuadmit.controller import webhooks
from gpuadmit.core.holds import SUSPENDED_BY_ANNOTATION
from gpuadmit.core.native import ADMISSION_GATE
from gpuadmit.core.validation import apply_json_patch
from tests.controller.test_webhooks import WebhookClient, webhook  # noqa: F401 - the fixture

GPU_CONTAINER = {"name": "main", "image": "pytorch/pytorch:2.4.0", "resources": {"limits": {"nvidia.com/gpu": 2}}}
CPU_CONTAINER = {"name": "main", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}
RESOURCES = {"pods": ("", "v1", "Pod"), "jobs": ("batch", "v1", "Job")}


def gpu_pod(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainer", "namespace": "team-a"},
            "spec": {"containers": [GPU_CONTAINER], **spec}}


def gpu_job(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "finetune", "namespace": "team-a"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [GPU_CONTAINER]}}, **spec}}


async def review(client: WebhookClient, path: str, resource: str, obj: Any, operation: str = "CREATE") -> dict[str, Any]:
    group, version, kind = RESOURCES[resource]
    request = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": obj if operation == "UPDATE" else None,
            "dryRun": False,
        },
    }
    async with client.session.post(f"{client.base_url}/{path}", json=request, ssl=client.ssl) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == request["request"]["uid"]
    return dict(answer["response"])


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    return apply_json_patch(obj, json.loads(base64.b64decode(response["patch"])))


async def test_a_gpu_job_comes_back_suspended(webhook: WebhookClient) -> None:  # noqa: F811
    job = gpu_job(suspend=False)
    result = patched(job, await review(webhook, "mutate-job", "jobs", job))
    assert result["spec"]["suspend"] is True
    assert result["metadata"]["annotations"][SUSPENDED_BY_ANNOTATION]


async def test_a_job_without_gpus_or_already_suspended_is_allowed_without_a_patch(webhook: WebhookClient) -> None:  # noqa: F811
    cpu_job = gpu_job()
    cpu_job["spec"]["template"]["spec"]["containers"] = [CPU_CONTAINER]
    for job in (cpu_job, gpu_job(suspend=True)):
        response = await review(webhook, "mutate-job", "jobs", job)
        assert response["allowed"] is True and "patch" not in response


async def test_a_gpu_pod_comes_back_gated_beside_its_other_gates(webhook: WebhookClient) -> None:  # noqa: F811
    pod = gpu_pod(schedulingGates=[{"name": "example.com/quota"}])
    result = patched(pod, await review(webhook, "mutate-pod", "pods", pod))
    assert result["spec"]["schedulingGates"] == [{"name": "example.com/quota"}, {"name": ADMISSION_GATE}]


async def test_gpuadmits_own_pod_and_a_cpu_pod_are_untouched(webhook: WebhookClient) -> None:  # noqa: F811
    own = gpu_pod()
    own["metadata"]["ownerReferences"] = [{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
                                           "name": "chat", "uid": "u1", "controller": True}]
    cpu = {**gpu_pod(), "spec": {"containers": [CPU_CONTAINER]}}
    for pod in (own, cpu):
        response = await review(webhook, "mutate-pod", "pods", pod)
        assert response["allowed"] is True and "patch" not in response


async def test_a_gpu_pod_naming_its_node_is_refused_with_reason_and_field(webhook: WebhookClient) -> None:  # noqa: F811
    response = await review(webhook, "mutate-pod", "pods", gpu_pod(nodeName="gpu-1"))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["message"].startswith("[NodeNameNotAllowed] spec.nodeName: ")


async def test_the_kind_comes_from_the_request_not_the_path(webhook: WebhookClient) -> None:  # noqa: F811
    """A configuration that sends pods to /mutate-job must not let GPU pods through ungated."""
    pod = gpu_pod()
    assert patched(pod, await review(webhook, "mutate-job", "pods", pod))["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}]


async def test_an_update_is_allowed_untouched(webhook: WebhookClient) -> None:  # noqa: F811
    response = await review(webhook, "mutate-pod", "pods", gpu_pod(), operation="UPDATE")
    assert response["allowed"] is True and "patch" not in response


@pytest.mark.parametrize("obj", [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": "nonsense"},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": {"a": 1}}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [GPU_CONTAINER], "schedulingGates": 3}},
])
async def test_a_malformed_pod_is_left_to_the_api_server(webhook: WebhookClient, obj: dict[str, Any]) -> None:  # noqa: F811
    response = await review(webhook, "mutate-pod", "pods", obj)
    assert response["allowed"] is True and "patch" not in response


async def test_if_deciding_crashes_the_gpu_pod_is_refused_not_let_through(
    webhook: WebhookClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    def broken(obj: object) -> webhooks.Hold:
        raise RuntimeError("a bug")

    monkeypatch.setitem(webhooks._HOLD_BY_RESOURCE, ("", "pods"), broken)
    with caplog.at_level(logging.ERROR, logger="gpuadmit.controller.webhooks"):
        response = await review(webhook, "mutate-pod", "pods", gpu_pod())
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 500 and response["status"]["message"].startswith("[HoldFailed]")
    lines = [record for record in caplog.records if "Could not decide" in record.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None  # one line, no traceback
