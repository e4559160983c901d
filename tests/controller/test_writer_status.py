"""controller/writer.py's status write after a 409, against the emulated API server.

The class label is a follow-up write of ours (FollowUps) that can land between a cycle's read of
a workload and its status write: that conflict is ours alone and the write goes through on the
relabelled version. Any other change is a real conflict: the write fails and the next cycle decides."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from gpuadmit.controller import api as kube
from gpuadmit.controller.api import KubeApi
from gpuadmit.controller.cache import WORKLOAD, ObjectCache
from gpuadmit.controller.writer import Writer
from gpuadmit.core.model import CLASS_LABEL
from kubeapi_emulator import EmulatedApiServer
from tests.e2e_harness import CRD_DIR, default_template

QUEUED = {"phase": "Queued", "reason": "InsufficientCapacity", "message": "waits"}


async def a_workload(api: KubeApi) -> dict[str, Any]:
    await api.request("create", "POST", "/api/v1/namespaces", body={"metadata": {"name": "team"}})
    return await api.create(kube.WORKLOADS, {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": "w", "namespace": "team"},
        "spec": {"class": "training", "gpus": 1, "template": default_template("training")}}, "team")


@pytest.mark.emulator
@pytest.mark.parametrize(("change", "written"), [
    ({"metadata": {"labels": {CLASS_LABEL: "training"}}}, True),  # our own follow-up: not a conflict of substance
    ({"metadata": {"labels": {"team": "x"}}}, False),  # someone else's change: the next cycle decides again
    ({"spec": {"gpus": 2}}, False),
    ({"metadata": {"labels": {CLASS_LABEL: "training"}}, "spec": {"gpus": 2}}, False),
])
async def test_a_status_write_survives_only_our_own_class_label_landing_first(change: dict[str, Any], written: bool) -> None:
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            read = await a_workload(api)  # what the cycle decided on
            await api.patch(kube.WORKLOADS, "w", change, "team")  # lands before the cycle's write
            writer = Writer(api, ObjectCache())
            updated = await writer.write_status(WORKLOAD, read, QUEUED)
            assert writer.conflicts == 1
            assert (updated is not None, writer.failed_status_writes) == (written, 0 if written else 1)
            now = await api.get(kube.WORKLOADS, "w", "team")
            assert (now.get("status", {}).get("phase") == "Queued") == written
            if written:
                assert writer.cache.get(WORKLOAD, "team/w") == now == updated
