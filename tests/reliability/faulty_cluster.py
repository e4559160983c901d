"""A cluster whose API server misbehaves on purpose, for the fault tests and ``make chaos``.

Builds on tests/e2e_harness.py (the ``Cluster`` handle, ``OperatorProcess``, ``wait_until``):
the only difference is where the API server runs. Faults need the server's ``FaultPlan``, so the
emulator runs in this process (its own thread) instead of as a subprocess; the operator is still
the real ``gpuadmit run`` process.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import pytest

from gpuadmit.controller.queueview import shown_position
from kubeapi_emulator import EmulatedApiServer
from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.faults import FaultPlan
from gpuadmit.core.native import claimed_unit
from tests.invariants import OVERCOMMIT, ApiReader, InvariantChecker, WatchRecorder, explain_node
from tests.e2e_harness import CRD_DIR, GROUP, REAL_CLUSTER_ENV, VERSION, Cluster, default_template, expected_decisions
from tests.reliability import figures

T = TypeVar("T")
PHASE_OF_ACTION = {"admit": "Admitted", "queue": "Queued", "reject": "Rejected"}
RETRYABLE = {409, 429, 500, 503, 504}


class CountingFaultPlan(FaultPlan):
    """A ``FaultPlan`` that also counts what it injected, by HTTP code."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.by_code: Counter[int] = Counter()

    def fault_for(self, action: str | None, plural: str | None) -> ApiError | None:
        fault = super().fault_for(action, plural)
        if fault is not None:
            self.by_code[fault.code] += 1
        return fault


FAULT_NAMES = {409: "409 Conflict", 429: "429 TooManyRequests (Retry-After)", 500: "500 InternalError",
               503: "503 ServiceUnavailable", 504: "504 Timeout"}


@dataclass
class FaultyCluster:
    """The e2e ``Cluster`` on an in-process emulator with a ``CountingFaultPlan``, plus a checker."""

    cluster: Cluster
    server: EmulatedApiServer
    faults: CountingFaultPlan
    checker: InvariantChecker
    recorder: WatchRecorder
    created: list[str] = field(default_factory=list)
    namespaces: set[str] = field(default_factory=set)
    create_retries: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    # -- writes that survive the faults (ours, not the operator's: the operator must cope alone) --

    def post(self, path: str, body: Mapping[str, Any], attempts: int = 50) -> None:
        data = json.dumps(body).encode()
        for _ in range(attempts):
            request = urllib.request.Request(self.url + path, data=data, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                return
            except urllib.error.HTTPError as error:
                answer = json.loads(error.read() or b"{}")
                if error.code == 409 and answer.get("reason") == "AlreadyExists":
                    return
                if error.code not in RETRYABLE:
                    raise AssertionError(f"POST {path}: {error.code} {answer.get('message')}") from None
                self.create_retries += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                self.create_retries += 1  # a reset connection under load: the create may or may not have landed
        raise AssertionError(f"POST {path}: still failing after {attempts} attempts")

    def retrying(self, write: Callable[[], T], attempts: int = 50) -> T:
        """Our own writes through the ``kubernetes`` client, retried past the injected faults."""
        import kubernetes
        for attempt in range(attempts):
            try:
                return write()
            except kubernetes.client.ApiException as error:
                if error.status not in RETRYABLE or attempt == attempts - 1:
                    raise
                self.create_retries += 1
        raise AssertionError("unreachable")

    def apply_policy(self, spec: Mapping[str, Any]) -> None:
        self.retrying(lambda: self.cluster.apply_policy(spec))

    def create_workloads(self, shapes: Iterable[tuple[str, str, Mapping[str, Any]]], threads: int = 4) -> None:
        """Create ``(namespace, name, spec)`` workloads from a few threads (a burst)."""
        shapes = list(shapes)
        for namespace in sorted({namespace for namespace, _, _ in shapes} - self.namespaces):
            self.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            self.namespaces.add(namespace)

        def create(shape: tuple[str, str, Mapping[str, Any]]) -> None:
            namespace, name, spec = shape
            self.post(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/gpuworkloads", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)})
            self.checker.expect([f"{namespace}/{name}"])  # from now on it must never disappear

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, shapes))
        self.created += [f"{namespace}/{name}" for namespace, name, _ in shapes]
        figures.count(figures.WORKLOADS_DRIVEN, len(shapes))

    # -- judging ----------------------------------------------------------------------------------

    def assert_no_violations(self, settled: bool = False) -> None:
        found = self.checker.check(settled=settled)
        details = []
        for violation in found:
            details.append(str(violation))
            if violation.invariant == OVERCOMMIT and self.checker.last_state is not None:
                details += [f"    {line}" for line in explain_node(self.checker.last_state, violation.subject)]
        assert found == [], "\n".join(details)

    def record_figures(self) -> None:
        for code, count in self.faults.by_code.items():
            figures.fault(FAULT_NAMES.get(code, str(code)), count)
        if self.recorder.streams_cut:
            figures.fault("watch streams cut (seen by the checker)", self.recorder.streams_cut)
        figures.count(figures.VIOLATIONS, len(self.checker.violations))
        figures.count("invariant checks run", self.checker.checks_run)
        figures.count("workload and pod versions the checker followed", self.recorder.history.versions_seen)
        figures.count("our own writes retried past faults", self.create_retries)


