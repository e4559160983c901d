"""controller/writer.py's pod create: what counts as created, what fails the workload, what is retried.

A fake API answers the create (and the read after a 409) as the API server would."""

from __future__ import annotations

from typing import Any

import pytest
from gpuadmit.controller.api import ApiError
from gpuadmit.controller.cache import POD, ObjectCache
from gpuadmit.controller.writer import PodCreation, Writer


def owner(name: str = "train", uid: str = "uid-train", kind: str = "GPUWorkload",
          api_version: str = "gpuadmit.io/v1alpha1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


def pod(*refs: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "train-0", "namespace": "team", "uid": "uid-pod", "resourceVersion": "3",
                                "labels": {"gpuadmit.io/workload": "train"}}
    if refs:
        metadata["ownerReferences"] = list(refs)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"nodeName": "gpu-a", "containers": [{"name": "c", "image": "busybox"}]}}


class FakeApi:
    def __init__(self, create_error: ApiError | None = None, existing: dict[str, Any] | None = None) -> None:
        self.create_error = create_error
        self.existing = existing
        self.reads = 0

    async def create(self, resource: Any, body: dict[str, Any], namespace: str | None = None, **_: Any) -> dict[str, Any]:
        if self.create_error is not None:
            raise self.create_error
        return {**body, "metadata": {**body["metadata"], "uid": "uid-new", "resourceVersion": "1"}}

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.reads += 1
        if self.existing is None:
            raise ApiError("get", f"/api/v1/namespaces/{namespace}/pods/{name}", 404, "NotFound", "gone")
        return self.existing


def error(status: int, reason: str, message: str = "") -> ApiError:
    return ApiError("create", "/api/v1/namespaces/team/pods", status, reason, message)


async def create(api: FakeApi) -> tuple[PodCreation, ObjectCache]:
    cache = ObjectCache()
    result = await Writer(api, cache, instance="test").create_pod(pod(owner()))  # type: ignore[arg-type]
    return result, cache


async def test_a_created_pod_is_created_and_cached() -> None:
    result, cache = await create(FakeApi())
    assert result == PodCreation(True) and [p["metadata"]["uid"] for p in cache.all(POD)] == ["uid-new"]


@pytest.mark.parametrize(("answer", "refused"), [
    (error(422, "Invalid", 'Pod "train-0" is invalid: metadata.labels: Invalid value'), True),
    (error(400, "BadRequest", "the body is malformed"), True),
    (error(403, "Forbidden", 'pods "train-0" is forbidden: violates PodSecurity "restricted:latest": privileged'), True),
    (error(403, "Forbidden", 'admission webhook "policy.example.com" denied the request: no'), True),
    (error(403, "Forbidden", 'pods "train-0" is forbidden: exceeded quota: gpu-quota'), False),
    (error(403, "Forbidden", 'pods is forbidden: User "system:serviceaccount:x:y" cannot create resource "pods"'), False),
    (error(500, "InternalError", "etcd timeout"), False),
    (error(0, "ClientConnectorError", "connection refused"), False),
])
async def test_a_refusal_for_good_fails_the_workload_and_anything_else_is_retried(answer: ApiError, refused: bool) -> None:
    result, cache = await create(FakeApi(create_error=answer))
    assert not result.created and cache.all(POD) == []
    if refused:
        assert result.refused == "PodRefused" and answer.message in result.message and str(answer.status) in result.message
    else:
        assert result == PodCreation(False)


async def test_a_409_on_our_own_pod_counts_as_created() -> None:
    api = FakeApi(create_error=error(409, "AlreadyExists"), existing=pod(owner()))
    result, cache = await create(api)
    assert result == PodCreation(True) and api.reads == 1
    assert [p["metadata"]["uid"] for p in cache.all(POD)] == ["uid-pod"]


@pytest.mark.parametrize(("existing", "shown"), [
    (pod(), "no controller"),
    (pod(owner("web-7d9f", "uid-rs", "ReplicaSet", "apps/v1")), "controlled by ReplicaSet web-7d9f"),
    (pod(owner("other", "uid-other")), "controlled by GPUWorkload other"),
    (pod({**owner(), "controller": False}), "no controller"),  # owned, but not controlled, by us
    (pod(owner(api_version="evil.io/v1")), "controlled by GPUWorkload train"),  # same kind name, other group
])
async def test_a_409_on_a_pod_that_is_not_ours_fails_the_workload_naming_the_owner(existing: dict, shown: str) -> None:
    result, cache = await create(FakeApi(create_error=error(409, "AlreadyExists"), existing=existing))
    assert (result.created, result.refused) == (False, "PodNameTaken")
    assert "team/train-0" in result.message and shown in result.message
    assert cache.all(POD) == []


async def test_a_409_on_the_pod_of_an_earlier_workload_of_that_name_is_retried() -> None:
    api = FakeApi(create_error=error(409, "AlreadyExists"), existing=pod(owner(uid="uid-previous")))
    result, _ = await create(api)
    assert result == PodCreation(False)  # the loop deletes that leftover; our pod follows


async def test_a_409_whose_pod_vanished_before_the_read_is_retried() -> None:
    result, _ = await create(FakeApi(create_error=error(409, "AlreadyExists"), existing=None))
    assert result == PodCreation(False)
