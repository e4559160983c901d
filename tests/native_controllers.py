"""Stand-ins for the kube-controller-manager controllers the emulated API server does not run.

A real cluster runs the Job, ReplicaSet, Deployment and StatefulSet controllers; the emulator
only stores those objects (kubeapi_emulator.strategies), so that a test (or the held-out check,
with kubectl) can play the controllers itself. These stand-ins play them for the tests that want
them, over plain HTTP like any client, so they work against an emulator in another thread or
process (and, given ``headers`` with a bearer token, against a real API server's URL):

- **Job** (``jobs=True``): a Job that is not suspended and not finished gets ``parallelism`` active
  pods (fewer when fewer completions remain), each created from the template (``generateName``
  ``JOB-``, the template's labels, which carry ``batch.kubernetes.io/job-name`` and
  ``batch.kubernetes.io/controller-uid``) with a controller ownerReference to the Job; pods that
  end are replaced until ``completions`` pods succeeded (Complete, with ``completionTime``) or more
  than ``backoffLimit`` failed (Failed, reason BackoffLimitExceeded). Its status counts
  ``active``, ``ready``, ``succeeded`` and ``failed`` and carries ``startTime``. Suspending the Job
  deletes its active pods, clears ``startTime`` and sets the ``Suspended`` condition (True, reason
  JobSuspended); resuming sets it False (reason JobResumed) and creates the pods again.
- **ReplicaSet** (``replicasets=True``): keeps ``replicas`` pods that are not finished and not
  being deleted (a deleted or finished pod is replaced; surplus ones are deleted, unbound, pending
  and not ready ones first);
  status ``replicas``, ``readyReplicas``, ``availableReplicas``, ``fullyLabeledReplicas``,
  ``observedGeneration``.
- **Deployment** (``deployments=True``): one ReplicaSet per pod template (named
  ``DEPLOYMENT-HASH``, label ``pod-template-hash``) scaled to ``replicas``, older ones to 0 at
  once (no surge pacing); status summed from them.
- **StatefulSet** (``statefulsets=True``): pods ``NAME-0`` .. ``NAME-(replicas-1)``, recreated
  under the same name when deleted; ``OrderedReady`` creates the next ordinal only once every
  lower one is Running and Ready, ``Parallel`` creates all at once.

Pods are never bound or run here: the scheduler stand-in (or the test) binds them and the test
reports their phase, as on the emulator without a kubelet.

Use::

    with NativeControllers(url):            # its own thread and loop: for synchronous tests
        ...
    async with NativeControllers(url):      # the running loop: for async tests
        ...
    controllers = NativeControllers(url, jobs=True, replicasets=False)
    await controllers.reconcile()           # one round, for tests that step them by hand
    controllers.start(); ...; controllers.stop()
    with NativeControllers.from_kubeconfig(cluster.kubeconfig):   # e.g. tests/e2e_harness.Cluster's
        ...

A round lists the kinds and the pods (every ``interval`` seconds) and writes only what changed.
A write the server refuses (a denying webhook, a conflict) is logged in ``controllers.errors``
and retried next round, as a controller's work queue would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

FINISHED = ("Succeeded", "Failed")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
POD_TEMPLATE_HASH = "pod-template-hash"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RefusedError(Exception):
    """The API server answered a write with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{status}: {message}")
        self.status = status