def spec_for(index: int) -> dict[str, Any]:
    """A varied, deterministic mix: training and inference, 1-8 GPUs, gangs, and a few invalid ones
    (the schema lets a template without containers through; the engine rejects it)."""
    workload_class = "inference" if index % 5 == 0 else "training"
    spec: dict[str, Any] = {"class": workload_class, "gpus": (1, 2, 4, 8, 1, 2)[index % 6],
                            "replicas": 1 + (index % 7 == 0), "template": default_template(workload_class)}
    if workload_class == "inference":  # the template must not contradict spec.gpus
        spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(spec["gpus"])}}
    if index % 97 == 13:
        spec["template"] = {"spec": {"containers": []}}
    return spec


def pods_missing(dump: Mapping[str, list[dict]]) -> list[str]:
    """The holding workloads that do not have all their pods yet (the operator is still writing),
    as "ns/name: Phase with N of M pods". A mirror of a native unit is left out: its pods are its
    native controller's, released by gpuadmit (docs/native-workloads.md)."""
    live: dict[str, int] = {}
    for pod in dump["pods"]:
        owner = (pod["metadata"].get("labels") or {}).get("gpuadmit.io/workload")
        if owner and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            key = f"{pod['metadata']['namespace']}/{owner}"
            live[key] = live.get(key, 0) + 1
    missing = []
    for workload in dump["workloads"]:
        status = workload.get("status") or {}
        key = f"{workload['metadata']['namespace']}/{workload['metadata']['name']}"
        replicas = workload["spec"].get("replicas", 1)
        if status.get("phase") in ("Admitted", "Running") and claimed_unit(workload) is None and live.get(key, 0) != replicas:
            missing.append(f"{key}: {status['phase']} with {live.get(key, 0)} of {replicas} pods")
    return missing


def pods_pending(dump: Mapping[str, list[dict]]) -> bool:
    """True while some holding workload does not have all its pods yet (``pods_missing``)."""
    return bool(pods_missing(dump))


def decision_mismatches(dump: Mapping[str, list[dict]]) -> list[str]:
    """The final state must be a fixpoint of ``decide()``: every workload still waiting is waiting
    for the reason (and at the position) the engine gives on the final objects; nothing that
    could be admitted now is left queued."""
    expected = expected_decisions(dump)
    problems = []
    for workload in dump["workloads"]:
        key = f"{workload['metadata']['namespace']}/{workload['metadata']['name']}"
        status = workload.get("status") or {}
        decision = expected.get(key)
        if decision is None:
            continue  # holding or finished: not the engine's question any more
        shown = None if decision.queue_position is None else shown_position(decision.queue_position).value
        want = (PHASE_OF_ACTION[decision.action.value], decision.reason.value, shown)  # banded past the head
        got = (status.get("phase"), status.get("reason"), status.get("queuePosition"))
        if want != got:
            problems.append(f"{key}: status says {got}, decide() on the final objects says {want}")
    return problems


@contextlib.contextmanager
def faulty_cluster(workdir: Path, seed: int = 7) -> Iterator[FaultyCluster]:
    if os.environ.get(REAL_CLUSTER_ENV):
        pytest.skip("fault injection needs the emulated API server")
    faults = CountingFaultPlan(seed=seed)
    server = EmulatedApiServer(crds=[CRD_DIR], faults=faults)
    server.handler.max_recorded_requests = 100  # a burst of thousands must not be kept for assertions
    with server:
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        cluster = Cluster(kubeconfig, real=False)
        reader = ApiReader.from_kubeconfig(str(kubeconfig))
        recorder = WatchRecorder(reader)
        checker = InvariantChecker(read_state=reader.state, history=recorder.history, decision_grace_seconds=120)
        handle = FaultyCluster(cluster, server, faults, checker, recorder)
        recorder.start()
        try:
            yield handle
        finally:
            faults.reset()
            recorder.stop()
            handle.record_figures()
