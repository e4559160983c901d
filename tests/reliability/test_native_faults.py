"""The chaos mix with native kinds: Jobs and ReplicaSets in a managed namespace beside GPUWorkloads,
under write faults, cut watch streams and SIGKILLs of the operator, with the Job and ReplicaSet
controller stand-ins (``tests.native_controllers``) running, the emulator calling the operator's
own webhooks (registered with ``--manage-webhook-configurations``: Jobs are suspended and pods
gated by them, not by the test) and its scheduler binding what is released. The invariant checker
runs throughout (it counts a unit's released pods inside its mirror's reservation); once settled,
every native unit matches its mirror's decision: a holding mirror's Job runs unsuspended with each
of its pods released and bound onto one slot of its placement (pods per node equal to the
placement's replicas there), any other's Job is suspended with none; a ReplicaSet's pod is
released exactly when its mirror holds. Then released Job pods are deleted (off their placement's
first node first) and the Job controller's replacements must each take the slot its predecessor
freed, no other.

Sizes scale with ``GPUADMIT_CHAOS_SCALE`` (``make chaos``: 24 Jobs, 12 ReplicaSets, 200
GPUWorkloads, four SIGKILLs, 16 nodes of 8 GPUs; the default run: 6, 3, 30, one and 3 nodes).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gpuadmit.core.native import ADMISSION_GATE, MANAGED_LABEL, claimed_unit, is_gated, released, unit_of_pod
from gpuadmit.core.pods import pinned_node
from tests.e2e_harness import GROUP, VERSION, wait_until, webhook_operator
from tests.native.scenario import gpu_container
from tests.native_controllers import NativeControllers
from tests.reliability import figures
from tests.reliability.faulty_cluster import FaultyCluster, faulty_cluster, pods_missing, spec_for
from tests.reliability.test_faults import FULL, POLICY

pytestmark = [pytest.mark.e2e, pytest.mark.emulator, pytest.mark.slow]

JOBS, REPLICASETS, WORKLOADS, KILLS, NODES = (24, 12, 200, 4, 16) if FULL else (6, 3, 30, 1, 3)
MANAGED, TENANTS, OPERATOR_NAMESPACE = "native", "tenants", "gpuadmit-system"
HOLDING = ("Admitted", "Running")


def job(index: int) -> dict[str, Any]:
    # The first Job is 3 x 4 GPUs, more than one 8-GPU node holds: a placement over two nodes. Every
    # third Job serves (inference, the higher price), so some Jobs are admitted beside the mix.
    parallelism, gpus = (3, 4) if index == 0 else (1 + index % 2, (1, 2, 4)[index % 3])
    image, command = (("vllm/vllm-openai:latest", ["python", "-m", "vllm.entrypoints.openai.api_server"]) if index % 3 == 0
                      else ("pytorch/pytorch:2.4.0", ["torchrun", "train.py"]))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"job-{index:02d}", "namespace": MANAGED},
            "spec": {"parallelism": parallelism, "completions": parallelism, "template": {"spec": {
                "restartPolicy": "Never", "containers": [gpu_container(gpus, image, command)]}}}}


def replicaset(index: int) -> dict[str, Any]:
    labels = {"app": f"serve-{index:02d}"}
    server = {**gpu_container(1 + index % 2, "vllm/vllm-openai:latest", ["vllm", "serve", "m"]),
              "ports": [{"containerPort": 8000}]}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": labels["app"], "namespace": MANAGED},
            "spec": {"replicas": 1 + index % 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [server]}}}}


def accepted(fc: FaultyCluster, path: str, body: Mapping[str, Any], timeout: float = 90.0) -> None:
    """POST until it is stored: past the injected faults, and past the refusals of the webhooks
    (failurePolicy Fail) while the operator restarts, as a tenant's retrying client would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fc.post(path, body, attempts=5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def unit_mismatches(fc: FaultyCluster) -> list[str]:
    """Where a native unit does not (yet) match its mirror's decision; [] once settled."""
    jobs = fc.cluster.raw("GET", f"/apis/batch/v1/namespaces/{MANAGED}/jobs")["items"]
    pods = [p for p in fc.cluster.raw("GET", f"/api/v1/namespaces/{MANAGED}/pods")["items"]
            if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    mirrors = {}
    for workload in fc.cluster.workloads(MANAGED):
        unit = claimed_unit(workload)
        if unit is not None:
            mirrors[unit.mirror_key] = workload
    problems = []
    for the_job in jobs:
        name = the_job["metadata"]["name"]
        mirror = mirrors.get(f"{MANAGED}/job-{name}")
        phase = ((mirror or {}).get("status") or {}).get("phase")
        own = [p for p in pods if any(r.get("uid") == the_job["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])]
        if phase is None:
            problems.append(f"Job {name}: no decided mirror")
        elif phase in HOLDING:
            # One slot per pod: pinned and bound per node exactly as the placement's replicas there.
            placed = Counter({entry["node"]: entry["replicas"] for entry in mirror["status"].get("placement") or []})
            on_slots = Counter(pinned_node(p["spec"]) for p in own
                               if released(p) and p["spec"].get("nodeName") == pinned_node(p["spec"]))
            if the_job["spec"].get("suspend") or len(own) != the_job["spec"]["parallelism"] or on_slots != placed:
                problems.append(f"Job {name}: mirror {phase}, pods released and bound per node {dict(on_slots)} "
                                f"of {len(own)}, placement {dict(placed)}")
        elif not the_job["spec"].get("suspend") or own:
            problems.append(f"Job {name}: mirror {phase}, but the Job runs (suspend {the_job['spec'].get('suspend')}, {len(own)} pods)")
    for pod in pods:
        if any(r.get("kind") == "ReplicaSet" for r in pod["metadata"].get("ownerReferences") or []):
            mirror = mirrors.get(unit_of_pod(pod).mirror_key)
            phase = ((mirror or {}).get("status") or {}).get("phase")
            holding = phase in HOLDING
            if phase is None or (holding and not (released(pod) and pod["spec"].get("nodeName"))) or (not holding and not is_gated(pod)):
                problems.append(f"pod {pod['metadata']['name']}: mirror {phase}, gated {is_gated(pod)}, "
                                f"pinned to {pinned_node(pod['spec'])}, bound to {pod['spec'].get('nodeName')}")
    return problems


def test_jobs_and_replicasets_in_a_managed_namespace_under_faults_and_sigkills(tmp_path: Path) -> None:
    rng = random.Random(20261207)
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(NODES, gpus=8)
        fc.apply_policy(POLICY)
        for namespace, labels in ((MANAGED, {MANAGED_LABEL: "true"}), (OPERATOR_NAMESPACE, {}), (TENANTS, {})):
            fc.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        operator = webhook_operator(fc.cluster.kubeconfig, tmp_path / "operator", pod_namespace=OPERATOR_NAMESPACE)
        operator.launch()
        controllers = NativeControllers(fc.url, deployments=False, statefulsets=False, namespaces=[MANAGED], interval=0.2)
        try:
            with controllers:
                fc.faults.write_failure_codes = (409, 429, 500, 504)
                fc.faults.write_failure_rate = 0.1
                fc.faults.cut_watches_after = 40

                def submit() -> None:
                    natives = [(f"/apis/batch/v1/namespaces/{MANAGED}/jobs", job(i)) for i in range(JOBS)]
                    natives += [(f"/apis/apps/v1/namespaces/{MANAGED}/replicasets", replicaset(i)) for i in range(REPLICASETS)]
                    rng.shuffle(natives)
                    # The invalid specs of the mix (index % 97 == 13) are refused by the operator's
                    # GPUWorkload webhook here, which it registers too: not part of this mix.
                    workloads = [(index, spec_for(index)) for index in range(WORKLOADS) if index % 97 != 13]
                    for index, (path, body) in enumerate(natives):
                        accepted(fc, path, body)
                        for number, spec in workloads[index::len(natives)]:
                            accepted(fc, f"/apis/{GROUP}/{VERSION}/namespaces/{TENANTS}/gpuworkloads", {
                                "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
                                "metadata": {"name": f"w-{number:03d}", "namespace": TENANTS}, "spec": spec})
                            fc.checker.expect([f"{TENANTS}/w-{number:03d}"])  # from now on it must never disappear
                    figures.count(figures.WORKLOADS_DRIVEN, len(workloads))
                    figures.count("native Jobs and ReplicaSets driven", len(natives))
                failures: list[BaseException] = []

                def submitting_main() -> None:
                    try:
                        submit()
                    except BaseException as error:  # noqa: BLE001 - reported by the test below
                        failures.append(error)
                submitting = threading.Thread(target=submitting_main)
                started = time.monotonic()
                submitting.start()
                for _ in range(KILLS):
                    wait_until(lambda: (fc.assert_no_violations(), rng.random() < 0.3)[1], 30, interval=0.3, what="a random point")
                    operator.kill()
                    figures.fault("SIGKILL of the operator")
                    fc.assert_no_violations()
                    operator.launch()
                    figures.count(figures.RESTARTS_SURVIVED)
                while submitting.is_alive():
                    fc.assert_no_violations()
                    submitting.join(timeout=1.0)
                assert not failures, failures

                def settled() -> list[str] | None:
                    fc.assert_no_violations()
                    dump = fc.cluster.dump()
                    undecided = [w["metadata"]["name"] for w in dump["workloads"] if not (w.get("status") or {}).get("phase")]
                    problems = [f"{name}: no decision" for name in undecided] + unit_mismatches(fc)
                    problems += pods_missing(dump)
                    settled.last = problems  # type: ignore[attr-defined]
                    return None if problems else ["settled"]

                def settle(what: str) -> None:
                    try:
                        wait_until(settled, 180, interval=1.0, what=what)
                    except AssertionError as error:
                        if not str(error).startswith("timed out"):
                            raise
                        raise AssertionError("\n".join(getattr(settled, "last", [])[:20]) + "\n" + operator.log_tail(3000)) from None
                    fc.assert_no_violations(settled=True)

                settle("every native unit matching its mirror")
                figures.FIGURES["native mix under faults and SIGKILLs: seconds to settle"] = round(time.monotonic() - started, 1)
                assert fc.faults.injected > 0, "the faults did not bite"
                mirrors = [w for w in fc.cluster.workloads(MANAGED) if claimed_unit(w) is not None]
                assert {"Admitted", "Running"} & {(w.get("status") or {}).get("phase") for w in mirrors}
                assert all(g == {"name": ADMISSION_GATE} for p in fc.cluster.all_pods()
                           for g in p["spec"].get("schedulingGates") or [])
                # More GPUs are asked for than there are: both sides of the hold are exercised.
                assert {"Queued", "Preempted", "Rejected"} & {(w.get("status") or {}).get("phase") for w in fc.cluster.dump()["workloads"]}

                # Released Job pods deleted (a node drained, a pod evicted): the Job controller makes
                # each again, gated by the webhook, and it must take the slot its predecessor freed.
                first_node = {w["metadata"]["name"]: w["status"]["placement"][0]["node"] for w in mirrors
                              if (w.get("status") or {}).get("placement")}
                released_pods = [p for p in fc.cluster.all_pods() if p["metadata"]["namespace"] == MANAGED
                                 and "batch.kubernetes.io/job-name" in (p["metadata"].get("labels") or {})
                                 and released(p)]
                # Pods off their placement's first node first: a slot assigned from the placement alone,
                # not from the pods, would pin the replacement to the first node.
                released_pods.sort(key=lambda p: pinned_node(p["spec"]) == first_node.get(unit_of_pod(p).mirror_name))
                assert released_pods, "no released Job pod to delete"
                for pod in released_pods[:4]:
                    fc.retrying(lambda pod=pod: fc.cluster.core.delete_namespaced_pod(
                        pod["metadata"]["name"], MANAGED, grace_period_seconds=0))
                    figures.fault("released native pod deleted")
                settle("every deleted pod replaced on the slot it freed")
        finally:
            operator.stop()
            figures.count("native controller writes retried", len(controllers.errors))


def test_unit_mismatches_names_a_job_running_without_a_holding_mirror() -> None:
    """The settle check can fail: a Job that runs while its mirror is queued is reported."""
    class Stub:
        def raw(self, method: str, path: str) -> Mapping[str, Any]:
            if path.endswith("/jobs"):
                return {"items": [{"metadata": {"name": "a", "uid": "u-a"}, "spec": {"suspend": False, "parallelism": 1}}]}
            return {"items": []}

        def workloads(self, namespace: str) -> list[Mapping[str, Any]]:
            return [{"metadata": {"name": "job-a", "namespace": MANAGED, "labels": {
                "gpuadmit.io/mirror-kind": "Job", "gpuadmit.io/mirror-name": "a"}, "annotations": {"gpuadmit.io/mirror-of": "a"}},
                "status": {"phase": "Queued"}}]

    class StubCluster:
        cluster = Stub()
    assert unit_mismatches(StubCluster()) == ["Job a: mirror Queued, but the Job runs (suspend False, 0 pods)"]  # type: ignore[arg-type]
