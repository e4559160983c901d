"""The request audit: what each request would need from RBAC, one record per request.

A real API server authorizes a request by (verb, API group, resource, subresource, namespace);
recording exactly that for every request an operator makes lets a test check that a chart's
roles grant all of it (tests/controller/test_rbac_audit.py). Records are plain dicts, written as
JSON lines when a file is given, in the spirit of the real server's audit log (``verb``,
``objectRef``, ``userAgent``), flattened.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

_WATCH_VALUES = {"true", "1"}


def rbac_verb(method: str, has_name: bool, params: Mapping[str, str]) -> str:
    """The verb RBAC checks for an HTTP request on a resource URL.

    GET is ``get`` on one object, ``list`` on a collection, and ``watch`` with ``?watch=true``
    (on either); DELETE on a collection is ``deletecollection``; PUT is ``update``.
    """
    method = method.upper()
    if method in ("GET", "HEAD"):
        if str(params.get("watch", "")).lower() in _WATCH_VALUES:
            return "watch"
        return "get" if has_name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return method.lower()


def audit_record(method: str, path: str, parsed: Any, params: Mapping[str, str], user_agent: str = "") -> dict[str, Any]:
    """One request as RBAC sees it (``parsed``: the path as ``handler.parse_api_path`` reads it).

    Resource requests: ``verb``, ``apiGroup`` ("" for core), ``apiVersion``, ``resource``,
    ``subresource`` (or None), ``namespace`` (None when cluster-wide), ``name`` (or None).
    Anything else (discovery, /version, health): ``nonResourceURL`` and ``verb`` (the lower-case
    HTTP method, as RBAC names non-resource verbs). Both carry ``userAgent`` and ``time``.
    """
    record: dict[str, Any] = {"time": time.time(), "userAgent": user_agent}
    if parsed is None or not parsed.plural or parsed.group is None:
        return {**record, "verb": method.lower(), "nonResourceURL": path}
    return {
        **record,
        "verb": rbac_verb(method, parsed.name is not None, params),
        "apiGroup": parsed.group,
        "apiVersion": parsed.version,
        "resource": parsed.plural,
        "subresource": parsed.subresource,
        "namespace": parsed.namespace,
        "name": parsed.name,
    }


class AuditLog:
    """Where audit records go: kept in ``records`` and, with ``path``, appended as JSON lines
    (flushed per line, so another process can read the file while the server runs)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, keep: bool = True) -> None:
        self.records: list[dict[str, Any]] = []
        self.keep = keep
        self.path = Path(path) if path is not None else None
        self._file: TextIO | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the log's life, closed by close()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self.keep:
                self.records.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, sort_keys=True) + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_audit_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of an audit log file (a half-written last line is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
