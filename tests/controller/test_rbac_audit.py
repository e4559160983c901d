"""The chart grants everything the operator's code really calls.

The real `gpuadmit run` goes through a representative scenario (admit, queue, reject, pods
created, pods running and completing, preemption, a deleted workload, an invalid policy; webhooks
off) on the emulated API server with its request audit on. Every (API group, resource
[/subresource], verb) the operator asked for must be allowed by the rules the rendered Helm chart
binds to the operator's ServiceAccount. Then a second, peered run (`--peering`) is checked
against the chart rendered with two replicas, where the peering rules appear.

The other way round, the chart grants nothing the code does not use: every permission the chart
grants (each of its CI value sets) must appear in the audit, unless it is listed in
``GRANTED_BUT_NOT_EXERCISED`` with the reason the operator needs it though the scenario does not
reach it (a re-read after a 409 Conflict, for one). A new grant the operator never uses fails here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import kubernetes
import pytest
import yaml

from kubeapi_emulator.audit import read_audit_log
from tools.render_chart import render_chart, rendered_objects
from tests.e2e_harness import (
    CRD_DIR,
    REAL_CLUSTER_ENV,
    REPO,
    Cluster,
    EmulatorProcess,
    OperatorProcess,
    wait_until,
)
from tests.packaging.conftest import VALUE_SETS, load_values
from tests.packaging.test_security import operator_rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.emulator,
    pytest.mark.skipif(bool(os.environ.get(REAL_CLUSTER_ENV)), reason="the request audit is the emulator's"),
]

CHART_DIR = REPO / "charts" / "gpuadmit"
POLICY = {
    "pricePerGPUHour": {"inference": 6.0, "training": 2.0},
    "gpuCostPerHour": {"default": 1.0},
    "preemption": {"enabled": True, "minRuntimeSeconds": 0, "minMarginGainPerGPUHour": 0.5},
}
Permission = tuple[str, str, str]  # (API group, resource or resource/subresource, verb)
# Granted, needed by the operator's code, yet not reached by the audited scenario: each with its reason.
GRANTED_BUT_NOT_EXERCISED: dict[Permission, str] = {
    ("gpuadmit.io", "gpuworkloads", "get"):
        "re-read a workload after a failed write (409 Conflict, controller/writer.py); the scenario has no conflicts",
    ("gpuadmit.io", "marginpolicies", "get"):
        "re-read the policy after a failed status write (409 Conflict, controller/writer.py); the scenario has no conflicts",
    ("gpuadmit.io", "gpuquotas", "get"):
        "re-read a GPUQuota after a failed status write (409 Conflict, controller/writer.py); the scenario has no conflicts",
    **{permission: "native workloads of a namespace labelled gpuadmit.io/managed (controller/native.py: mirrors "
       "made, pods released, Jobs suspended and resumed); the audited scenario has none"
       for permission in (("gpuadmit.io", "gpuworkloads", "create"), ("gpuadmit.io", "gpuworkloads", "delete"),
                          ("", "pods", "patch"),
                          ("batch", "jobs", "watch"), ("batch", "jobs", "patch"))},
    **{(group, resource, verb): "Kubeflow PyTorchJobs and KubeRay RayJobs, watched and suspended only when their "
       "CRDs are served (controller/native.py); the audited cluster has neither CRD"
       for group, resource in (("kubeflow.org", "pytorchjobs"), ("ray.io", "rayjobs"))
       for verb in ("get", "list", "watch", "patch")},
    **{("kopf.dev", "kopfpeerings", verb):
       "peering in the watched namespaces (--peering with --namespace); the scenario peers cluster-wide"
       for verb in ("get", "list", "watch", "patch")},
}  # fmt: skip


# -- what the chart grants, what the operator asked for -------------------------------------------


def granted_permissions(values: dict[str, Any]) -> set[Permission]:
    """(group, resource, verb) the chart rendered with ``values`` grants the operator."""
    objects = rendered_objects(render_chart(CHART_DIR, values))
    granted = set()
    for rule in operator_rules(objects):
        assert not rule.get("resourceNames"), "rules limited to names would need the names checked too"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted


def requested_permissions(records: Iterable[dict[str, Any]], client_agent: str) -> set[Permission]:
    """What the audited requests needed, leaving out the test's own client and non-resource URLs
    (discovery, /version: every authenticated user may read those, via system:discovery)."""
    needed = set()
    for record in records:
        if record["userAgent"] == client_agent or "nonResourceURL" in record:
            continue
        resource = record["resource"] + (f"/{record['subresource']}" if record["subresource"] else "")
        needed.add((record["apiGroup"], resource, record["verb"]))
    return needed


def unexplained_grants(granted: set[Permission], used: set[Permission]) -> set[Permission]:
    """Granted, never used by the audited operator, and not listed with a reason."""
    return granted - used - GRANTED_BUT_NOT_EXERCISED.keys()


def describe(permissions: Iterable[Permission]) -> str:
    return ", ".join(f"{group or 'core'}/{resource}:{verb}" for group, resource, verb in sorted(permissions))


# -- an audited emulator --------------------------------------------------------------------------


def loose_policy_crds(tmp_path: Path) -> Path:
    """The CRDs, with a MarginPolicy spec that takes anything, so an invalid policy reaches the
    operator (the real CRD's schema refuses what the parser refuses)."""
    crds = tmp_path / "crds"
    shutil.copytree(CRD_DIR, crds)
    path = crds / "marginpolicies.gpuadmit.io.yaml"
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    path.write_text(yaml.safe_dump(crd))
    return crds


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    """An emulator subprocess writing its request audit to a file: (cluster, audit log path)."""
    workdir = tmp_path / "cluster"
    audit_log = workdir / "audit.jsonl"
    with EmulatorProcess(workdir, (loose_policy_crds(tmp_path),), audit_log=audit_log).running() as emulator:
        yield Cluster(emulator.kubeconfig, real=False, emulator=emulator), audit_log


# -- the scenario ---------------------------------------------------------------------------------


def policy_accepted(cluster: Cluster) -> str | None:
    conditions = {c["type"]: c for c in (cluster.get_policy().get("status") or {}).get("conditions", [])}
    return conditions.get("Accepted", {}).get("status")


def run_scenario(cluster: Cluster) -> None:
    """Every kind of write the operator makes, each waited for."""
    cluster.create_workload("team-b", "pretrain", gpus=8, workload_class="training")
    cluster.wait_for_phase("team-b", "pretrain", "Admitted")                        # admit, pod created
    cluster.create_workload("team-a", "waiting", gpus=8, workload_class="training")
    cluster.wait_for_phase("team-a", "waiting", "Queued")                           # queue
    cluster.create_workload("team-a", "broken", gpus=1, template={"spec": {"containers": []}})
    cluster.wait_for_phase("team-a", "broken", "Rejected")                          # reject
    cluster.set_workload_pods_phase("team-b", "pretrain", "Running")
    cluster.wait_for_phase("team-b", "pretrain", "Running")                         # pods running
    # A GPUQuota's status (no guarantee nor cap: it reports without changing a decision).
    quotas = kubernetes.client.CustomObjectsApi(cluster.api_client)
    quotas.create_cluster_custom_object("gpuadmit.io", "v1alpha1", "gpuquotas", {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "audit"},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}}})
    wait_until(lambda: (quotas.get_cluster_custom_object("gpuadmit.io", "v1alpha1", "gpuquotas", "audit").get("status") or {})
               .get("usedGPUs") == 8, what="the GPUQuota's status counting team-b's 8 GPUs")   # quota status

    cluster.create_workload("team-a", "chat", gpus=8, workload_class="inference")
    cluster.wait_for_phase("team-a", "chat", "Admitted")                            # preemption
    wait_until(lambda: cluster.pods_of("team-b", "pretrain") == [], what="the victim's pods deleted")
    wait_until(lambda: len(cluster.pods_of("team-a", "chat")) == 1, what="the preemptor's pod")
    cluster.set_workload_pods_phase("team-a", "chat", "Succeeded")
    cluster.wait_for_phase("team-a", "chat", "Succeeded")                           # completion
    wait_until(lambda: {cluster.get_workload("team-a", "waiting")["status"]["phase"],
                        cluster.get_workload("team-b", "pretrain")["status"]["phase"]} & {"Admitted"},
               what="queued work admitted on the freed GPUs")
    cluster.delete_workload("team-a", "broken")

    cluster.apply_policy({**POLICY, "pricePerGPUHour": {"training": 2.0, "batch": 9.0}})
    wait_until(lambda: policy_accepted(cluster) == "False", what="the invalid policy refused")


