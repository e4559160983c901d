"""What the GPUWorkload admission webhooks check and default, as pure functions.

The API server enforces the CRD schema (types, bounds, enums). These checks add
what a schema cannot express, so that a tenant learns about a bad workload at
``kubectl apply`` time instead of from a ``Rejected`` status later:

- the template must be able to make a pod: at least one container, each with an
  image, and every ``parse_workload`` check (an object allowed here is never an
  ``InvalidSpec`` for the engine);
- GPUs are sized by ``spec.gpus`` only: a template whose containers already ask
  for a different ``nvidia.com/gpu`` count is refused, because the operator would
  silently overwrite it;
- labels and annotations under ``gpuadmit.io/`` belong to gpuadmit. The one a
  tenant may carry is the class label, and only with the value the classifier
  computes, so nobody buys the inference price with a label;
- the template may not hold what gpuadmit must not put into the pods it creates with its own
  rights (``core.podsecurity``: the Pod Security Standards level, service accounts, accelerators
  and device variables outside the GPU accounting), also on an update of a workload that already
  holds GPUs;
- status is written by gpuadmit: a create that brings its own status is refused;
- once a workload holds GPUs (Admitted or Running) its ``gpus``, ``replicas`` and
  ``gpuProducts`` are immutable: the reservation was made for exactly that shape.

A ``gpuProducts`` entry that no node has is a warning, not a refusal: the node
may join later, and until then the engine keeps the workload queued.

``mutate_workload`` returns the RFC 6902 JSON patch that sets the class label and
the spec defaults. Nothing here raises on malformed input.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpuadmit.core.classifier import classify
from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import (
    API_GROUP,
    CLASS_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    HOLDING_PHASES,
    InvalidWorkload,
)
from gpuadmit.core.native import MIRROR_KEYS, claimed_unit
from gpuadmit.core.nodes import parse_quantity
from gpuadmit.core.podsecurity import DEFAULT_POD_SECURITY, MIRROR_POD_SECURITY, PodSecurity, check_template
from gpuadmit.core.policy import DEFAULT_POLICY
from gpuadmit.core.workload import parse_workload

# Machine reasons of a refusal (the human message says the rest).
INVALID_SPEC = "InvalidSpec"
RESERVED_KEY = "ReservedKey"
STATUS_NOT_ALLOWED = "StatusNotAllowed"
IMMUTABLE_WHILE_ADMITTED = "ImmutableWhileAdmitted"

# Spec fields a holding workload's reservation was sized for.
IMMUTABLE_WHILE_HOLDING = ("gpus", "replicas", "gpuProducts")

# Defaults the mutating webhook writes, so every stored object reads the same way.
SPEC_DEFAULTS: Mapping[str, Any] = {"class": "auto", "replicas": 1, "gpuProducts": [], "minGpuMemoryMiB": 0}

MAX_PRODUCTS_IN_WARNING = 8


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The webhook's verdict. A refusal names the offending field and a machine reason."""

    allowed: bool
    message: str = ""
    field: str | None = None
    warnings: tuple[str, ...] = ()
    reason: str = ""


class _Refusal(Exception):
    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.reason = reason
        self.field = field
        self.message = message


def validate_workload(
    obj: Any,
    old: Any = None,
    known_products: Iterable[str] | None = None,
    pod_security: PodSecurity = DEFAULT_POD_SECURITY,
) -> ValidationResult:
    """Check a GPUWorkload on create (``old`` is None) or update (``old`` is the stored object).

    ``known_products`` are the ``nvidia.com/gpu.product`` values of the cluster's
    nodes; None means "unknown" and turns the product warning off. ``pod_security`` holds
    the configured Pod Security Standards level and what the workload's namespace adds.
    """
    try:
        _check(obj, old, pod_security)
    except _Refusal as refusal:
        already_named = refusal.message.startswith(f"{refusal.field}: ")  # parse_workload's messages are
        return ValidationResult(
            allowed=False,
            message=refusal.message if already_named else f"{refusal.field}: {refusal.message}",
            field=refusal.field,
            reason=refusal.reason,
        )
    except Exception as error:  # noqa: BLE001 - the boundary: malformed input is refused, never a crash
        return ValidationResult(
            allowed=False,
            message=f"spec: could not be read: {type(error).__name__}: {error}"[:300],
            field="spec",
            reason=INVALID_SPEC,
        )
    return ValidationResult(allowed=True, warnings=tuple(product_warnings(obj, known_products)))


