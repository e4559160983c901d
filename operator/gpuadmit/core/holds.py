"""How a native GPU workload is held until gpuadmit decides: the pure decisions of the Job and pod
mutating webhooks (``/mutate-job``, ``/mutate-pod``) for namespaces labelled ``gpuadmit.io/managed``.

A batch/v1 Job whose pod template asks for ``nvidia.com/gpu`` is created suspended (the Job
controller makes no pods until gpuadmit unsuspends it); a pod that asks for GPUs is created with
the scheduling gate ``gpuadmit.io/admission`` (kube-scheduler leaves it alone until gpuadmit pins it
and removes the gate). The answer is an RFC 6902 JSONPatch.

Every function here is total: whatever JSON it is given, it returns an answer and never raises. An
object the API server would refuse anyway (no spec, containers that are not a list, ...) gets no
patch and no refusal, so the tenant sees the API server's own validation message. When in doubt
about GPUs the answer is to hold: a GPU quantity gpuadmit cannot read counts as asking for GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuadmit.core.model import GPU_RESOURCE
from gpuadmit.core.native import (  # the shared names, kept with the controller's side
    ADMISSION_GATE,
    MANAGED_LABEL,
    SUSPENDED_BY_ANNOTATION,
    UnitKind,
    job_suspended,
    replica_templates,
)
from gpuadmit.core.nodes import parse_quantity, pod_gpu_request
from gpuadmit.core.pods import controlling_workload
from gpuadmit.core.validation import json_pointer_token

# Set on a Job the webhook suspended, so that a Job its creator suspended can be told apart (informational:
# a tenant can write it too, and gains nothing by it: the Job is suspended either way).
SUSPENDED_BY_WEBHOOK = "admission-webhook"
# The kubelet's mark on the mirror of a static pod: it already runs on its node, a gate cannot hold it.
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"

JsonPatch = list[dict[str, Any]]


@dataclass(frozen=True)
class Hold:
    """The webhook's answer: the JSONPatch to apply (empty: none), or a refusal (reason, field, message)."""

    patch: JsonPatch = field(default_factory=list)
    reason: str = ""
    field: str = ""
    message: str = ""

    @property
    def allowed(self) -> bool:
        return not self.reason


def asks_for_gpus(pod_or_template: object) -> bool:
    """Whether a pod, or a pod template (``{metadata, spec}``), asks for ``nvidia.com/gpu``.

    The count is ``pod_gpu_request`` (the kube-scheduler's sum over containers, init containers
    and sidecars); on top of it, a GPU request or limit whose quantity gpuadmit cannot read as a
    whole number, nor as zero, counts as asking: holding such an object costs nothing (the API
    server refuses a non-integer extended resource anyway), letting it run ungated could.
    """
    if not isinstance(pod_or_template, Mapping):
        return False
    if pod_gpu_request(pod_or_template) > 0:
        return True
    spec = pod_or_template.get("spec")
    if not isinstance(spec, Mapping):
        return False
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        for container in containers if isinstance(containers, list) else ():
            resources = container.get("resources") if isinstance(container, Mapping) else None
            if not isinstance(resources, Mapping):
                continue
            for section in (resources.get("requests"), resources.get("limits")):
                if isinstance(section, Mapping) and GPU_RESOURCE in section and parse_quantity(section[GPU_RESOURCE]) != 0:
                    return True
    return False


def job_hold(job: object, kind: UnitKind = UnitKind.JOB) -> Hold:
    """Suspend a suspendable workload (a batch/v1 Job, a PyTorchJob, a RayJob) that asks for GPUs in
    any of its pod templates (``core.native.replica_templates``), unless its creator already did.

    The patch sets the kind's suspend field (``spec.suspend``; a PyTorchJob's
    ``spec.runPolicy.suspend``) and the ``gpuadmit.io/suspended-by`` annotation (where the metadata
    can take it). An object without a spec, or asking for no GPUs, is left to the API server.
    """
    spec = job.get("spec") if isinstance(job, Mapping) else None
    if not isinstance(spec, Mapping):
        return Hold()
    assert isinstance(job, Mapping)
    if not any(asks_for_gpus(template) for _replicas, template in replica_templates(job, kind)):
        return Hold()
    if job_suspended(job, kind):
        return Hold()
    patch: JsonPatch
    if kind != UnitKind.PYTORCH_JOB:
        patch = [{"op": "add", "path": "/spec/suspend", "value": True}]
    elif isinstance(spec.get("runPolicy"), Mapping):
        patch = [{"op": "add", "path": "/spec/runPolicy/suspend", "value": True}]
    elif spec.get("runPolicy") is None:
        patch = [{"op": "add", "path": "/spec/runPolicy", "value": {"suspend": True}}]
    else:
        return Hold()  # a runPolicy that is not an object: the API server refuses it
    patch += _annotation_ops(job.get("metadata"), SUSPENDED_BY_ANNOTATION, SUSPENDED_BY_WEBHOOK)
    return Hold(patch)


def pytorchjob_hold(job: object) -> Hold:
    return job_hold(job, UnitKind.PYTORCH_JOB)


def rayjob_hold(job: object) -> Hold:
    return job_hold(job, UnitKind.RAY_JOB)


def pod_hold(pod: object) -> Hold:
    """Gate a pod that asks for GPUs (append ``gpuadmit.io/admission`` to ``spec.schedulingGates``).

    Left alone: pods asking for no GPUs, gpuadmit's own pods (controller ownerReference a
    GPUWorkload: they are created pinned, for an admitted workload), mirror pods of static pods, pods
    already carrying the gate. Refused: a GPU pod that names its node (``spec.nodeName`` bypasses
    the scheduler, and the API server refuses a gated pod with a node anyway; this says why).
    """
    spec = pod.get("spec") if isinstance(pod, Mapping) else None
    if not isinstance(spec, Mapping) or not asks_for_gpus(pod):
        return Hold()
    assert isinstance(pod, Mapping)
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if controlling_workload(pod) is not None:
        return Hold()
    if isinstance(annotations, Mapping) and MIRROR_POD_ANNOTATION in annotations:
        return Hold()
    if spec.get("nodeName"):
        return Hold(
            reason="NodeNameNotAllowed",
            field="spec.nodeName",
            message=(
                f"a pod that asks for {GPU_RESOURCE} in a namespace labelled {MANAGED_LABEL}=true "
                "cannot name its node: gpuadmit chooses the node when it admits "
                "the pod; remove spec.nodeName (use a nodeSelector or node affinity to restrict the choice)"
            ),
        )
    gates = spec.get("schedulingGates")
    if gates is None:
        return Hold([{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": ADMISSION_GATE}]}])
    if not isinstance(gates, list):
        return Hold()  # the API server refuses it
    if any(isinstance(gate, Mapping) and gate.get("name") == ADMISSION_GATE for gate in gates):
        return Hold()
    return Hold([{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": ADMISSION_GATE}}])


def _annotation_ops(metadata: object, key: str, value: str) -> JsonPatch:
    if not isinstance(metadata, Mapping):
        return []
    annotations = metadata.get("annotations")
    if annotations is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": {key: value}}]
    if not isinstance(annotations, Mapping):
        return []
    return [{"op": "add", "path": "/metadata/annotations/" + json_pointer_token(key), "value": value}]