def test_the_chart_grants_every_call_the_operator_makes(audited, tmp_path, capsys) -> None:
    cluster, audit_log = audited
    client_agent = cluster.api_client.user_agent
    cluster.add_gpu_nodes(1, gpus=8)
    cluster.apply_policy(POLICY)
    with OperatorProcess.start(cluster.kubeconfig, tmp_path / "operator") as operator:  # webhooks off (--webhook-port 0)
        wait_until(lambda: policy_accepted(cluster) == "True", what="the policy accepted")
        run_scenario(cluster)
        operator_log = operator.log_tail()
    standalone = requested_permissions(read_audit_log(audit_log), client_agent)
    granted = granted_permissions({})  # the chart's defaults: one replica, all namespaces, standalone

    # The scenario reached the operator's every kind of write, else this test would prove little.
    assert {("gpuadmit.io", "gpuworkloads/status", "patch"), ("", "pods", "create"), ("", "pods", "delete"),
            ("gpuadmit.io", "marginpolicies/status", "patch"), ("gpuadmit.io", "gpuquotas/status", "patch"),
            ("gpuadmit.io", "gpuquotas", "watch")} <= standalone, describe(standalone)
    assert any(resource == "events" and verb == "create" for _, resource, verb in standalone), describe(standalone)
    missing = standalone - granted
    assert not missing, f"the operator called what the chart does not grant: {describe(missing)}\n{operator_log}"

    # Peering (two replicas): the chart adds the peering rules; the peered operator must need no more.
    # The peering object must exist beforehand (kopf waits for it); a cluster admin creates it.
    cluster.raw("POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
                {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "gpuadmit"}},
                content_type="application/json")
    cluster.apply_policy({**POLICY, "pricePerGPUHour": {**POLICY["pricePerGPUHour"], "batch": None}})  # valid again
    cluster.delete_workload("team-a", "waiting")
    cluster.delete_workload("team-b", "pretrain")
    with OperatorProcess.start(cluster.kubeconfig, tmp_path / "peered", "--peering", "gpuadmit"):
        cluster.create_workload("team-c", "peered", gpus=1, workload_class="inference")
        cluster.wait_for_phase("team-c", "peered", "Admitted")
    everything = requested_permissions(read_audit_log(audit_log), client_agent)
    peered_granted = granted_permissions({"replicaCount": 2})
    missing = everything - peered_granted
    assert not missing, f"with peering, the operator called what the chart does not grant: {describe(missing)}"
    assert any(resource == "clusterkopfpeerings" for _, resource, _ in everything), describe(everything)

    assert not everything - granted_permissions(load_values("everything-on")), "every chart option on grants less"

    # Least privilege: whatever the chart grants, under any of its CI value sets, the operator used
    # (or it is listed with its reason). The check itself catches a planted extra grant.
    assert unexplained_grants(peered_granted | {("", "secrets", "get")}, everything) == {("", "secrets", "get")}
    for name in VALUE_SETS:
        unexplained = unexplained_grants(granted_permissions(load_values(name)), everything)
        assert not unexplained, f"chart values {name!r} grant what the operator never used: {describe(unexplained)}"
    with capsys.disabled():
        print(f"\nRBAC audit: the operator used {describe(everything)}"
              f"\nRBAC audit: granted, not exercised, with reasons: {describe(GRANTED_BUT_NOT_EXERCISED)}")
