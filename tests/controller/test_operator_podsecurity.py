"""The real `gpuadmit run` (its webhook off, as when a workload was created while the webhook was
down) on the emulated API server: an escalating or accounting-bypassing template is never turned
into a pod; the engine's parser refuses it with the webhook's reason and message."""

from __future__ import annotations

import copy

import pytest

from tests.e2e_harness import Cluster, default_template, wait_until
from tests.invariants import ClusterState, overcommit_violations

pytestmark = [pytest.mark.e2e, pytest.mark.emulator]


def template_with(pod: dict | None = None, container: dict | None = None) -> dict:
    template = copy.deepcopy(default_template("training"))
    template["spec"].update(pod or {})
    template["spec"]["containers"][0].update(container or {})
    return template


ESCALATING = {
    "host-network": (template_with({"hostNetwork": True}), "spec.template.spec.hostNetwork"),
    "root-fs": (template_with({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                "spec.template.spec.volumes[0].hostPath"),
    "privileged": (template_with(container={"securityContext": {"privileged": True}}),
                   "spec.template.spec.containers[0].securityContext.privileged"),
    "all-gpus": (template_with(container={"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}),
                 "spec.template.spec.containers[0].env[0].name"),
    "amd": (template_with(container={"resources": {"limits": {"amd.com/gpu": 8}}}),
            'spec.template.spec.containers[0].resources.limits["amd.com/gpu"]'),
    "dra": (template_with({"resourceClaims": [{"name": "g", "resourceClaimName": "all-gpus"}]}),
            "spec.template.spec.resourceClaims"),
    "init-gpus": (template_with({"initContainers": [{"name": "i", "image": "busybox",
                                                     "resources": {"limits": {"nvidia.com/gpu": 8}}}]}),
                  'spec.template.spec.initContainers[0].resources.limits["nvidia.com/gpu"]'),
    "admin-sa": (template_with({"serviceAccountName": "gpuadmit"}), "spec.template.spec.serviceAccountName"),
    "node-critical": (template_with({"priorityClassName": "system-node-critical"}),
                      "spec.template.spec.priorityClassName"),
}


def create_namespace(cluster: Cluster, name: str, labels: dict | None = None, annotations: dict | None = None) -> None:
    cluster.core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}})
    cluster.created_namespaces.add(name)


def test_an_escalating_template_is_never_turned_into_a_pod(cluster: Cluster, operator_factory) -> None:
    cluster.add_gpu_nodes(2, gpus=8)
    cluster.apply_policy({"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}})
    create_namespace(cluster, "strict", labels={"pod-security.kubernetes.io/enforce": "restricted"})
    create_namespace(cluster, "trusted", annotations={"gpuadmit.io/allowed-service-accounts": "trainer"})
    cluster.core.create_namespaced_service_account("trusted", {"metadata": {"name": "trainer"}})  # a real API server looks it up
    for name, (template, _) in ESCALATING.items():
        cluster.create_workload("team-a", name, gpus=1, template=template)
    cluster.create_workload("strict", "plain", gpus=1)  # fine at baseline, not under the namespace's label
    cluster.create_workload("team-a", "good", gpus=1)
    cluster.create_workload("trusted", "own-account", gpus=1, template=template_with({"serviceAccountName": "trainer"}))

    operator_factory()  # --webhook-port 0: nothing refused these at create time
    decided = {f"{w['metadata']['namespace']}/{w['metadata']['name']}": w
               for w in cluster.wait_all_decided(len(ESCALATING) + 3)}
    for name, (_, field) in ESCALATING.items():
        status = decided[f"team-a/{name}"]["status"]
        assert (status["phase"], status["reason"]) == ("Rejected", "InvalidSpec"), name
        assert status["message"].startswith(f"{field}: "), name
    strict = decided["strict/plain"]["status"]
    assert (strict["phase"], strict["reason"]) == ("Rejected", "InvalidSpec")
    assert "'restricted'" in strict["message"]
    for key in ("team-a/good", "trusted/own-account"):
        assert decided[key]["status"]["phase"] == "Admitted", (key, decided[key]["status"].get("message"))
    wait_until(lambda: len(cluster.pods_of("team-a", "good")) == 1 and len(cluster.pods_of("trusted", "own-account")) == 1,
               what="the allowed workloads' pods")
    (own_account_pod,) = cluster.pods_of("trusted", "own-account")
    assert own_account_pod["spec"]["serviceAccountName"] == "trainer"

    # A namespace that tightens its label later: new workloads there are judged by it.
    cluster.core.patch_namespace("team-a", {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    wait_until(lambda: cluster.core.read_namespace("team-a").metadata.labels.get("pod-security.kubernetes.io/enforce"),
               what="the label")
    cluster.create_workload("team-a", "late", gpus=1)
    late = cluster.wait_for_phase("team-a", "late", {"Rejected", "Admitted"})
    assert (late["phase"], late["reason"]) == ("Rejected", "InvalidSpec")

    pods = cluster.all_pods()
    owners = {(p["metadata"]["namespace"], p["metadata"]["labels"]["gpuadmit.io/workload"]) for p in pods}
    assert owners == {("team-a", "good"), ("trusted", "own-account")}
    for pod in pods:
        spec = pod["spec"]
        assert not spec.get("hostNetwork") and not spec.get("volumes") and not spec.get("resourceClaims")
        assert all(not (c.get("securityContext") or {}).get("privileged") for c in spec["containers"])
    assert overcommit_violations(ClusterState.from_dump(cluster.dump())) == []


async def test_the_running_webhook_reads_the_namespace_from_the_operators_cache(
    cluster: Cluster, operator_factory, tmp_path
) -> None:
    import asyncio

    import aiohttp
    from gpuadmit.controller import webhooks
    from gpuadmit.localcluster import free_port

    from tests.controller.test_webhooks import WebhookClient, serving_workload

    create_namespace(cluster, "team-a", labels={"pod-security.kubernetes.io/enforce": "restricted"})
    create_namespace(cluster, "team-b", annotations={"gpuadmit.io/allowed-service-accounts": "trainer"})
    port, cert_dir = free_port(), tmp_path / "certs"
    operator_factory("--webhook-port", str(port), "--webhook-cert-dir", str(cert_dir))  # ready: the cache is seeded
    plain = serving_workload()  # in team-a
    with_account = serving_workload()
    with_account["metadata"]["namespace"] = "team-b"
    with_account["spec"]["template"]["spec"]["serviceAccountName"] = "trainer"

    responses = None
    for _ in range(150):  # until the webhook server listens (it starts beside the operator's readiness)
        client = WebhookClient(f"https://localhost:{port}", cert_dir / "ca.crt")
        try:
            responses = [await client.review(webhooks.VALIDATE_ID, obj) for obj in (plain, with_account)]
            break
        except (aiohttp.ClientConnectionError, FileNotFoundError):
            await asyncio.sleep(0.2)
        finally:
            await client.session.close()
    assert responses is not None, "the webhook never answered"
    denied, allowed = responses
    assert denied["allowed"] is False and denied["status"]["code"] == 422
    assert denied["status"]["message"].startswith("[InvalidSpec] spec.template.spec.containers[0].securityContext.")
    assert "'restricted'" in denied["status"]["message"]
    assert allowed["allowed"] is True
