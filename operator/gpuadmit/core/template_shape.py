"""The shape of what gpuadmit reads from a GPUWorkload: its name and its pod template.

The CRD schema keeps ``spec.template`` open (``x-kubernetes-preserve-unknown-fields``),
so the API server stores whatever a tenant puts there. ``build_pods`` copies the
template into pods, and one template it cannot copy must never stop every other
tenant's decisions. These checks hold a template to what building its pods reads,
and are run by ``parse_workload`` (so by the engine, ``gpuadmit decide`` and the
validating webhook alike: one piece of code):

- nesting at most ``MAX_TEMPLATE_DEPTH`` levels (a real pod spec nests about a dozen;
  ``copy.deepcopy`` and ``repr`` recurse, and a few hundred levels reach Python's limit);
- ``metadata.labels`` a map of Kubernetes label keys to label values, ``metadata.annotations``
  a map of label-style keys to strings of at most 256 KiB in all (what the API server
  would refuse on the pod with a 422, refused here first, naming the field);
- every container and init container an object with an image, ``initContainers`` a list, and each
  one's ``resources.limits`` / ``resources.requests`` a map of resource names to
  non-negative quantities, no request above its limit;
- ``env``, ``envFrom``, ``ports``, ``volumeMounts`` and ``volumes`` lists of objects, security
  contexts objects with lists of capability names and of sysctls (what the pod-security checks
  read: a value they could not read would pass them unseen);
- ``restartPolicy`` one of Always, OnFailure, Never when given.

And the workload's name must be a valid label value (at most 63 characters), since it
is the value of ``gpuadmit.io/workload`` on every pod of the workload.

Everything raises ``SpecError`` naming the field; nothing here recurses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gpuadmit.core.errors import SpecError
from gpuadmit.core.nodes import parse_quantity

TEMPLATE = "spec.template"
MAX_TEMPLATE_DEPTH = 32  # maps and lists inside spec.template; a pod spec's deepest real path has about 12
MAX_LABEL_VALUE_LENGTH = 63
MAX_LABEL_NAME_LENGTH = 63
MAX_KEY_PREFIX_LENGTH = 253
MAX_ANNOTATIONS_BYTES = 256 * 1024  # the API server's limit on a pod's annotations (keys and values)
RESOURCES_FIELDS = frozenset({"limits", "requests", "claims"})
RESTART_POLICIES = ("Always", "OnFailure", "Never")
# Lists of objects the pod-security checks read item by item.
CONTAINER_LIST_FIELDS = ("env", "envFrom", "ports", "volumeMounts")
POD_LIST_FIELDS = ("volumes",)

_MAPPINGS = (dict, Mapping)
_CONTAINERS = (dict, list)  # exact types: the common case, checked without the ABC machinery
_SCALARS = (str, int, float, type(None))
# Kubernetes' label grammar: alphanumeric at both ends, '-', '_' and '.' between.
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


def check_workload_name(name: str, field: str = "metadata.name") -> None:
    """The name is the ``gpuadmit.io/workload`` label value on the pods: a label value's rules apply."""
    if len(name) > MAX_LABEL_VALUE_LENGTH or not _LABEL_VALUE.fullmatch(name):
        raise SpecError(
            field,
            f"must be a valid label value (at most {MAX_LABEL_VALUE_LENGTH} characters, alphanumeric at both ends) "
            f"because it labels the workload's pods (gpuadmit.io/workload); got {len(name)} characters {_show(name)}",
        )


