"""The real operator with a node that advertises impossibly many GPUs: the node is left out, and
every other workload is still decided and placed on real nodes."""

from __future__ import annotations

import pytest

from gpuadmit.core.pods import pod_node
from tests.e2e_harness import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.emulator]


def test_a_node_of_ten_million_gpus_is_left_out_and_the_rest_is_decided(cluster, operator_factory) -> None:
    (huge,) = cluster.add_gpu_nodes(1, gpus="10M", prefix="huge")  # type: ignore[arg-type]  # a quantity string
    (real,) = cluster.add_gpu_nodes(1, gpus=8, prefix="real")
    cluster.apply_policy({"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}})
    operator = operator_factory()
    cluster.create_workload("team-a", "fits", gpus=8)
    cluster.create_workload("team-a", "only-on-the-huge-node", gpus=64)  # the most spec.gpus allows; 8 per real node
    admitted = cluster.wait_for_phase("team-a", "fits", "Admitted")
    assert [entry["node"] for entry in admitted["placement"]] == [real]
    other = cluster.wait_for_phase("team-a", "only-on-the-huge-node", {"Queued", "Rejected"})
    assert not other.get("placement")
    pods = wait_until(lambda: cluster.pods_of("team-a", "fits") or None, what="the admitted workload's pod")
    assert {pod_node(pod) for pod in pods} == {real}
    assert not [pod for pod in cluster.all_pods() if pod_node(pod) == huge]
    assert huge not in {entry["node"] for w in cluster.workloads() for entry in (w.get("status") or {}).get("placement") or []}
    assert operator.readiness().get("ready") is not False
    told = [line for line in operator.log_tail(200_000).splitlines() if f"Node {huge} is left out" in line]
    assert len(told) == 1 and "more than the 1024 one node can have" in told[0], told