def _check(obj: Any, old: Any, pod_security: PodSecurity = DEFAULT_POD_SECURITY) -> None:
    if not isinstance(obj, Mapping):
        raise _Refusal(INVALID_SPEC, "object", f"must be a GPUWorkload object, got {_type_name(obj)}")
    mirror = claimed_unit(obj) is not None
    if mirror:
        # The mirror of a native object (core.native): its template is the tenant's own Job's or pod's,
        # made into pods by their own controllers, so only the accounting rules apply, and its template
        # may carry gpuadmit.io/ keys (a pod group's label). The operator, not this webhook, decides
        # whether a claim is a mirror: an untrusted one is Rejected (MirrorNotTrusted), never decided.
        pod_security = MIRROR_POD_SECURITY
    creating = old is None
    old = old if isinstance(old, Mapping) else {}
    metadata = found if isinstance(found := obj.get("metadata"), Mapping) else {}
    if not creating and metadata.get("deletionTimestamp") and _only_metadata_bookkeeping_changed(obj, old):
        return  # finalizers must always be removable, whatever the object holds
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise _Refusal(INVALID_SPEC, "spec", f"must be an object, got {_type_name(spec)}")

    if creating and obj.get("status") not in (None, {}):
        raise _Refusal(
            STATUS_NOT_ALLOWED, "status", "is written by gpuadmit only; create the workload without a status"
        )
    spec_changed = creating or spec != old.get("spec")
    computed_class = None
    if spec_changed:  # an update that leaves the spec alone (labels, finalizers) is not judged on it again
        _check_containers(spec)
        # Before the parser: a key that is reserved and also malformed is refused as reserved.
        _check_reserved_keys(obj, old, None, class_label=False, mirror=mirror)
        parsed = parse_workload(_with_name(obj), DEFAULT_POLICY, {}, pod_security=pod_security)
        if isinstance(parsed, InvalidWorkload):
            raise _Refusal(INVALID_SPEC, parsed.field or "spec", parsed.message)
        # After the parser, so both name the same first problem (its shape checks come first).
        _check_pod_security(spec, _mapping(obj.get("metadata")).get("namespace"), pod_security)
        _check_gpu_requests(spec)
        computed_class = parsed.workload_class
    _check_reserved_keys(obj, old, computed_class, mirror=mirror)
    if not creating:
        _check_immutable_while_holding(spec, old)


def _check_pod_security(spec: Mapping[str, Any], namespace: object, pod_security: PodSecurity) -> None:
    """What ``parse_workload`` checks too, judged here as well because the parser leaves workloads
    that hold GPUs alone, while a new template on one must be judged all the same."""
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    try:
        check_template(spec.get("template"), pod_security.rules_for(namespace))
    except SpecError as error:
        raise _Refusal(INVALID_SPEC, error.field, error.message) from None


