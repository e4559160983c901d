"""The OpenAPI documents a real API server publishes, built from the resources served.

- ``/openapi/v3`` lists one document per group-version (``paths``), each pointing at
  ``/openapi/v3/apis/<group>/<version>?hash=...`` (``/openapi/v3/api/v1`` for the core group);
- ``/openapi/v3/apis/<group>/<version>`` is an OpenAPI 3.0 document: the paths of its resources
  (each operation tagged with ``x-kubernetes-group-version-kind`` and ``x-kubernetes-action``, and
  the write operations taking the ``fieldValidation`` query parameter) and the schemas in
  ``components.schemas``, each kind's tagged with ``x-kubernetes-group-version-kind``;
- ``/openapi/v2`` is the same as one Swagger 2.0 document (JSON only: the real server also
  speaks protobuf there, which kubectl asks for only when /openapi/v3 is missing).

kubectl relies on them: ``kubectl apply`` looks in the v3 document for the ``fieldValidation``
parameter of the kind's PATCH operation before it sends ``fieldValidation=Strict`` (and without
the documents it fails with "failed to download openapi"), and ``kubectl explain`` renders the
kind's schema found by its ``x-kubernetes-group-version-kind``.

A CRD's schema is its ``openAPIV3Schema`` with ``metadata`` pointing at ObjectMeta, as the real
server publishes it. The built-in kinds are described by their top level only (apiVersion, kind,
metadata, and for pods and the workload kinds spec and status), the rest kept open: the emulator does not carry Kubernetes' own type definitions.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kubeapi_emulator.resources import ResourceSpec

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
OBJECT_META = f"{META}.ObjectMeta"
LIST_META = f"{META}.ListMeta"
STATUS = f"{META}.Status"

_API_VERSION_DOC = ("APIVersion defines the versioned schema of this representation of an object. Servers should "
                    "convert recognized schemas to the latest internal value, and may reject unrecognized values.")
_KIND_DOC = ("Kind is a string value representing the REST resource this object represents. Servers may infer this "
             "from the endpoint the client submits requests to. In CamelCase.")
_METADATA_DOC = "Standard object's metadata."

_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}

# ObjectMeta and the few types it uses, as the real documents describe them (shortened).
_META_SCHEMAS: dict[str, dict[str, Any]] = {
    OBJECT_META: {
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects "
                       "users must create.",
        "properties": {
            "name": {**_STRING, "description": "Name must be unique within a namespace."},
            "generateName": {**_STRING, "description": "An optional prefix, used by the server, to generate a "
                                                        "unique name ONLY IF the Name field has not been provided."},
            "namespace": {**_STRING, "description": "Namespace defines the space within which each name must be "
                                                     "unique. Must be a DNS_LABEL."},
            "labels": {**_STRING_MAP, "description": "Map of string keys and values that can be used to organize "
                                                      "and categorize (scope and select) objects."},
            "annotations": {**_STRING_MAP, "description": "Annotations is an unstructured key value map stored with "
                                                           "a resource that may be set by external tools."},
            "uid": {**_STRING, "description": "UID is the unique in time and space value for this object. "
                                               "Populated by the system. Read-only."},
            "resourceVersion": {**_STRING, "description": "An opaque value that represents the internal version of "
                                                           "this object. Populated by the system. Read-only."},
            "generation": {"type": "integer", "format": "int64",
                           "description": "A sequence number representing a specific generation of the desired "
                                          "state. Populated by the system. Read-only."},
            "creationTimestamp": {"type": "string", "format": "date-time",
                                  "description": "CreationTimestamp is a timestamp representing the server time "
                                                 "when this object was created. Populated by the system."},
            "deletionTimestamp": {"type": "string", "format": "date-time",
                                  "description": "DeletionTimestamp is RFC 3339 date and time at which this "
                                                 "resource will be deleted. Set by the server."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64",
                                           "description": "Number of seconds allowed for this object to "
                                                          "gracefully terminate. Read-only."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                           "x-kubernetes-list-type": "set",
                           "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"$ref": f"#/components/schemas/{META}.OwnerReference"},
                                "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge",
                                "description": "List of objects depended by this object."},
            "managedFields": {"type": "array",
                              "items": {"$ref": f"#/components/schemas/{META}.ManagedFieldsEntry"},
                              "description": "ManagedFields maps workflow-id and version to the set of fields "
                                             "that are managed by that workflow."},
        },
    },
    f"{META}.OwnerReference": {
        "type": "object",
        "description": "OwnerReference contains enough information to let you identify an owning object.",
        "required": ["apiVersion", "kind", "name", "uid"],
        "properties": {
            "apiVersion": {**_STRING, "description": "API version of the referent."},
            "kind": {**_STRING, "description": "Kind of the referent."},
            "name": {**_STRING, "description": "Name of the referent."},
            "uid": {**_STRING, "description": "UID of the referent."},
            "controller": {"type": "boolean", "description": "If true, this reference points to the managing "
                                                             "controller."},
            "blockOwnerDeletion": {"type": "boolean", "description": "If true, the owner cannot be deleted from "
                                                                     "the key-value store until this reference is "
                                                                     "removed."},
        },
        "x-kubernetes-map-type": "atomic",
    },
    f"{META}.ManagedFieldsEntry": {
        "type": "object",
        "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the resource "
                       "that the fieldset applies to.",
        "properties": {
            "manager": {**_STRING, "description": "Manager is an identifier of the workflow managing these fields."},
            "operation": {**_STRING, "description": "Operation is the type of operation which lead to this "
                                                    "ManagedFieldsEntry being created: Apply or Update."},
            "apiVersion": {**_STRING, "description": "APIVersion defines the version of this resource that this "
                                                     "field set applies to."},
            "time": {"type": "string", "format": "date-time",
                     "description": "Time is the timestamp of when the ManagedFields entry was added."},
            "fieldsType": {**_STRING, "description": "FieldsType is the discriminator for the different fields "
                                                     "format and version. There is currently only one possible "
                                                     "value: \"FieldsV1\""},
            "fieldsV1": {"type": "object", "description": "FieldsV1 holds the first JSON version format."},
            "subresource": {**_STRING, "description": "Subresource is the name of the subresource used to update "
                                                      "that object, or empty string if the object was updated "
                                                      "through the main resource."},
        },
    },
    LIST_META: {
        "type": "object",
        "description": "ListMeta describes metadata that synthetic resources must have.",
        "properties": {
            "resourceVersion": {**_STRING, "description": "String that identifies the server's internal version "
                                                          "of this object."},
            "continue": {**_STRING, "description": "continue may be set if the user set a limit on the number of "
                                                   "items returned."},
        },
    },
    STATUS: {
        "type": "object",
        "description": "Status is a return value for calls that don't return other objects.",
        "properties": {
            "apiVersion": {**_STRING, "description": _API_VERSION_DOC},
            "kind": {**_STRING, "description": _KIND_DOC},
            "status": {**_STRING, "description": "Status of the operation. One of: \"Success\" or \"Failure\"."},
            "message": {**_STRING, "description": "A human-readable description of the status of this operation."},
            "reason": {**_STRING, "description": "A machine-readable description of why this operation is in the "
                                                 "\"Failure\" status."},
            "code": {"type": "integer", "format": "int32", "description": "Suggested HTTP return code."},
            "details": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                        "description": "Extended data associated with the reason."},
        },
        "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
    },
}

# The real server's description of a few built-in kinds (kubectl explain shows it).
_BUILTIN_DESCRIPTIONS = {
    "Namespace": "Namespace provides a scope for Names. Use of multiple namespaces is optional.",
    "Node": "Node is a worker node in Kubernetes. Each node will have a unique identifier in the cache "
            "(i.e. in etcd).",
    "Pod": "Pod is a collection of containers that can run on a host. This resource is created by clients and "
           "scheduled onto hosts.",
    "Event": "Event is a report of an event somewhere in the cluster.",
    "Lease": "Lease defines a lease concept.",
    "Job": "Job represents the configuration of a single job.",
    "Deployment": "Deployment enables declarative updates for Pods and ReplicaSets.",
    "ReplicaSet": "ReplicaSet ensures that a specified number of pod replicas are running at any given time.",
    "StatefulSet": "StatefulSet represents a set of pods with consistent identities. Identities are defined as: "
                   "- Network: A single stable DNS and hostname. - Storage: As many VolumeClaims as requested.",
    "CustomResourceDefinition": "CustomResourceDefinition represents a resource that should be exposed on the "
                                "API server. Its name MUST be in the format <.spec.name>.<.spec.group>.",
}

_GROUP_PREFIXES = {"": "io.k8s.api.core", "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions"}

# The top-level spec and status of the built-in workload kinds, as `kubectl explain KIND` lists them
# (their insides are kept open: the emulator does not carry Kubernetes' type definitions).
_WORKLOAD_FIELDS: dict[str, tuple[str, str]] = {
    "Pod": ("Specification of the desired behavior of the pod.",
            "Most recently observed status of the pod. This data may not be up to date."),
    "Job": ("Specification of the desired behavior of a job.", "Current status of a job."),
    "Deployment": ("Specification of the desired behavior of the Deployment.",
                   "Most recently observed status of the Deployment."),
    "ReplicaSet": ("Spec defines the specification of the desired behavior of the ReplicaSet.",
                   "Status is the most recently observed status of the ReplicaSet."),
    "StatefulSet": ("Spec defines the desired identities of pods in this set.",
                    "Status is the current status of Pods in this StatefulSet. This data may be out of date by "
                    "some window of time."),
}

# The query parameters of write operations that clients look for.
_FIELD_VALIDATION = {
    "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
    "description": "fieldValidation instructs the server on how to handle objects in the request "
                   "(POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn "
                   "(the default) and Strict.",
}
_FIELD_MANAGER = {
    "name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True},
    "description": "fieldManager is a name associated with the actor or entity that is making these changes.",
}
_DRY_RUN = {
    "name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True},
    "description": "When present, indicates that modifications should not be persisted.",
}
_FORCE = {
    "name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True},
    "description": "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields "
                   "owned by other people.",
}
_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json")


def definition_name(spec: ResourceSpec) -> str:
    """The schema's name as the real server gives it: ``io.k8s.api.core.v1.Pod`` for built-in kinds,
    the group reversed for custom ones (``io.gpuadmit.v1alpha1.GPUWorkload``)."""
    if spec.openapi_schema is None:
        if spec.group in _GROUP_PREFIXES:
            prefix = _GROUP_PREFIXES[spec.group]
        else:
            prefix = "io.k8s.api." + spec.group.split(".")[0]
    else:
        prefix = ".".join(reversed(spec.group.split(".")))
    return f"{prefix}.{spec.version}.{spec.kind}"


def _gvk(spec: ResourceSpec, kind: str | None = None) -> list[dict[str, str]]:
    return [{"group": spec.group, "kind": kind or spec.kind, "version": spec.version}]


def kind_schema(spec: ResourceSpec, ref_prefix: str) -> dict[str, Any]:
    """The kind's schema, tagged with its group-version-kind; ``$ref``s start with ``ref_prefix``."""
    if spec.openapi_schema is not None:
        schema = copy.deepcopy(dict(spec.openapi_schema))
        properties = dict(schema.get("properties") or {})
    else:
        schema = {"type": "object", "description": _BUILTIN_DESCRIPTIONS.get(spec.kind, ""),
                  "x-kubernetes-preserve-unknown-fields": True}
        properties = {}
        if spec.group in ("", "apps", "batch") and spec.kind in _WORKLOAD_FIELDS:
            spec_doc, status_doc = _WORKLOAD_FIELDS[spec.kind]
            properties["spec"] = {"type": "object", "description": spec_doc, "x-kubernetes-preserve-unknown-fields": True}
            properties["status"] = {"type": "object", "description": status_doc,
                                    "x-kubernetes-preserve-unknown-fields": True}
    properties["apiVersion"] = {"type": "string", "description": _API_VERSION_DOC}
    properties["kind"] = {"type": "string", "description": _KIND_DOC}
    metadata_ref = {"$ref": f"{ref_prefix}{OBJECT_META}"}
    # OpenAPI 3.0 allows nothing beside a $ref, so v3 wraps it as the real server does.
    properties["metadata"] = ({"allOf": [metadata_ref], "default": {}, "description": _METADATA_DOC}
                              if ref_prefix.startswith("#/components") else {**metadata_ref, "description": _METADATA_DOC})
    schema["properties"] = properties
    schema["x-kubernetes-group-version-kind"] = _gvk(spec)
    return schema


