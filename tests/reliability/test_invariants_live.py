"""The checker through a real API (the emulator, no operator): violations planted by hand are found,
so a green fault test means something."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.invariants import DECIDED_TWICE, LOST, OVERCOMMIT, POD_DUPLICATED
from tests.e2e_harness import GPU, GROUP, VERSION, wait_until
from tests.reliability.faulty_cluster import faulty_cluster

pytestmark = [pytest.mark.emulator]
WORKLOADS = f"/apis/{GROUP}/{VERSION}/namespaces/team/gpuworkloads"


def pod(name: str, workload: str, node: str, gpus: int, owner_uid: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "team", "labels": {"gpuadmit.io/workload": workload},
                         "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload", "name": workload,
                                              "uid": owner_uid, "controller": True}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i", "resources": {"limits": {GPU: str(gpus)}}}]}}


def set_status(fc, name: str, status: dict) -> None:
    fc.cluster.raw("PATCH", f"{WORKLOADS}/{name}/status", {"status": status})


def test_planted_violations_are_found_through_list_and_watch(tmp_path: Path) -> None:
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(1, gpus=8)
        fc.create_workloads([("team", "a", {"gpus": 8, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}),
                             ("team", "b", {"gpus": 4, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}})])
        uid = fc.cluster.get_workload("team", "a")["metadata"]["uid"]
        placed = {"phase": "Admitted", "reason": "Admitted", "message": "ok", "admittedAt": "2027-01-01T00:00:00Z",
                  "placement": [{"node": "gpu-node-0", "gpus": 8}]}
        set_status(fc, "a", placed)
        set_status(fc, "b", {"phase": "Queued", "reason": "InsufficientCapacity", "message": "full"})
        assert fc.checker.check() == []

        # Decided twice: admitted again for the same state, without a Preempted/Queued in between.
        set_status(fc, "a", {**placed, "admittedAt": "2027-01-01T00:09:00Z"})
        # Pods created twice for one admission, and more GPUs on the node than it has.
        fc.post("/api/v1/namespaces/team/pods", pod("a-0", "a", "gpu-node-0", 8, uid))
        fc.cluster.raw("DELETE", "/api/v1/namespaces/team/pods/a-0")
        fc.post("/api/v1/namespaces/team/pods", pod("a-0", "a", "gpu-node-0", 8, uid))
        fc.post("/api/v1/namespaces/team/pods", pod("intruder-0", "b", "gpu-node-0", 1, "other"))
        # And a workload that disappears.
        fc.cluster.delete_workload("team", "b")

        def found() -> set[str]:
            fc.checker.check(settled=True)
            return {v.invariant for v in fc.checker.violations} >= {DECIDED_TWICE, POD_DUPLICATED, OVERCOMMIT, LOST}
        wait_until(found, 30, interval=0.2, what="every planted violation found")
        fc.checker.violations.clear()  # planted on purpose: not counted in the figures
