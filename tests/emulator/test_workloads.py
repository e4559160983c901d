"""batch/v1 Jobs and apps/v1 Deployments, ReplicaSets and StatefulSets as the real API server
serves them: discovery, defaults, the selector and template rules, ``/scale``, watches, garbage
collection, and kubectl (apply, get's columns, patch, scale, explain).

The conformance tests use the official client and hold on a real cluster: their Jobs start
suspended or their pods name a node that does not exist, so the real controllers' pods never
run. The kubectl tests are emulator-only, with the controller stand-ins of
tests/native_controllers.py playing kube-controller-manager.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import requests
import yaml

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig
from kubeapi_emulator.handler import JOB_ORPHANS_WARNING
from tests.native_controllers import NativeControllers

from .conftest import api_error, call, eventually, pod, requires_emulator
from .test_admission import Register, WebhookServer, admission, register, webhooks  # noqa: F401 - fixtures, used by name
from .test_kubectl import kubectl, needs_kubectl

pytestmark = pytest.mark.emulator
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
MERGE = "application/merge-patch+json"


def template(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod template whose pods go to a node that does not exist (they never run anywhere)."""
    return {"metadata": {"labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never",
                     "nodeName": "no-such-node", **spec}}


def job(name: str, suspend: bool | None = True, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                            "spec": {"template": template(), **spec}}
    if suspend is not None:
        body["spec"]["suspend"] = suspend
    return body


