"""End-to-end harness: an API server, the CRDs, the real `gpuadmit run` process, and helpers.

The processes (start, readiness, stop) are ``gpuadmit.localcluster``'s, shared with the demo and
the benchmarks; what a cluster must never do is checked by ``tests/invariants.py``.

Reusable by any suite that needs the whole system (controller, observability, demo):

    from tests.e2e_harness import Cluster, OperatorProcess, wait_until

    with Cluster.start(tmp_path) as cluster:          # emulator subprocess (or a real cluster)
        cluster.add_gpu_nodes(2, gpus=8)
        cluster.apply_policy({"pricePerGPUHour": {"inference": 6, "training": 2}})
        with OperatorProcess.start(cluster.kubeconfig, tmp_path) as operator:
            cluster.create_workload("team-a", "chat", gpus=4)
            status = cluster.wait_for_phase("team-a", "chat", {"Admitted"})

or the pytest fixtures ``cluster`` and ``operator_factory`` from ``tests/controller/conftest.py``.

Where the API server comes from:

- default: ``python -m kubeapi_emulator`` as a subprocess on a loopback port of its choosing, with the
  CRDs in ``crds/`` loaded; it writes the kubeconfig the operator and the client use.
- ``GPUADMIT_E2E_KUBECONFIG=/path/to/kubeconfig``: a real cluster (e.g. ``kind create cluster``;
  one node is enough). The harness then applies the CRDs itself. Its GPU nodes are not the
  cluster's own: as KWOK does, ``add_gpu_nodes`` creates Node objects that advertise
  ``nvidia.com/gpu`` (status subresource, what the NVIDIA device plugin would report) with the
  labels GPU Feature Discovery would set, and ``KubeletStandIn`` plays their kubelet: it renews
  each node's Lease in ``kube-node-lease`` so the node lifecycle controller keeps them Ready,
  reports the pod phases the tests ask for (``set_pod_phase``, patching pod status, as on the
  emulator), and completes the deletion of pods on them (no kubelet would confirm it otherwise).
  At the end it deletes the nodes, their Leases, the namespaces and the MarginPolicies it created.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import yaml

from gpuadmit.core.timefmt import format_rfc3339

# The processes are the one harness the demo and the benchmarks use too; tests import them from here.
from gpuadmit.localcluster import EmulatorProcess, OperatorProcess, free_port, http_get  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
GROUP, VERSION = "gpuadmit.io", "v1alpha1"
GPU = "nvidia.com/gpu"
REAL_CLUSTER_ENV = "GPUADMIT_E2E_KUBECONFIG"

T = TypeVar("T")


# -- waiting --------------------------------------------------------------------------------------


def wait_until(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and the last value.

    Generous deadlines, short intervals: never a fixed sleep as synchronisation.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}"[:3000])
        time.sleep(interval)


# -- the cluster: objects in, objects out ---------------------------------------------------------


def webhook_operator(kubeconfig: Path, workdir: Path, *extra_args: str,
                     pod_namespace: str | None = "gpuadmit-system") -> OperatorProcess:
    """`gpuadmit run --manage-webhook-configurations` (not launched yet): it serves its webhooks on
    127.0.0.1 at a free port, with its certificates in ``workdir/certs``, and registers them with
    the API server. ``pod_namespace``: its own namespace (``POD_NAMESPACE``), whose pods its
    webhooks never refuse; None leaves it unset."""
    env = {"GPUADMIT_WEBHOOK_ADDR": "127.0.0.1"} | ({"POD_NAMESPACE": pod_namespace} if pod_namespace else {})
    return OperatorProcess(kubeconfig, workdir, ("--manage-webhook-configurations", "--webhook-cert-dir",
                                                 str(workdir / "certs"), *extra_args), env=env, webhook_port=free_port())


@dataclass
class Cluster:
    """A handle on an API server (emulated or real) with the few verbs the tests need."""

    kubeconfig: Path
    real: bool
    emulator: EmulatorProcess | None = None
    created_namespaces: set[str] = field(default_factory=set)
    created_policies: set[str] = field(default_factory=set)
    kubelet: "KubeletStandIn | None" = None  # real cluster: plays the kubelet of the GPU nodes it created
    _clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def start(cls, workdir: Path, crd_dir: Path = CRD_DIR, scheduler: bool = True) -> Iterator[Cluster]:
        """The emulator as a subprocess (serving the CRDs in ``crd_dir``), or the real cluster
        ``GPUADMIT_E2E_KUBECONFIG`` names (the project's CRDs applied). ``scheduler=False`` starts
        the emulator with ``--no-scheduler`` (the test binds pods itself; a real cluster ignores it)."""
        real_kubeconfig = os.environ.get(REAL_CLUSTER_ENV)
        if real_kubeconfig:
            cluster = cls(Path(real_kubeconfig), real=True)
            try:
                cluster.apply_crds()
                yield cluster
            finally:
                cluster.cleanup_real()
            return
        with EmulatorProcess(workdir, (crd_dir,), scheduler=scheduler).running() as emulator:
            yield cls(emulator.kubeconfig, real=False, emulator=emulator)

    # -- clients --

    @property
    def api_client(self) -> Any:
        if "api" not in self._clients:
            import kubernetes
            self._clients["api"] = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._clients["api"]

    @property
    def core(self) -> Any:
        import kubernetes
        return kubernetes.client.CoreV1Api(self.api_client)

    @property
    def custom(self) -> Any:
        import kubernetes
        return kubernetes.client.CustomObjectsApi(self.api_client)

    def raw(self, method: str, path: str, body: Any = None, content_type: str = "application/merge-patch+json") -> Any:
        """A plain REST call (dicts in, dicts out): no client-side model conversion."""
        import kubernetes
        path, _, query = path.partition("?")
        query_params = [tuple(pair.split("=", 1)) for pair in query.split("&")] if query else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        serialized = self.api_client.param_serialize(
            method, path, query_params=query_params, header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self.api_client.call_api(*serialized)
        data = response.read()
        if response.status >= 400:
            raise kubernetes.client.ApiException(status=response.status, reason=response.reason)
        return json.loads(data) if data else None

    # -- set-up --

    def apply_crds(self) -> None:
        import kubernetes
        extensions = kubernetes.client.ApiextensionsV1Api(self.api_client)
        for path in sorted(CRD_DIR.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            try:
                extensions.create_custom_resource_definition(crd)
            except kubernetes.client.ApiException as error:
                if error.status != 409:
                    raise
        for path in sorted(CRD_DIR.glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            wait_until(lambda: _crd_established(extensions, name), 60, what=f"CRD {name} established")

    def loosen_policy_crd(self) -> None:
        """Serve MarginPolicies with a spec that takes anything (``policy_crd_taking_any_spec``)."""
        loose = policy_crd_taking_any_spec()
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{loose['metadata']['name']}"
        self.raw("PATCH", path, {"spec": {"versions": loose["spec"]["versions"]}})

    def ensure_namespace(self, name: str, tier: str | None = None) -> None:
        import kubernetes
        labels = {"gpuadmit.io/tier": tier} if tier else {}
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        try:
            self.core.create_namespace(body)
            self.created_namespaces.add(name)
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise
            if tier:
                self.core.patch_namespace(name, {"metadata": {"labels": labels}})

    def add_gpu_nodes(self, count: int, gpus: int = 8, product: str = "NVIDIA-H100-80GB-HBM3",
                      memory_mib: int = 81559, prefix: str = "gpu-node") -> list[str]:
        """``count`` new GPU nodes, Ready, named ``PREFIX-0``...: Node objects advertising
        ``nvidia.com/gpu`` with GFD-style labels, on the emulator and on a real cluster alike (there,
        as KWOK's nodes, with ``KubeletStandIn`` as their kubelet)."""
        labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory_mib)}
        names = [f"{prefix}-{index}" for index in range(count)]
        for name in names:
            metadata: dict[str, Any] = {"name": name, "labels": labels}
            if self.real:  # marked as KWOK marks its nodes, and as ours, so clean-up finds them
                metadata["labels"] = {**labels, STAND_IN_LABEL: "true", "type": "kwok"}
                metadata["annotations"] = {"kwok.x-k8s.io/node": "fake"}
            self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": metadata})
            if self.real:
                self.kubelet_stand_in().adopt(name)
            self.raw("PATCH", f"/api/v1/nodes/{name}/status", {"status": {
                "capacity": {GPU: str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"},
                "allocatable": {GPU: str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"},
                "conditions": [node_ready_condition(True)],
            }})
        return names

    def kubelet_stand_in(self) -> KubeletStandIn:
        """The kubelet of the nodes this harness created on a real cluster (started on first use)."""
        if self.kubelet is None:
            self.kubelet = KubeletStandIn(self)
            self.kubelet.start()
        return self.kubelet

    def set_node_ready(self, name: str, ready: bool) -> None:
        self.raw("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [node_ready_condition(ready)]}})

    def cordon(self, name: str, cordoned: bool = True) -> None:
        self.core.patch_node(name, {"spec": {"unschedulable": cordoned}})

    def apply_policy(self, spec: Mapping[str, Any], name: str = "default") -> dict:
        import kubernetes
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MarginPolicy", "metadata": {"name": name}, "spec": dict(spec)}
        try:
            created = self.custom.create_cluster_custom_object(GROUP, VERSION, "marginpolicies", body)
            self.created_policies.add(name)
            return created
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise
            return self.custom.patch_cluster_custom_object(GROUP, VERSION, "marginpolicies", name, {"spec": dict(spec)})

    def get_policy(self, name: str = "default") -> dict:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "marginpolicies", name)

    # -- workloads --

    def create_workload(self, namespace: str, name: str, gpus: int = 1, replicas: int = 1,
                        workload_class: str = "training", template: Mapping[str, Any] | None = None,
                        **spec: Any) -> dict:
        self.ensure_namespace(namespace)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"class": workload_class, "gpus": gpus, "replicas": replicas,
                     "template": dict(template) if template is not None else default_template(workload_class),
                     **spec},
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", body)

    def create_workloads(self, specs: list[dict[str, Any]], parallel: int = 8) -> None:
        """Create many at once (each spec: the keyword arguments of ``create_workload``), as a
        burst of tenants would: ``parallel`` requests in flight."""
        from concurrent.futures import ThreadPoolExecutor
        for namespace in sorted({spec["namespace"] for spec in specs}):
            self.ensure_namespace(namespace)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(lambda spec: self.create_workload(**spec), specs))

    def delete_workload(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", name)

    def get_workload(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", name)

    def workloads(self, namespace: str | None = None) -> list[dict]:
        if namespace:
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads")["items"]
        return self.custom.list_cluster_custom_object(GROUP, VERSION, "gpuworkloads")["items"]

    def wait_for_phase(self, namespace: str, name: str, phases: set[str] | str, timeout: float = 30.0) -> dict:
        """The workload's status once its phase is one of ``phases``."""
        wanted = {phases} if isinstance(phases, str) else set(phases)

        def status() -> dict | None:
            current = self.get_workload(namespace, name).get("status") or {}
            return current if current.get("phase") in wanted else None
        return wait_until(status, timeout, what=f"{namespace}/{name} to reach {sorted(wanted)}")

    def wait_all_decided(self, count: int, timeout: float = 60.0, namespace: str | None = None) -> list[dict]:
        """All ``count`` workloads once each has a phase in its status."""
        def decided() -> list[dict] | None:
            items = self.workloads(namespace)
            return items if len(items) >= count and all((w.get("status") or {}).get("phase") for w in items) else None
        return wait_until(decided, timeout, interval=0.2, what=f"{count} workloads to have a decision")

    # -- pods (playing kubelet on the emulator) --

    def pods_of(self, namespace: str, workload: str) -> list[dict]:
        return self.raw("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=gpuadmit.io/workload={workload}")["items"]

    def all_pods(self) -> list[dict]:
        return self.raw("GET", "/api/v1/pods")["items"]

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        """What a kubelet reports: Running, Succeeded, Failed. The harness's GPU nodes have no
        kubelet (on the emulator, or on a real cluster where ``KubeletStandIn`` stands in)."""
        self.raw("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": {"phase": phase}})

    def set_workload_pods_phase(self, namespace: str, workload: str, phase: str) -> list[str]:
        """What the kubelets report for every pod of a workload. The operator writes the admission
        first and creates the pods right after, and kube-scheduler binds them, so this waits until
        all of them exist and are bound."""
        obj = self.raw("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/gpuworkloads/{workload}")
        replicas = (obj.get("spec") or {}).get("replicas") or 1

        def all_pods() -> list[dict] | None:
            pods = self.pods_of(namespace, workload)
            # A kubelet acts on a pod only once it is bound to its node (by kube-scheduler).
            return pods if len(pods) >= replicas and all((p.get("spec") or {}).get("nodeName") for p in pods) else None
        names = [pod["metadata"]["name"] for pod in wait_until(all_pods, what=f"the bound pods of {namespace}/{workload}")]
        for name in names:
            self.set_pod_phase(namespace, name, phase)
        return names

    def events_for(self, namespace: str, name: str) -> list[dict]:
        items = self.raw("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name
                and (e.get("involvedObject") or {}).get("kind") == "GPUWorkload"]

    # -- the whole picture --

    def dump(self) -> dict[str, list[dict]]:
        """Every object the engine reads, as raw dicts (what `kubectl get -o yaml` would give)."""
        return {
            "nodes": self.raw("GET", "/api/v1/nodes")["items"],
            "pods": self.all_pods(),
            "namespaces": self.raw("GET", "/api/v1/namespaces")["items"],
            "workloads": self.workloads(),
            "policies": self.custom.list_cluster_custom_object(GROUP, VERSION, "marginpolicies")["items"],
        }

    def cleanup_real(self) -> None:
        """On a real cluster: remove what the harness created. Namespaces take their workloads and
        pods along; the nodes go with their Leases (and the pods left on them, which the stand-in
        finishes deleting until it stops)."""
        import kubernetes
        for namespace in sorted(self.created_namespaces):
            with contextlib.suppress(kubernetes.client.ApiException):
                self.core.delete_namespace(namespace)
        for name in sorted(self.created_policies):
            with contextlib.suppress(kubernetes.client.ApiException):
                self.custom.delete_cluster_custom_object(GROUP, VERSION, "marginpolicies", name)
        if self.kubelet is not None:
            self.kubelet.stop()
            for name in sorted(self.kubelet.nodes):
                with contextlib.suppress(kubernetes.client.ApiException):
                    self.core.delete_node(name)
                with contextlib.suppress(kubernetes.client.ApiException):
                    self.raw("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{name}")
            self.kubelet = None


STAND_IN_LABEL = "e2e.gpuadmit.io/kubelet-stand-in"
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the kubelet's default; the node lifecycle controller waits this long


def node_ready_condition(ready: bool) -> dict[str, str]:
    now = format_rfc3339(time.time())
    return {"type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}


class KubeletStandIn:
    """The kubelet of the GPU nodes the harness creates on a real cluster (what KWOK does).

    - heartbeat: creates each node's Lease in ``kube-node-lease`` (owned by the Node, as the
      kubelet's is) and renews it every ``renew_every_s``, so the node lifecycle controller
      neither marks the node unreachable nor taints it and evicts its pods;
    - deletion: a pod deleted gracefully stays Terminating until its kubelet confirms; for pods
      on these nodes the stand-in confirms at once (delete with ``gracePeriodSeconds=0``).

    Pod phases are reported on request (``Cluster.set_pod_phase``), as on the emulator.
    """

    def __init__(self, cluster: Cluster, renew_every_s: float = 10.0, poll_s: float = 0.5) -> None:
        self.cluster = cluster
        self.renew_every_s = renew_every_s
        self.poll_s = poll_s
        self.nodes: list[str] = []
        self._renewed_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def adopt(self, node: str) -> None:
        """Take on ``node`` (just created): its Lease now, then renewals and pod deletions."""
        with self._lock:
            self.nodes.append(node)
        self.create_lease(node)

    def create_lease(self, node: str) -> None:
        import kubernetes
        uid = self.cluster.raw("GET", f"/api/v1/nodes/{node}")["metadata"]["uid"]
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases"
        try:
            self.cluster.raw("POST", leases, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": micro_time()},
            }, content_type="application/json")
        except kubernetes.client.ApiException as error:
            if error.status != 409:  # left by an earlier node of that name, not yet collected: take it over
                raise
            self.cluster.raw("PATCH", f"{leases}/{node}", {"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]}, "spec": {"renewTime": micro_time()}})
        self._renewed_at[node] = time.monotonic()

    def tick(self) -> None:
        """One round: renew the Leases that are due, confirm the deletion of pods on our nodes."""
        import kubernetes
        with self._lock:
            nodes = list(self.nodes)
        for node in nodes:
            if time.monotonic() - self._renewed_at.get(node, 0.0) >= self.renew_every_s:
                with contextlib.suppress(kubernetes.client.ApiException):  # a node a test deleted
                    self.cluster.raw("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{node}",
                                     {"spec": {"renewTime": micro_time()}})
                self._renewed_at[node] = time.monotonic()
            pods = self.cluster.raw("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"]
            for pod in pods:
                metadata = pod["metadata"]
                if metadata.get("deletionTimestamp"):
                    with contextlib.suppress(kubernetes.client.ApiException):  # gone meanwhile
                        self.cluster.raw("DELETE", f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}",
                                         {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
                                         content_type="application/json")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception as error:  # noqa: BLE001 - a hiccup of the API server; the next round retries
                print(f"kubelet stand-in: {error!r}", file=sys.stderr)


def micro_time() -> str:
    """Kubernetes MicroTime, as Leases carry it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def policy_crd_taking_any_spec(crd_dir: Path = CRD_DIR) -> dict[str, Any]:
    """The MarginPolicy CRD with a spec that takes anything. The real CRD refuses what the policy
    parser refuses (and the API server any number JSON cannot carry), so an invalid policy reaches
    the operator only when the installed CRD lags behind it: this stands for that CRD."""
    crd = yaml.safe_load((crd_dir / "marginpolicies.gpuadmit.io.yaml").read_text())
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return dict(crd)


def _crd_established(extensions: Any, name: str) -> bool:
    crd = extensions.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def default_template(workload_class: str) -> dict:
    """A pod template the classifier reads as the given class."""
    if workload_class == "inference":
        return {"spec": {"containers": [{
            "name": "server", "image": "vllm/vllm-openai:latest", "args": ["--model", "m"],
            "ports": [{"containerPort": 8000}],
            "resources": {"limits": {GPU: "1"}},
        }]}}
    return {"spec": {"containers": [{
        "name": "trainer", "image": "pytorch/pytorch:latest", "command": ["torchrun", "train.py", "--epochs", "3"],
    }]}}


# -- what the engine would decide -----------------------------------------------------------------


def expected_decisions(dump: Mapping[str, list[dict]], now: float | None = None) -> dict[str, Any]:
    """What the engine decides for the dumped cluster: ``{"ns/name": Decision}``."""
    from gpuadmit.core.engine import decide
    from gpuadmit.core.snapshot import build_snapshot

    snapshot = build_snapshot(dump["nodes"], dump["pods"], dump["namespaces"], dump["workloads"],
                              dump["policies"], time.time() if now is None else now)
    return {decision.key: decision for decision in decide(snapshot).decisions}
