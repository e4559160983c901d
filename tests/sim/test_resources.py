"""CPU and host memory in the simulator: read from the files, honoured by every policy, and the
GPU fragmentation they cause (GPUs idle where no pending pod's CPU or memory fits)."""

from __future__ import annotations

import dataclasses

import pytest

from gpuadmit.core.engine import decide
from gpuadmit.sim.replay import POLICY_NAMES, Contender, SimulationError, contender_for, fragmented_gpus, replay
from gpuadmit.sim.report import summarize, to_table
from gpuadmit.sim.trace import MIB, TraceError, read_plain
from tests.sim.test_replay import policy

GIB = 1024 * MIB


def write_cpu_bound_trace(directory):
    """Two nodes of 8 GPUs and 8 CPUs; ten one-GPU workloads of 4 CPUs each that run to the end:
    by GPUs all ten fit, by CPU four. Inference and training alike, so the peers' preemption is tried."""
    nodes = directory / "nodes.csv"
    nodes.write_text("name,gpus,product,memory_mib,cpu_milli,host_memory_mib\n"
                     "a,8,T4,16384,8000,65536\nb,8,T4,16384,8000,65536\n")
    workloads = directory / "workloads.csv"
    rows = [f"w{i},{i * 10},,1,1,{'inference' if i % 2 else 'training'},4000,1024" for i in range(10)]
    workloads.write_text("name,submit_time,duration_s,gpus,replicas,class,cpu_milli,host_memory_mib\n" + "\n".join(rows) + "\n")
    return read_plain(workloads, nodes, end_time=1000.0)


def test_plain_columns_give_nodes_and_workloads_cpu_and_host_memory_apart_from_gpu_memory(tmp_path):
    trace = write_cpu_bound_trace(tmp_path)
    assert dict(trace.nodes[0].resources) == {"cpu": 8000, "memory": 65536 * MIB}
    assert trace.nodes[0].memory_mib == 16384  # GPU memory keeps its own column
    assert trace.workloads[0].requests == (("cpu", 4000), ("memory", GIB))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_cpu_not_gpus_limits_every_policy(tmp_path, name):
    trace = write_cpu_bound_trace(tmp_path)
    result = replay(trace, policy(), contender_for(name, policy()))  # the replay raises on any CPU overcommit
    # Four one-GPU workloads hold all the CPU: never more run at once, and four do (GPUs are idle).
    assert max(result.series.busy_gpus) == 4
    running = [job for job in result.jobs if job.state == "running"]
    assert len(running) == 4
    for node in ("a", "b"):
        cpu = sum(dict(entry.resources).get("cpu", 0) for job in running for entry in job.placement if entry.node == node)
        assert cpu <= 8000
    # From the fifth arrival (t=40, the first to wait) to the end (t=1000), 12 idle GPUs sit where no CPU is left.
    assert summarize(result)["fragmentedGPUs"] == pytest.approx(12 * 960 / 1000, abs=0.01)


def test_the_replay_refuses_a_decider_that_ignores_cpu(tmp_path):
    trace = write_cpu_bound_trace(tmp_path)

    def gpu_only(snapshot):  # the engine, shown the workloads without their CPU and memory
        return decide(dataclasses.replace(snapshot, pending=tuple(dataclasses.replace(w, requests=()) for w in snapshot.pending)))

    contender = Contender("gpu-only", gpu_only, honours_queue_timeouts=False, min_runtime_before_preemption_s=None)
    with pytest.raises(SimulationError, match=r"overcommit: .* cpu on"):
        replay(trace, policy(), contender)


def test_fragmented_gpus_counts_idle_gpus_where_the_smallest_pending_pod_does_not_fit():
    free_gpus = {"a": 4, "b": 2, "c": 0, "d": 3, "e": 1}
    free = {
        "a": {"cpu": 1000, "memory": 64 * GIB},  # too little CPU for any pending pod: 4 fragmented
        "b": {"cpu": 8000, "memory": 64 * GIB},  # fits the smallest: not fragmented
        "c": {"cpu": 0, "memory": 0},  # no idle GPU: nothing to count
        "d": {"cpu": 8000, "memory": GIB // 2},  # too little memory: 3 fragmented
        "e": {},  # lists neither: not limited by them
    }
    # The smallest pending pod asks 2 CPUs (the least any asks) and 1 GiB (likewise), from two pods.
    pending = [(("cpu", 2000), ("memory", 4 * GIB)), (("cpu", 6000), ("memory", GIB))]
    assert fragmented_gpus(free_gpus, free, pending) == 7
    # Node a would host a pod of 1 CPU: with one pending, a is not fragmented.
    assert fragmented_gpus(free_gpus, free, [*pending, (("cpu", 1000), ("memory", GIB))]) == 3
    assert fragmented_gpus(free_gpus, free, []) == 0  # nothing pending, nothing fragmented


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_fragmentation_over_a_replay_with_a_known_answer(tmp_path, name):
    """Node a (4 GPUs, 4 CPUs) runs w1 (1 GPU, 4 CPUs) the whole time; w2, alike, waits; node b
    (2 GPUs, 2 CPUs) cannot host it. So 3 + 2 = 5 of the 6 GPUs are fragmented for the whole replay."""
    nodes = tmp_path / "nodes.json"
    nodes.write_text('[{"name": "a", "gpus": 4, "product": "T4", "cpu_milli": 4000},'
                     ' {"name": "b", "gpus": 2, "product": "T4", "cpu_milli": 2000}]')
    workloads = tmp_path / "workloads.json"
    workloads.write_text('[{"name": "w1", "submit_time": 0, "gpus": 1, "cpu_milli": 4000},'
                         ' {"name": "w2", "submit_time": 0, "gpus": 1, "cpu_milli": 4000, "host_memory_mib": 10}]')
    trace = read_plain(workloads, nodes, end_time=100.0)
    result = replay(trace, policy(), contender_for(name, policy()))
    summary = summarize(result)
    assert summary["gpuFragmentation"] == pytest.approx(5 / 6, abs=1e-4)
    assert summary["fragmentedGPUs"] == pytest.approx(5.0)
    assert "GPU fragmentation (CPU/memory)" in to_table(trace, [summary])


@pytest.mark.parametrize(("column", "value"), [("cpu_milli", "-1"), ("host_memory_mib", "2e13"), ("cpu_milli", "1.5")])
def test_a_bad_cpu_or_memory_amount_is_refused_naming_the_row_and_column(tmp_path, column, value):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("name,gpus,product\na,8,T4\n")
    workloads = tmp_path / "workloads.csv"
    workloads.write_text(f"name,submit_time,gpus,{column}\nw,0,1,{value}\n")
    with pytest.raises(TraceError, match=rf"workloads.csv:2: column '{column}' must be"):
        read_plain(workloads, nodes)
