"""The controller stand-ins of tests/native_controllers.py against the emulator: each round is
stepped by hand (``reconcile()``), so every assertion sees the state one round leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig
from tests.native_controllers import NativeControllers

from .test_scheduler import call
from .test_workloads import JOB_NAME, job, workload

pytestmark = [pytest.mark.emulator]
NS = "/api/v1/namespaces/default"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
APPS = "/apis/apps/v1/namespaces/default"


@pytest.fixture()
def url() -> Iterator[str]:
    with EmulatedApiServer(scheduler=False) as served:
        yield served


def step(url: str, **kinds: bool) -> NativeControllers:
    controllers = NativeControllers(url, **kinds)
    asyncio.run(controllers.reconcile())
    assert not controllers.errors
    return controllers


def pods(url: str, selector: str = "") -> list[dict[str, Any]]:
    return call(url, "GET", f"{NS}/pods" + (f"?labelSelector={selector}" if selector else ""))[1]["items"]


def set_phase(url: str, pod: dict[str, Any], phase: str, ready: bool = False) -> None:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    code, _ = call(url, "PATCH", f"{NS}/pods/{pod['metadata']['name']}/status",
                   {"status": {"phase": phase, "conditions": conditions}})
    assert code == 200


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def test_the_job_controller_runs_suspends_and_resumes_a_job(url: str) -> None:
    created = call(url, "POST", JOBS, job("train", suspend=False, parallelism=3, completions=5))[1]
    step(url)
    owned = pods(url, f"{JOB_NAME}=train")
    assert len(owned) == 3
    for pod in owned:
        assert pod["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                                                       "uid": created["metadata"]["uid"], "controller": True,
                                                       "blockOwnerDeletion": True}]
        assert pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == created["metadata"]["uid"]
    status = call(url, "GET", f"{JOBS}/train")[1]["status"]
    assert status["active"] == 3 and status["startTime"]

    for pod in owned[:2]:
        set_phase(url, pod, "Succeeded")
    step(url)
    status = call(url, "GET", f"{JOBS}/train")[1]["status"]
    assert (status["succeeded"], status["active"]) == (2, 3)  # 3 of the 3 completions left run at once
    assert len([p for p in pods(url, f"{JOB_NAME}=train") if p["status"]["phase"] == "Pending"]) == 3

    call(url, "PATCH", f"{JOBS}/train", {"spec": {"suspend": True}})
    step(url)
    suspended = call(url, "GET", f"{JOBS}/train")[1]
    assert [p["status"]["phase"] for p in pods(url, f"{JOB_NAME}=train")] == ["Succeeded", "Succeeded"]
    assert suspended["status"]["active"] == 0 and "startTime" not in suspended["status"]
    assert (condition(suspended, "Suspended") or {}).get("reason") == "JobSuspended"
    # Suspended and not started: the template's scheduling directives may change now.
    code, _ = call(url, "PATCH", f"{JOBS}/train", {"spec": {"template": {"spec": {"nodeSelector": {"pool": "gpu"}}}}})
    assert code == 200

    call(url, "PATCH", f"{JOBS}/train", {"spec": {"suspend": False}})
    step(url)
    resumed = call(url, "GET", f"{JOBS}/train")[1]
    assert (condition(resumed, "Suspended") or {}).get("status") == "False"
    assert (condition(resumed, "Suspended") or {}).get("reason") == "JobResumed"
    fresh = [p for p in pods(url, f"{JOB_NAME}=train") if p["status"]["phase"] == "Pending"]
    assert len(fresh) == 3 and all(p["spec"]["nodeSelector"] == {"pool": "gpu"} for p in fresh)


def test_a_job_completes_or_fails_by_its_pods(url: str) -> None:
    call(url, "POST", JOBS, job("once", suspend=False))
    call(url, "POST", JOBS, job("fragile", suspend=False, backoffLimit=0))
    step(url)
    set_phase(url, pods(url, f"{JOB_NAME}=once")[0], "Succeeded")
    set_phase(url, pods(url, f"{JOB_NAME}=fragile")[0], "Failed")
    step(url)
    done = call(url, "GET", f"{JOBS}/once")[1]
    assert (condition(done, "Complete") or {}).get("status") == "True" and done["status"]["completionTime"]
    failed = call(url, "GET", f"{JOBS}/fragile")[1]
    assert (condition(failed, "Failed") or {}).get("reason") == "BackoffLimitExceeded"
    step(url)
    assert len(pods(url, f"{JOB_NAME}=once")) == 1 and len(pods(url, f"{JOB_NAME}=fragile")) == 1  # none replaced


def test_a_jobs_gated_template_gives_gated_pods(url: str) -> None:
    body = job("gated", suspend=False)
    body["spec"]["template"]["spec"].pop("nodeName")
    body["spec"]["template"]["spec"]["schedulingGates"] = [{"name": "example.com/admission"}]
    call(url, "POST", JOBS, body)
    step(url)
    [pod] = pods(url, f"{JOB_NAME}=gated")
    assert pod["spec"]["schedulingGates"] == [{"name": "example.com/admission"}]
    assert (condition(pod, "PodScheduled") or {}).get("reason") == "SchedulingGated"


def test_the_replicaset_controller_keeps_its_replicas(url: str) -> None:
    call(url, "POST", f"{APPS}/replicasets", workload("ReplicaSet", "web", replicas=2))
    step(url)
    first = pods(url, "app=web")
    assert len(first) == 2
    call(url, "DELETE", f"{NS}/pods/{first[0]['metadata']['name']}")
    set_phase(url, first[1], "Running", ready=True)
    step(url)
    current = pods(url, "app=web")
    assert len(current) == 2 and first[0]["metadata"]["name"] not in {p["metadata"]["name"] for p in current}
    status = call(url, "GET", f"{APPS}/replicasets/web")[1]["status"]
    assert (status["replicas"], status["readyReplicas"]) == (2, 1)
    call(url, "PATCH", f"{APPS}/replicasets/web/scale", {"spec": {"replicas": 1}})
    step(url)
    assert [p["metadata"]["name"] for p in pods(url, "app=web")] == [first[1]["metadata"]["name"]]  # the ready one kept


def test_the_deployment_controller_rolls_a_new_replicaset_per_template(url: str) -> None:
    call(url, "POST", f"{APPS}/deployments", workload("Deployment", "api", replicas=2))
    step(url)
    step(url)
    [first] = call(url, "GET", f"{APPS}/replicasets")[1]["items"]
    assert first["metadata"]["labels"]["pod-template-hash"] and len(pods(url, "app=api")) == 2
    call(url, "PATCH", f"{APPS}/deployments/api", {"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})
    step(url)
    step(url)
    replicasets = {rs["metadata"]["name"]: rs["spec"]["replicas"] for rs in call(url, "GET", f"{APPS}/replicasets")[1]["items"]}
    assert replicasets[first["metadata"]["name"]] == 0 and sorted(replicasets.values()) == [0, 2]


def test_the_statefulset_controller_creates_ordinals_in_order(url: str) -> None:
    call(url, "POST", f"{APPS}/statefulsets", workload("StatefulSet", "db", replicas=2))
    step(url)
    assert [p["metadata"]["name"] for p in pods(url, "app=db")] == ["db-0"]
    step(url)
    assert len(pods(url, "app=db")) == 1  # db-1 waits for db-0 to be Running and Ready
    set_phase(url, pods(url, "app=db")[0], "Running", ready=True)
    step(url)
    assert sorted(p["metadata"]["name"] for p in pods(url, "app=db")) == ["db-0", "db-1"]
    call(url, "DELETE", f"{NS}/pods/db-1")
    step(url)
    assert sorted(p["metadata"]["name"] for p in pods(url, "app=db")) == ["db-0", "db-1"]  # same name again


def test_the_controllers_run_in_a_thread_and_stop_cleanly(url: str) -> None:
    call(url, "POST", f"{APPS}/replicasets", workload("ReplicaSet", "bg", replicas=1))
    with NativeControllers(url, interval=0.05) as controllers:
        assert len(pods(url, "app=bg")) == 1  # the first round ran before start() returned
        thread = controllers._thread
    assert thread is not None and not thread.is_alive()
    rounds = controllers.rounds
    call(url, "DELETE", f"{NS}/pods/{pods(url, 'app=bg')[0]['metadata']['name']}")
    assert controllers.rounds == rounds and pods(url, "app=bg") == []  # stopped: nobody recreates it


def test_the_controllers_find_the_server_in_a_kubeconfig(url: str, tmp_path: Path) -> None:
    call(url, "POST", JOBS, job("configured", suspend=False))
    controllers = NativeControllers.from_kubeconfig(write_kubeconfig(url, tmp_path / "kubeconfig"), replicasets=False)
    assert controllers.url == url and not controllers.replicasets
    asyncio.run(controllers.reconcile())
    assert len(pods(url, f"{JOB_NAME}=configured")) == 1


def test_the_controllers_run_in_the_callers_loop(url: str) -> None:
    call(url, "POST", JOBS, job("async", suspend=False))

    async def run() -> None:
        async with NativeControllers(url, interval=0.02) as controllers:
            while not controllers.rounds:
                await asyncio.sleep(0.02)
    asyncio.run(run())
    assert len(pods(url, f"{JOB_NAME}=async")) == 1
