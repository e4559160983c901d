"""Queue positions without a write per queued workload per event (controller.queueview, issue 16).

Statuses carry the exact position at the head of the queue and a band beyond it; the exact queue
is served on demand (``GET /queue``, ``gpuadmit queue``). Against the emulated API server: one
workload finishing admits the head and writes only the statuses whose shown position moved."""

from __future__ import annotations

import kopf
import pytest

from gpuadmit.controller import status as st
from gpuadmit.controller.api import KubeApi
from gpuadmit.controller.cache import POD
from gpuadmit.controller.queueview import QueueView, queued_message, shown_position
from gpuadmit.core.engine.messages import queue_position_note
from gpuadmit.core.model import Action, CycleResult, Decision, Reason
from kubeapi_emulator import EmulatedApiServer
from tests.controller.test_loop_faults import GROUP, RunningOperator, dump, eventually, seed
from tests.e2e_harness import CRD_DIR, default_template, expected_decisions
from tests.invariants import ClusterState, overcommit_violations

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("position", "value", "text", "approximate"), [
    (1, 1, "1", False), (10, 10, "10", False), (11, 20, "11-20", True), (20, 20, "11-20", True),
    (21, 30, "21-30", True), (100, 100, "91-100", True), (101, 200, "101-200", True), (1000, 1000, "901-1000", True),
    (1001, 2000, "1001-2000", True), (23_456, 30_000, "20001-30000", True),
])
def test_positions_are_exact_at_the_head_and_banded_beyond(position: int, value: int, text: str, approximate: bool) -> None:
    shown = shown_position(position, exact_head=10)
    assert (shown.value, shown.text, shown.approximate) == (value, text, approximate)
    assert shown.value >= position  # the band's upper end: never fewer ahead than it says


def test_a_longer_exact_head_and_none_at_all() -> None:
    assert shown_position(57, exact_head=100) == shown_position(57, exact_head=57)
    assert not shown_position(57, exact_head=100).approximate
    assert shown_position(27, exact_head=25).text == "26-30"  # a band never reaches into the exact head
    assert shown_position(7, exact_head=0).text == "7"  # the first ten are one wide: exact anyway
    assert shown_position(12, exact_head=0).text == "11-20"


def test_a_one_step_move_changes_only_the_head_and_one_per_band() -> None:
    queued = 4_000
    moved = [p for p in range(2, queued + 1) if shown_position(p - 1) != shown_position(p)]
    # The head (2..11 -> 1..10), then 21, 31, ..., 91, 101, 201, ..., 901, 1001, 2001, 3001.
    assert moved == [*range(2, 12), *range(21, 101, 10), *range(101, 1001, 100), 1001, 2001, 3001]


def queue_decision(position: int, message: str = "needs 1 GPU of H100; the best eligible node has 0 free") -> Decision:
    return Decision("ns", "w", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, message + queue_position_note(position),
                    workload_class="training", margin_per_gpu_hour=1.0, queue_position=position)


def test_a_queued_status_past_the_head_shows_its_band_message_included() -> None:
    desired = st.decision_status({"metadata": {"name": "w", "namespace": "ns"}}, queue_decision(157), NOW)
    assert (desired["queuePosition"], desired["queuePositionApproximate"], desired["queue"]) == (200, True, "101-200")
    assert desired["message"].endswith("(queue position 101-200)")
    written = {"metadata": {"name": "w", "namespace": "ns"}, "status": {k: v for k, v in desired.items() if v is not None}}
    assert st.status_patch(written["status"], st.decision_status(written, queue_decision(156), NOW + 1)) == {}
    head = st.decision_status(written, queue_decision(3), NOW + 2)
    patch = st.status_patch(written["status"], head)
    assert patch["queuePosition"] == 3 and patch["queue"] == "3" and patch["queuePositionApproximate"] is None
    assert patch["message"].endswith("(queue position 3)")


def test_admission_clears_every_queue_field() -> None:
    queued = st.decision_status({"metadata": {"name": "w", "namespace": "ns"}}, queue_decision(157), NOW)
    admit = Decision("ns", "w", Action.ADMIT, Reason.ADMITTED, "admitted", workload_class="training")
    patch = st.status_patch(queued, st.decision_status({"status": queued}, admit, NOW))
    assert patch["queuePosition"] is None and patch["queue"] is None and patch["queuePositionApproximate"] is None


