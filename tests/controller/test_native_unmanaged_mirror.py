"""A mirror gpuadmit stops deciding gives back what it held.

A pod whose gate is removed by hand runs unmanaged: its mirror stops being decided.

The mirror was made while the pod waited at the gate. Once the pod runs past the gate without a
release (unpinned), its GPUs count as used capacity as the pod's own; a mirror still decided would
reserve the same GPUs a second time (and show the pod Admitted when gpuadmit did not place it).
A mirror Rejected because its namespace opted out drops its placement too: a Rejected workload
holds none (tests/invariants.py, bad-status)."""

from __future__ import annotations

import copy

from gpuadmit.controller.cache import JOB, NAMESPACE, POD, WORKLOAD
from gpuadmit.controller.native import RUNS_UNMANAGED
from tests.controller.test_native import MANAGED, base, gated_pod, job, namespace
from tests.invariants import status_violations


async def test_the_mirror_of_a_pod_let_go_by_hand_is_rejected_and_reserves_nothing() -> None:
    blocker = gated_pod("blocker", 4, ns="plain", gated=False)
    blocker["spec"]["nodeName"] = "gpu-a"
    cluster = base((POD, blocker), (POD, gated_pod("sneaky", 2)))
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/pod-sneaky")["status"]["phase"] == "Queued"

    let_go = copy.deepcopy(cluster.get(POD, f"{MANAGED}/sneaky"))
    let_go["spec"].pop("schedulingGates")
    let_go["spec"]["nodeName"] = "gpu-a"
    cluster.delete(POD, "plain/blocker")
    cluster.add(POD, let_go)
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/pod-sneaky")
    assert (mirror["status"]["phase"], mirror["status"]["reason"]) == ("Rejected", RUNS_UNMANAGED)
    assert not mirror["status"].get("placement")
    assert ("Warning", RUNS_UNMANAGED) in cluster.api.events("Pod", "sneaky")

    # The pod's 2 GPUs are counted once: a Job asking for the other 2 is admitted.
    cluster.add(JOB, job("train", parallelism=1, gpus=2))
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/job-train")["status"]["phase"] == "Admitted"


async def test_an_admitted_mirror_whose_pod_is_let_go_before_its_release_gives_its_placement_back() -> None:
    cluster = base((POD, gated_pod("sneaky", 2)))
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/pod-sneaky")
    assert mirror["status"]["phase"] == "Admitted" and mirror["status"]["placement"]
    let_go = copy.deepcopy(cluster.get(POD, f"{MANAGED}/sneaky"))  # released: pinned, gate gone
    let_go["spec"].pop("affinity")  # as if the gate had been removed by hand before the release
    cluster.add(POD, let_go)
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/pod-sneaky")
    assert (mirror["status"]["phase"], mirror["status"]["reason"]) == ("Rejected", RUNS_UNMANAGED)
    assert not mirror["status"].get("placement")


async def test_an_admitted_mirror_rejected_when_its_namespace_opts_out_gives_its_placement_back() -> None:
    cluster = base((POD, gated_pod("first", 4)))
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/pod-first")["status"]["phase"] == "Admitted"
    cluster.add(NAMESPACE, namespace(MANAGED, False))
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/pod-first")
    assert (mirror["status"]["phase"], mirror["status"]["reason"]) == ("Rejected", "MirrorNotTrusted")
    assert status_violations(mirror) == []  # no placement or admittedAt left on a Rejected workload
    admitted = next(c for c in mirror["status"]["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False"
