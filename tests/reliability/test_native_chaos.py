"""Native workloads under faults: Jobs of a managed namespace streamed in while the operator is
SIGKILLed at random points, on the emulated API server that fails writes (409, 429, 500, ...) and
cuts watches, with the Job controller stand-in making their pods. The invariant checker (which
counts a released pod inside its mirror's reservation) runs throughout: no overcommit at any
point, and once settled, every Job's mirror decided, an admitted Job unsuspended with each of its
pods released onto one slot of its placement, a waiting one suspended with its pods still gated.

The test plays the webhooks' part (Jobs created suspended, their templates gated): the in-process
emulator here calls no webhooks, which is not what is under test.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gpuadmit.core.native import ADMISSION_GATE
from gpuadmit.core.pods import pinned_node
from tests.e2e_harness import OperatorProcess, wait_until
from tests.native_controllers import NativeControllers
from tests.reliability import figures
from tests.reliability.faulty_cluster import FaultyCluster, faulty_cluster
from tests.reliability.test_faults import FULL, KILLS, POLICY

pytestmark = [pytest.mark.e2e, pytest.mark.emulator, pytest.mark.slow]

NAMESPACE = "team-native"
JOBS = 60 if FULL else 16


def job_body(index: int, rng: random.Random) -> dict[str, Any]:
    shapes = [(1, 1), (1, 2), (2, 2), (2, 4), (3, 1), (1, 8), (3, 4)]
    parallelism, gpus = (3, 4) if index == 0 else rng.choice(shapes)  # 3 x 4 spans two nodes: the first one surely
    command = ["torchrun", "train.py"] if index % 3 else ["python", "-m", "vllm.entrypoints.openai.api_server"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"job-{index:03d}", "namespace": NAMESPACE},
            "spec": {"suspend": True, "parallelism": parallelism, "completions": parallelism, "template": {"spec": {
                "restartPolicy": "Never", "schedulingGates": [{"name": ADMISSION_GATE}],
                "containers": [{"name": "main", "image": "busybox", "command": command,
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}}}


def settled_problems(fc: FaultyCluster, count: int) -> list[str]:
    """What still differs from a settled state (empty: settled)."""
    raw = fc.cluster.raw
    jobs = {j["metadata"]["name"]: j for j in raw("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")["items"]}
    mirrors = {w["metadata"]["name"]: w for w in fc.cluster.workloads(NAMESPACE)}
    pods = [p for p in raw("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    problems = [] if len(jobs) == count else [f"{len(jobs)} of {count} Jobs"]
    for name, job in sorted(jobs.items()):
        mirror = mirrors.get(f"job-{name}")
        phase = ((mirror or {}).get("status") or {}).get("phase")
        own = [p for p in pods if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == name]
        if phase in ("Admitted", "Running"):
            placed = Counter({e["node"]: e["replicas"] for e in mirror["status"]["placement"]})
            released = Counter(pinned_node(p["spec"]) for p in own if not p["spec"].get("schedulingGates"))
            if job["spec"].get("suspend") or len(own) != job["spec"]["parallelism"] or released != placed:
                problems.append(f"{name}: admitted, suspend={job['spec'].get('suspend')}, pods {dict(released)} "
                                f"of {len(own)} released, placement {dict(placed)}")
        elif phase in ("Queued", "Preempted", "Rejected"):
            if not job["spec"].get("suspend") or any(not p["spec"].get("schedulingGates") for p in own):
                problems.append(f"{name}: {phase} but suspend={job['spec'].get('suspend')} or a pod released")
        else:
            problems.append(f"{name}: mirror {'missing' if mirror is None else f'phase {phase}'}")
    return problems


def test_native_jobs_under_faults_and_sigkills_never_overcommit_and_settle(tmp_path: Path) -> None:
    rng = random.Random(20261207)
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(4, gpus=8)
        fc.apply_policy(POLICY)
        fc.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": NAMESPACE, "labels": {"gpuadmit.io/managed": "true"}}})
        operator = OperatorProcess(fc.cluster.kubeconfig, tmp_path / "operator")
        operator.launch()
        bodies = [job_body(index, rng) for index in range(JOBS)]

        def stream() -> None:
            for body in bodies:
                fc.post(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", body)
                time.sleep(KILLS * 2.0 / JOBS)  # pacing: the kills land while Jobs still come in

        with NativeControllers(fc.url, replicasets=False, deployments=False, statefulsets=False,
                               namespaces=[NAMESPACE]):
            streaming = threading.Thread(target=stream)
            streaming.start()
            try:
                for _ in range(KILLS):
                    deadline = time.monotonic() + rng.choice([0.0, rng.uniform(0.2, 1.0), rng.uniform(1.0, 3.0)])
                    while time.monotonic() < deadline:
                        fc.assert_no_violations()
                        time.sleep(0.1)
                    operator.kill()
                    figures.fault("SIGKILL of the operator")
                    fc.assert_no_violations()
                    operator.launch(wait_ready=rng.random() < 0.5)
                    figures.count(figures.RESTARTS_SURVIVED)
                while streaming.is_alive():
                    fc.assert_no_violations()
                    streaming.join(timeout=1.0)
                if operator.readiness().get("status") != 200:
                    operator.wait_ready()
                figures.count(figures.WORKLOADS_DRIVEN, JOBS)

                def settled() -> bool:
                    fc.assert_no_violations()
                    return not settled_problems(fc, JOBS)

                def settle() -> None:
                    try:
                        wait_until(settled, 180, interval=1.0, what="every native Job settled")
                    except AssertionError:
                        raise AssertionError("\n".join(settled_problems(fc, JOBS))) from None
                    fc.assert_no_violations(settled=True)

                settle()
                # Released pods deleted (a node drained, a pod evicted): the Job controller makes each
                # again, gated, and it must take the slot its predecessor freed, no other.
                first_node = {w["metadata"]["name"]: w["status"]["placement"][0]["node"]
                              for w in fc.cluster.workloads(NAMESPACE) if (w.get("status") or {}).get("placement")}
                released = [p for p in fc.cluster.all_pods() if p["metadata"]["namespace"] == NAMESPACE
                            and not p["spec"].get("schedulingGates") and pinned_node(p["spec"])]
                # Pods off their placement's first node first: a slot assigned from the placement alone,
                # not from the pods, would pin the replacement to the first node.
                released.sort(key=lambda p: pinned_node(p["spec"]) == first_node.get(
                    f"job-{(p['metadata'].get('labels') or {}).get('batch.kubernetes.io/job-name')}"))
                for pod in released[:4]:
                    fc.retrying(lambda pod=pod: fc.cluster.core.delete_namespaced_pod(
                        pod["metadata"]["name"], NAMESPACE, grace_period_seconds=0))
                    figures.fault("released native pod deleted")

                settle()
                phases = Counter((w.get("status") or {}).get("phase") for w in fc.cluster.workloads(NAMESPACE))
                # More GPUs are asked for than the 32 there are: both sides of the hold are exercised.
                assert phases["Admitted"] + phases["Running"] > 0 and phases["Queued"] + phases["Rejected"] > 0, phases
            finally:
                streaming.join()
                operator.stop()