def check_template_shape(template: Mapping[str, Any]) -> None:
    """Raise ``SpecError`` unless everything gpuadmit reads from this template object is well formed."""
    check_nesting(template)
    metadata = template.get("metadata")
    if isinstance(metadata, _MAPPINGS):
        check_labels(metadata.get("labels"), f"{TEMPLATE}.metadata.labels")
        check_annotations(metadata.get("annotations"), f"{TEMPLATE}.metadata.annotations")
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, _MAPPINGS):
        return  # the caller names a missing pod spec
    restart_policy = pod_spec.get("restartPolicy")
    if restart_policy not in (None, "") and restart_policy not in RESTART_POLICIES:
        raise SpecError(f"{TEMPLATE}.spec.restartPolicy",
                        f"must be one of {', '.join(RESTART_POLICIES)}, got {_show(restart_policy)}")
    for section in ("containers", "initContainers"):
        containers = pod_spec.get(section)
        if containers is None and section == "initContainers":
            continue
        field = f"{TEMPLATE}.spec.{section}"
        if not isinstance(containers, list):
            raise SpecError(field, f"must be a list of containers, got {_type_name(containers)}")
        for index, container in enumerate(containers):
            if not isinstance(container, _MAPPINGS):
                raise SpecError(f"{field}[{index}]", f"must be a container object, got {_type_name(container)}")
            image = container.get("image")
            if not isinstance(image, str) or not image.strip():
                raise SpecError(f"{field}[{index}].image", "is required: the image to run")
            check_resources(container.get("resources"), f"{field}[{index}].resources")
            check_object_lists(container, CONTAINER_LIST_FIELDS, f"{field}[{index}]")
            check_security_context(container.get("securityContext"), f"{field}[{index}].securityContext")
    check_object_lists(pod_spec, POD_LIST_FIELDS, f"{TEMPLATE}.spec")
    check_security_context(pod_spec.get("securityContext"), f"{TEMPLATE}.spec.securityContext")
    ephemeral = pod_spec.get("ephemeralContainers")
    if ephemeral is not None and not isinstance(ephemeral, list):
        raise SpecError(f"{TEMPLATE}.spec.ephemeralContainers", f"must be a list of containers, got {_type_name(ephemeral)}")


def check_object_lists(owner: Mapping[str, Any], names: tuple[str, ...], field: str) -> None:
    """Each of ``names`` absent or a list of objects: the pod-security checks read them item by
    item and must not pass over a value they cannot read (the API server would refuse the pod)."""
    for name in names:
        items = owner.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise SpecError(f"{field}.{name}", f"must be a list of objects, got {_type_name(items)}")
        for index, item in enumerate(items):
            if not isinstance(item, _MAPPINGS):
                raise SpecError(f"{field}.{name}[{index}]", f"must be an object, got {_type_name(item)}")


def check_security_context(context: object, field: str) -> None:
    """An object, its capability lists lists of strings and its sysctls a list of objects."""
    if context is None:
        return
    if not isinstance(context, _MAPPINGS):
        raise SpecError(field, f"must be an object, got {_type_name(context)}")
    capabilities = context.get("capabilities")
    if capabilities is not None:
        if not isinstance(capabilities, _MAPPINGS):
            raise SpecError(f"{field}.capabilities", f"must be an object, got {_type_name(capabilities)}")
        for key in ("add", "drop"):
            names = capabilities.get(key)
            if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise SpecError(f"{field}.capabilities.{key}", f"must be a list of capability names, got {_show(names)}")
    check_object_lists(context, ("sysctls",), field)