def list_schema(spec: ResourceSpec, ref_prefix: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{spec.kind}List is a list of {spec.kind}",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION_DOC},
            "kind": {"type": "string", "description": _KIND_DOC},
            "items": {"type": "array", "items": {"$ref": f"{ref_prefix}{definition_name(spec)}"},
                      "description": f"List of {spec.plural}."},
            "metadata": {"$ref": f"{ref_prefix}{LIST_META}"},
        },
        "x-kubernetes-group-version-kind": _gvk(spec, f"{spec.kind}List"),
    }


def _operations(spec: ResourceSpec, v3: bool) -> dict[str, dict[str, Any]]:
    """The paths of one resource: collection, object and (if any) status subresource."""
    ref_prefix = "#/components/schemas/" if v3 else "#/definitions/"
    base = f"/apis/{spec.group}/{spec.version}" if spec.group else f"/api/{spec.version}"
    collection = f"{base}/namespaces/{{namespace}}/{spec.plural}" if spec.namespaced else f"{base}/{spec.plural}"
    kind_ref = {"$ref": f"{ref_prefix}{definition_name(spec)}"}
    list_ref = {"$ref": f"{ref_prefix}{definition_name(spec)}List"}
    status_ref = {"$ref": f"{ref_prefix}{STATUS}"}
    tag = spec.group.replace(".", "") + "_" + spec.version if spec.group else f"core_{spec.version}"
    scope = "Namespaced" if spec.namespaced else ""

    def operation(verb: str, action: str, returns: dict[str, Any], *, writes: bool = False,
                  body: bool = False, patch: bool = False) -> dict[str, Any]:
        parameters: list[dict[str, Any]] = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION] if writes else []
        if patch:
            parameters = [*parameters, _FORCE]
        op: dict[str, Any] = {
            "tags": [tag],
            "operationId": f"{verb}{scope}{spec.kind}",
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": {"group": spec.group, "version": spec.version, "kind": spec.kind},
        }
        if not v3:
            parameters = [{**{k: v for k, v in p.items() if k != "schema"}, **p["schema"]} for p in parameters]
        op["parameters"] = parameters
        if v3:
            op["responses"] = {"200": {"description": "OK", "content": {"application/json": {"schema": returns}}}}
            if body:
                types = _PATCH_TYPES if patch else ("application/json",)
                op["requestBody"] = {"required": True, "content": {t: {"schema": kind_ref if not patch else {"type": "object"}}
                                                                   for t in types}}
        else:
            op["responses"] = {"200": {"description": "OK", "schema": returns}}
            if body:
                op["parameters"] = [*parameters, {"name": "body", "in": "body", "required": True,
                                                  "schema": kind_ref if not patch else {"type": "object"}}]
                if patch:
                    op["consumes"] = list(_PATCH_TYPES)
        return op

    name_param = {"name": "name", "in": "path", "required": True, "description": f"name of the {spec.kind}"}
    namespace_param = {"name": "namespace", "in": "path", "required": True,
                       "description": "object name and auth scope, such as for teams and projects"}
    common = [name_param, namespace_param] if spec.namespaced else [name_param]
    if v3:
        common = [{**p, "schema": {"type": "string", "uniqueItems": True}} for p in common]
    else:
        common = [{**p, "type": "string", "uniqueItems": True} for p in common]
    paths: dict[str, dict[str, Any]] = {
        collection: {
            "get": operation("list", "list", list_ref),
            "post": operation("create", "post", kind_ref, writes=True, body=True),
            "parameters": common[1:],
        },
        f"{collection}/{{name}}": {
            "get": operation("read", "get", kind_ref),
            "put": operation("replace", "put", kind_ref, writes=True, body=True),
            "patch": operation("patch", "patch", kind_ref, writes=True, body=True, patch=True),
            "delete": operation("delete", "delete", status_ref),
            "parameters": common,
        },
    }
    if spec.has_status:
        status_operations: dict[str, Any] = {
            "get": operation("read", "get", kind_ref),
            "put": operation("replace", "put", kind_ref, writes=True, body=True),
            "patch": operation("patch", "patch", kind_ref, writes=True, body=True, patch=True),
        }
        for op in status_operations.values():
            op["operationId"] += "Status"
        paths[f"{collection}/{{name}}/status"] = {**status_operations, "parameters": common}
    return paths