def test_a_message_without_the_note_is_left_as_it_is() -> None:
    assert queued_message("something else", 157, shown_position(157)) == "something else"


def view() -> QueueView:
    decisions = [Decision("a" if i % 2 else "b", f"w{i}", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, "m",
                          queue_position=i) for i in (3, 1, 2)]
    decisions.append(Decision("a", "admitted", Action.ADMIT, Reason.ADMITTED, "m"))
    return QueueView.of(CycleResult(decisions=tuple(decisions), preemptions=()), NOW, 7)


def test_the_on_demand_queue_is_exact_in_order_and_per_namespace() -> None:
    status, body = view().answer({})
    assert status == 200 and body["queued"] == 3 and body["cycle"] == 7
    assert [(i["name"], i["position"], i["positionInNamespace"]) for i in body["items"]] == [
        ("w1", 1, 1), ("w2", 2, 1), ("w3", 3, 2)]
    status, body = view().answer({"namespace": "a", "limit": "1"})
    assert status == 200 and body["matched"] == 2 and [i["name"] for i in body["items"]] == ["w1"]


@pytest.mark.parametrize("query", [{"limit": "x"}, {"limit": "0"}, {"nmespace": "a"}])
def test_a_bad_queue_query_is_a_400_naming_it(query: dict[str, str]) -> None:
    status, body = view().answer(query)
    assert status == 400 and body["reason"] == "BadRequest" and next(iter(query)) in body["message"]


@pytest.mark.emulator
async def test_one_workload_finishing_writes_the_head_and_the_band_edges_not_the_queue() -> None:
    """32 GPUs, 32 + 150 one-GPU workloads: 150 queued. A pod succeeding frees one GPU: the next
    cycle writes the finished workload, the admitted head, the head's shifts and one status per
    band edge crossed; exact positions come from the on-demand read and match decide()."""
    queued = 150
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url), max_concurrency=16) as api:
            await seed(api, nodes=4, workloads=0)
            for index in range(32 + queued):
                await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body={
                    "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": f"w-{index:03d}"},
                    "spec": {"class": "training", "gpus": 1, "template": default_template("training")}})
            async with RunningOperator(api, run_loop=False) as operator:
                loop, cache = operator.loop, operator.cache
                first = await loop.run_cycle()
                assert first.by_action == {"admit": 32, "queue": queued}
                await loop.pods.drain()
                assert (await loop.run_cycle()).statuses_written == 0  # settled: nothing moves, nothing written

                pod = next(p for p in cache.all(POD))
                await api.request("patch", "PATCH", f"/api/v1/namespaces/team/pods/{pod['metadata']['name']}/status",
                                  content_type="application/merge-patch+json", body={"status": {"phase": "Succeeded"}})

                async def seen() -> bool:
                    return (cache.get(POD, f"team/{pod['metadata']['name']}") or {}).get("status", {}).get("phase") == "Succeeded"
                await eventually(seen, what="the pod's success in the cache")
                event = await loop.run_cycle()
                moved = sum(shown_position(p - 1) != shown_position(p) for p in range(2, queued + 1))
                # An incremental cycle: the admission, and the queued workloads whose shown position moved.
                assert not loop.last_cycle_whole and event.by_action == {"admit": 1, "queue": moved}
                # The finished workload's Succeeded, the admitted head, and what moved: 10 + 9, not 149.
                assert event.statuses_written == 2 + moved == 21
                await loop.pods.drain()

                state = await dump(api)
                statuses = {f"team/{w['metadata']['name']}": w["status"] for w in state["workloads"]}
                expected = expected_decisions(state)
                exact = {key: d.queue_position for key, d in expected.items() if d.action == Action.QUEUE}
                assert len(exact) == queued - 1
                for key, position in exact.items():
                    shown = shown_position(position)
                    assert (statuses[key]["phase"], statuses[key]["queuePosition"], statuses[key]["queue"]) == (
                        "Queued", shown.value, shown.text), key
                    assert statuses[key].get("queuePositionApproximate", False) == shown.approximate, key
                code, body = loop.queue_view.answer({"namespace": "team"})
                assert code == 200 and {f"team/{i['name']}": i["position"] for i in body["items"]} == exact
                assert overcommit_violations(ClusterState.from_dump(state)) == []
