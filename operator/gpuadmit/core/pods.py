"""Pods for an admitted GPUWorkload: one per replica, pinned, sized and owned.

``build_pods`` is pure: it turns the workload object and its admit decision into
Pod dicts the writer creates as they are. The pods do not bypass the scheduler
(no ``spec.nodeName``): each keeps its template's scheduling constraints and gets
one more required node-affinity requirement, ``metadata.name`` In [its reserved
node], ANDed into every node selector term (as the DaemonSet controller pins its
pods). kube-scheduler binds it there, checking everything gpuadmit does not model
(volumes, ports, pod affinity), or reports it ``Unschedulable`` (controller.unschedulable).

Until it is bound, such a pod counts on its reserved node: ``pod_node`` reads
``spec.nodeName`` or, failing that, the pinning requirement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuadmit.core.model import (
    API_GROUP,
    API_VERSION,
    CLASS_LABEL,
    GPU_RESOURCE,
    REPLICA_LABEL,
    WORKLOAD_LABEL,
    Decision,
    PlacementEntry,
)

GPUWORKLOAD_KIND = "GPUWorkload"

# What runs to completion retries in place; what serves must come back whatever happened.
DEFAULT_RESTART_POLICY = {"training": "OnFailure", "inference": "Always"}


def controlling_workload(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the GPUWorkload that is this pod's controller (its ownerReference with
    ``controller: true``), else None.

    Only such a pod is a workload's: the ``gpuadmit.io/workload`` label is a hint anyone can
    set (a ReplicaSet's pods may carry it), and gpuadmit must never count, follow or delete
    a pod that is not its own. Owner references are namespace-local, so the workload is
    ``<pod namespace>/<name>``; the uid tells one incarnation of a name from the next.
    """
    metadata = pod.get("metadata")
    refs = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    if not isinstance(refs, list):
        return None
    for ref in refs:
        if (isinstance(ref, Mapping) and ref.get("controller") is True and ref.get("kind") == GPUWORKLOAD_KIND
                and str(ref.get("apiVersion", "")).split("/", 1)[0] == API_GROUP
                and isinstance(ref.get("name"), str) and ref.get("name")):
            return ref["name"], str(ref.get("uid") or "")
    return None


def pod_name(workload_name: str, replica_index: int) -> str:
    return f"{workload_name}-{replica_index}"


def replica_nodes(decision: Decision) -> list[tuple[str, int]]:
    """(node, GPUs) for each replica in index order, expanded from the placement entries."""
    return replica_slots(decision.placement)


def replica_slots(placement: Iterable[PlacementEntry]) -> list[tuple[str, int]]:
    """(node, GPUs) for each replica slot of a placement, in entry order."""
    nodes: list[tuple[str, int]] = []
    for entry in placement:
        replicas = max(1, entry.replicas)
        gpus_each = entry.gpus // replicas
        nodes.extend((entry.node, gpus_each) for _ in range(replicas))
    return nodes


# Pod spec fields build_pods rebuilds (each from a copy) rather than copies as they are.
_REBUILT = frozenset({"containers", "initContainers", "affinity"})


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): several times faster than ``copy.deepcopy``,
    which an admission burst paid for on every pod built."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {key: copy_json(item) for key, item in value.items()}
    return value


def build_pods(workload_obj: Mapping[str, Any], decision: Decision) -> list[dict[str, Any]]:
    """One Pod dict per admitted replica of ``workload_obj`` (a raw GPUWorkload dict).

    Each pod is named ``<workload>-<index>``, owned by the workload (so garbage
    collection removes it with the workload), labelled with the template's labels
    plus ``gpuadmit.io/workload``, ``gpuadmit.io/replica`` and ``gpuadmit.io/class``,
    requests exactly the admitted GPUs on the container that asked for GPUs (the
    first container otherwise; every other container gets 0), keeps the template's
    scheduling constraints (nodeSelector, affinity, tolerations, topology spread,
    scheduler name) and is pinned to its reserved node by a required node affinity.
    """
    metadata = workload_obj.get("metadata") or {}
    spec = workload_obj.get("spec") or {}
    template = found if isinstance(found := spec.get("template"), Mapping) else {}
    template_metadata = found if isinstance(found := template.get("metadata"), Mapping) else {}
    template_spec = found if isinstance(found := template.get("spec"), Mapping) else {}
    workload_name = str(metadata.get("name", decision.name))
    namespace = str(metadata.get("namespace", decision.namespace))
    workload_class = decision.workload_class or "training"

    pods = []
    for index, (node_name, gpus) in enumerate(replica_nodes(decision)):
        labels = {str(k): str(v) for k, v in (template_metadata.get("labels") or {}).items()}
        labels.update({
            WORKLOAD_LABEL: workload_name,
            REPLICA_LABEL: str(index),
            CLASS_LABEL: workload_class,
        })
        annotations = {str(k): str(v) for k, v in (template_metadata.get("annotations") or {}).items()}
        # Copied once: the containers (and the affinity, below) are copied as they are rebuilt.
        pod_spec = {key: copy_json(value) for key, value in template_spec.items() if key not in _REBUILT}
        pod_spec["containers"] = _sized_containers(template_spec.get("containers"), gpus)
        if isinstance(init_containers := template_spec.get("initContainers"), list):
            pod_spec["initContainers"] = [_without_gpus(c) for c in init_containers if isinstance(c, Mapping)]
        pod_spec.pop("nodeName", None)  # kube-scheduler binds it, to the node the affinity allows
        pod_spec["affinity"] = pinned_affinity(template_spec.get("affinity"), node_name)
        if not pod_spec.get("restartPolicy"):
            pod_spec["restartPolicy"] = DEFAULT_RESTART_POLICY.get(workload_class, "OnFailure")
        pod_metadata: dict[str, Any] = {
            "name": pod_name(workload_name, index),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": GPUWORKLOAD_KIND,
                "name": workload_name,
                "uid": str(metadata.get("uid", "")),
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        }
        if annotations:
            pod_metadata["annotations"] = annotations
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_metadata, "spec": pod_spec})
    return pods