def workload(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    body_spec = {"selector": {"matchLabels": labels}, "template": template(labels, restartPolicy="Always"), **spec}
    if kind == "StatefulSet":
        body_spec.setdefault("serviceName", name)
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": body_spec}


APPS = {"Deployment": "deployments", "ReplicaSet": "replicasets", "StatefulSet": "statefulsets"}


@pytest.fixture()
def api(cluster: kubernetes.client.ApiClient, namespace: str) -> Any:
    """Raw calls in the test's namespace: ``api("POST", "batch/v1", "jobs", body=...)``."""
    def request(method: str, group_version: str, plural: str, name: str = "", body: Any = None,
                content_type: str = "application/json", query: list[tuple[str, Any]] | None = None) -> Any:
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{root}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")
        return call(cluster, method, path, body, content_type, query)
    return request


# -- discovery --------------------------------------------------------------------------------------

def test_discovery_lists_the_workload_kinds_with_their_subresources(cluster: kubernetes.client.ApiClient) -> None:
    batch = {r["name"]: r for r in call(cluster, "GET", "/apis/batch/v1")["resources"]}
    assert batch["jobs"]["kind"] == "Job" and batch["jobs"]["singularName"] == "job" and batch["jobs"]["namespaced"]
    assert "all" in batch["jobs"]["categories"]
    assert set(batch["jobs/status"]["verbs"]) >= {"get", "patch", "update"}
    apps = {r["name"]: r for r in call(cluster, "GET", "/apis/apps/v1")["resources"]}
    for plural, short in (("deployments", "deploy"), ("replicasets", "rs"), ("statefulsets", "sts")):
        assert short in apps[plural]["shortNames"] and "all" in apps[plural]["categories"]
        assert f"{plural}/status" in apps
        scale = apps[f"{plural}/scale"]
        assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")


# -- Jobs -------------------------------------------------------------------------------------------

def test_a_job_gets_the_servers_defaults_and_a_selector_of_its_own(api: Any) -> None:
    created = api("POST", "batch/v1", "jobs", body=job("train"))
    spec, meta = created["spec"], created["metadata"]
    assert (spec["parallelism"], spec["completions"], spec["backoffLimit"]) == (1, 1, 6)
    assert spec["completionMode"] == "NonIndexed" and spec["suspend"] is True
    assert spec["selector"]["matchLabels"] == {CONTROLLER_UID: meta["uid"]}
    labels = spec["template"]["metadata"]["labels"]
    assert labels[CONTROLLER_UID] == labels["controller-uid"] == meta["uid"]
    assert labels[JOB_NAME] == labels["job-name"] == "train"
    assert meta["labels"] == labels  # a Job without labels shows its template's
    # suspend defaults to false; parallelism alone leaves completions unset (a work queue)
    dry = api("POST", "batch/v1", "jobs", body=job("queue", suspend=None, parallelism=4), query=[("dryRun", "All")])
    assert dry["spec"]["suspend"] is False and dry["spec"]["parallelism"] == 4 and "completions" not in dry["spec"]


def test_a_manual_selector_is_kept_and_must_match_the_template(api: Any) -> None:
    body = job("manual", manualSelector=True, selector={"matchLabels": {"app": "x"}})
    code, status = api_error(lambda: api("POST", "batch/v1", "jobs", body=body))
    assert code == 422 and "spec.template.metadata.labels" in status["message"]
    assert "`selector` does not match template `labels`" in status["message"]
    body["spec"]["template"]["metadata"]["labels"] = {"app": "x"}
    created = api("POST", "batch/v1", "jobs", body=body)
    assert created["spec"]["selector"] == {"matchLabels": {"app": "x"}}
    assert created["spec"]["template"]["metadata"]["labels"] == {"app": "x"}


def test_a_suspended_job_not_started_may_change_its_scheduling_directives_only(api: Any) -> None:
    api("POST", "batch/v1", "jobs", body=job("held"))
    directives = {"spec": {"template": {"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
                                        "spec": {"nodeSelector": {"pool": "gpu"},
                                                 "tolerations": [{"key": "gpu", "operator": "Exists"}],
                                                 "schedulingGates": [{"name": "example.com/gate"}],
                                                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                                     "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                                                             "values": ["n1"]}]}]}}}}}}}
    patched = api("PATCH", "batch/v1", "jobs", "held", directives, MERGE)
    assert patched["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert patched["spec"]["template"]["metadata"]["labels"]["team"] == "a"
    code, status = api_error(lambda: api("PATCH", "batch/v1", "jobs", "held", {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "image": "busybox:1.36"}]}}}}, MERGE))
    assert code == 422 and "spec.template: Invalid value: " in status["message"]
    assert "field is immutable" in status["message"]


def test_a_running_jobs_template_and_any_jobs_selector_are_immutable(api: Any) -> None:
    created = api("POST", "batch/v1", "jobs", body=job("run"))
    unsuspended = api("PATCH", "batch/v1", "jobs", "run", {"spec": {"suspend": False}}, MERGE)
    assert unsuspended["spec"]["suspend"] is False
    assert unsuspended["metadata"]["generation"] == created["metadata"]["generation"] + 1
    code, status = api_error(lambda: api("PATCH", "batch/v1", "jobs", "run", {"spec": {"template": {"spec": {
        "nodeSelector": {"pool": "gpu"}}}}}, MERGE))
    assert code == 422 and status["details"]["causes"][0]["field"] == "spec.template"
    code, status = api_error(lambda: api("PATCH", "batch/v1", "jobs", "run", {"spec": {"selector": {
        "matchLabels": {"other": "x"}}}}, MERGE))
    assert code == 422 and "spec.selector: Invalid value: " in status["message"]
    assert "field is immutable" in status["message"]
    # suspending it again is allowed (preemption does this)
    assert api("PATCH", "batch/v1", "jobs", "run", {"spec": {"suspend": True}}, MERGE)["spec"]["suspend"] is True


def test_the_job_status_is_written_through_its_subresource_only(api: Any) -> None:
    api("POST", "batch/v1", "jobs", body=job("status"))
    ignored = api("PATCH", "batch/v1", "jobs", "status", {"status": {"active": 3}}, MERGE)
    assert not (ignored.get("status") or {}).get("active")
    written = api("PATCH", "batch/v1", "jobs", "status/status", {"status": {"active": 3}}, MERGE)
    assert written["status"]["active"] == 3


def test_jobs_are_listed_and_watched(cluster: kubernetes.client.ApiClient, api: Any, namespace: str) -> None:
    batch = kubernetes.client.BatchV1Api(cluster)
    api("POST", "batch/v1", "jobs", body=job("watched"))
    listed = batch.list_namespaced_job(namespace)
    assert [j.metadata.name for j in listed.items] == ["watched"]
    events: list[tuple[str, Any]] = []

    def watch() -> None:
        for event in kubernetes.watch.Watch().stream(batch.list_namespaced_job, namespace,
                                                     resource_version=listed.metadata.resource_version,
                                                     timeout_seconds=10):
            events.append((event["type"], event["object"]))
            return
    watcher = threading.Thread(target=watch)
    watcher.start()
    api("PATCH", "batch/v1", "jobs", "watched", {"spec": {"suspend": False}}, MERGE)
    watcher.join(timeout=15)
    assert events and events[0][0] == "MODIFIED" and events[0][1].spec.suspend is False


def test_deleting_a_job_in_the_background_collects_its_pods_and_by_default_orphans_them(
        api: Any, core: kubernetes.client.CoreV1Api, namespace: str) -> None:
    for name in ("collected", "orphaning"):
        owner = api("POST", "batch/v1", "jobs", body=job(name))
        api("POST", "v1", "pods", body=pod(f"{name}-pod", metadata={"ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]}))
    api("DELETE", "batch/v1", "jobs", "collected", {"propagationPolicy": "Background"})

    def collected() -> bool:
        try:
            return core.read_namespaced_pod("collected-pod", namespace).metadata.deletion_timestamp is not None
        except kubernetes.client.ApiException as e:
            return e.status == 404
    eventually(collected)
    api("DELETE", "batch/v1", "jobs", "orphaning")  # batch/v1's default: the pods stay, unowned
    eventually(lambda: not core.read_namespaced_pod("orphaning-pod", namespace).metadata.owner_references)


# -- apps/v1 ----------------------------------------------------------------------------------------

def test_deleting_a_deployment_collects_its_replicasets_and_their_pods(
        api: Any, core: kubernetes.client.CoreV1Api, namespace: str) -> None:
    deployment = api("POST", "apps/v1", "deployments", body=workload("Deployment", "chain", replicas=0))
    owned = workload("ReplicaSet", "chain-1", replicas=0)
    owned["spec"]["selector"]["matchLabels"] = owned["spec"]["template"]["metadata"]["labels"] = {"app": "chain-1"}
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "chain",
                                             "uid": deployment["metadata"]["uid"], "controller": True}]
    replicaset = api("POST", "apps/v1", "replicasets", body=owned)
    api("POST", "v1", "pods", body=pod("chain-1-pod", metadata={"ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chain-1", "uid": replicaset["metadata"]["uid"],
        "controller": True}]}))
    api("DELETE", "apps/v1", "deployments", "chain")  # apps/v1 deletes dependents in the background by default

    def gone() -> bool:
        try:
            return core.read_namespaced_pod("chain-1-pod", namespace).metadata.deletion_timestamp is not None
        except kubernetes.client.ApiException as e:
            return e.status == 404
    eventually(gone)
    code, _ = api_error(lambda: api("GET", "apps/v1", "replicasets", "chain-1"))
    assert code == 404

