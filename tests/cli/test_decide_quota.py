"""GPUQuota through `gpuadmit decide`: a dump with GPUQuota objects, one scenario per rule.

Run in-process (``decide.main``), reading a YAML dump the way a user's would read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpuadmit import decide

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
NOW = "2026-11-26T12:00:00Z"
CREATED = "2026-11-26T11:00:00Z"
# Training earns 2.00 per GPU-hour, inference 5.00, gold-tier training 3.00 (cost 1 everywhere).
POLICY = {
    "apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"},
    "spec": {"pricePerGPUHour": {"inference": 6, "training": 3}, "gpuCostPerHour": {"default": 1},
             "tierMultipliers": {"gold": 4 / 3}, "preemption": {"enabled": True, "minRuntimeSeconds": 600}},
}  # fmt: skip


def node(name: str, gpus: int = 8, product: str = H100) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def quota(name: str, guaranteed: dict[str, int] | None = None, created: str = "2026-11-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    spec.setdefault("namespaceSelector", {"matchLabels": {"team": name}})
    if guaranteed is not None:
        spec["guaranteed"] = guaranteed
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUQuota", "metadata": {"name": name, "creationTimestamp": created}, "spec": spec}


def workload(name: str, namespace: str, gpus: int, workload_class: str = "training", *, replicas: int = 1,
             running_on: str | None = None, admitted: str = "2026-11-26T10:00:00Z", **spec: Any) -> dict[str, Any]:  # fmt: skip
    obj: dict[str, Any] = {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": CREATED, "uid": f"uid-{namespace}-{name}"},
        "spec": {"class": workload_class, "gpus": gpus, "replicas": replicas,
                 "template": {"spec": {"containers": [{"name": "main", "image": "example/app"}]}}, **spec},
    }  # fmt: skip
    if running_on:
        obj["status"] = {
            "phase": "Running", "class": workload_class, "placement": [{"node": running_on, "gpus": gpus * replicas}],
            "admittedAt": admitted, "queuedSince": CREATED,
        }  # fmt: skip
    return obj


NAMESPACES = [namespace("research", team="research"), namespace("shop", team="shop"), namespace("misc", tier="gold")]


def run(tmp_path: Path, objects: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump_all([POLICY, *NAMESPACES, *objects]))
    code = decide.main(["-f", str(dump), "-o", "json", "--now", NOW])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out), err


def outcome(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {d["name"]: (d["action"], d["reason"]) for d in document["decisions"]}


def test_guaranteed_low_margin_work_is_admitted_ahead_of_high_margin_work(tmp_path, capsys) -> None:
    objects = [node("h1"), workload("train", "research", 8), workload("chat", "misc", 8, "inference")]
    code, without, _ = run(tmp_path, objects, capsys)
    assert code == 0 and outcome(without) == {"train": ("queue", "InsufficientCapacity"), "chat": ("admit", "Admitted")}
    code, document, _ = run(tmp_path, [quota("research", {H100: 8}), *objects], capsys)
    assert code == 0
    assert outcome(document) == {"train": ("admit", "Admitted"), "chat": ("queue", "InsufficientCapacity")}
    assert [d["name"] for d in document["decisions"]] == ["train", "chat"]  # ranked first, though it earns less


def test_idle_guaranteed_gpus_are_lent_to_preemptible_work_only(tmp_path, capsys) -> None:
    objects = [
        node("h1"), quota("research", {H100: 8}),
        workload("chat", "misc", 4, "inference"),  # inference: not preemptible by default
        workload("batch", "misc", 4, "training"),  # training: preemptible
        workload("chat-ok", "shop", 4, "inference", preemptible=True),
    ]  # fmt: skip
    code, document, _ = run(tmp_path, objects, capsys)
    assert code == 0
    assert outcome(document) == {
        "chat": ("queue", "GuaranteeReserved"), "batch": ("admit", "Admitted"), "chat-ok": ("admit", "Admitted"),
    }  # fmt: skip
    message = next(d["message"] for d in document["decisions"] if d["name"] == "chat")
    assert "GPUQuota research" in message and "preemptible" in message


def test_nothing_is_lent_when_lend_idle_is_false(tmp_path, capsys) -> None:
    objects = [node("h1"), quota("research", {H100: 6}, lendIdle=False), workload("batch", "misc", 4), workload("small", "shop", 2)]
    _, document, _ = run(tmp_path, objects, capsys)
    # 8 GPUs, 6 kept idle for research: the 2-GPU job fits beside them, the 4-GPU one does not.
    assert outcome(document) == {"batch": ("queue", "GuaranteeReserved"), "small": ("admit", "Admitted")}
    assert "lendIdle: false" in next(d["message"] for d in document["decisions"] if d["name"] == "batch")


def test_a_guarantee_reclaims_borrowed_gpus_even_from_higher_margin_work(tmp_path, capsys) -> None:
    borrower = workload("borrower", "misc", 8, running_on="h1")  # gold training: earns 3.00, more than research's 2.00
    objects = [node("h1"), quota("research", {H100: 8}), borrower, workload("train", "research", 8)]
    code, document, _ = run(tmp_path, objects, capsys)
    assert code == 0
    assert outcome(document) == {"train": ("admit", "Admitted")}
    assert document["preemptions"] == [
        {"namespace": "misc", "name": "borrower", "preemptedBy": "research/train", "reason": "ReclaimedByGuarantee"}
    ]
    # Not before the borrower ran minRuntimeSeconds (600 s): the guarantee waits.
    young = workload("borrower", "misc", 8, running_on="h1", admitted="2026-11-26T11:55:00Z")
    _, document, _ = run(tmp_path, [node("h1"), quota("research", {H100: 8}), young, workload("train", "research", 8)], capsys)
    assert outcome(document) == {"train": ("queue", "InsufficientCapacity")} and document["preemptions"] == []


def test_work_within_its_own_guarantee_is_never_a_victim(tmp_path, capsys) -> None:
    objects = [
        node("h1"), quota("research", {H100: 4}), quota("shop", {H100: 4}),
        # research holds 8: the older 4 within its guarantee, the newer 4 borrowed from shop.
        workload("old", "research", 4, running_on="h1", admitted="2026-11-26T09:00:00Z"),
        workload("new", "research", 4, running_on="h1", admitted="2026-11-26T10:00:00Z"),
        workload("mine", "shop", 4),
    ]  # fmt: skip
    code, document, _ = run(tmp_path, objects, capsys)
    assert code == 0
    assert outcome(document) == {"mine": ("admit", "Admitted")}
    assert [(p["name"], p["reason"]) for p in document["preemptions"]] == [("new", "ReclaimedByGuarantee")]


def test_margin_preemption_spares_work_within_its_guarantee(tmp_path, capsys) -> None:
    objects = [node("h1"), quota("research", {H100: 8}), workload("held", "research", 8, running_on="h1"),
               workload("chat", "misc", 8, "inference")]  # fmt: skip
    code, document, _ = run(tmp_path, objects, capsys)
    assert code == 0
    assert outcome(document) == {"chat": ("queue", "InsufficientCapacity")} and document["preemptions"] == []
    _, document, _ = run(tmp_path, objects[:1] + objects[2:], capsys)  # the same without the quota
    assert outcome(document) == {"chat": ("admit", "Admitted")}
    assert [(p["name"], p["reason"]) for p in document["preemptions"]] == [("held", "PreemptedByHigherMargin")]


def test_caps_queue_over_quota_and_reject_what_can_never_fit(tmp_path, capsys) -> None:
    objects = [
        node("h1"), node("h2"), node("h3"), quota("research", maxGPUs=8),
        workload("held", "research", 4, running_on="h1"),
        workload("more", "research", 8),
        workload("fits", "research", 4),
        workload("huge", "research", 8, replicas=2),
    ]  # fmt: skip
    _, document, _ = run(tmp_path, objects, capsys)
    result = outcome(document)
    # "fits" and "more" earn alike; "fits" ranks first (name order) and takes the tenant to 8, so
    # "more" would take it to 16.
    assert result == {"more": ("queue", "OverQuota"), "fits": ("admit", "Admitted"), "huge": ("reject", "ExceedsQuota")}
    messages = {d["name"]: d["message"] for d in document["decisions"]}
    assert "maxGPUs of 8" in messages["more"] and "16 GPUs" in messages["huge"]


def test_the_any_product_guarantee_counts_every_product(tmp_path, capsys) -> None:
    nodes = [node("h1", 8, H100), node("a1", 8, A100)]
    objects = [*nodes, quota("research", {"*": 8}), workload("chat1", "misc", 8, "inference"), workload("chat2", "shop", 8, "inference")]
    _, document, _ = run(tmp_path, objects, capsys)
    # 16 GPUs, 8 of any product kept for research: one chat gets in, the other would eat the guarantee.
    assert sorted(outcome(document).values()) == [("admit", "Admitted"), ("queue", "GuaranteeReserved")]
    # And research's own work, within "*", goes first on whichever product.
    objects = [*nodes, quota("research", {"*": 8}), workload("chat1", "misc", 8, "inference"),
               workload("chat2", "shop", 8, "inference"), workload("train", "research", 8)]  # fmt: skip
    _, document, _ = run(tmp_path, objects, capsys)
    result = outcome(document)
    assert result["train"] == ("admit", "Admitted") and document["decisions"][0]["name"] == "train"
    assert sorted([result["chat1"], result["chat2"]]) == [("admit", "Admitted"), ("queue", "InsufficientCapacity")]


def test_a_namespace_matched_by_two_quotas_belongs_to_the_older(tmp_path, capsys) -> None:
    older = quota("research", maxGPUs=4, created="2026-10-01T00:00:00Z")
    newer = quota("everyone", {H100: 8}, created="2026-11-01T00:00:00Z", namespaceSelector={"matchExpressions": [{"key": "team", "operator": "Exists"}]})
    objects = [node("h1"), older, newer, workload("train", "research", 8), workload("batch", "shop", 4)]
    code, document, err = run(tmp_path, objects, capsys)
    # research is capped by the older quota (8 > maxGPUs 4) and does not share "everyone"'s guarantee.
    assert outcome(document)["train"] == ("reject", "ExceedsQuota")
    assert outcome(document)["batch"] == ("admit", "Admitted")
    assert code == 2  # bad input: a quota left out where it overlaps
    assert "GPUQuota everyone: namespace research is also matched by the older GPUQuota research" in err


def test_an_invalid_quota_is_named_and_left_out(tmp_path, capsys) -> None:
    bad = quota("research", {H100: -1})
    code, document, err = run(tmp_path, [node("h1"), bad, workload("train", "research", 8)], capsys)
    assert code == 2 and "GPUQuota research: spec.guaranteed.NVIDIA-H100-80GB-HBM3: must be a whole number" in err
    assert outcome(document) == {"train": ("admit", "Admitted")}


@pytest.mark.parametrize("solver", ["greedy", "exact"])
def test_both_solvers_honour_guarantees_lending_and_caps(tmp_path, capsys, solver) -> None:
    objects = [
        node("h1"), node("h2"), quota("research", {H100: 8}), quota("shop", maxGPUs=4, namespaceSelector={"matchLabels": {"team": "shop"}}),
        workload("train", "research", 8),                      # guaranteed, earns least: admitted first
        workload("chat", "misc", 8, "inference"),              # high margin, not preemptible: takes the free 8
        workload("chat2", "misc", 4, "inference"),             # would eat research's guarantee: no
        workload("serve", "shop", 8, "inference", preemptible=True),  # 8 > maxGPUs 4
        workload("serve-small", "shop", 4, "inference", preemptible=True, gpuProducts=[A100]),  # no A100: rejected anyway
    ]  # fmt: skip
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump_all([POLICY, *NAMESPACES, *objects]))
    assert decide.main(["-f", str(dump), "-o", "json", "--now", NOW, "--solver", solver]) == 0
    result = outcome(json.loads(capsys.readouterr().out))
    assert result["train"] == ("admit", "Admitted") and result["chat"] == ("admit", "Admitted")
    assert result["chat2"] == ("queue", "InsufficientCapacity")  # both nodes are full once train and chat run
    assert result["serve"] == ("reject", "ExceedsQuota")


def test_the_exact_solver_keeps_idle_guarantees_from_non_preemptible_work(tmp_path, capsys) -> None:
    objects = [node("h1"), node("h2"), quota("research", {H100: 8}), workload("chat", "misc", 8, "inference"),
               workload("chat2", "shop", 8, "inference"), workload("batch", "shop", 4)]  # fmt: skip
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump_all([POLICY, *NAMESPACES, *objects]))
    outcomes = {}
    for solver in ("greedy", "exact"):
        assert decide.main(["-f", str(dump), "-o", "json", "--now", NOW, "--solver", solver]) == 0
        outcomes[solver] = outcome(json.loads(capsys.readouterr().out))
    # 16 GPUs, 8 kept for research: one chat; the preemptible batch borrows 4 of research's 8.
    for solver, result in outcomes.items():
        assert sorted(action for action, _ in (result["chat"], result["chat2"])) == ["admit", "queue"], solver
        assert result["batch"] == ("admit", "Admitted"), solver
    # The greedy says why when it passes the second chat over (8 GPUs were free then); the exact
    # solver labels the final state, where the 4 GPUs left are too few anyway.
    assert ("queue", "GuaranteeReserved") in (outcomes["greedy"]["chat"], outcomes["greedy"]["chat2"])
    # Without the quota the exact solver admits both chats (and batch waits): the rows bind.
    dump.write_text(yaml.safe_dump_all([POLICY, *NAMESPACES, *[o for o in objects if o["kind"] != "GPUQuota"]]))
    assert decide.main(["-f", str(dump), "-o", "json", "--now", NOW, "--solver", "exact"]) == 0
    free_for_all = outcome(json.loads(capsys.readouterr().out))
    assert free_for_all["chat"] == free_for_all["chat2"] == ("admit", "Admitted")


def test_the_exact_solver_admits_guaranteed_work_first_too(tmp_path, capsys) -> None:
    # One node: research's guaranteed training (2.00/GPU-hour) or misc's preemptible gold training
    # (3.00), which may borrow research's idle guarantee. Margin alone would pick the borrower.
    objects = [node("h1"), quota("research", {H100: 8}), workload("train", "research", 8), workload("gold", "misc", 8)]
    dump = tmp_path / "dump.yaml"
    for with_quota, expected in ((True, "train"), (False, "gold")):
        kept = objects if with_quota else [o for o in objects if o["kind"] != "GPUQuota"]
        dump.write_text(yaml.safe_dump_all([POLICY, *NAMESPACES, *kept]))
        assert decide.main(["-f", str(dump), "-o", "json", "--now", NOW, "--solver", "exact"]) == 0
        result = outcome(json.loads(capsys.readouterr().out))
        assert [name for name, (action, _) in result.items() if action == "admit"] == [expected]


def test_guaranteed_work_uses_its_guaranteed_product_even_where_another_earns_more(tmp_path, capsys) -> None:
    # A100 costs less, so training earns more there; research is guaranteed H100s, and its
    # workload, ranked ahead for that guarantee, takes them and leaves the A100s to the rest.
    policy = {**POLICY, "spec": {**POLICY["spec"], "gpuCostPerHour": {H100: 2, A100: 1}}}
    objects = [node("h1", 8, H100), node("a1", 8, A100), quota("research", {H100: 8}), workload("train", "research", 8)]
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump_all([policy, *NAMESPACES, *objects]))
    assert decide.main(["-f", str(dump), "-o", "json", "--now", NOW]) == 0
    (decision,) = json.loads(capsys.readouterr().out)["decisions"]
    assert decision["placement"] == [{"node": "h1", "gpus": 8}]