# The field a node selector requirement matches a node's name by (``matchFields``).
NODE_NAME_FIELD = "metadata.name"


def pinned_affinity(affinity: Any, node_name: str) -> dict[str, Any]:
    """``affinity`` (a pod's, possibly None) with ``metadata.name`` In [``node_name``] required:
    ANDed into every existing required node selector term (the terms are ORed, so every one
    of them must carry it), or as the only term when there is none. The template's own
    requirements stay: the reservation was made on a node that satisfies them."""
    pinned = copy_json(affinity) if isinstance(affinity, Mapping) else {}
    node_affinity = dict(found) if isinstance(found := pinned.get("nodeAffinity"), Mapping) else {}
    required = dict(found) if isinstance(
        found := node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"), Mapping) else {}
    pin = {"key": NODE_NAME_FIELD, "operator": "In", "values": [node_name]}
    terms = [dict(term) for term in required.get("nodeSelectorTerms") or [] if isinstance(term, Mapping)]
    if not terms:
        terms = [{}]
    for term in terms:
        fields = [field for field in term.get("matchFields") or [] if field != pin]
        term["matchFields"] = [*fields, pin]
    required["nodeSelectorTerms"] = terms
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    pinned["nodeAffinity"] = node_affinity
    return pinned


def pinned_node(pod_spec: Mapping[str, Any]) -> str | None:
    """The one node a pod's required node affinity allows by name (``matchFields``
    ``metadata.name`` In [node] in every term, as ``pinned_affinity`` writes it), else None."""
    affinity = pod_spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = (node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
                if isinstance(node_affinity, Mapping) else None)
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    if not isinstance(terms, list) or not terms:
        return None
    found: str | None = None
    for term in terms:
        fields = term.get("matchFields") if isinstance(term, Mapping) else None
        names = [field["values"][0] for field in fields or [] if isinstance(field, Mapping)
                 and field.get("key") == NODE_NAME_FIELD and field.get("operator") == "In"
                 and isinstance(field.get("values"), list) and len(field["values"]) == 1
                 and isinstance(field["values"][0], str)] if isinstance(fields, list) else []
        if len(set(names)) != 1 or (found is not None and names[0] != found):
            return None
        found = names[0]
    return found


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod is bound to (``spec.nodeName``) or, not bound yet, pinned to: where its
    requests count. None for a pod that may still go anywhere."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return None
    node_name = spec.get("nodeName")
    if isinstance(node_name, str) and node_name:
        return node_name
    return pinned_node(spec)


def _requests_gpu(container: Mapping[str, Any]) -> bool:
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        amounts = resources.get(section) if isinstance(resources, Mapping) else None
        if isinstance(amounts, Mapping) and str(amounts.get(GPU_RESOURCE, "0")) not in ("0", ""):
            return True
    return False


def _with_gpus(container: Mapping[str, Any], gpus: int) -> dict[str, Any]:
    sized = copy_json(container)
    resources = dict(sized.get("resources") or {})
    for section in ("limits", "requests"):
        amounts = dict(resources.get(section) or {})
        if gpus:
            amounts[GPU_RESOURCE] = str(gpus)
        else:
            amounts.pop(GPU_RESOURCE, None)
        if amounts:
            resources[section] = amounts
        else:
            resources.pop(section, None)
    sized["resources"] = resources
    return sized


def _without_gpus(container: Mapping[str, Any]) -> dict[str, Any]:
    return _with_gpus(container, 0)


def _sized_containers(containers: Any, gpus: int) -> list[dict[str, Any]]:
    """The template's containers, with exactly ``gpus`` on one of them and none elsewhere."""
    valid = [c for c in containers if isinstance(c, Mapping)] if isinstance(containers, list) else []
    if not valid:
        # The webhook and the parser refuse templates without containers; never build an empty pod.
        valid = [{"name": "main", "image": "busybox"}]
    gpu_index = next((i for i, c in enumerate(valid) if _requests_gpu(c)), 0)
    return [_with_gpus(c, gpus if i == gpu_index else 0) for i, c in enumerate(valid)]