@pytest.mark.parametrize("kind", sorted(APPS))
def test_apps_workloads_need_a_matching_immutable_selector(api: Any, kind: str) -> None:
    plural = APPS[kind]
    body = workload(kind, "web")
    del body["spec"]["selector"]
    code, status = api_error(lambda: api("POST", "apps/v1", plural, body=body))
    assert code == 422 and "spec.selector: Required value" in status["message"]
    body = workload(kind, "web")
    body["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    code, status = api_error(lambda: api("POST", "apps/v1", plural, body=body))
    assert code == 422 and "`selector` does not match template `labels`" in status["message"]
    created = api("POST", "apps/v1", plural, body=workload(kind, "web"))
    assert created["spec"]["replicas"] == 1
    code, status = api_error(lambda: api("PATCH", "apps/v1", plural, "web", {"spec": {"selector": {
        "matchLabels": {"app": "web", "tier": "x"}}}}, MERGE))
    assert code == 422 and "spec.selector" in status["message"] and "field is immutable" in status["message"]


def test_apps_defaults_are_the_real_servers(api: Any) -> None:
    deployment = api("POST", "apps/v1", "deployments", body=workload("Deployment", "d"))["spec"]
    assert deployment["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert (deployment["revisionHistoryLimit"], deployment["progressDeadlineSeconds"]) == (10, 600)
    statefulset = api("POST", "apps/v1", "statefulsets", body=workload("StatefulSet", "s"))["spec"]
    assert statefulset["podManagementPolicy"] == "OrderedReady"
    assert statefulset["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}


@pytest.mark.parametrize("kind", sorted(APPS))
def test_the_scale_subresource_reads_and_writes_replicas(api: Any, kind: str) -> None:
    plural = APPS[kind]
    api("POST", "apps/v1", plural, body=workload(kind, "scaled", replicas=0))
    scale = api("GET", "apps/v1", plural, "scaled/scale")
    assert (scale["apiVersion"], scale["kind"], scale["spec"]["replicas"]) == ("autoscaling/v1", "Scale", 0)
    assert scale["status"]["selector"] == "app=scaled"
    assert api("PATCH", "apps/v1", plural, "scaled/scale", {"spec": {"replicas": 0}}, MERGE)["spec"]["replicas"] == 0
    scale["spec"]["replicas"] = 0
    assert api("PUT", "apps/v1", plural, "scaled/scale", scale)["spec"]["replicas"] == 0
    code, _ = api_error(lambda: api("PATCH", "apps/v1", plural, "scaled/scale", {"spec": {"replicas": -1}}, MERGE))
    assert code == 422


# -- emulator-only: kubectl, with the controller stand-ins -------------------------------------------

@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with EmulatedApiServer(scheduler=False) as url:
        yield url, write_kubeconfig(url, tmp_path / "kubeconfig")


@requires_emulator
def test_an_api_delete_of_a_job_warns_that_its_pods_are_kept(server: tuple[str, Path]) -> None:
    url, _ = server
    jobs = f"{url}/apis/batch/v1/namespaces/default/jobs"
    assert requests.post(jobs, json=job("warned"), timeout=10).status_code == 201
    deleted = requests.delete(f"{jobs}/warned", timeout=10)
    assert deleted.status_code == 200
    assert deleted.headers["Warning"] == "299 - " + json.dumps(JOB_ORPHANS_WARNING)


@requires_emulator
@needs_kubectl
def test_kubectl_applies_gets_patches_and_deletes_a_job(server: tuple[str, Path], tmp_path: Path) -> None:
    url, kubeconfig = server
    manifest = tmp_path / "job.yaml"
    body = job("train", parallelism=2, completions=2)
    manifest.write_text(yaml.safe_dump(body))
    assert kubectl(kubeconfig, "apply", "-f", str(manifest)).stdout.strip() == "job.batch/train created"
    assert kubectl(kubeconfig, "apply", "-f", str(manifest)).stdout.strip() == "job.batch/train unchanged"
    with NativeControllers(url, interval=0.05) as controllers:
        eventually(lambda: "Suspended" in kubectl(kubeconfig, "get", "jobs").stdout)
        lines = kubectl(kubeconfig, "get", "jobs").stdout.splitlines()
        assert lines[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
        assert lines[1].split()[:3] == ["train", "Suspended", "0/2"]
        patched = kubectl(kubeconfig, "patch", "job", "train", "--type", "merge", "-p", '{"spec":{"suspend":false}}')
        assert patched.stdout.strip() == "job.batch/train patched"
        eventually(lambda: len(kubectl(kubeconfig, "get", "pods", "-l", f"{JOB_NAME}=train", "-o", "name")
                               .stdout.split()) == 2)
        row = eventually(lambda: next((line.split() for line in kubectl(kubeconfig, "get", "jobs").stdout.splitlines()[1:]
                                       if line.split()[1] == "Running"), None))
        assert row[2] == "0/2" and len(row) == 5  # a DURATION cell once started
        wide = kubectl(kubeconfig, "get", "jobs", "-o", "wide").stdout.splitlines()
        assert wide[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
        assert "job.batch/train" in kubectl(kubeconfig, "get", "all", "-o", "name").stdout.split()
        assert not controllers.errors
        assert kubectl(kubeconfig, "delete", "job", "train").stdout.strip() == 'job.batch "train" deleted'
        eventually(lambda: not kubectl(kubeconfig, "get", "pods", "-o", "name").stdout.strip())


@requires_emulator
@needs_kubectl
def test_kubectl_gets_deployments_replicasets_and_statefulsets_with_their_columns(
        server: tuple[str, Path], tmp_path: Path) -> None:
    url, kubeconfig = server
    manifest = tmp_path / "apps.yaml"
    manifest.write_text(yaml.safe_dump_all([workload("Deployment", "web", replicas=2),
                                            workload("StatefulSet", "db", replicas=1)]))
    kubectl(kubeconfig, "apply", "-f", str(manifest))
    with NativeControllers(url, interval=0.05, jobs=False):
        eventually(lambda: len(kubectl(kubeconfig, "get", "pods", "-o", "name").stdout.split()) == 3)
        deployments = kubectl(kubeconfig, "get", "deploy").stdout.splitlines()
        assert deployments[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        eventually(lambda: kubectl(kubeconfig, "get", "deploy").stdout.splitlines()[1].split()[:4] == ["web", "0/2", "2", "0"])
        replicasets = kubectl(kubeconfig, "get", "rs").stdout.splitlines()
        assert replicasets[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
        assert replicasets[1].split()[1:4] == ["2", "2", "0"]
        statefulsets = kubectl(kubeconfig, "get", "sts").stdout.splitlines()
        assert statefulsets[0].split() == ["NAME", "READY", "AGE"] and statefulsets[1].split()[:2] == ["db", "0/1"]
        assert kubectl(kubeconfig, "scale", "deploy", "web", "--replicas=3").stdout.strip() == "deployment.apps/web scaled"
        eventually(lambda: len(kubectl(kubeconfig, "get", "pods", "-l", "app=web", "-o", "name").stdout.split()) == 3)


@requires_emulator
@needs_kubectl
def test_kubectl_explain_describes_the_workload_kinds(server: tuple[str, Path]) -> None:
    _, kubeconfig = server
    explained = kubectl(kubeconfig, "explain", "job").stdout
    assert "KIND:       Job" in explained and "Job represents the configuration of a single job." in explained
    assert "spec\t<Object>" in explained and "Specification of the desired behavior of a job." in explained
    assert "Deployment enables declarative updates" in kubectl(kubeconfig, "explain", "deployment").stdout


@requires_emulator
@needs_kubectl
def test_kubectl_create_job_and_deployment_send_protobuf_the_server_reads(server: tuple[str, Path]) -> None:
    url, kubeconfig = server
    assert kubectl(kubeconfig, "create", "job", "once", "--image=busybox", "--", "sleep", "1").stdout.strip() == \
        "job.batch/once created"
    created = requests.get(f"{url}/apis/batch/v1/namespaces/default/jobs/once", timeout=10).json()
    assert created["spec"]["template"]["spec"]["containers"] == [
        {"name": "once", "image": "busybox", "command": ["sleep", "1"], "resources": {}}]
    assert created["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert created["spec"]["template"]["metadata"]["labels"][JOB_NAME] == "once"
    assert "generateName" not in created["metadata"] and "creationTimestamp" not in created["spec"]["template"]["metadata"]
    kubectl(kubeconfig, "create", "deployment", "web", "--image=busybox", "--replicas=2", "--port=8080")
    deployment = requests.get(f"{url}/apis/apps/v1/namespaces/default/deployments/web", timeout=10).json()["spec"]
    assert deployment["replicas"] == 2 and deployment["selector"] == {"matchLabels": {"app": "web"}}
    # kubectl sends an empty strategy: defaulted field by field, as the real server does
    assert deployment["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert deployment["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080}]


def test_a_mutating_webhook_sees_a_new_job_with_its_defaults(
        api: Any, register: Register, webhooks: WebhookServer) -> None:  # noqa: F811 - the imported fixtures
    register("/mutate/reviewed", mutating=True, rules=[{
        "apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"],
        "scope": "Namespaced"}])
    created = api("POST", "batch/v1", "jobs", body=job("defaulted"))
    assert created["metadata"]["labels"]["reviewed"] == "yes"
    reviewed = webhooks.seen("/mutate/reviewed")[-1]["object"]["spec"]
    # decoded with defaults before admission, as a real server does; the selector comes after
    assert (reviewed["parallelism"], reviewed["completions"], reviewed["backoffLimit"]) == (1, 1, 6)
    assert "selector" not in reviewed
    assert created["spec"]["selector"]["matchLabels"][CONTROLLER_UID] == created["metadata"]["uid"]
