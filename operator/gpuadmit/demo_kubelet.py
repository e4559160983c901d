"""The kubelet stand-in of `gpuadmit demo`: the emulated API server runs no pods, so the demo
plays kubelet for the pods the operator creates. A pod bound to a node turns Running when it
appears and Succeeded once its workload's (compressed) run time is over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from gpuadmit.core.model import WORKLOAD_LABEL
from gpuadmit.core.timefmt import format_rfc3339
from gpuadmit.demo_plan import MIN_RUN_SECONDS


class StatusWriter(Protocol):
    async def call(self, method: str, path: str, body: Any = None, *, merge: bool = False,
                   params: Mapping[str, str] | None = None) -> tuple[int, Any]: ...


class Kubelet:
    """Moves our pods' phases; ``run_seconds`` says how long each workload's pods run."""

    def __init__(self, api: StatusWriter) -> None:
        self.api = api
        self.running_pods: dict[str, tuple[float, dict[str, Any]]] = {}  # pod uid -> (run time over at, its metadata and containers)
        self.run_seconds: dict[str, float] = {}  # workload key -> demo seconds its pods run

    def observe(self, event_type: str, pod: Mapping[str, Any]) -> Awaitable[None] | None:
        """Our pods: Pending -> Running once bound (the emulator's kube-scheduler stand-in set
        ``spec.nodeName``), as a kubelet starts only pods bound to its node; Succeeded once the
        run time is over (finish_pods).

        Pods are told apart by uid: a preempted workload's pods come back under the same names.
        """
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}")
        if event_type == "DELETED":
            self.running_pods.pop(uid, None)
            return None
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase != "Pending" or uid in self.running_pods or not (pod.get("spec") or {}).get("nodeName"):
            return None
        workload = f"{metadata.get('namespace')}/{(metadata.get('labels') or {}).get(WORKLOAD_LABEL)}"
        finish_at = time.monotonic() + self.run_seconds.get(workload, MIN_RUN_SECONDS)
        containers = (pod.get("spec") or {}).get("containers") or []
        self.running_pods[uid] = (finish_at, {"metadata": dict(metadata), "spec": {"containers": list(containers)}})
        return self.set_pod_phase(pod, "Running")

    async def finish_pods(self) -> None:
        while True:
            now = time.monotonic()
            due = [uid for uid, (finish_at, _) in self.running_pods.items() if finish_at <= now]
            finished = [self.running_pods.pop(uid)[1] for uid in due]
            await asyncio.gather(*(self.set_pod_phase(pod, "Succeeded") for pod in finished))
            await asyncio.sleep(0.25)

    async def set_pod_phase(self, pod: Mapping[str, Any], phase: str) -> None:
        """The status a kubelet would write, container statuses included (kubectl's READY column)."""
        metadata = pod.get("metadata") or {}
        stamp = format_rfc3339(time.time())
        running = phase == "Running"
        status: dict[str, Any] = {"phase": phase, "conditions": [
            {"type": "Ready", "status": "True" if running else "False", "lastTransitionTime": stamp}]}
        containers = [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, Mapping)]
        if running:
            status["startTime"] = stamp
            status["containerStatuses"] = [
                {"name": str(c.get("name")), "image": str(c.get("image")), "ready": True, "restartCount": 0,
                 "started": True, "state": {"running": {"startedAt": stamp}}} for c in containers]
        elif phase in ("Succeeded", "Failed"):  # the containers ended: READY 0/N, STATUS Completed or Error
            ended = {"exitCode": 0, "reason": "Completed"} if phase == "Succeeded" else {"exitCode": 1, "reason": "Error"}
            status["containerStatuses"] = [
                {"name": str(c.get("name")), "image": str(c.get("image")), "ready": False, "restartCount": 0,
                 "started": False, "state": {"terminated": {**ended, "finishedAt": stamp}}} for c in containers]
        path = f"/api/v1/namespaces/{metadata.get('namespace')}/pods/{metadata.get('name')}/status"
        await self.api.call("PATCH", path, {"status": status}, merge=True)  # 404: preempted meanwhile, fine
