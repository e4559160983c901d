"""Faults on the emulated API server, with the real operator process and the invariant checker
running alongside: failing writes (409, 429 with Retry-After, 500, timeouts), cut watch streams,
a burst of creations, SIGKILLs mid-stream, lost nodes, policy edits and an invalid policy.

Sizes scale with ``GPUADMIT_CHAOS_SCALE`` (``make chaos`` runs the full sizes: a 2,000 burst and
ten SIGKILLs; the default test run keeps CI time down with 600 and three).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.invariants import placement_of
from tests.e2e_harness import OperatorProcess, wait_until
from tests.reliability import figures
from tests.reliability.faulty_cluster import FaultyCluster, decision_mismatches, faulty_cluster, pods_pending, spec_for

pytestmark = [pytest.mark.e2e, pytest.mark.emulator, pytest.mark.slow]

FULL = os.environ.get("GPUADMIT_CHAOS_SCALE") == "full"
BURST = 2000 if FULL else 600
KILLS = 10 if FULL else 3
STREAM = 500
POLICY = {
    "pricePerGPUHour": {"inference": 6.0, "training": 2.0},
    "gpuCostPerHour": {"default": 1.0},
    "preemption": {"enabled": True, "minRuntimeSeconds": 0, "minMarginGainPerGPUHour": 0.5},
}


def settle(fc: FaultyCluster, count: int, timeout: float = 240.0) -> None:
    """Wait until every workload is decided and the state is a fixpoint of decide(), checking the
    invariants on every poll; then the settled checks (pods match placements, no duplicates)."""
    def converged() -> bool:
        fc.assert_no_violations()
        dump = fc.cluster.dump()
        decided = len(dump["workloads"]) >= count and all((w.get("status") or {}).get("phase") for w in dump["workloads"])
        return decided and not decision_mismatches(dump) and not pods_pending(dump)
    try:
        wait_until(converged, timeout, interval=1.0, what="every workload decided as decide() would")
    except AssertionError as error:
        if not str(error).startswith("timed out"):
            raise  # a violation, not a timeout
        dump = fc.cluster.dump()
        raise AssertionError("\n".join(decision_mismatches(dump)[:20]) or "not every workload decided") from None
    fc.assert_no_violations(settled=True)


def test_write_faults_cut_watches_and_a_burst_every_workload_reaches_the_right_decision(tmp_path: Path) -> None:
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(8, gpus=8)
        fc.cluster.apply_policy(POLICY)
        with OperatorProcess.start(fc.cluster.kubeconfig, tmp_path / "operator") as operator:
            fc.faults.write_failure_codes = (409, 429, 500, 504)
            fc.faults.write_failure_rate = 0.15
            fc.faults.cut_watches_after = 40
            shapes = [(f"burst-{index % 4}", f"w-{index:04d}", spec_for(index)) for index in range(BURST)]
            started = time.monotonic()
            creating = threading.Thread(target=fc.create_workloads, args=(shapes,))
            creating.start()
            while creating.is_alive():  # the checker runs alongside the burst
                fc.assert_no_violations()
                creating.join(timeout=1.0)
            settle(fc, BURST)
            figures.FIGURES[f"burst of {BURST} under faults: seconds to settle"] = round(time.monotonic() - started, 1)
            assert fc.faults.injected > 50, "the faults did not bite"
            assert operator.process.poll() is None, operator.log_tail()
            phases = {w["status"]["phase"] for w in fc.cluster.workloads()}
            assert {"Admitted", "Queued", "Rejected"} <= phases
            # Events tell a tenant about its own workloads only: each lands in the workload's namespace.
            # They are written last (after statuses and pods), so they may still be on their way.
            def workload_events() -> list[dict]:
                return [e for e in fc.cluster.raw("GET", "/api/v1/events")["items"]
                        if (e.get("involvedObject") or {}).get("kind") == "GPUWorkload"]
            every_namespace = {f"burst-{index}" for index in range(4)}
            wait_until(lambda: {e["metadata"]["namespace"] for e in workload_events()} == every_namespace,
                       60.0, interval=0.5, what="Events in every tenant namespace")
            events = workload_events()
            strays = [e["metadata"]["name"] for e in events if e["metadata"]["namespace"] != e["involvedObject"]["namespace"]]
            assert strays == []


def test_sigkill_at_random_points_while_workloads_stream_in(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(6, gpus=8)
        fc.cluster.apply_policy(POLICY)
        operator = OperatorProcess(fc.cluster.kubeconfig, tmp_path / "operator")
        operator.launch()
        shapes = [("stream", f"s-{index:03d}", spec_for(index)) for index in range(STREAM)]
        # The stream is paced to last about as long as the kills (a restart takes a few seconds),
        # so every kill lands while workloads are still coming in.
        pause = KILLS * 2.0 / STREAM

        def stream() -> None:
            for shape in shapes:
                fc.create_workloads([shape], threads=1)
                time.sleep(pause)  # pacing the load, not synchronising: nothing waits on it
        streaming = threading.Thread(target=stream)
        streaming.start()
        try:
            for _ in range(KILLS):
                # A random point: sometimes before the restarted operator's first cycle, mostly mid-work.
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
            settle(fc, STREAM)
        finally:
            streaming.join()
            operator.stop()


def test_lost_nodes_requeue_their_workloads_and_leave_the_others_alone(tmp_path: Path) -> None:
    with faulty_cluster(tmp_path) as fc:
        nodes = fc.cluster.add_gpu_nodes(4, gpus=8)
        fc.cluster.apply_policy(POLICY)
        with OperatorProcess.start(fc.cluster.kubeconfig, tmp_path / "operator"):
            # One 8-GPU workload per node: where each lands is the operator's choice.
            fc.create_workloads([("team", f"full-{index}", {"class": "training", "gpus": 8,
                                  "template": spec_for(1)["template"]}) for index in range(4)])
            settle(fc, 4)
            on_node = {placement_of(w)[0][0]: w for w in fc.cluster.workloads()}
            assert sorted(on_node) == nodes
            deleted, not_ready, cordoned, survivor = nodes
            fc.cluster.core.delete_node(deleted)
            fc.cluster.set_node_ready(not_ready, False)
            fc.cluster.cordon(cordoned)
            lost = {on_node[name]["metadata"]["name"] for name in (deleted, not_ready, cordoned)}
            kept = on_node[survivor]

            def requeued() -> bool:
                fc.assert_no_violations()
                by_name = {w["metadata"]["name"]: w for w in fc.cluster.workloads()}
                pods = {p["metadata"]["labels"]["gpuadmit.io/workload"] for p in fc.cluster.all_pods()}
                return all(by_name[n]["status"]["phase"] == "Queued" for n in lost) and not (pods & lost)
            wait_until(requeued, 60, interval=0.5, what="the lost nodes' workloads requeued and their pods deleted")
            survivor_now = fc.cluster.get_workload("team", kept["metadata"]["name"])["status"]
            assert (survivor_now["phase"], survivor_now["placement"], survivor_now["admittedAt"]) == \
                (kept["status"]["phase"], kept["status"]["placement"], kept["status"]["admittedAt"])
            fc.cluster.set_node_ready(not_ready, True)  # one node comes back: exactly one lost workload returns
            settle(fc, 4)
            phases = sorted(w["status"]["phase"] for w in fc.cluster.workloads())
            assert phases == ["Admitted", "Admitted", "Queued", "Queued"]
            figures.fault("node lost (deleted, NotReady, cordoned)", 3)


def test_policy_edits_take_effect_and_an_invalid_policy_keeps_the_last_good_one(tmp_path: Path) -> None:
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(2, gpus=8)
        # The CRD refuses what the parser refuses: an invalid policy gets through only a lagging CRD.
        fc.cluster.loosen_policy_crd()
        fc.cluster.apply_policy(POLICY)
        with OperatorProcess.start(fc.cluster.kubeconfig, tmp_path / "operator") as operator:
            fc.faults.write_failure_rate = 0.1
            fc.faults.write_failure_codes = (409, 500)
            fc.create_workloads([("edits", f"a-{index}", spec_for(index)) for index in range(40)])
            settle(fc, 40)
            # A floor above what training earns: from the next cycle on, new training work is turned away.
            fc.apply_policy({**POLICY, "minMarginPerGPUHour": 2.0})
            wait_until(lambda: accepted(fc) == ("True", generation(fc)), 60, what="the edited policy accepted")
            fc.create_workloads([("edits", f"b-{index}", spec_for(1)) for index in range(5)])
            settle(fc, 45)
            assert {status(fc, f"b-{index}")["reason"] for index in range(5)} == {"MarginBelowFloor"}
            # Invalid (a price for a class that does not exist), stored by the loose CRD: the operator
            # refuses it with a condition naming the field, and the last good floor stays in force
            # (this edit lowers it to 0, so taking any of it would admit the next workloads).
            fc.apply_policy({**POLICY, "minMarginPerGPUHour": 0, "pricePerGPUHour": {"training": 2.0, "batch": 9.0}})
            try:
                wait_until(lambda: accepted(fc) == ("False", generation(fc)), 60, what="Accepted=False on the invalid policy")
            except AssertionError:
                raise AssertionError(f"{fc.cluster.get_policy()}\n{operator.log_tail(3000)}") from None
            assert "spec.pricePerGPUHour.batch" in refusal(fc)
            fc.create_workloads([("edits", f"c-{index}", spec_for(1)) for index in range(3)])
            wait_until(lambda: all(status(fc, f"c-{index}").get("phase") for index in range(3)), 60, what="c decided")
            assert {status(fc, f"c-{index}")["reason"] for index in range(3)} == {"MarginBelowFloor"}
            fc.assert_no_violations()
            figures.fault("policy edits (one invalid)", 2)


def accepted(fc: FaultyCluster) -> tuple[str | None, int | None]:
    """(status of the Accepted condition, the generation it was observed at)."""
    for condition in (fc.cluster.get_policy().get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Accepted":
            return condition.get("status"), condition.get("observedGeneration")
    return None, None


def refusal(fc: FaultyCluster) -> str:
    """The message of the Accepted condition."""
    for condition in (fc.cluster.get_policy().get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Accepted":
            return str(condition.get("message"))
    return ""


def generation(fc: FaultyCluster) -> int | None:
    return fc.cluster.get_policy()["metadata"].get("generation")


def status(fc: FaultyCluster, name: str) -> dict:
    return fc.cluster.get_workload("edits", name).get("status") or {}


@pytest.mark.parametrize("code", [500, 429] if FULL else [500])
def test_a_failed_pod_creation_is_retried_without_waiting_for_the_resync(tmp_path: Path, code: int) -> None:
    """One pod create refused: the admitted workload must still get its pod soon, not after the
    (here ten-minute) periodic resync."""
    with faulty_cluster(tmp_path) as fc:
        fc.cluster.add_gpu_nodes(1, gpus=8)
        fc.cluster.apply_policy(POLICY)
        with OperatorProcess.start(fc.cluster.kubeconfig, tmp_path / "operator", "--resync-seconds", "600"):
            fc.faults.resources = {"pods"}
            fc.faults.write_failure_codes = (code,)
            fc.faults.fail_next_writes = 1
            fc.create_workloads([("team", "solo", spec_for(1))])
            wait_until(lambda: fc.faults.injected >= 1, 30, what="the pod create refused")
            wait_until(lambda: len(fc.cluster.pods_of("team", "solo")) == 1, 30, interval=0.5,
                       what="the refused pod created again")
            fc.assert_no_violations(settled=True)
