"""Request bodies in Kubernetes' protobuf encoding, for the few built-in kinds kubectl sends that way.

kubectl's typed clients (``kubectl create namespace|configmap|secret|serviceaccount|job|deployment``) send
``Content-Type: application/vnd.kubernetes.protobuf`` and never fall back to JSON, so the
emulator reads those bodies: the ``k8s\\0`` envelope (a ``runtime.Unknown`` holding the type and
the raw object) and the objects below, by the field numbers of Kubernetes' ``generated.proto``
(for Jobs and Deployments, the fields of a pod template ``kubectl create`` writes and the common
scheduling ones; any other field of theirs is dropped).
Anything else in protobuf is answered 415 (the emulator always answers in JSON, which these
clients accept).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.store import rfc3339

PROTOBUF = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

Fields = dict[int, list[Any]]  # field number -> values (bytes for length-delimited, int for varints)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Fields:
    """The raw fields of one message."""
    fields: Fields = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated field")
            value, position = data[position:position + length], position + length
        elif wire_type == 1:
            value, position = data[position:position + 8], position + 8
        elif wire_type == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _map(entries: list[bytes], value: Callable[[bytes], Any] = _text) -> dict[str, Any]:
    result = {}
    for entry in entries:
        pair = _fields(entry)
        result[_text(pair.get(1, [b""])[0])] = value(pair.get(2, [b""])[0])
    return result


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _time(value: bytes) -> str | None:
    seconds = _int64(_fields(value).get(1, [0])[0])
    return rfc3339(seconds) if seconds else None  # the zero Time: unset


def _nonzero(value: int) -> int | None:
    """A plain (not pointer) integer of the Go type: encoded even when 0, which JSON leaves out."""
    return _int64(value) or None


# For each message: field number -> (JSON name, how to read a value, repeated?).
Schema = dict[int, tuple[str, Any, bool]]


def _quantity(value: bytes) -> str:
    return _text(_fields(value).get(1, [b""])[0])


def _int_or_string(value: bytes) -> int | str:
    fields = _fields(value)
    return _text(fields.get(3, [b""])[0]) if fields.get(1, [0])[0] == 1 else _int64(fields.get(2, [0])[0])


def _message(schema: Schema) -> Callable[[bytes], dict[str, Any]]:
    def read(data: bytes) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for number, values in _fields(data).items():
            if number not in schema:
                continue
            name, reader, repeated = schema[number]
            if reader == "map":
                result[name] = _map(values)
            elif reader == "quantitymap":
                result[name] = _map(values, _quantity)
            elif reader == "bytesmap":
                result[name] = _map(values, lambda raw: base64.b64encode(raw).decode())
            elif repeated:
                result[name] = [reader(value) for value in values]
            else:
                value = reader(values[-1])
                if value is not None and value != "":  # Go's zero values, encoded though unset
                    result[name] = value
        return result
    return read


_OWNER_REFERENCE = _message({1: ("kind", _text, False), 3: ("name", _text, False), 4: ("uid", _text, False),
                             5: ("apiVersion", _text, False), 6: ("controller", bool, False),
                             7: ("blockOwnerDeletion", bool, False)})
_OBJECT_META = _message({
    1: ("name", _text, False), 2: ("generateName", _text, False), 3: ("namespace", _text, False),
    5: ("uid", _text, False), 6: ("resourceVersion", _text, False), 7: ("generation", _nonzero, False),
    8: ("creationTimestamp", _time, False), 10: ("deletionGracePeriodSeconds", _int64, False),
    11: ("labels", "map", False), 12: ("annotations", "map", False),
    13: ("ownerReferences", _OWNER_REFERENCE, True), 14: ("finalizers", _text, True),
})
_OBJECT_REFERENCE = _message({1: ("kind", _text, False), 2: ("namespace", _text, False), 3: ("name", _text, False),
                              4: ("uid", _text, False), 5: ("apiVersion", _text, False)})
_LABEL_SELECTOR = _message({1: ("matchLabels", "map", False), 2: ("matchExpressions", _message({
    1: ("key", _text, False), 2: ("operator", _text, False), 3: ("values", _text, True)}), True)})
_CONTAINER = _message({
    1: ("name", _text, False), 2: ("image", _text, False), 3: ("command", _text, True), 4: ("args", _text, True),
    5: ("workingDir", _text, False),
    6: ("ports", _message({1: ("name", _text, False), 2: ("hostPort", _nonzero, False),
                           3: ("containerPort", _int64, False), 4: ("protocol", _text, False)}), True),
    7: ("env", _message({1: ("name", _text, False), 2: ("value", _text, False)}), True),
    8: ("resources", _message({1: ("limits", "quantitymap", False), 2: ("requests", "quantitymap", False)}), False),
    13: ("terminationMessagePath", _text, False), 14: ("imagePullPolicy", _text, False),
    20: ("terminationMessagePolicy", _text, False), 24: ("restartPolicy", _text, False),
})
_NODE_SELECTOR_TERM = _message({
    1: ("matchExpressions", _message({1: ("key", _text, False), 2: ("operator", _text, False),
                                      3: ("values", _text, True)}), True),
    2: ("matchFields", _message({1: ("key", _text, False), 2: ("operator", _text, False),
                                 3: ("values", _text, True)}), True)})
_AFFINITY = _message({1: ("nodeAffinity", _message({
    1: ("requiredDuringSchedulingIgnoredDuringExecution", _message({1: ("nodeSelectorTerms", _NODE_SELECTOR_TERM, True)}),
        False),
    2: ("preferredDuringSchedulingIgnoredDuringExecution", _message({
        1: ("weight", _int64, False), 2: ("preference", _NODE_SELECTOR_TERM, False)}), True)}), False)})
_POD_SPEC = _message({
    2: ("containers", _CONTAINER, True), 3: ("restartPolicy", _text, False),
    4: ("terminationGracePeriodSeconds", _int64, False), 5: ("activeDeadlineSeconds", _int64, False),
    6: ("dnsPolicy", _text, False), 7: ("nodeSelector", "map", False), 8: ("serviceAccountName", _text, False),
    10: ("nodeName", _text, False), 18: ("affinity", _AFFINITY, False), 19: ("schedulerName", _text, False),
    20: ("initContainers", _CONTAINER, True),
    22: ("tolerations", _message({1: ("key", _text, False), 2: ("operator", _text, False), 3: ("value", _text, False),
                                  4: ("effect", _text, False), 5: ("tolerationSeconds", _int64, False)}), True),
    24: ("priorityClassName", _text, False), 38: ("schedulingGates", _message({1: ("name", _text, False)}), True),
})
_POD_TEMPLATE = _message({1: ("metadata", _OBJECT_META, False), 2: ("spec", _POD_SPEC, False)})
_KINDS: dict[tuple[str, str], Callable[[bytes], dict[str, Any]]] = {
    ("v1", "Namespace"): _message({1: ("metadata", _OBJECT_META, False),
                                   2: ("spec", _message({1: ("finalizers", _text, True)}), False)}),
    ("v1", "ConfigMap"): _message({1: ("metadata", _OBJECT_META, False), 2: ("data", "map", False),
                                   3: ("binaryData", "bytesmap", False), 4: ("immutable", bool, False)}),
    ("v1", "Secret"): _message({1: ("metadata", _OBJECT_META, False), 2: ("data", "bytesmap", False),
                                3: ("type", _text, False), 4: ("stringData", "map", False),
                                5: ("immutable", bool, False)}),
    ("v1", "ServiceAccount"): _message({
        1: ("metadata", _OBJECT_META, False), 2: ("secrets", _OBJECT_REFERENCE, True),
        3: ("imagePullSecrets", _message({1: ("name", _text, False)}), True),
        4: ("automountServiceAccountToken", bool, False)}),
    ("batch/v1", "Job"): _message({1: ("metadata", _OBJECT_META, False), 2: ("spec", _message({
        1: ("parallelism", _int64, False), 2: ("completions", _int64, False), 3: ("activeDeadlineSeconds", _int64, False),
        4: ("selector", _LABEL_SELECTOR, False), 5: ("manualSelector", bool, False), 6: ("template", _POD_TEMPLATE, False),
        7: ("backoffLimit", _int64, False), 8: ("ttlSecondsAfterFinished", _int64, False),
        9: ("completionMode", _text, False), 10: ("suspend", bool, False), 14: ("podReplacementPolicy", _text, False),
    }), False)}),
    ("apps/v1", "Deployment"): _message({1: ("metadata", _OBJECT_META, False), 2: ("spec", _message({
        1: ("replicas", _int64, False), 2: ("selector", _LABEL_SELECTOR, False), 3: ("template", _POD_TEMPLATE, False),
        4: ("strategy", _message({1: ("type", _text, False), 2: ("rollingUpdate", _message({
            1: ("maxUnavailable", _int_or_string, False), 2: ("maxSurge", _int_or_string, False)}), False)}), False),
        5: ("minReadySeconds", _nonzero, False), 6: ("revisionHistoryLimit", _int64, False),
        7: ("paused", lambda value: bool(value) or None, False),
        9: ("progressDeadlineSeconds", _int64, False),
    }), False)}),
}


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of a kind listed above; 415 for any other."""
    try:
        if not body.startswith(_MAGIC):
            raise ValueError("no k8s protobuf envelope")
        envelope = _fields(body[len(_MAGIC):])
        type_meta = _fields(envelope.get(1, [b""])[0])
        api_version = _text(type_meta.get(1, [b""])[0])
        kind = _text(type_meta.get(2, [b""])[0])
        reader = _KINDS.get((api_version, kind))
        if reader is None:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the emulated API server reads {kind or 'this kind'} in JSON only, not protobuf")
        return {"apiVersion": api_version, "kind": kind, **reader(envelope.get(2, [b""])[0])}
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise ApiError(400, "BadRequest", f"the protobuf body could not be decoded: {error}") from None