def check_nesting(value: object, field: str = TEMPLATE, limit: int = MAX_TEMPLATE_DEPTH) -> None:
    """At most ``limit`` levels of maps and lists, walked level by level (no recursion)."""
    level = [value] if isinstance(value, (dict, list, Mapping)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise SpecError(field, f"nests deeper than {limit} levels of objects and lists; a pod template needs far fewer")
        next_level: list[Any] = []
        for item in level:
            for child in item.values() if isinstance(item, _MAPPINGS) else item:
                if type(child) in _CONTAINERS or (not isinstance(child, _SCALARS) and isinstance(child, (list, Mapping))):
                    next_level.append(child)
        level = next_level


def check_labels(labels: object, field: str) -> None:
    """A map of label keys to label values, as the API server requires of a pod's labels."""
    if labels is None:
        return
    if not isinstance(labels, _MAPPINGS):
        raise SpecError(field, f"must be a map of label keys to string values, got {_type_name(labels)}")
    for key, value in labels.items():
        check_qualified_key(key, field)
        here = f'{field}["{key}"]'
        if not isinstance(value, str):
            raise SpecError(here, f"must be a string label value, got {_show(value)}")
        if len(value) > MAX_LABEL_VALUE_LENGTH or not _LABEL_VALUE.fullmatch(value):
            raise SpecError(here, f"must be a valid label value (at most {MAX_LABEL_VALUE_LENGTH} characters, "
                                  f"alphanumeric, '-', '_' or '.' between alphanumerics), got {_show(value)}")


def check_annotations(annotations: object, field: str) -> None:
    """A map of annotation keys to strings, within the API server's size limit."""
    if annotations is None:
        return
    if not isinstance(annotations, _MAPPINGS):
        raise SpecError(field, f"must be a map of annotation keys to string values, got {_type_name(annotations)}")
    size = 0
    for key, value in annotations.items():
        check_qualified_key(key, field)
        if not isinstance(value, str):
            raise SpecError(f'{field}["{key}"]', f"must be a string, got {_show(value)}")
        size += len(key.encode()) + len(value.encode())
    if size > MAX_ANNOTATIONS_BYTES:
        raise SpecError(field, f"hold {size} bytes, at most {MAX_ANNOTATIONS_BYTES} allowed")


def check_qualified_key(key: object, field: str) -> None:
    """A label or annotation key: an optional DNS subdomain prefix and '/', then a name of at most 63 characters."""
    if not isinstance(key, str):
        raise SpecError(field, f"keys must be strings, got {_show(key)}")
    prefix, slash, name = key.rpartition("/")
    valid_name = 0 < len(name) <= MAX_LABEL_NAME_LENGTH and _LABEL_VALUE.fullmatch(name) is not None
    valid_prefix = not slash or (0 < len(prefix) <= MAX_KEY_PREFIX_LENGTH and _DNS_SUBDOMAIN.fullmatch(prefix) is not None)
    if not (valid_name and valid_prefix):
        raise SpecError(f'{field}["{key}"]' if len(key) <= 300 else field,
                        "is not a valid key: an optional DNS subdomain prefix and '/', then a name of 1..63 "
                        f"characters, alphanumeric at both ends ('-', '_', '.' between), got {_show(key)}")


def check_resources(resources: object, field: str) -> None:
    """``limits`` and ``requests`` maps of resource names to non-negative quantities, requests within limits."""
    if resources is None:
        return
    if not isinstance(resources, _MAPPINGS):
        raise SpecError(field, f"must be an object with limits and requests, got {_type_name(resources)}")
    unknown = [key for key in resources if key not in RESOURCES_FIELDS]
    if unknown:
        raise SpecError(f"{field}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(RESOURCES_FIELDS))})")
    claims = resources.get("claims")
    if claims is not None and not isinstance(claims, list):
        raise SpecError(f"{field}.claims", f"must be a list, got {_type_name(claims)}")
    amounts: dict[str, dict[str, float]] = {}
    for section in ("limits", "requests"):
        section_map = resources.get(section)
        if section_map is None:
            continue
        here = f"{field}.{section}"
        if not isinstance(section_map, _MAPPINGS):
            raise SpecError(here, f"must be a map of resource names to quantities, got {_type_name(section_map)}")
        parsed: dict[str, float] = {}
        for name, raw in section_map.items():
            check_qualified_key(name, here)
            amount = parse_quantity(raw)
            if amount is None or amount < 0:
                raise SpecError(f'{here}["{name}"]', f"must be a non-negative quantity such as 2, \"500m\" or \"4Gi\", got {_show(raw)}")
            parsed[name] = amount
        amounts[section] = parsed
    limits = amounts.get("limits", {})
    for name, requested in amounts.get("requests", {}).items():
        if name in limits and requested > limits[name]:
            raise SpecError(f'{field}.requests["{name}"]',
                            f"must not exceed its limit ({_show(resources['requests'][name])} > {_show(resources['limits'][name])})")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    """A value for a message: short, whatever the input holds."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
