"""Request bodies in Kubernetes' protobuf encoding, for the few built-in kinds kubectl sends that way.

kubectl's typed clients (``kubectl create namespace|configmap|secret|serviceaccount``) send
``Content-Type: application/vnd.kubernetes.protobuf`` and never fall back to JSON, so the
emulator reads those bodies: the ``k8s\\0`` envelope (a ``runtime.Unknown`` holding the type and
the raw object) and the objects below, by the field numbers of Kubernetes' ``generated.proto``.
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


def _time(value: bytes) -> str:
    seconds = _int64(_fields(value).get(1, [0])[0])
    return rfc3339(seconds)


# For each message: field number -> (JSON name, how to read a value, repeated?).
Schema = dict[int, tuple[str, Any, bool]]


def _message(schema: Schema) -> Callable[[bytes], dict[str, Any]]:
    def read(data: bytes) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for number, values in _fields(data).items():
            if number not in schema:
                continue
            name, reader, repeated = schema[number]
            if reader == "map":
                result[name] = _map(values)
            elif reader == "bytesmap":
                result[name] = _map(values, lambda raw: base64.b64encode(raw).decode())
            elif repeated:
                result[name] = [reader(value) for value in values]
            else:
                result[name] = reader(values[-1])
        return result
    return read


_OWNER_REFERENCE = _message({1: ("kind", _text, False), 3: ("name", _text, False), 4: ("uid", _text, False),
                             5: ("apiVersion", _text, False), 6: ("controller", bool, False),
                             7: ("blockOwnerDeletion", bool, False)})
_OBJECT_META = _message({
    1: ("name", _text, False), 2: ("generateName", _text, False), 3: ("namespace", _text, False),
    5: ("uid", _text, False), 6: ("resourceVersion", _text, False), 7: ("generation", _int64, False),
    8: ("creationTimestamp", _time, False), 10: ("deletionGracePeriodSeconds", _int64, False),
    11: ("labels", "map", False), 12: ("annotations", "map", False),
    13: ("ownerReferences", _OWNER_REFERENCE, True), 14: ("finalizers", _text, True),
})
_OBJECT_REFERENCE = _message({1: ("kind", _text, False), 2: ("namespace", _text, False), 3: ("name", _text, False),
                              4: ("uid", _text, False), 5: ("apiVersion", _text, False)})
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
