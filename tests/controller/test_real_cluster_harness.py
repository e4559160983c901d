"""The e2e harness's real-cluster mode (``GPUADMIT_E2E_KUBECONFIG``), run against the emulator.

It cannot run against a real cluster here; the emulated API server accepts the same requests and
records each as RBAC sees it (``kubeapi_emulator.audit``), so this checks that the harness sets
up its own GPU nodes (never touching the cluster's), plays their kubelet, and removes everything
it created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeapi_emulator.server import EmulatedApiServer, write_kubeconfig
from tests.e2e_harness import CRD_DIR, GPU, NODE_LEASE_NAMESPACE, REAL_CLUSTER_ENV, STAND_IN_LABEL, Cluster

pytestmark = pytest.mark.emulator

EXISTING_NODE = "kind-control-plane"


def calls(records: list[dict], verb: str, resource: str, subresource: str | None = None) -> list[str]:
    """Names of the objects a verb was issued on, in order (collections as "")."""
    return [r.get("name") or "" for r in records
            if r.get("verb") == verb and r.get("resource") == resource and (r.get("subresource") or None) == subresource]


def test_real_cluster_setup_creates_its_own_gpu_nodes_plays_their_kubelet_and_cleans_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmulatedApiServer(audit=True)  # no CRDs: the harness must apply them itself
    with server as url:
        kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
        monkeypatch.setenv(REAL_CLUSTER_ENV, str(kubeconfig))
        # The cluster's own node, as a one-node kind cluster has: the harness must leave it alone.
        admin = Cluster(kubeconfig, real=False)
        admin.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": EXISTING_NODE}})
        first_record = len(server.audit_records)

        with Cluster.start(tmp_path / "cluster") as cluster:
            assert cluster.real
            h100 = cluster.add_gpu_nodes(2, gpus=8)
            a100 = cluster.add_gpu_nodes(1, gpus=4, product="NVIDIA-A100-SXM4-40GB", memory_mib=40960, prefix="a100")
            assert h100 == ["gpu-node-0", "gpu-node-1"] and a100 == ["a100-0"]
            nodes = {n["metadata"]["name"]: n for n in cluster.raw("GET", "/api/v1/nodes")["items"]}
            assert set(nodes) == {EXISTING_NODE, *h100, *a100}
            for name, gpus, product in (("gpu-node-0", "8", "NVIDIA-H100-80GB-HBM3"), ("a100-0", "4", "NVIDIA-A100-SXM4-40GB")):
                node = nodes[name]
                assert node["status"]["allocatable"][GPU] == node["status"]["capacity"][GPU] == gpus
                assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == product
                assert node["metadata"]["labels"][STAND_IN_LABEL] == "true"
                assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["True"]
            assert GPU not in (nodes[EXISTING_NODE].get("status") or {}).get("allocatable", {})

            # The heartbeat: one Lease per node, owned by it, renewed by the stand-in.
            leases = cluster.raw("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases")["items"]
            assert sorted(lease["metadata"]["name"] for lease in leases) == sorted([*h100, *a100])
            assert all(lease["metadata"]["ownerReferences"][0]["kind"] == "Node" for lease in leases)
            assert cluster.kubelet is not None
            cluster.kubelet.stop()  # tick by hand from here: no background rounds in the audit
            cluster.kubelet.renew_every_s = 0

            # Pod phases as the kubelet reports them; a terminating pod's deletion confirmed.
            cluster.ensure_namespace("team-a")
            cluster.apply_policy({"pricePerGPUHour": {"inference": 6, "training": 2}})
            for name, finalizers in (("running", []), ("terminating", ["e2e.gpuadmit.io/hold"])):
                cluster.raw("POST", "/api/v1/namespaces/team-a/pods", {
                    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "finalizers": finalizers},
                    "spec": {"nodeName": "gpu-node-0", "containers": [{"name": "c", "image": "i"}]}},
                    content_type="application/json")
            cluster.set_pod_phase("team-a", "running", "Running")
            assert cluster.raw("GET", "/api/v1/namespaces/team-a/pods/running")["status"]["phase"] == "Running"
            cluster.raw("DELETE", "/api/v1/namespaces/team-a/pods/terminating")  # held by its finalizer
            cluster.kubelet.tick()
            cluster.set_node_ready("gpu-node-1", False)
            node = cluster.raw("GET", "/api/v1/nodes/gpu-node-1")
            assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["False"]
            cluster.raw("PATCH", "/api/v1/namespaces/team-a/pods/terminating", {"metadata": {"finalizers": []}})
            records_before_cleanup = len(server.audit_records)

        records = server.audit_records[first_record:]
        records_before_cleanup -= first_record
        assert len(calls(records, "create", "customresourcedefinitions")) == len(list(CRD_DIR.glob("*.yaml")))
        assert calls(records, "create", "nodes") == ["", "", ""]  # POST to the collection, three times
        assert sorted(calls(records, "patch", "nodes", "status")) == sorted(["gpu-node-0", "gpu-node-1", "a100-0", "gpu-node-1"])
        assert EXISTING_NODE not in calls(records, "patch", "nodes") + calls(records, "patch", "nodes", "status")
        assert len(calls(records, "create", "leases")) == 3
        assert sorted(calls(records, "patch", "leases")) == sorted([*h100, *a100])  # the hand tick renewed each
        assert calls(records, "patch", "pods", "status") == ["running"]
        assert calls(records, "delete", "pods") == ["terminating", "terminating"]  # the test's, then the stand-in's
        # Clean-up: what it created, and nothing else.
        cleanup = records[records_before_cleanup:]
        assert sorted(calls(cleanup, "delete", "nodes")) == sorted([*h100, *a100])
        assert sorted(calls(cleanup, "delete", "leases")) == sorted([*h100, *a100])
        assert calls(cleanup, "delete", "namespaces") == ["team-a"]
        assert calls(cleanup, "delete", "marginpolicies") == ["default"]
        remaining = [n["metadata"]["name"] for n in admin.raw("GET", "/api/v1/nodes")["items"]]
        assert remaining == [EXISTING_NODE]
        assert admin.raw("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases")["items"] == []