def _only_metadata_bookkeeping_changed(obj: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """True when an update leaves the spec, labels and annotations as stored (e.g. removes a finalizer).

    A workload being deleted may still be updated: only such updates skip the checks, so
    deleting is no way around them (growing ``gpus``, forging a class label).
    """
    new_metadata, old_metadata = _mapping(obj.get("metadata")), _mapping(old.get("metadata"))
    return (
        obj.get("spec") == old.get("spec")
        and new_metadata.get("labels") == old_metadata.get("labels")
        and new_metadata.get("annotations") == old_metadata.get("annotations")
    )


def _with_name(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A create with ``generateName`` reaches admission without a name: judge it under a stand-in
    of the length the API server makes (the prefix cut to 58 characters, then 5 random ones)."""
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping) and not metadata.get("name") and metadata.get("generateName"):
        return {**obj, "metadata": {**metadata, "name": f"{str(metadata['generateName'])[:58]}x0x0x"}}
    return obj


def _check_containers(spec: Mapping[str, Any]) -> None:
    template = spec.get("template")
    if not isinstance(template, Mapping):
        return  # parse_workload names the template problem
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, Mapping):
        return
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise _Refusal(
            INVALID_SPEC, "spec.template.spec.containers", "must list at least one container: there is nothing to run"
        )
    # Each container's image: core.template_shape, through parse_workload (the engine refuses it too).


def _check_gpu_requests(spec: Mapping[str, Any]) -> None:
    """The template may repeat ``spec.gpus`` on its containers, never contradict it."""
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, Mapping) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, Mapping) else None
    if not isinstance(containers, list):
        return
    gpus = spec.get("gpus")
    total = 0
    first_field: str | None = None
    for index, container in enumerate(containers):
        resources = container.get("resources") if isinstance(container, Mapping) else None
        if not isinstance(resources, Mapping):
            continue
        amounts: dict[str, float] = {}
        for section in ("limits", "requests"):
            section_amounts = resources.get(section)
            if not isinstance(section_amounts, Mapping) or GPU_RESOURCE not in section_amounts:
                continue
            field = f'spec.template.spec.containers[{index}].resources.{section}["{GPU_RESOURCE}"]'
            raw = section_amounts[GPU_RESOURCE]
            amount = parse_quantity(raw)
            if amount is None or amount < 0 or not float(amount).is_integer():
                raise _Refusal(INVALID_SPEC, field, f"must be a whole number of GPUs, got {_show(raw)}")
            amounts[field] = amount
            first_field = first_field or field
        if len(set(amounts.values())) > 1:
            field = next(iter(amounts))
            raise _Refusal(
                INVALID_SPEC, field, "GPU limits and requests must be equal (GPUs cannot be overcommitted)"
            )
        if amounts:
            total += int(next(iter(amounts.values())))
    if first_field is not None and total and total != gpus:
        raise _Refusal(
            INVALID_SPEC,
            first_field,
            f"the template asks for {total} GPU(s) but spec.gpus is {_show(gpus)}; "
            "leave the GPU count out of the template (gpuadmit sizes pods from spec.gpus) or make them equal",
        )


def _check_reserved_keys(obj: Mapping[str, Any], old: Mapping[str, Any], computed_class: str | None,
                         class_label: bool = True, mirror: bool = False) -> None:
    """Keys under ``gpuadmit.io/`` are gpuadmit's; on update, keys that are already stored unchanged pass.

    ``computed_class`` is None when the spec did not change: the stored class label then stands.
    ``class_label=False`` leaves the workload's class label to a later call that knows the class.
    ``mirror``: a mirror claim, whose own marks and template (a copy of the native one) pass.
    """
    template = _mapping(_mapping(obj.get("spec")).get("template"))
    old_template = _mapping(_mapping(old.get("spec")).get("template"))
    places: tuple[tuple[str, Any, Any], ...] = (("metadata", obj.get("metadata"), old.get("metadata")),)
    if not mirror:
        places += (("spec.template.metadata", template.get("metadata"), old_template.get("metadata")),)
    for prefix, metadata, old_metadata in places:
        if not isinstance(metadata, Mapping):
            continue
        for section in ("labels", "annotations"):
            values = metadata.get(section)
            if not isinstance(values, Mapping):
                continue
            old_values = old_metadata.get(section) if isinstance(old_metadata, Mapping) else None
            old_values = old_values if isinstance(old_values, Mapping) else {}
            for key, value in values.items():
                # A mirror's class label follows its kind's lean, which only the operator knows.
                if not is_reserved_key(key) or (mirror and (key in MIRROR_KEYS or key == CLASS_LABEL)):
                    continue
                field = f'{prefix}.{section}["{key}"]'
                if prefix == "metadata" and section == "labels" and key == CLASS_LABEL:
                    if not class_label:
                        continue
                    if computed_class is None and key in old_values and old_values[key] == value:
                        continue
                    if computed_class is None:
                        spec = _mapping(obj.get("spec"))
                        computed_class, _ = classify(spec.get("class"), spec.get("template"))
                    if value != computed_class:
                        raise _Refusal(
                            RESERVED_KEY,
                            field,
                            f"is set by gpuadmit from the classifier, which says {computed_class!r}, not {_show(value)}; "
                            "remove the label, or declare the class with spec.class",
                        )
                    continue
                if key in old_values and old_values[key] == value:
                    continue
                raise _Refusal(
                    RESERVED_KEY,
                    field,
                    f"keys under {API_GROUP}/ are reserved for gpuadmit; remove this "
                    f"{section[:-1]}" + (" (gpuadmit labels the pods itself)" if prefix != "metadata" else ""),
                )


def _check_immutable_while_holding(spec: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    old_status = old.get("status")
    phase = old_status.get("phase") if isinstance(old_status, Mapping) else None
    if phase not in HOLDING_PHASES:
        return
    old_spec = found if isinstance(found := old.get("spec"), Mapping) else {}
    for key in IMMUTABLE_WHILE_HOLDING:
        before = old_spec.get(key, SPEC_DEFAULTS.get(key))
        after = spec.get(key, SPEC_DEFAULTS.get(key))
        if before is None:
            before = SPEC_DEFAULTS.get(key)
        if after is None:
            after = SPEC_DEFAULTS.get(key)
        if before != after:
            raise _Refusal(
                IMMUTABLE_WHILE_ADMITTED,
                f"spec.{key}",
                f"cannot change while the workload is {phase} (from {_show(before)} to {_show(after)}): "
                "its GPUs were reserved for that shape; delete and recreate the workload to change it",
            )


def is_reserved_key(key: object) -> bool:
    """True for label/annotation keys whose prefix is gpuadmit.io or one of its subdomains."""
    if not isinstance(key, str) or "/" not in key:
        return False
    prefix = key.split("/", 1)[0].lower()
    return prefix == API_GROUP or prefix.endswith("." + API_GROUP)


def product_warnings(obj: Any, known_products: Iterable[str] | None) -> list[str]:
    """One warning per listed gpuProduct that no node has (none when the node products are unknown)."""
    if known_products is None or not isinstance(obj, Mapping):
        return []
    spec = obj.get("spec")
    products = spec.get("gpuProducts") if isinstance(spec, Mapping) else None
    if not isinstance(products, list):
        return []
    known = sorted({p for p in known_products if isinstance(p, str)})
    shown = ", ".join(known[:MAX_PRODUCTS_IN_WARNING]) + (", ..." if len(known) > MAX_PRODUCTS_IN_WARNING else "")
    warnings = []
    for index, product in enumerate(products):
        if isinstance(product, str) and product not in known:
            warnings.append(
                f"spec.gpuProducts[{index}]: no node has the product {product!r} "
                f"(nodes have: {shown or 'no labelled GPU nodes'}); the workload stays queued until one does"
            )
    return warnings


def known_products_of_nodes(nodes: Iterable[Any]) -> frozenset[str]:
    """The ``nvidia.com/gpu.product`` label values of Node objects (plain dicts)."""
    products = set()
    for node in nodes:
        metadata = node.get("metadata") if isinstance(node, Mapping) else None
        labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
        product = labels.get(GPU_PRODUCT_LABEL) if isinstance(labels, Mapping) else None
        if isinstance(product, str) and product:
            products.add(product)
    return frozenset(products)


def mutate_workload(obj: Any) -> list[dict[str, Any]]:
    """The RFC 6902 JSON patch that sets the class label and the spec defaults (empty: nothing to do).

    Fields the tenant set are never overwritten, except the class label, which
    always gets the classifier's value. A malformed object gets no patch: the
    validating webhook refuses it with a message.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get("spec"), Mapping):
        return []
    spec = obj["spec"]
    ops: list[dict[str, Any]] = []
    for key, default in SPEC_DEFAULTS.items():
        if spec.get(key) is None:
            ops.append({"op": "add", "path": f"/spec/{key}", "value": default})

    if claimed_unit(obj) is not None:
        return ops  # a mirror's class label follows its native kind's lean: the operator sets it
    workload_class, _ = classify(spec.get("class"), spec.get("template"))
    metadata = obj.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if not isinstance(metadata, Mapping):
        ops.append({"op": "add", "path": "/metadata", "value": {"labels": {CLASS_LABEL: workload_class}}})
    elif not isinstance(labels, Mapping):
        ops.append({"op": "add", "path": "/metadata/labels", "value": {CLASS_LABEL: workload_class}})
    elif labels.get(CLASS_LABEL) != workload_class:
        ops.append({"op": "add", "path": f"/metadata/labels/{json_pointer_token(CLASS_LABEL)}", "value": workload_class})
    return ops


def apply_json_patch(obj: Mapping[str, Any], ops: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply the ``add`` and ``replace`` ops the webhooks make (``mutate_workload``, ``core.holds``) to a
    copy of ``obj`` (for callers and tests); ``-`` as the last token of a path appends to a list."""
    result = copy.deepcopy(dict(obj))
    for op in ops:
        if op.get("op") not in ("add", "replace"):
            raise ValueError(f"unsupported op {op.get('op')!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        target: Any = result
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            if parts[-1] == "-":
                target.append(value)
            elif op["op"] == "add":
                target.insert(int(parts[-1]), value)
            else:
                target[int(parts[-1])] = value
        else:
            target[parts[-1]] = value
    return result


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def json_pointer_token(key: str) -> str:
    """A key as one RFC 6901 JSON Pointer token (``/`` and ``~`` escaped)."""
    return key.replace("~", "~0").replace("/", "~1")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
