"""`gpuadmit queue`: the exact queue, as the running operator's last cycle decided it.

Statuses show a queue position exactly only at the head of the queue (`gpuadmit run
--exact-queue-positions`) and as a band beyond it (controller.queueview says why); this command
asks the operator itself: ``GET /queue`` on its health port. From outside the cluster, forward
that port first (docs/operator.md, "Queue positions"):

    kubectl -n gpuadmit port-forward deploy/gpuadmit 8081:8081
    gpuadmit queue --namespace team-a

Exit codes: 0 printed; 1 the operator could not answer (unreachable, not decided yet);
2 bad input (a flag, or a query the operator refused), one line each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gpuadmit.inputs import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

DEFAULT_OPERATOR_URL = "http://127.0.0.1:8081"
OPERATOR_URL_ENV = "GPUADMIT_OPERATOR_URL"
TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 * 2**20
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label


class QueueCommandError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", default=None, help="only this namespace's queued workloads (default: all)")
    parser.add_argument("--operator", default=None, metavar="URL",
                        help=f"the operator's health server (default ${OPERATOR_URL_ENV} or {DEFAULT_OPERATOR_URL}; "
                             "e.g. after `kubectl -n gpuadmit port-forward deploy/gpuadmit 8081:8081`)")
    parser.add_argument("--limit", type=int, default=None, help="print at most this many (default: all)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="table (default) or json")


def queue_url(operator: str, namespace: str | None, limit: int | None) -> str:
    """The /queue URL to ask, or QueueCommandError (exit 2) naming the bad flag."""
    parsed = urllib.parse.urlsplit(operator)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise QueueCommandError(f"--operator must be an http(s) URL such as {DEFAULT_OPERATOR_URL}, got {operator!r}",
                                EXIT_BAD_INPUT)
    if namespace is not None and not NAMESPACE_PATTERN.fullmatch(namespace):
        raise QueueCommandError(f"--namespace {namespace!r} is not a namespace name (lower-case letters, digits and '-', "
                                "at most 63)", EXIT_BAD_INPUT)
    if limit is not None and limit < 1:
        raise QueueCommandError(f"--limit must be at least 1, got {limit}", EXIT_BAD_INPUT)
    query = {key: str(value) for key, value in (("namespace", namespace), ("limit", limit)) if value is not None}
    base = operator.rstrip("/")
    return f"{base}/queue" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def fetch(url: str) -> dict[str, Any]:
    """The operator's answer, or QueueCommandError with one line."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            raw = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as error:
        message = _message_of(error.read(64 * 1024)) or error.reason
        code = EXIT_BAD_INPUT if error.code == 400 else EXIT_FAILED
        raise QueueCommandError(f"the operator answered {error.code}: {message}", code) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise QueueCommandError(f"cannot reach the operator at {url}: {reason} (is `kubectl port-forward` running? "
                                f"see --operator)", EXIT_FAILED) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise QueueCommandError(f"the answer from {url} is larger than {MAX_ANSWER_BYTES} bytes; use --limit", EXIT_FAILED)
    try:
        body = json.loads(raw)
    except ValueError:
        raise QueueCommandError(f"{url} did not answer JSON: is it gpuadmit's health port?", EXIT_FAILED) from None
    if not isinstance(body, dict) or body.get("kind") != "GPUWorkloadQueue" or not isinstance(body.get("items"), list):
        raise QueueCommandError(f"{url} did not answer a gpuadmit queue: is it gpuadmit's health port?", EXIT_FAILED)
    return body


def _message_of(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def table(body: dict[str, Any]) -> str:
    header = ("POSITION", "IN-NS", "NAMESPACE", "NAME", "CLASS", "MARGIN", "REASON")
    rows = [header] + [
        (str(item.get("position")), str(item.get("positionInNamespace")), str(item.get("namespace")),
         str(item.get("name")), str(item.get("class") or "-"),
         "-" if item.get("marginPerGPUHour") is None else f"{item['marginPerGPUHour']:.2f}", str(item.get("reason")))
        for item in body["items"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    scope = f"namespace {body['namespace']}: {body.get('matched')} of " if body.get("namespace") else ""
    lines.append(f"({scope}{body.get('queued')} queued, as decided at {body.get('decidedAt')}, cycle {body.get('cycle')})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    operator = args.operator or os.environ.get(OPERATOR_URL_ENV) or DEFAULT_OPERATOR_URL
    try:
        body = fetch(queue_url(operator, args.namespace, args.limit))
    except QueueCommandError as error:
        print(f"gpuadmit queue: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps(body, indent=2) if args.output == "json" else table(body))
    return EXIT_OK
