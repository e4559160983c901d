"""`gpuadmit demo`: its pure parts (what it submits, how it counts), and one short real run (e2e)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuadmit import demo, demo_plan, demo_plot, demo_screen
from gpuadmit.core.classifier import classify
from gpuadmit.core.nodes import node_from_object
from gpuadmit.core.policy import parse_policy
from gpuadmit.core.validation import validate_workload
from gpuadmit.inputs import InputError
from gpuadmit.sim.trace import ALIBABA_NODES_FILE, ALIBABA_PODS_FILE

REPO = Path(__file__).resolve().parents[1]


def demo_args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def write_tiny_trace(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / ALIBABA_NODES_FILE).write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        "n-0,64000,262144,8,V100M32\n"
        "n-1,64000,262144,2,T4\n"
        "n-2,64000,262144,4,G2\n"
    )
    (folder / ALIBABA_PODS_FILE).write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
        "p-0,1000,1024,1,1000,,LS,Succeeded,0,800,10\n"
        "p-1,1000,1024,1,300,V100M32|T4,BE,Succeeded,5,300,20\n"
        "p-2,1000,1024,4,1000,,Burstable,Succeeded,9,5000,30\n"
        "p-3,1000,1024,0,0,,LS,Succeeded,9,5000,30\n"
        "p-4,1000,1024,2,1000,,LS,Running,9,9000,40\n"
    )
    return folder


def test_trace_nodes_become_labelled_gpu_nodes(tmp_path: Path) -> None:
    nodes, pods, source = demo_plan.load_trace(write_tiny_trace(tmp_path / "trace"), node_count=10)
    assert "Alibaba" in source
    by_name = {node.name: node for node in nodes}
    host = (("cpu", 64000), ("memory", 262144 * 2**20))  # the trace's cpu_milli and memory_mib
    assert by_name["n-0"] == demo_plan.DemoNode("n-0", 8, "Tesla-V100-SXM2-32GB", 32768, host)
    assert by_name["n-1"].product == "Tesla-T4"
    parsed = node_from_object(demo_plan.node_object(by_name["n-0"]), 0)
    assert (parsed.allocatable, parsed.product, parsed.memory_mib, parsed.schedulable) == (8, "Tesla-V100-SXM2-32GB", 32768, True)
    assert dict(parsed.resources) == {**dict(host), "pods": 110}
    assert [pod.name for pod in pods] == ["p-0", "p-1", "p-2", "p-4"]  # GPU pods only
    p1 = next(pod for pod in pods if pod.name == "p-1")
    assert (p1.qos_inference, p1.gpus, p1.products) == (False, 1, ("Tesla-V100-SXM2-32GB", "Tesla-T4"))
    p4 = next(pod for pod in pods if pod.name == "p-4")
    assert p4.trace_run_seconds is None  # still running at the trace end: long-lived
    assert all(pod.requests == (("cpu", 1000), ("memory", 2**30)) for pod in pods)


def test_cpu_and_memory_reach_the_engine_and_the_summary_counts_what_they_bound() -> None:
    """The sample cluster's nodes list CPU and memory and its pods request them; built into a
    snapshot from the objects the demo submits, a workload CPU binds is counted as such."""
    from gpuadmit.core.engine import decide
    from gpuadmit.core.snapshot import build_snapshot

    nodes, pods, _ = demo_plan.sample_cluster(seed=1)
    assert all(dict(node.resources).keys() == {"cpu", "memory"} for node in nodes)
    assert all(dict(pod.requests).keys() == {"cpu", "memory"} for pod in pods)
    assert len({pod.requests for pod in pods}) > 4  # drawn from the mix, not one shape
    node = next(n for n in nodes if n.gpus == 8)  # 96 CPUs: six pods of 16 CPUs fill it before its GPUs
    pod = demo_plan.DemoPod("p", False, 1, 100.0, requests=(("cpu", 16_000), ("memory", 16 * 2**30)))
    workloads = []
    for index in range(8):
        obj = demo_plan.workload_object(demo_plan.Plan(0.0, f"w{index}", "research", pod, 5.0, 60))
        obj["metadata"].update(uid=f"uid-{index}", creationTimestamp=f"2023-11-14T22:13:2{index}Z")  # 1,700,000,000 s and on
        workloads.append(obj)
    snapshot = build_snapshot([demo_plan.node_object(node)], [], [], workloads, [], now=1_700_000_030.0)
    decisions = decide(snapshot).decisions
    assert sorted(d.action.value for d in decisions) == ["admit"] * 6 + ["queue"] * 2
    ledger = demo_screen.Ledger(total_gpus=8, time_scale=1.0)
    for index, decision in enumerate(decisions):
        plan = demo_plan.Plan(0.0, f"w{index}", "research", pod, 5.0, 60)
        ledger.submitted(plan, sent_at=0.0)
        status = {"phase": "Queued" if decision.action.value == "queue" else "Admitted", "reason": decision.reason.value,
                  "message": decision.message}
        ledger.observe("MODIFIED", {"metadata": {"namespace": "research", "name": decision.name}, "status": status})
    ledger.observe("MODIFIED", {"metadata": {"namespace": "research", "name": "w0"},
                                "status": {"phase": "Rejected", "reason": "NoNodeCanFit", "message": "needs 16 GPUs per replica; the largest eligible node has 8"}})
    lines = demo_screen.summary(ledger, elapsed=10.0, time_scale=1.0)
    assert "bound by CPU or memory: 2 of 3 queued or rejected decisions (CPU 2, memory 0)" in lines


def test_the_demo_and_simulate_find_the_same_trace_upwards_or_through_the_environment(tmp_path: Path, monkeypatch) -> None:
    from gpuadmit.sim.trace import SHARED_TRACE_SUBDIR, TRACE_DIR_ENV, find_trace_dir

    monkeypatch.delenv(TRACE_DIR_ENV, raising=False)
    write_tiny_trace(tmp_path / "shared" / "traces" / "alibaba-gpu-2023")
    deep = tmp_path / "work" / "main" / "sub"
    deep.mkdir(parents=True)
    assert find_trace_dir(None, [deep]) == (tmp_path / SHARED_TRACE_SUBDIR).resolve()
    elsewhere = tmp_path / "elsewhere"
    write_tiny_trace(elsewhere)
    monkeypatch.setenv(TRACE_DIR_ENV, str(elsewhere))
    assert find_trace_dir(None, [deep]) == elsewhere  # the environment wins over the search
    monkeypatch.setenv(TRACE_DIR_ENV, str(tmp_path / "nowhere"))
    assert find_trace_dir(None, [deep]) is None  # a named place without the trace is not replaced by another


def test_a_trace_dir_without_the_trace_is_an_error(tmp_path: Path, capsys) -> None:
    assert demo.run(demo_args(trace_dir=str(tmp_path / "nowhere"))) != 0
    assert f"--trace-dir {tmp_path / 'nowhere'}: no " in capsys.readouterr().err


def test_submissions_are_seeded_bounded_and_offer_the_requested_load() -> None:
    nodes, pods, _ = demo_plan.sample_cluster(seed=1)
    total = sum(node.gpus for node in nodes)
    args = demo_args(duration=60.0, time_scale=10.0, load=1.0, seed=3)
    plans, rate, offered = demo_plan.plan_submissions(pods, total, args)
    again, _, _ = demo_plan.plan_submissions(pods, total, args)
    assert plans == again
    assert 0 < rate <= args.max_rate
    assert offered == pytest.approx(1.0) or rate == args.max_rate
    assert all(0 < plan.at < args.duration for plan in plans)
    assert [plan.at for plan in plans] == sorted(plan.at for plan in plans)
    assert len({(plan.namespace, plan.name) for plan in plans}) == len(plans)
    assert all(demo_plan.MIN_RUN_SECONDS <= plan.run_seconds <= args.duration / 2 for plan in plans)
    assert abs(len(plans) - rate * args.duration) < 4 * (rate * args.duration) ** 0.5 + 5  # Poisson arrivals
    assert all((plan.max_queue_seconds is None) == plan.pod.qos_inference for plan in plans)
    forgers = [plan for plan in plans if plan.forges_tier_label]
    assert forgers and not any(plan.pod.qos_inference for plan in forgers)
    assert len(forgers) <= len(plans) // demo_plan.FORGER_EVERY + 1
    assert {plan.namespace for plan in plans if plan.pod.qos_inference} <= set(demo_plan.INFERENCE_NAMESPACES)


def test_submitted_workloads_pass_the_webhook_and_classify_as_the_qos_proxy_says() -> None:
    _, pods, _ = demo_plan.sample_cluster(seed=1)
    plans, _, _ = demo_plan.plan_submissions(pods, 100, demo_args(duration=30.0))
    inference = next(plan for plan in plans if plan.pod.qos_inference)
    training = next(plan for plan in plans if not plan.pod.qos_inference)
    for plan, expected in ((inference, "inference"), (training, "training")):
        obj = demo_plan.workload_object(plan)
        assert validate_workload(obj).allowed, validate_workload(obj).message
        assert classify(obj["spec"].get("class"), obj["spec"]["template"])[0] == expected
        assert obj["spec"]["gpus"] == plan.pod.gpus


def test_the_forged_tier_label_is_what_the_webhook_refuses() -> None:
    _, pods, _ = demo_plan.sample_cluster(seed=1)
    plans, _, _ = demo_plan.plan_submissions(pods, 100, demo_args(duration=60.0))
    forger = next(plan for plan in plans if plan.forges_tier_label)
    result = validate_workload(demo_plan.workload_object(forger))
    assert (result.allowed, result.reason) == (False, "ReservedKey")
    assert "gpuadmit.io/tier" in result.message


def test_the_policy_durations_are_compressed_like_time() -> None:
    policy = demo_plan.demo_policy(REPO / "examples" / "policy.yaml", time_scale=10.0)
    shipped = demo_plan.demo_policy(None, time_scale=10.0)  # the package's copy of the example
    for obj in (policy, shipped):
        parsed = parse_policy(obj)
        assert parsed.preemption.min_runtime_seconds == 60
        assert parsed.default_max_queue_seconds == 8640
    assert policy == shipped


def test_the_ledger_counts_decisions_waits_and_margin() -> None:
    ledger = demo_screen.Ledger(total_gpus=16, time_scale=60.0)
    pod = demo_plan.DemoPod("p", True, 2, 100.0)
    plan = demo_plan.Plan(0.0, "p", "serving", pod, 5.0, None)
    ledger.submitted(plan, sent_at=ledger.now())
    key = "serving/p"
    ledger.observe("MODIFIED", {"metadata": {"namespace": "serving", "name": "p"},
                                "status": {"phase": "Queued", "reason": "InsufficientCapacity", "message": "no room", "class": "inference"}})
    ledger.observe("MODIFIED", {"metadata": {"namespace": "serving", "name": "p"},
                                "status": {"phase": "Admitted", "reason": "Admitted", "class": "inference",
                                           "placement": [{"node": "n1", "gpus": 2}], "marginPerGPUHour": 4.8}})
    assert ledger.workloads[key].admitted_at is not None
    assert [d.verb for d in ledger.decisions] == ["queued", "admitted"]
    assert ledger.gpus_in_use() == 2 and ledger.margin_per_hour() == pytest.approx(9.6)
    counts = ledger.counts()["inference"]
    assert (counts["submitted"], counts["admitted"], counts["holding"], counts["queued"]) == (1, 1, 1, 0)
    ledger.observe("MODIFIED", {"metadata": {"namespace": "serving", "name": "p"},
                                "status": {"phase": "Succeeded", "reason": "PodsSucceeded", "class": "inference"}})
    assert ledger.gpus_in_use() == 0 and ledger.counts()["inference"]["done"] == 1
    ledger.observe("MODIFIED", {"metadata": {"namespace": "other", "name": "x"}, "status": {"phase": "Admitted"}})  # not ours
    forger = demo_plan.Plan(1.0, "f", "research", demo_plan.DemoPod("f", False, 1, 10.0), 2.0, 60, True)
    ledger.refused(forger, 1.0, '[ReservedKey] metadata.labels["gpuadmit.io/tier"]: reserved')
    assert ledger.counts()["training"]["refused"] == 1 and ledger.decisions[-1].verb == "refused"
    assert ledger.workloads["research/f"].reason == "ReservedKey"
    lines = demo_screen.summary(ledger, elapsed=10.0, time_scale=60.0)
    assert "admitted by class: inference=1 training=0" in lines
    assert ledger.waits(namespace="serving") == ledger.waits("inference") and ledger.waits(namespace="research") == []
    lines = demo_screen.summary(ledger, elapsed=10.0, time_scale=60.0, guarantee=("research", 4))
    assert lines[-1] == "guaranteed tenant research (GPUQuota: 4 GPUs of any product): 0 admitted, wait p50 -, p95 -"


def test_the_guaranteed_tenant_is_a_valid_gpuquota_on_the_training_namespace() -> None:
    from gpuadmit.core.quota import tenancy

    quota = demo_plan.guaranteed_tenant_quota(64)
    namespaces = [{"metadata": {"name": name}} for name in (*demo_plan.INFERENCE_NAMESPACES, demo_plan.TRAINING_NAMESPACE)]
    tenants = tenancy([quota], namespaces)
    assert dict(tenants.quota_of_namespace) == {"research": "research"} and not tenants.invalid
    assert tenants.quotas["research"].guaranteed == {"*": 16}


def test_plain_output_has_no_cursor_tricks() -> None:
    import io

    out = io.StringIO()
    ledger = demo_screen.Ledger(total_gpus=8, time_scale=10.0)
    screen = demo_screen.Screen(out, ledger, "header", live=False, duration=30.0)
    screen.update(0)
    screen.update(0, final=True)
    assert "\x1b" not in out.getvalue()
    assert out.getvalue().count("\n") == 2 and "GPUs 0/8" in out.getvalue()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_demo_runs_end_to_end_and_admits_both_classes(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gpuadmit.cli", "demo", "--duration", "25", "--nodes", "16"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=200, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = result.stdout
    assert result.returncode == 0, output[-3000:] + result.stderr[-3000:]
    assert "\x1b[" not in output  # not a terminal: plain lines
    assert "/metrics" in output and "Summary after" in output
    admitted = re.search(r"admitted by class: inference=(\d+) training=(\d+)", output)
    assert admitted, output[-2000:]
    assert int(admitted.group(1)) > 0 and int(admitted.group(2)) > 0, output[-2000:]
    assert re.search(r"^inference(\s+\d+){6}\s+\d+\.\ds", output, re.MULTILINE)  # six counts, then wait percentiles
    refused = re.search(r"^training\s+\d+\s+\d+\s+\d+\s+(\d+)", output, re.MULTILINE)  # the forged tier label
    assert refused and int(refused.group(1)) >= 1, output[-2000:]
    assert "admission webhooks: every create went through" in output and "called by the API server" in output
    guaranteed = re.search(r"guaranteed tenant research \(GPUQuota: (\d+) GPUs of any product\): (\d+) admitted", output)
    assert guaranteed and int(guaranteed.group(2)) > 0, output[-2000:]
    served = re.search(r"metrics: (\d+) gpuadmit_ samples served", output)
    assert served and int(served.group(1)) > 0, output[-1000:]


def run_demo(*args: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The demo as a user runs it, with its own empty TMPDIR to see what it leaves behind."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "gpuadmit.cli", "demo", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, cwd=tmp_path, env={**os.environ, "TMPDIR": str(temp)})


@pytest.mark.parametrize(("nodes_row", "pods_row", "named"), [
    ("n-0,64000,262144,eight,V100M32", "p-0,1000,1024,1,1000,,LS,Succeeded,0,800,10",
     "openb_node_list_gpu_node.csv:2: column 'gpu'"),
    ("n-0,64000,262144,8,V100M32", "p-0,1000,1024,1,1000,,LS,Succeeded,soon,800,10",
     "openb_pod_list_default.csv:2: column 'creation_time'"),
    ("n-0,64000,262144,8,V100M32", "p-\udcff,1000,1024,1,1000,,LS,Succeeded,0,800,10",  # a byte that is not UTF-8
     "openb_pod_list_default.csv: line 2: not UTF-8"),
])
def test_a_malformed_trace_is_one_line_exit_2_and_leaves_no_directory(tmp_path: Path, nodes_row: str, pods_row: str,
                                                                      named: str) -> None:
    trace = write_tiny_trace(tmp_path / "trace")
    (trace / ALIBABA_NODES_FILE).write_text("sn,cpu_milli,memory_mib,gpu,model\n" + nodes_row + "\n")
    pods = (trace / ALIBABA_PODS_FILE).read_text().splitlines()
    (trace / ALIBABA_PODS_FILE).write_bytes((pods[0] + "\n" + pods_row + "\n").encode("utf-8", "surrogateescape"))
    result = run_demo("--trace-dir", str(trace), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("gpuadmit demo: ") and named in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # no work directory left


def test_a_pod_list_without_times_is_one_line_exit_2(tmp_path: Path) -> None:
    trace = write_tiny_trace(tmp_path / "trace")
    (trace / ALIBABA_PODS_FILE).write_text("name,num_gpu,qos\np-0,1,LS\n")  # like the trace's multigpu50 files
    result = run_demo("--trace-dir", str(trace), tmp_path=tmp_path)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert ALIBABA_PODS_FILE in result.stderr and "creation_time" in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_bad_policy_or_option_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("- not\n- a policy\n")
    result = run_demo("--no-trace", "--policy", str(tmp_path / "policy.yaml"), tmp_path=tmp_path)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1) and "--policy" in result.stderr
    result = run_demo("--no-trace", "--duration", "0", tmp_path=tmp_path)
    assert result.returncode == 2 and "--duration" in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(("content", "named"), [
    (b"spec:\n  bogusField: 1\n", "spec.bogusField"),                    # parses as YAML, not as a policy
    (b"\xff\xfe policy", "line 1: not UTF-8"),
    (b"", "is empty"),
    (None, "cannot read: No such file or directory"),
])
def test_the_demo_reads_a_policy_file_as_every_command_does(tmp_path: Path, content: bytes | None, named: str) -> None:
    path = tmp_path / "policy.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(named)) as raised:
        demo_plan.demo_policy(path, time_scale=10.0)
    assert str(raised.value).startswith(f"--policy {path}")


def test_a_bare_policy_spec_becomes_the_marginpolicy_the_demo_creates(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps({"gpuCostPerHour": {"T4": 0.4}, "defaultMaxQueueSeconds": 600}))
    policy = demo_plan.demo_policy(tmp_path / "spec.json", time_scale=10.0)
    assert (policy["kind"], policy["metadata"]["name"]) == ("MarginPolicy", "default")
    assert policy["spec"]["gpuCostPerHour"] == {"T4": 0.4} and policy["spec"]["defaultMaxQueueSeconds"] == 60
    parse_policy(policy)


METRICS_AT = [
    (0.0, ('gpuadmit_gpus{product="T4",state="reserved"} 0\ngpuadmit_gpus{product="T4",state="free"} 8\n'
           'gpuadmit_gpus{product="T4",state="allocatable"} 8\ngpuadmit_queue_depth{class="training"} 0\n'
           'gpuadmit_decisions_total{action="admit",class="inference",reason="Admitted"} 0\n'
           'gpuadmit_margin_earned_per_hour{class="inference"} 0\n')),
    (2.0, ('gpuadmit_gpus{product="T4",state="reserved"} 6\ngpuadmit_gpus{product="T4",state="free"} 2\n'
           'gpuadmit_gpus{product="T4",state="allocatable"} 8\ngpuadmit_queue_depth{class="training"} 3\n'
           'gpuadmit_decisions_total{action="admit",class="inference",reason="Admitted"} 6\n'
           'gpuadmit_decisions_total{action="queue",class="training",reason="InsufficientCapacity"} 3\n'
           'gpuadmit_margin_earned_per_hour{class="inference"} 28.8\n')),
]


def test_the_recorded_metrics_give_the_dashboards_series_and_four_pngs(tmp_path: Path) -> None:
    recorder = demo_plot.MetricsRecorder("http://unused")
    for at, text in METRICS_AT:
        recorder.record(text, at=at)
    gpus = recorder.series("gpuadmit_gpus", lambda labels: None if labels["state"] == "allocatable"
                           else f"{labels['product']} {labels['state']}")
    assert gpus == {"T4 reserved": [(0.0, 0.0), (2.0, 6.0)], "T4 free": [(0.0, 8.0), (2.0, 2.0)]}
    rates = recorder.rates("gpuadmit_decisions_total", lambda labels: labels["reason"])
    assert rates["Admitted"] == [(2.0, 3.0)]  # 6 decisions in 2 s
    written = demo_plot.plot_panels(recorder, tmp_path / "plots")
    assert [path.name for path in written] == [f"{name}.png" for name in demo_plot.PANELS]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_keeps_the_cluster_for_kubectl_until_ctrl_c_and_plot_writes_the_panels(tmp_path: Path) -> None:
    import signal
    import urllib.request

    import yaml

    plots = tmp_path / "plots"
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuadmit.cli", "demo", "--duration", "8", "--no-trace", "--plain", "--serve",
         "--plot", str(plots)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    output = []
    kubeconfig = None
    try:
        for line in process.stdout:
            output.append(line)
            if line.strip().startswith("export KUBECONFIG="):
                kubeconfig = Path(line.strip().split("=", 1)[1])
            if line.startswith("Press Ctrl-C"):
                break
        assert kubeconfig is not None and kubeconfig.is_file(), "".join(output)[-3000:]
        assert "kubectl get gpuworkloads -A" in "".join(output)
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        with urllib.request.urlopen(f"{server}/apis/gpuadmit.io/v1alpha1/gpuworkloads", timeout=10) as response:
            assert json.loads(response.read())["items"], "the demo's workloads are there"
        kubectl = shutil.which("kubectl")
        if kubectl is not None:  # the real kubectl, when there is one
            got = subprocess.run([kubectl, "get", "gw", "-A"], check=False, capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)})
            assert got.returncode == 0, got.stderr
            assert got.stdout.split("\n")[0].split()[:4] == ["NAMESPACE", "NAME", "CLASS", "PHASE"]
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, errors[-3000:]
    assert "Traceback" not in errors
    assert not kubeconfig.parent.exists()  # the work directory went with the cluster
    assert sorted(path.name for path in plots.iterdir()) == sorted(f"{name}.png" for name in demo_plot.PANELS)


def test_the_kubelet_stand_in_reports_ended_containers_as_kubectl_expects_them() -> None:
    """Running: READY 1/1; Succeeded: the containers terminated (READY 0/1, STATUS Completed), as a kubelet writes it."""
    from gpuadmit.demo_kubelet import Kubelet

    written: list[dict] = []

    class Recorder:
        async def call(self, method: str, path: str, body: Any = None, *, merge: bool = False,
                       params: Any = None) -> tuple[int, Any]:
            written.append(body["status"])
            return 200, {}

    kubelet = Kubelet(Recorder())
    kubelet.run_seconds["team/w"] = 0.0
    pod = {"metadata": {"name": "w-0", "namespace": "team", "uid": "u1", "labels": {"gpuadmit.io/workload": "w"}},
           "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "busybox"}]}, "status": {"phase": "Pending"}}

    async def run() -> None:
        started = kubelet.observe("ADDED", pod)
        assert started is not None
        await started
        finishing = asyncio.ensure_future(kubelet.finish_pods())
        for _ in range(200):
            if len(written) == 2:
                break
            await asyncio.sleep(0.01)
        finishing.cancel()

    asyncio.run(run())
    running, succeeded = written
    assert running["phase"] == "Running" and [c["ready"] for c in running["containerStatuses"]] == [True]
    assert succeeded["phase"] == "Succeeded"
    (ended,) = succeeded["containerStatuses"]
    assert (ended["name"], ended["ready"], ended["state"]["terminated"]["reason"]) == ("main", False, "Completed")
