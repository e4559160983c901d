"""The resources the emulated server serves: the built-in ones the operator touches, and CRDs.

A ``ResourceSpec`` is one served group/version/plural with what discovery reports about it and
what the store needs to behave (scope, status subresource, schema). Objects are stored per
group and plural, so every served version of a CRD sees the same objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeapi_emulator.schema import ObjectSchema

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceSpec:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    has_status: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    schema: ObjectSchema | None = field(default=None, compare=False, repr=False)
    # What a CRD declares for clients: its openAPIV3Schema as written (OpenAPI documents,
    # ``kubectl explain``) and its additionalPrinterColumns (``kubectl get``'s Table).
    openapi_schema: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        """Where the objects live: shared by all versions of the resource."""
        return (self.group, self.plural)


def _builtin(group: str, version: str, plural: str, kind: str, namespaced: bool, *,
             status: bool = False, short: tuple[str, ...] = (), categories: tuple[str, ...] = ()) -> ResourceSpec:
    return ResourceSpec(group, version, plural, kind, namespaced, kind.lower(), status, short, categories)


BUILTIN_RESOURCES: tuple[ResourceSpec, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", False, status=True, short=("ns",)),
    _builtin("", "v1", "nodes", "Node", False, status=True, short=("no",)),
    _builtin("", "v1", "pods", "Pod", True, status=True, short=("po",), categories=("all",)),
    _builtin("", "v1", "events", "Event", True, short=("ev",)),
    _builtin("", "v1", "services", "Service", True, status=True, short=("svc",), categories=("all",)),
    _builtin("", "v1", "configmaps", "ConfigMap", True, short=("cm",)),
    _builtin("", "v1", "secrets", "Secret", True),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", True, short=("sa",)),
    _builtin("batch", "v1", "jobs", "Job", True, status=True, categories=("all",)),
    _builtin("apps", "v1", "deployments", "Deployment", True, status=True, short=("deploy",), categories=("all",)),
    _builtin("apps", "v1", "replicasets", "ReplicaSet", True, status=True, short=("rs",), categories=("all",)),
    _builtin("apps", "v1", "statefulsets", "StatefulSet", True, status=True, short=("sts",), categories=("all",)),
    _builtin("events.k8s.io", "v1", "events", "Event", True, short=("ev",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease", True),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
             status=True, short=("crd", "crds")),
    _builtin("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
             "ValidatingWebhookConfiguration", False),
    _builtin("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
             "MutatingWebhookConfiguration", False),
)

# kopf's own peering resources (the CRDs kopf ships in peering.yaml), declared so that
# `kopf run --peering NAME` works without applying them first.
KOPF_PEERING_CRDS: tuple[dict[str, Any], ...] = tuple(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }
    for plural, kind, scope in (
        ("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
        ("kopfpeerings", "KopfPeering", "Namespaced"),
    )
)


def specs_from_crd(crd: Mapping[str, Any]) -> list[ResourceSpec]:
    """The served versions of a CustomResourceDefinition object (one spec each)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (isinstance(group, str) and isinstance(plural, str) and isinstance(kind, str)):
        raise ValueError("a CRD needs spec.group, spec.names.plural and spec.names.kind")
    result = []
    for version in spec.get("versions") or []:
        if not isinstance(version, Mapping) or not version.get("served", True):
            continue
        openapi = ((version.get("schema") or {}).get("openAPIV3Schema")) or None
        result.append(ResourceSpec(
            group=group,
            version=str(version.get("name")),
            plural=plural,
            kind=kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular") or kind.lower(),
            has_status="status" in (version.get("subresources") or {}),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            schema=ObjectSchema(openapi) if openapi else None,
            openapi_schema=openapi,
            printer_columns=tuple(column for column in version.get("additionalPrinterColumns") or []
                                  if isinstance(column, Mapping)),
        ))
    return result


def load_crd_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition document in the given YAML files or directories."""
    crds: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            for document in yaml.safe_load_all(file.read_text()):
                if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                    crds.append(document)
    return crds