class Api:
    """The few calls the controllers make, as JSON over HTTP."""

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> None:
        self.session, self.url, self.headers = session, url.rstrip("/"), dict(headers)

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> Any:
        headers = {**self.headers, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as response:
            text = await response.text()
            answer = json.loads(text) if text.strip() else None
            if response.status >= 400:
                raise RefusedError(response.status, answer)
            return answer

    async def items(self, path: str) -> list[dict[str, Any]]:
        return list((await self.request("GET", path))["items"])

    async def merge_status(self, path: str, status: Mapping[str, Any]) -> None:
        await self.request("PATCH", f"{path}/status", {"status": status}, "application/merge-patch+json")


def _path(api_version: str, plural: str, namespace: str, name: str = "") -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def owned_by(pod: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in pod["metadata"].get("ownerReferences") or [])


def is_active(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in FINISHED and not pod["metadata"].get("deletionTimestamp")


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def controller_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def pod_from_template(owner: Mapping[str, Any], *, name: str | None = None,
                      extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    template = owner["spec"].get("template") or {}
    template_meta = template.get("metadata") or {}
    meta: dict[str, Any] = {
        "labels": {**(template_meta.get("labels") or {}), **(extra_labels or {})},
        "ownerReferences": [controller_ref(owner)],
    }
    if template_meta.get("annotations"):
        meta["annotations"] = dict(template_meta["annotations"])
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = f"{owner['metadata']['name']}-"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": dict(template.get("spec") or {})}


def _condition(conditions: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def _with_condition(conditions: list[dict[str, Any]], kind: str, status: str, reason: str,
                    message: str) -> list[dict[str, Any]]:
    current = _condition(conditions, kind)
    if current is not None and (current.get("status"), current.get("reason")) == (status, reason):
        return conditions
    stamp = now()
    return [*(c for c in conditions if c.get("type") != kind),
            {"type": kind, "status": status, "reason": reason, "message": message,
             "lastProbeTime": stamp, "lastTransitionTime": stamp}]


class NativeControllers:
    """The Job, ReplicaSet, Deployment and StatefulSet controller stand-ins (module docstring)."""

    def __init__(self, url: str, *, jobs: bool = True, replicasets: bool = True, deployments: bool = True,
                 statefulsets: bool = True, namespaces: Iterable[str] | None = None, interval: float = 0.1,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.jobs, self.replicasets, self.deployments, self.statefulsets = jobs, replicasets, deployments, statefulsets
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.interval = interval
        self.headers = dict(headers or {})
        self.errors: list[str] = []  # refused writes and failed rounds, newest last (bounded)
        self.rounds = 0
        self._api: Api | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | Path, **options: Any) -> NativeControllers:
        """For the API server of the kubeconfig's current context (the emulator's kubeconfigs
        carry no credentials; a token there is sent as a bearer token)."""
        config = yaml.safe_load(Path(path).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next((u.get("user") or {} for u in config.get("users") or [] if u["name"] == context.get("user")), {})
        headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        return cls(cluster["server"], headers={**headers, **options.pop("headers", {})}, **options)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> NativeControllers:
        await self._open()
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="native controller stand-ins")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    def start(self) -> None:
        """Run in a thread of its own (for synchronous tests); returns once the first round ran."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._threaded(ready))
            finally:
                loop.close()
        self._thread = threading.Thread(target=main, name="native-controllers", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> NativeControllers:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def _threaded(self, ready: threading.Event) -> None:
        await self._open()
        self._stopping = asyncio.Event()
        try:
            await self._round()
            ready.set()
            await self._run()
        finally:
            ready.set()
            await self._close()

    async def _open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            self._api = Api(self._session, self.url, self.headers)

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session, self._api = None, None

    async def _run(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            await self._round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def _round(self) -> None:
        try:
            await self.reconcile()
        except (aiohttp.ClientError, RefusedError, TimeoutError) as error:
            self._note(f"round failed: {error!r}")  # the server restarting, a fault plan: next round retries

    def _note(self, message: str) -> None:
        self.errors.append(message)
        del self.errors[:-200]

    # -- one round ----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass of every enabled controller over everything it owns."""
        opened_here = self._session is None
        await self._open()
        try:
            assert self._api is not None
            pods = [p for p in await self._api.items("/api/v1/pods") if self._watched(p)]
            if self.deployments:
                for deployment in await self._kind("apps/v1", "deployments"):
                    await self._refused_is_noted(self._sync_deployment(deployment))
            if self.replicasets:
                for replicaset in await self._kind("apps/v1", "replicasets"):
                    await self._refused_is_noted(self._sync_replicaset(replicaset, pods))
            if self.statefulsets:
                for statefulset in await self._kind("apps/v1", "statefulsets"):
                    await self._refused_is_noted(self._sync_statefulset(statefulset, pods))
            if self.jobs:
                for job in await self._kind("batch/v1", "jobs"):
                    await self._refused_is_noted(self._sync_job(job, pods))
            self.rounds += 1
        finally:
            if opened_here:
                await self._close()

    def _watched(self, obj: Mapping[str, Any]) -> bool:
        return self.namespaces is None or obj["metadata"].get("namespace") in self.namespaces

    async def _kind(self, api_version: str, plural: str) -> list[dict[str, Any]]:
        assert self._api is not None
        return [o for o in await self._api.items(f"/apis/{api_version}/{plural}") if self._watched(o)]

    async def _refused_is_noted(self, work: Any) -> None:
        try:
            await work
        except RefusedError as error:
            self._note(str(error))

    async def _create_pod(self, namespace: str, pod: Mapping[str, Any]) -> None:
        assert self._api is not None
        try:
            await self._api.request("POST", _path("v1", "pods", namespace), pod)
        except RefusedError as error:
            if error.status != 409:  # a StatefulSet pod that exists already: fine
                raise

    async def _delete_pod(self, pod: Mapping[str, Any]) -> None:
        assert self._api is not None
        meta = pod["metadata"]
        try:
            await self._api.request("DELETE", _path("v1", "pods", meta["namespace"], meta["name"]),
                                    {"propagationPolicy": "Background"})
        except RefusedError as error:
            if error.status != 404:
                raise

    async def _write_status(self, obj: Mapping[str, Any], plural: str, status: dict[str, Any]) -> None:
        assert self._api is not None
        current = obj.get("status") or {}
        if all(current.get(key) == value for key, value in status.items()):
            return
        meta = obj["metadata"]
        await self._api.merge_status(_path(obj["apiVersion"], plural, meta["namespace"], meta["name"]), status)

    # -- Job ----------------------------------------------------------------------------------

    async def _sync_job(self, job: dict[str, Any], all_pods: list[dict[str, Any]]) -> None:
        spec, status = job["spec"], dict(job.get("status") or {})
        conditions = list(status.get("conditions") or [])
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions):
            return  # finished: nothing more to do
        pods = [p for p in all_pods if owned_by(p, job)]
        active = [p for p in pods if is_active(p)]
        succeeded = max(int(status.get("succeeded") or 0),
                        sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"))
        failed = max(int(status.get("failed") or 0),
                     sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed"))
        parallelism = int(spec.get("parallelism") or 0)
        completions = spec.get("completions")
        new: dict[str, Any] = {"succeeded": succeeded, "failed": failed}
        finish: tuple[str, str, str] | None = None
        if failed > int(spec.get("backoffLimit", 6)):
            finish = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif (completions is not None and succeeded >= int(completions)) or \
                (completions is None and succeeded > 0 and not active):
            finish = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        if spec.get("suspend") or finish is not None:
            for pod in active:
                await self._delete_pod(pod)
            active = []
        if finish is not None:
            kind, reason, message = finish
            if kind == "Complete":
                conditions = _with_condition(conditions, "SuccessCriteriaMet", "True", reason, message)
                new["completionTime"] = now()
            else:
                conditions = _with_condition(conditions, "FailureTarget", "True", reason, message)
            conditions = _with_condition(conditions, kind, "True", reason, message)
        elif spec.get("suspend"):
            conditions = _with_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
            new["startTime"] = None  # the real controller forgets it: the Job may change before it starts again
        created = 0
        if finish is None and not spec.get("suspend"):
            if _condition(conditions, "Suspended") is not None:
                conditions = _with_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
            if not status.get("startTime"):
                new["startTime"] = now()
            wanted = parallelism if completions is None else min(parallelism, int(completions) - succeeded)
            for _ in range(max(0, wanted - len(active))):
                await self._create_pod(job["metadata"]["namespace"], pod_from_template(job))
                created += 1
        new["active"] = len(active) + created
        new["ready"] = sum(1 for p in active if is_ready(p))
        new["conditions"] = conditions or None
        await self._write_status(job, "jobs", new)

    # -- ReplicaSet, Deployment ------------------------------------------------------------------

    async def _sync_replicaset(self, replicaset: dict[str, Any], all_pods: list[dict[str, Any]]) -> None:
        pods = [p for p in all_pods if owned_by(p, replicaset) and is_active(p)]
        wanted = int(replicaset["spec"].get("replicas", 1))
        created = max(0, wanted - len(pods))
        for _ in range(created):
            await self._create_pod(replicaset["metadata"]["namespace"], pod_from_template(replicaset))
        # Surplus pods go as the real controller ranks them: unbound before bound, Pending before
        # Unknown before Running, not ready before ready, then the newest first.
        newest_first = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        phases = {"Pending": 0, "Unknown": 1, "Running": 2}
        surplus = sorted(newest_first, key=lambda p: (
            bool(p["spec"].get("nodeName")), phases.get((p.get("status") or {}).get("phase", "Pending"), 0),
            is_ready(p)))[:max(0, len(pods) - wanted)]
        for pod in surplus:
            await self._delete_pod(pod)
        kept = [p for p in pods if p not in surplus]
        ready = sum(1 for p in kept if is_ready(p))
        count = len(kept) + created
        await self._write_status(replicaset, "replicasets", {
            "replicas": count, "fullyLabeledReplicas": count, "readyReplicas": ready, "availableReplicas": ready,
            "observedGeneration": replicaset["metadata"].get("generation")})

    async def _sync_deployment(self, deployment: dict[str, Any]) -> None:
        assert self._api is not None
        meta, spec = deployment["metadata"], deployment["spec"]
        template = spec.get("template") or {}
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{meta['name']}-{digest}"
        namespace = meta["namespace"]
        owned = [rs for rs in await self._api.items(_path("apps/v1", "replicasets", namespace)) if owned_by(rs, deployment)]
        current = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
        replicas = int(spec.get("replicas", 1))
        if current is None:
            labels = {**((template.get("metadata") or {}).get("labels") or {}), POD_TEMPLATE_HASH: digest}
            selector = dict(spec.get("selector") or {})
            selector["matchLabels"] = {**(selector.get("matchLabels") or {}), POD_TEMPLATE_HASH: digest}
            await self._api.request("POST", _path("apps/v1", "replicasets", namespace), {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "labels": labels, "ownerReferences": [controller_ref(deployment)]},
                "spec": {"replicas": replicas, "selector": selector,
                         "template": {**template, "metadata": {**(template.get("metadata") or {}), "labels": labels}}},
            })
        for rs in owned:
            wanted = replicas if rs["metadata"]["name"] == name else 0
            if rs["spec"].get("replicas") != wanted:
                await self._api.request("PATCH", _path("apps/v1", "replicasets", namespace, rs["metadata"]["name"]),
                                        {"spec": {"replicas": wanted}}, "application/merge-patch+json")
        statuses = [rs.get("status") or {} for rs in owned]
        updated = (current or {}).get("status") or {}
        await self._write_status(deployment, "deployments", {
            "replicas": sum(int(s.get("replicas") or 0) for s in statuses),
            "updatedReplicas": int(updated.get("replicas") or 0),
            "readyReplicas": sum(int(s.get("readyReplicas") or 0) for s in statuses),
            "availableReplicas": sum(int(s.get("availableReplicas") or 0) for s in statuses),
            "observedGeneration": meta.get("generation")})

    # -- StatefulSet --------------------------------------------------------------------------

    async def _sync_statefulset(self, statefulset: dict[str, Any], all_pods: list[dict[str, Any]]) -> None:
        meta, spec = statefulset["metadata"], statefulset["spec"]
        pods = {p["metadata"]["name"]: p for p in all_pods if owned_by(p, statefulset)}
        replicas = int(spec.get("replicas", 1))
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        for ordinal in range(replicas):
            name = f"{meta['name']}-{ordinal}"
            pod = pods.get(name)
            if pod is not None and not is_active(pod) and not pod["metadata"].get("deletionTimestamp"):
                await self._delete_pod(pod)  # a finished pod is replaced under the same name
                pod = None
            if pod is None:
                await self._create_pod(meta["namespace"], pod_from_template(statefulset, name=name, extra_labels={
                    "statefulset.kubernetes.io/pod-name": name, "apps.kubernetes.io/pod-index": str(ordinal)}))
                if ordered:
                    break  # the next ordinal waits for this one to be Running and Ready
            elif ordered and not ((pod.get("status") or {}).get("phase") == "Running" and is_ready(pod)):
                break
        for name, pod in pods.items():
            ordinal = name.rsplit("-", 1)[-1]
            if ordinal.isdigit() and int(ordinal) >= replicas and is_active(pod):
                await self._delete_pod(pod)
        active = [p for p in pods.values() if is_active(p)]
        ready = sum(1 for p in active if is_ready(p))
        await self._write_status(statefulset, "statefulsets", {
            "replicas": len(active), "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": len(active),
            "updatedReplicas": len(active), "observedGeneration": meta.get("generation")})