def group_version_key(group: str, version: str) -> str:
    """The key of a group-version in ``/openapi/v3``'s ``paths``: ``api/v1`` or ``apis/<group>/<version>``."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def v3_document(specs: Iterable[ResourceSpec]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of one group-version (all ``specs`` share it)."""
    specs = sorted(specs, key=lambda s: s.plural)
    schemas: dict[str, Any] = copy.deepcopy(_META_SCHEMAS)
    paths: dict[str, Any] = {}
    for spec in specs:
        schemas[definition_name(spec)] = kind_schema(spec, "#/components/schemas/")
        schemas[f"{definition_name(spec)}List"] = list_schema(spec, "#/components/schemas/")
        paths.update(_operations(spec, v3=True))
    title = "Kubernetes CRD Swagger" if any(s.openapi_schema is not None for s in specs) else "Kubernetes"
    return {"openapi": "3.0.0", "info": {"title": title, "version": "v0.1.0"}, "paths": paths,
            "components": {"schemas": schemas}}


def v2_document(specs: Iterable[ResourceSpec]) -> dict[str, Any]:
    """The Swagger 2.0 document of everything served."""
    specs = sorted(specs, key=lambda s: (s.group, s.version, s.plural))
    definitions: dict[str, Any] = json.loads(json.dumps(_META_SCHEMAS).replace("#/components/schemas/", "#/definitions/"))
    paths: dict[str, Any] = {}
    for spec in specs:
        definitions[definition_name(spec)] = _v2_schema(kind_schema(spec, "#/definitions/"))
        definitions[f"{definition_name(spec)}List"] = list_schema(spec, "#/definitions/")
        paths.update(_operations(spec, v3=False))
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v0.1.0"}, "paths": paths,
            "definitions": definitions}


def _v2_schema(schema: Any) -> Any:
    """OpenAPI v3 schema keywords Swagger 2.0 lacks are dropped, as the real server drops them
    (``nullable``, ``oneOf``/``anyOf``/``not``) when it publishes a CRD in v2."""
    if isinstance(schema, list):
        return [_v2_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result = {}
    for key, value in schema.items():
        if key in ("nullable", "oneOf", "anyOf", "not"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            result[key] = {name: _v2_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "allOf"):
            result[key] = _v2_schema(value)
        else:
            result[key] = value
    return result


def v3_discovery(group_versions: Iterable[tuple[str, str]], hashes: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """``/openapi/v3``: where each group-version's document is, with a hash that changes with it."""
    return {"paths": {
        group_version_key(group, version): {
            "serverRelativeURL": f"/openapi/v3/{group_version_key(group, version)}?hash={hashes[(group, version)]}"}
        for group, version in sorted(set(group_versions))
    }}


def document_hash(document: Mapping[str, Any]) -> str:
    """An uppercase hex SHA-512 of the document (the real server's hashes look alike)."""
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest().upper()[:128]
