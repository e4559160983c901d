"""GPUWorkload objects -> ``Workload`` (or ``InvalidWorkload`` naming the bad field).

``parse_workload`` holds a spec to everything the CRD schema says (bounds,
enums, types, unknown fields), so a dump read by ``gpuadmit decide`` is judged as
the API server would have judged it, and adds the semantic checks the schema
cannot express (a template with at least one container, well-formed
tolerations). It resolves every default the engine needs: class (classifier),
preemptible (true for training, false for inference), maxQueueSeconds (policy),
tier (namespace label). Status is written by the operator, so it is read
leniently: a status field of the wrong shape counts as absent.

The class comes from ``spec.class``, else from ``status.class`` when ``status.observedGeneration``
matches ``metadata.generation`` (already classified, this very spec), else from the classifier.

When the workload waits from (``queued_since``): ``status.queuedSince`` if set,
else the ``lastTransitionTime`` of a ``Preempted`` condition with status "True"
(the operator requeued it then), else ``metadata.creationTimestamp``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from gpuadmit.core.affinity import node_constraints
from gpuadmit.core.classifier import KindLean, classify
from gpuadmit.core.errors import SpecError, show_number
from gpuadmit.core.model import (
    CLASSES,
    HOLDING_PHASES,
    InvalidWorkload,
    NodeConstraints,
    Phase,
    Policy,
    Resources,
    Toleration,
    Workload,
    WorkloadClass,
)
from gpuadmit.core.nodes import pod_requests
from gpuadmit.core.placement import read_placement
from gpuadmit.core.podsecurity import DEFAULT_POD_SECURITY, DEFAULT_RULES, PodSecurity, TemplateRules, check_template
from gpuadmit.core.policy import whole_number
from gpuadmit.core.template_shape import check_template_shape, check_workload_name
from gpuadmit.core.timefmt import parse_rfc3339_or_none

_MAPPINGS = (dict, Mapping)  # dict first: the common case is checked fastest

SPEC_FIELDS = frozenset(
    {"class", "gpus", "replicas", "gpuProducts", "minGpuMemoryMiB", "preemptible", "maxQueueSeconds", "template"}
)
SPEC_CLASSES = ("auto", "training", "inference")
MIN_GPUS, MAX_GPUS = 1, 64
MIN_REPLICAS, MAX_REPLICAS = 1, 1024
MAX_GPU_PRODUCTS = 32
MAX_LABEL_VALUE_LENGTH = 63  # gpuProducts entries are values of the nvidia.com/gpu.product label
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
PHASES = frozenset(phase.value for phase in Phase)
DEFAULT_NAMESPACE = "default"


def parse_workload(
    obj: Mapping[str, Any],
    policy: Policy,
    tiers: Mapping[str, str],
    *,
    now: float | None = None,
    pod_security: PodSecurity = DEFAULT_POD_SECURITY,
    cache: ParseCache | None = None,
    class_lean: KindLean | None = None,
) -> Workload | InvalidWorkload:
    """Parse one GPUWorkload object; never raises.

    ``tiers`` maps namespace -> value of its ``gpuadmit.io/tier`` label. ``now``
    stands in for a missing ``creationTimestamp`` (hand-written input); without
    it such a workload counts as created at the epoch. ``pod_security`` says what
    a template may hold (``core.podsecurity``); a workload that already holds GPUs
    is not judged on it again, as Pod Security Admission leaves running pods alone.
    ``cache``: what parsing many workloads repeats (classified templates, timestamps), kept
    by a caller that parses many. ``class_lean``: the class a mirrored native kind leans to where
    the template is not decisive (``core.native``; only the operator's own mirrors get one).
    """
    if not isinstance(obj, _MAPPINGS):
        return InvalidWorkload(namespace="", name="", field="", message=f"not an object but a {type(obj).__name__}")
    # InvalidWorkload.message starts with the field ("spec.gpus: must be ..."): it is what
    # status.message and `gpuadmit decide` show, so it must stand on its own.
    metadata = obj.get("metadata")
    if not isinstance(metadata, _MAPPINGS):
        metadata = {}
    namespace = metadata.get("namespace")
    if namespace is None or namespace == "":
        namespace = DEFAULT_NAMESPACE  # what kubectl apply does with an object that names none
    name = metadata.get("name")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        field = "metadata.name" if not isinstance(name, str) or not name else "metadata.namespace"
        return InvalidWorkload(
            namespace=namespace if isinstance(namespace, str) else "",
            name=name if isinstance(name, str) else "",
            field=field,
            message=f"{field}: must be a non-empty string",
        )
    try:
        check_workload_name(name)
        return _parse_valid(obj, metadata, namespace, name, policy, tiers, now, pod_security, cache, class_lean)
    except SpecError as error:
        return InvalidWorkload(namespace=namespace, name=name, field=error.field, message=str(error))
    except Exception as error:  # noqa: BLE001 - the boundary: no input may crash a cycle
        return InvalidWorkload(
            namespace=namespace, name=name, field="spec",
            message=f"spec: could not be read: {type(error).__name__}: {error}"[:300],
        )  # fmt: skip


def _parse_valid(
    obj: Mapping[str, Any],
    metadata: Mapping[str, Any],
    namespace: str,
    name: str,
    policy: Policy,
    tiers: Mapping[str, str],
    now: float | None,
    pod_security: PodSecurity,
    cache: ParseCache | None,
    class_lean: KindLean | None = None,
) -> Workload:
    spec = obj.get("spec")
    if not isinstance(spec, _MAPPINGS):
        raise SpecError("spec", f"must be an object, got {_type_name(spec)}")
    if not spec.keys() <= SPEC_FIELDS:
        unknown = next(key for key in spec if key not in SPEC_FIELDS)
        raise SpecError(f"spec.{unknown}", f"unknown field (known: {', '.join(sorted(SPEC_FIELDS))})")

    spec_class = spec.get("class")
    if spec_class is None:
        spec_class = "auto"  # the schema's default, which the API server also puts in place of null
    if spec_class not in SPEC_CLASSES:
        raise SpecError("spec.class", f"must be one of {', '.join(SPEC_CLASSES)}, got {_show(spec_class)}")
    if "gpus" not in spec:
        raise SpecError("spec.gpus", "is required")
    gpus = spec["gpus"]
    if type(gpus) is not int or not MIN_GPUS <= gpus <= MAX_GPUS:  # the common case, checked fast
        gpus = _bounded_int(spec, "gpus", MIN_GPUS, MAX_GPUS, default=None)
    replicas = spec.get("replicas", 1)
    if type(replicas) is not int or not MIN_REPLICAS <= replicas <= MAX_REPLICAS:
        replicas = _bounded_int(spec, "replicas", MIN_REPLICAS, MAX_REPLICAS, default=1)
    gpu_products = _gpu_products(spec.get("gpuProducts"))
    min_memory = spec.get("minGpuMemoryMiB", 0)
    if type(min_memory) is not int or min_memory < 0:
        min_memory = _bounded_int(spec, "minGpuMemoryMiB", 0, None, default=0)

    preemptible = spec.get("preemptible")
    if preemptible is not None and not isinstance(preemptible, bool):
        raise SpecError("spec.preemptible", f"must be true, false or null, got {_show(preemptible)}")
    max_queue = spec.get("maxQueueSeconds")
    if max_queue is not None:
        max_queue = _bounded_int(spec, "maxQueueSeconds", 0, None, default=None)

    status = obj.get("status")
    if not status or not isinstance(status, _MAPPINGS):
        status = None  # a new workload: no decision yet
    decided = _class_decided_for_this_generation(spec_class, metadata, status)
    if decided is not None:
        # Checked (memoised) without classifying again: "training" is the class that needs no classifier.
        (tolerations, requests, constraints) = template_facts("training", spec.get("template"), cache)[0]
        workload_class, class_reason = decided
    else:
        (tolerations, requests, constraints), workload_class, class_reason = template_facts(
            spec_class, spec.get("template"), cache, class_lean)
    if preemptible is None:
        preemptible = workload_class == "training"

    timestamp = cache.timestamp if cache is not None else parse_rfc3339_or_none
    created_at = timestamp(metadata.get("creationTimestamp"))
    if created_at is None:
        created_at = now if now is not None else 0.0

    if status is not None:
        phase = status.get("phase")
        if not isinstance(phase, str) or phase not in PHASES:
            phase = None  # the operator writes status; anything else there is ignored, not fatal
        queued_since = _queued_since(status, created_at, timestamp)
        recorded = read_placement(status.get("placement"), gpus, replicas)
        placement = recorded.entries
        placement_problem = recorded.problem if phase in HOLDING_PHASES else None
        admitted_at = timestamp(status.get("admittedAt"))
        preemptions = max(0, whole_number(status.get("preemptions")) or 0)
        margin = status.get("marginPerGPUHour")
        admitted_margin = float(margin) if phase in HOLDING_PHASES and _is_finite_number(margin) else None
    else:
        phase, queued_since, placement, admitted_at, preemptions = None, created_at, (), None, 0
        placement_problem = None
        admitted_margin = None
    if phase not in HOLDING_PHASES:
        check_template(spec.get("template"), pod_security.rules_for(namespace))

    uid = metadata.get("uid")
    return Workload(
        namespace=namespace,
        name=name,
        gpus_per_replica=gpus,
        replicas=replicas,
        workload_class=workload_class,
        class_reason=class_reason,
        uid=uid if isinstance(uid, str) else "",
        gpu_products=gpu_products,
        min_gpu_memory_mib=min_memory,
        preemptible=preemptible,
        max_queue_seconds=float(max_queue) if max_queue is not None else policy.default_max_queue_seconds,
        tier=tiers.get(namespace),
        tolerations=tolerations,
        created_at=created_at,
        queued_since=queued_since,
        phase=phase,
        placement=placement,
        placement_problem=placement_problem,
        admitted_at=admitted_at,
        preemptions=preemptions,
        margin_per_gpu_hour=admitted_margin,
        requests=requests,
        node_constraints=constraints,
    )


def _is_finite_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def template_facts(
    spec_class: str, template: object, cache: ParseCache | None = None, lean: KindLean | None = None,
) -> tuple[TemplatePlacing, WorkloadClass, str]:
    """((tolerations, requests, node constraints), class, class reason) of a valid template;
    ``SpecError`` for an invalid one."""
    if cache is None:
        placing = _check_template(template)
        return (placing, *classify(spec_class, template, lean))
    return cache.template_facts(spec_class, template, lean)  # training too: checking the shape costs more than the key


_UNSEEN = object()
TemplatePlacing = tuple[tuple[Toleration, ...], Resources, NodeConstraints]


class ParseCache:
    """What parsing many workloads repeats, done once: checking and classifying a template,
    reading a timestamp.

    A cluster runs many copies of the same template, and the operator re-parses every pending
    workload each cycle. Templates are keyed by their repr: equal plain data gives equal text
    (a different key order only costs a miss), and it is several times cheaper than
    classifying; invalid templates are not kept. A dump repeats the same few timestamps across
    thousands of objects. Held by whoever parses many workloads (a snapshot build, the
    operator's ``ParseMemo``); nothing is cached at module level. Each part is bounded.
    """

    LIMIT = 100_000  # about one entry per workload of a large cluster; the text of a template is smaller than its dicts

    def __init__(self) -> None:
        self._facts: dict[tuple[str, str, KindLean | None], tuple[TemplatePlacing, WorkloadClass, str]] = {}
        self._seconds: dict[str, float | None] = {}

    def template_facts(self, spec_class: str, template: object,
                       lean: KindLean | None = None) -> tuple[TemplatePlacing, WorkloadClass, str]:
        try:
            key = (spec_class, repr(template), lean)
        except RecursionError:  # nested past what repr can walk: _check_template names the problem
            _check_template(template)
            raise
        facts = self._facts.get(key)
        if facts is None:
            placing = _check_template(template)
            workload_class, class_reason = classify(spec_class, template, lean)
            if len(self._facts) >= self.LIMIT:
                self._facts.clear()  # crude but bounded; refilling costs one cycle's classifications
            facts = self._facts[key] = (placing, workload_class, class_reason)
        return facts

    def timestamp(self, value: object) -> float | None:
        """``parse_rfc3339_or_none``, remembered by text."""
        if not isinstance(value, str):
            return None
        seconds = self._seconds.get(value, _UNSEEN)
        if seconds is _UNSEEN:
            if len(self._seconds) >= self.LIMIT:
                self._seconds.clear()
            seconds = self._seconds[value] = parse_rfc3339_or_none(value)
        return seconds  # type: ignore[return-value]


def _class_decided_for_this_generation(
    spec_class: str, metadata: Mapping[str, Any], status: Mapping[str, Any] | None
) -> tuple[WorkloadClass, str] | None:
    """The class gpuadmit already wrote to status for this very spec, if it did.

    A spec cannot change without ``metadata.generation`` changing, so a status whose
    ``observedGeneration`` matches classified this template already: reading it back
    saves classifying every pending workload again each cycle, and keeps a queued
    workload's class (hence its price) from changing under it after an upgrade.
    Only the operator writes status (tenants have no RBAC on it).
    """
    if spec_class != "auto" or status is None:
        return None
    generation = metadata.get("generation")
    workload_class = status.get("class")
    if (
        type(generation) is int
        and status.get("observedGeneration") == generation
        and workload_class in CLASSES
    ):
        class_reason = status.get("classReason")
        return workload_class, class_reason if isinstance(class_reason, str) else ""
    return None


def _bounded_int(spec: Mapping[str, Any], key: str, minimum: int, maximum: int | None, default: int | None) -> Any:
    if key not in spec or (spec[key] is None and default is not None):
        return default
    value = spec[key]
    number = whole_number(value)
    if number is None:
        raise SpecError(f"spec.{key}", f"must be a whole number, got {_show(value)}")
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SpecError(f"spec.{key}", f"must be {bounds}, got {show_number(number)}")
    return number


def _gpu_products(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError("spec.gpuProducts", f"must be a list of product names, got {_type_name(value)}")
    if len(value) > MAX_GPU_PRODUCTS:
        raise SpecError("spec.gpuProducts", f"has {len(value)} entries, at most {MAX_GPU_PRODUCTS} allowed")
    for index, product in enumerate(value):
        if not isinstance(product, str) or not product or len(product) > MAX_LABEL_VALUE_LENGTH:
            raise SpecError(
                f"spec.gpuProducts[{index}]",
                f"must be a product name of 1..{MAX_LABEL_VALUE_LENGTH} characters, got {_show(product)}",
            )
    return tuple(value)


def check_pod_template(template: object, rules: TemplateRules = DEFAULT_RULES) -> None:
    """Raise ``SpecError`` unless ``template`` may become pods now: the shape ``build_pods`` reads,
    then the pod-security ``rules``. For the pods of a workload the parser no longer judges
    (one that holds GPUs), whose template may have changed since its admission."""
    _check_template(template)
    check_template(template, rules)


def _check_template(template: object) -> TemplatePlacing:
    """Raise ``SpecError`` unless the template can make a pod; return what places its pods:
    tolerations, per-pod requests of every resource but GPUs, node constraints."""
    if template is None:
        raise SpecError("spec.template", "is required: the pod template to run once admitted")
    if not isinstance(template, _MAPPINGS):
        raise SpecError("spec.template", f"must be a pod template object, got {_type_name(template)}")
    template_metadata = template.get("metadata")
    if template_metadata is not None and not isinstance(template_metadata, _MAPPINGS):
        raise SpecError("spec.template.metadata", f"must be an object, got {_type_name(template_metadata)}")
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, _MAPPINGS):
        raise SpecError("spec.template.spec", f"must be a pod spec object, got {_type_name(pod_spec)}")
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError("spec.template.spec.containers", "must list at least one container")
    for index, container in enumerate(containers):
        if not isinstance(container, _MAPPINGS):
            raise SpecError(
                f"spec.template.spec.containers[{index}]", f"must be a container object, got {_type_name(container)}"
            )
    check_template_shape(template)
    requests = tuple(sorted(pod_requests(pod_spec).items()))
    return _tolerations(pod_spec.get("tolerations")), requests, node_constraints(pod_spec)


def _tolerations(value: object) -> tuple[Toleration, ...]:
    if value is None:
        return ()
    field = "spec.template.spec.tolerations"
    if not isinstance(value, list):
        raise SpecError(field, f"must be a list, got {_type_name(value)}")
    tolerations: list[Toleration] = []
    for index, item in enumerate(value):
        here = f"{field}[{index}]"
        if not isinstance(item, _MAPPINGS):
            raise SpecError(here, f"must be an object, got {_type_name(item)}")
        key, operator, toleration_value, effect = (item.get(k) for k in ("key", "operator", "value", "effect"))
        if operator in (None, ""):
            operator = "Equal"
        if operator not in TOLERATION_OPERATORS:
            raise SpecError(f"{here}.operator", f"must be Equal or Exists, got {_show(operator)}")
        if effect == "":
            effect = None
        if effect is not None and effect not in TAINT_EFFECTS:
            raise SpecError(f"{here}.effect", f"must be one of {', '.join(TAINT_EFFECTS)}, got {_show(effect)}")
        for part, part_value in (("key", key), ("value", toleration_value)):
            if part_value is not None and not isinstance(part_value, str):
                raise SpecError(f"{here}.{part}", f"must be a string, got {_show(part_value)}")
        if key in (None, "") and operator != "Exists":
            raise SpecError(f"{here}.operator", "must be Exists when the key is empty")
        tolerations.append(
            Toleration(key=key or None, operator=operator, value=toleration_value, effect=effect)
        )
    return tuple(tolerations)


def _queued_since(status: Mapping[str, Any], created_at: float, timestamp: Callable[[object], float | None]) -> float:
    explicit = timestamp(status.get("queuedSince"))
    if explicit is not None:
        return max(explicit, created_at)
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        for condition in conditions:
            if (
                isinstance(condition, _MAPPINGS)
                and condition.get("type") == "Preempted"
                and condition.get("status") == "True"
            ):
                preempted_at = timestamp(condition.get("lastTransitionTime"))
                if preempted_at is not None:
                    return max(preempted_at, created_at)
    return created_at


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    """A value for a message: short, whatever the input holds."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
