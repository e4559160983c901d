"""Native workloads: units, mirrors, trust and slot assignment (core.native), on plain dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpuadmit.core.classifier import KindLean, classify
from gpuadmit.core.model import InvalidWorkload, PlacementEntry, Workload
from gpuadmit.core.native import (
    ADMISSION_GATE,
    MIRROR_KIND_LABEL,
    MIRROR_NAME_LABEL,
    UnitKind,
    UnitRef,
    admission_unit_of,
    free_slots,
    mirror_name,
    mirror_of_job,
    mirror_of_pods,
    mirror_problem,
    release_assignments,
    release_patch,
    stale_mirror,
    unit_of_pod,
    units_in,
)
from gpuadmit.core.pods import pinned_node
from gpuadmit.core.snapshot import build_snapshot
from gpuadmit.core.template_shape import check_workload_name

NS = "team-a"
MANAGED = frozenset({NS})


def template(gpus: int = 2, command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "busybox",
                                 "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    if command:
        container["command"] = command
    return {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [container], **spec}}


def job(name: str = "train", gpus: int = 2, parallelism: int | None = 3, completions: int | None = None,
        uid: str = "job-uid", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"suspend": True, "template": template(gpus)}
    if parallelism is not None:
        spec["parallelism"] = parallelism
    if completions is not None:
        spec["completions"] = completions
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "annotations": annotations or {}}, "spec": spec}


def pod(name: str, gpus: int = 1, owner: tuple[str, str] | None = None, labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, gated: bool = True, node: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": labels or {},
                                "annotations": annotations or {}}
    if owner is not None:
        api_version = "batch/v1" if owner[0] == "Job" else "apps/v1"
        metadata["ownerReferences"] = [{"apiVersion": api_version, "kind": owner[0], "name": owner[1],
                                        "uid": f"uid-{owner[1]}", "controller": True}]
    spec = copy.deepcopy(template(gpus)["spec"])
    if gated:
        spec["schedulingGates"] = [{"name": "other"}, {"name": ADMISSION_GATE}]
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": "Pending"}}


# -- names and units ------------------------------------------------------------------------------


def test_mirror_names_are_deterministic_label_values_even_for_long_native_names() -> None:
    assert mirror_name(UnitKind.JOB, "train") == "job-train"
    long_name = "a" * 200
    first = mirror_name(UnitKind.POD, long_name)
    assert first == mirror_name(UnitKind.POD, long_name)
    assert len(first) <= 63
    check_workload_name(first)
    assert first != mirror_name(UnitKind.POD, long_name[:-1] + "b")  # the hash tells them apart
    assert mirror_name(UnitKind.JOB, long_name) != first


def test_a_pod_belongs_to_its_job_then_its_group_then_its_lws_group_then_itself() -> None:
    assert unit_of_pod(pod("p", owner=("Job", "train"), labels={"gpuadmit.io/pod-group": "g"})) == \
        UnitRef(NS, UnitKind.JOB, "train")
    assert unit_of_pod(pod("p", labels={"gpuadmit.io/pod-group": "g"})) == UnitRef(NS, UnitKind.POD_GROUP, "g")
    lws = {"leaderworkerset.sigs.k8s.io/name": "srv", "leaderworkerset.sigs.k8s.io/group-index": "2"}
    assert unit_of_pod(pod("p", owner=("StatefulSet", "srv"), labels=lws)) == UnitRef(NS, UnitKind.LWS_GROUP, "srv-2")
    assert unit_of_pod(pod("web-1", owner=("ReplicaSet", "web"))) == UnitRef(NS, UnitKind.POD, "web-1")
    # Made from a Job's template by hand (no owner): its job-name label names the Job.
    from_template = pod("train-x", labels={"batch.kubernetes.io/job-name": "train"})
    assert unit_of_pod(from_template) == UnitRef(NS, UnitKind.JOB, "train")
    other_owner = pod("web-2", owner=("ReplicaSet", "web"), labels={"batch.kubernetes.io/job-name": "train"})
    assert unit_of_pod(other_owner) == UnitRef(NS, UnitKind.POD, "web-2")


# -- mirrors ----------------------------------------------------------------------------------------


def test_the_mirror_of_a_job_is_one_gang_of_parallelism_replicas_owned_by_the_job() -> None:
    mirror = mirror_of_job(job(parallelism=4, completions=3, annotations={"gpuadmit.io/class": "inference"}))
    assert mirror is not None
    body = mirror.body
    assert body["metadata"]["name"] == "job-train" and body["metadata"]["namespace"] == NS
    assert body["metadata"]["labels"] == {MIRROR_KIND_LABEL: "Job", MIRROR_NAME_LABEL: "train"}
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "job-uid", "blockOwnerDeletion": False}]
    assert body["spec"]["gpus"] == 2 and body["spec"]["replicas"] == 3  # at most completions at once
    assert body["spec"]["class"] == "inference"
    assert body["spec"]["template"] == template(2)
    assert getattr(mirror_of_job(job(parallelism=None)), "spec", {}).get("replicas") == 1
    assert mirror_of_job(job(gpus=0)) is None  # asks for no GPUs: not gpuadmit's business
    assert mirror_of_job(job(parallelism=0)) is None


def test_a_group_is_mirrored_only_once_all_its_pods_exist_and_is_owned_by_every_pod() -> None:
    labels = {"gpuadmit.io/pod-group": "g"}
    size = {"gpuadmit.io/pod-group-size": "3"}
    pods = [pod(f"g-{i}", gpus=2, labels=labels, annotations=size) for i in range(3)]
    unit = UnitRef(NS, UnitKind.POD_GROUP, "g")
    assert mirror_of_pods(unit, pods[:2]) is None
    mirror = mirror_of_pods(unit, pods)
    assert mirror is not None
    assert mirror.spec["replicas"] == 3 and mirror.spec["gpus"] == 2
    assert {ref["name"] for ref in mirror.body["metadata"]["ownerReferences"]} == {"g-0", "g-1", "g-2"}
    assert "schedulingGates" not in mirror.spec["template"]["spec"]
    assert mirror_of_pods(unit, [pod("g-0", labels=labels, annotations={"gpuadmit.io/pod-group-size": "x"})]) is None


def test_units_in_managed_namespaces_only_and_a_jobs_pods_under_the_job() -> None:
    jobs = [job()]
    pods = [pod("train-a", owner=("Job", "train")), pod("solo"), pod("cpu-only", gpus=0)]
    mirrors, pods_by_unit = units_in(jobs, pods, MANAGED)
    assert set(mirrors) == {UnitRef(NS, UnitKind.JOB, "train"), UnitRef(NS, UnitKind.POD, "solo")}
    assert [p["metadata"]["name"] for p in pods_by_unit[UnitRef(NS, UnitKind.JOB, "train")]] == ["train-a"]
    assert units_in(jobs, pods, frozenset()) == ({}, {})


def test_the_kind_leans_only_where_the_template_is_not_decisive() -> None:
    lean = KindLean("inference", "a Deployment's pod")
    workload_class, reason = classify("auto", template(1), lean)
    assert workload_class == "inference" and "a Deployment's pod leans inference" in reason
    training = template(1, command=["torchrun", "train.py"])
    assert classify("auto", training, lean)[0] == "training"
    assert classify("auto", template(1))[0] == "training"  # no lean: the fallback, as before


# -- trust --------------------------------------------------------------------------------------------


def _expected() -> Any:
    mirror = mirror_of_job(job())
    assert mirror is not None
    return mirror


def test_a_mirror_is_trusted_only_with_its_name_its_owner_uid_and_a_managed_namespace() -> None:
    expected = _expected()
    real = copy.deepcopy(expected.body)
    assert mirror_problem(real, expected, MANAGED) is None

    renamed = copy.deepcopy(real)
    renamed["metadata"]["name"] = "my-own-name"
    assert "is named 'job-train'" in (mirror_problem(renamed, expected, MANAGED) or "")

    wrong_uid = copy.deepcopy(real)
    wrong_uid["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert "ownerReferences" in (mirror_problem(wrong_uid, expected, MANAGED) or "")

    assert "not managed" in (mirror_problem(real, expected, frozenset()) or "")
    assert "no live Job" in (mirror_problem(real, None, MANAGED) or "")

    bad_kind = copy.deepcopy(real)
    bad_kind["metadata"]["labels"][MIRROR_KIND_LABEL] = "CronJob"
    assert mirror_problem(bad_kind, expected, MANAGED) is not None

    assert stale_mirror(wrong_uid, expected)  # the Job's earlier incarnation: deleted, not rejected
    assert not stale_mirror(real, expected) and not stale_mirror(renamed, expected)
    orphaned = copy.deepcopy(real)
    orphaned["metadata"]["ownerReferences"] = []
    assert stale_mirror(orphaned, None) and stale_mirror(real, None)  # the Job is gone
    foreign = copy.deepcopy(real)
    foreign["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "name": "x", "uid": "u"}]
    assert not stale_mirror(foreign, expected)

    ordinary = {"metadata": {"name": "job-train", "namespace": NS}, "spec": {}}
    assert mirror_problem(ordinary, expected, MANAGED) == "it carries no gpuadmit.io/mirror-kind label"


# -- release ---------------------------------------------------------------------------------------------

PLACEMENT = (PlacementEntry("n1", 4, 2), PlacementEntry("n2", 2, 1))


def test_slots_taken_are_read_from_the_released_pods_so_nothing_is_released_twice() -> None:
    pods = [pod(f"p{i}", gpus=2) for i in range(4)]
    first = release_assignments(PLACEMENT, pods[:2])
    assert [(p["metadata"]["name"], node) for p, node in first] == [("p0", "n1"), ("p1", "n1")]
    # The operator restarts after releasing p0 only: its pinning tells which slot it took.
    released = copy.deepcopy(pods[0])
    released["spec"].update(release_patch(released, "n1")["spec"])
    assert free_slots(PLACEMENT, [released]) == ["n1", "n2"]
    again = release_assignments(PLACEMENT, [released, *pods[1:]])
    assert [(p["metadata"]["name"], node) for p, node in again] == [("p1", "n1"), ("p2", "n2")]
    # A released pod being deleted keeps its slot until it is gone.
    terminating = copy.deepcopy(released)
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert [node for _, node in release_assignments(PLACEMENT, [terminating, *pods[1:]])] == ["n1", "n2"]
    # A finished pod frees its slot (a Job's retry takes it).
    done = copy.deepcopy(released)
    done["status"]["phase"] = "Failed"
    assert free_slots(PLACEMENT, [done]) == ["n1", "n1", "n2"]


def test_the_release_patch_pins_and_removes_only_gpuadmits_gate() -> None:
    gated = pod("p", gpus=2)
    gated["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    patch = release_patch(gated, "n2")
    assert patch["spec"]["schedulingGates"] == [{"name": "other"}]
    assert pinned_node(patch["spec"]) == "n2"
    term = patch["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "zone", "operator": "In", "values": ["a"]}]
    only_ours = pod("q")
    only_ours["spec"]["schedulingGates"] = [{"name": ADMISSION_GATE}]
    assert release_patch(only_ours, "n1")["spec"]["schedulingGates"] is None  # merge patch: the field removed


# -- accounting in the snapshot ---------------------------------------------------------------------------


def _node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100"}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def _admitted_mirror() -> dict[str, Any]:
    body = copy.deepcopy(_expected().body)
    body["metadata"].update(uid="mirror-uid", creationTimestamp="2026-01-01T00:00:00Z")
    body["status"] = {"phase": "Admitted", "placement": [{"node": "n1", "gpus": 6, "replicas": 3}]}
    return body


def test_released_native_pods_fill_their_mirrors_reservation_instead_of_beside_it() -> None:
    mirror = _admitted_mirror()
    running = pod("train-a", gpus=2, owner=("Job", "train"), gated=False, node="n1")
    key = f"{NS}/job-train"
    namespaces = [{"metadata": {"name": NS, "labels": {"gpuadmit.io/managed": "true"}}}]
    trusted = build_snapshot([_node("n1")], [running], namespaces, [mirror], [], now=0.0, mirrors={key: None})
    assert trusted.gpus_of_own_pods == {(key, "n1"): 2}
    assert admission_unit_of(running, {key}) == key
    untrusted = build_snapshot([_node("n1")], [running], namespaces, [mirror], [], now=0.0)
    assert untrusted.gpus_of_own_pods == {}  # not a trusted mirror: its pod counts beside it
    assert admission_unit_of(running) is None


def test_a_mirror_is_held_to_the_accounting_rules_only() -> None:
    mirror = copy.deepcopy(_expected().body)
    mirror["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    mirror["spec"]["template"]["spec"]["serviceAccountName"] = "trainer"  # the tenant's own controller's business
    key = f"{NS}/job-train"
    parsed = build_snapshot([_node("n1")], [], [], [mirror], [], now=0.0, mirrors={key: None}).pending
    assert [w.name for w in parsed] == ["job-train"]
    as_ordinary = build_snapshot([_node("n1")], [], [], [mirror], [], now=0.0)
    assert [w.field for w in as_ordinary.invalid] == ["spec.template.spec.serviceAccountName"]
    mirror["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "init", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    refused = build_snapshot([_node("n1")], [], [], [mirror], [], now=0.0, mirrors={key: None})
    assert len(refused.invalid) == 1 and isinstance(refused.invalid[0], InvalidWorkload)


@pytest.mark.parametrize("lean, expected", [(KindLean("inference", "a ReplicaSet's pod"), "inference"), (None, "training")])
def test_the_snapshot_classifies_a_mirror_with_its_kinds_lean(lean: KindLean | None, expected: str) -> None:
    mirror = copy.deepcopy(_expected().body)
    mirror["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    key = f"{NS}/job-train"
    pending = build_snapshot([_node("n1")], [], [], [mirror], [], now=0.0, mirrors={key: lean}).pending
    assert isinstance(pending[0], Workload) and pending[0].workload_class == expected


def test_the_webhook_lets_a_mirror_carry_its_marks_and_its_native_template() -> None:
    from gpuadmit.core.validation import mutate_workload, validate_workload

    body = copy.deepcopy(_expected().body)
    body["spec"]["template"]["metadata"]["labels"]["gpuadmit.io/pod-group"] = "g"
    body["spec"]["template"]["spec"]["serviceAccountName"] = "trainer"
    assert validate_workload(body).allowed, validate_workload(body).message
    assert not any(op["path"].startswith("/metadata") for op in mutate_workload(body))
    ordinary = copy.deepcopy(body)
    del ordinary["metadata"]["labels"]
    del ordinary["metadata"]["annotations"]
    assert not validate_workload(ordinary).allowed  # the same template, as an ordinary workload
    body["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "i", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    assert not validate_workload(body).allowed  # the accounting rules hold for mirrors too


def test_a_dump_judges_mirrors_as_the_operator_does() -> None:
    from gpuadmit.core.native import mirrors_in

    namespaces = [{"metadata": {"name": NS, "labels": {"gpuadmit.io/managed": "true"}}}]
    real = _expected().body
    forged = copy.deepcopy(real)
    forged["metadata"]["name"] = "job-other"
    forged["metadata"]["annotations"]["gpuadmit.io/mirror-of"] = "other"
    trusted, untrusted = mirrors_in([real, forged, {"metadata": {"name": "plain", "namespace": NS}}], [job()], [], namespaces)
    assert trusted == {f"{NS}/job-train": _expected().lean}
    assert list(untrusted) == [f"{NS}/job-other"] and "no live Job" in untrusted[f"{NS}/job-other"]
