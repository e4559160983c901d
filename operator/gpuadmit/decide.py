"""`gpuadmit decide`: what the policy would do with a cluster dump, and why.

    kubectl get nodes,pods,namespaces,gpuworkloads,marginpolicies -A -o yaml | gpuadmit decide -f -

Reads multi-document YAML or JSON (``kind: List`` and ``<Kind>List`` included),
builds the same snapshot the operator builds, runs the engine and prints one
decision per pending workload. Input problems are reported as one line each on
stderr, never as a traceback:

- exit 0: decided;
- exit 1: the input (or the policy) could not be read, or some objects in it were
  skipped because they are not Kubernetes objects (the decisions for the rest are
  still printed);
- exit 2: the engine itself failed (a bug: please report the line printed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import reprlib
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import CycleResult, Decision, Policy, Snapshot, Workload
from gpuadmit.core.policy import parse_policy
from gpuadmit.core.snapshot import build_snapshot, objects_by_kind
from gpuadmit.core.timefmt import format_rfc3339, parse_rfc3339, parse_rfc3339_or_none

PROG = "gpuadmit decide"
KINDS_READ = ("Node", "Pod", "Namespace", "GPUWorkload", "MarginPolicy")
TABLE_COLUMNS = ("NAMESPACE", "NAME", "CLASS", "ACTION", "REASON", "GPUS", "MARGIN", "POS", "PLACEMENT")
_FIRST_NON_SPACE = re.compile(r"\S")  # JSON or YAML: told by the first character, without copying the text


class InputError(Exception):
    """An input that cannot be used at all: one line for stderr, naming the file and position."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="cluster dump (YAML or JSON); - for stdin")
    parser.add_argument(
        "-o", "--output", choices=("table", "wide", "json", "yaml"), default="table",
        help="table (default), wide (table with messages), json or yaml",
    )  # fmt: skip
    parser.add_argument(
        "--solver", choices=("greedy", "exact"), default="greedy",
        help="greedy: the operator's engine (default); exact: margin-optimal MILP, small clusters only",
    )  # fmt: skip
    parser.add_argument(
        "--now", metavar="RFC3339",
        help="the moment to decide at (default: the latest timestamp in the dump, so a file always gives the same answer)",
    )  # fmt: skip
    parser.add_argument("--policy", metavar="FILE", help="a MarginPolicy (or just its spec) to use instead of the dump's")
    parser.add_argument("--policy-name", default="default", metavar="NAME", help="which MarginPolicy of the dump is in force (default: default)")


def run(args: argparse.Namespace) -> int:
    # A dump becomes millions of small objects that live until exit; the cyclic garbage
    # collector would traverse them again and again while they are built, for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decide(args)
    finally:
        if collecting:  # called in-process (tests): leave the collector as it was
            gc.enable()


def _decide(args: argparse.Namespace) -> int:
    try:
        documents = load_documents(args.filename)
        grouped = objects_by_kind(documents)
        problems = find_unusable_objects(grouped)
        policies: list[Mapping[str, Any] | Policy] = list(grouped.get("MarginPolicy", []))
        policy_name = args.policy_name
        if args.policy:
            policy = load_policy(args.policy)
            policies, policy_name = [policy], policy.name
        now = parse_now(args.now) if args.now else dump_time(grouped)
        snapshot = build_snapshot(
            nodes=grouped.get("Node", []),
            pods=grouped.get("Pod", []),
            namespaces=grouped.get("Namespace", []),
            workloads=grouped.get("GPUWorkload", []),
            policies=policies,
            now=now,
            policy_name=policy_name,
        )
    except InputError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    except SpecError as error:
        print(f"{PROG}: MarginPolicy {args.policy_name!r} is invalid: {error.field}: {error.message}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - the parsers never raise; if one does, one line, not a traceback
        print(f"{PROG}: could not read the input: {type(error).__name__}: {error}", file=sys.stderr)
        return 2

    try:
        result = solve(snapshot, args.solver)
    except Exception as error:  # noqa: BLE001 - one line, not a traceback, even for our own bugs
        print(f"{PROG}: the {args.solver} solver failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 2

    for problem in problems:
        print(f"{PROG}: {display_name(args.filename)}: skipped {problem}", file=sys.stderr)
    try:
        if args.output in ("json", "yaml"):
            document = result_document(result)
            if args.output == "json":
                write_json(document, sys.stdout)
            else:
                yaml.dump(document, sys.stdout, Dumper=_yaml_dumper(), sort_keys=False, default_flow_style=False)
        else:
            sys.stdout.write(render_table(result, snapshot, wide=args.output == "wide"))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the flush at exit does not fail again
    return 1 if problems else 0


def solve(snapshot: Snapshot, solver: str) -> CycleResult:
    if solver == "exact":
        from gpuadmit.core.exact import solve_exact

        return solve_exact(snapshot)
    from gpuadmit.core.engine import decide

    return decide(snapshot)


# --- reading ------------------------------------------------------------------------------


def display_name(filename: str) -> str:
    return "<stdin>" if filename == "-" else filename


def read_text(filename: str) -> str:
    try:
        if filename == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(filename, "rb") as handle:
                data = handle.read()
    except OSError as error:
        raise InputError(f"{display_name(filename)}: cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{display_name(filename)}: line {line}: not UTF-8 text (byte {error.start})") from None


def load_documents(filename: str) -> list[Any]:
    """Every document of a YAML stream, or of a JSON value / stream of JSON values."""
    text = read_text(filename)
    name = display_name(filename)
    first = _FIRST_NON_SPACE.search(text)
    if first is not None and first.group() in ("{", "["):
        documents = _load_json(text, name)
    else:
        documents = _load_yaml(text, name)
    # A top-level JSON or YAML array is a list of objects, like the items of a List.
    flattened: list[Any] = []
    for document in documents:
        flattened.extend(document if isinstance(document, list) else [document])
    return flattened


def _load_json(text: str, name: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to be a Kubernetes object") from None
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":
            raise InputError(f"{name}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}") from None
    # Several JSON values one after another (e.g. `kubectl get -o json` run twice).
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            return documents
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise InputError(f"{name}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}") from None
        except RecursionError:
            raise InputError(f"{name}: nested too deeply to be a Kubernetes object") from None
        documents.append(document)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML (C speed when libyaml is there) that keeps timestamps as the strings they are."""


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_str)


def _load_yaml(text: str, name: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = error.problem or error.context or "unreadable"
        raise InputError(f"{name}: {where}not valid YAML: {problem}") from None
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to be a Kubernetes object") from None
    except yaml.YAMLError as error:
        raise InputError(f"{name}: not valid YAML: {str(error).splitlines()[0] if str(error) else 'unreadable'}") from None


def load_policy(filename: str) -> Policy:
    """The MarginPolicy in a file: a MarginPolicy object (the first one) or a bare spec mapping."""
    name = display_name(filename)
    documents = [document for document in load_documents(filename) if document is not None]
    grouped = objects_by_kind(documents)
    candidates = grouped.get("MarginPolicy") or [
        document for document in documents if isinstance(document, Mapping) and "kind" not in document
    ]
    if not candidates:
        raise InputError(f"{name}: no MarginPolicy (nor a bare MarginPolicy spec) in it")
    try:
        return parse_policy(candidates[0])
    except SpecError as error:
        raise InputError(f"{name}: invalid MarginPolicy: {error.field}: {error.message}") from None


def parse_now(text: str) -> float:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise InputError(f"--now: not an RFC 3339 timestamp: {text!r} (example: 2026-11-26T10:00:00Z)") from None


def find_unusable_objects(grouped: Mapping[str, list[Any]]) -> list[str]:
    """One line per object that cannot even be named: not a mapping, no kind, or no metadata.name."""
    problems = [f"an object without a kind: {_preview(obj)}" for obj in grouped.get("", [])]
    for kind in KINDS_READ:
        for obj in grouped.get(kind, []):
            metadata = obj.get("metadata")
            name = metadata.get("name") if isinstance(metadata, Mapping) else None
            if not isinstance(name, str) or not name:
                problems.append(f"a {kind} without metadata.name: {_preview(obj)}")
    return problems


def dump_time(grouped: Mapping[str, list[Any]]) -> float:
    """When the dump was taken, as well as it tells: its latest timestamp (wall clock if none).

    Node heartbeats are refreshed every few minutes, so in a real dump this is
    close to the moment it was taken; and the same file always decides the same.
    """
    latest: float | None = None

    def consider(value: object) -> None:
        nonlocal latest
        moment = parse_rfc3339_or_none(value)
        if moment is not None and (latest is None or moment > latest):
            latest = moment

    for node in grouped.get("Node", []):
        status = node.get("status")
        conditions = status.get("conditions") if isinstance(status, Mapping) else None
        for condition in conditions if isinstance(conditions, list) else ():
            if isinstance(condition, Mapping):
                consider(condition.get("lastHeartbeatTime"))
                consider(condition.get("lastTransitionTime"))
    for kind in ("GPUWorkload", "Pod", "Node"):
        for obj in grouped.get(kind, []):
            metadata = obj.get("metadata")
            if isinstance(metadata, Mapping):
                consider(metadata.get("creationTimestamp"))
            if kind == "GPUWorkload":
                status = obj.get("status")
                if isinstance(status, Mapping):
                    consider(status.get("admittedAt"))
                    consider(status.get("queuedSince"))
    return latest if latest is not None else time.time()


def _preview(obj: object) -> str:
    """The start of an object, for a message: whatever it holds, it never raises."""
    try:
        text = json.dumps(obj, default=str)
    except (TypeError, ValueError, RecursionError):  # keys JSON cannot have, cycles, depth
        text = reprlib.repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


# --- writing ------------------------------------------------------------------------------


def decision_document(decision: Decision) -> dict[str, Any]:
    margin = decision.margin_per_gpu_hour
    return {
        "namespace": decision.namespace,
        "name": decision.name,
        "class": decision.workload_class,
        "classReason": decision.class_reason,
        "action": decision.action.value,
        "reason": decision.reason.value,
        "message": decision.message,
        "placement": [{"node": entry.node, "gpus": entry.gpus} for entry in decision.placement],
        "marginPerGPUHour": None if margin is None else round(margin, 6),
        "queuePosition": decision.queue_position,
    }


def result_document(result: CycleResult) -> dict[str, Any]:
    return {
        "decisions": [decision_document(decision) for decision in result.decisions],
        "preemptions": [
            {
                "namespace": preemption.namespace,
                "name": preemption.name,
                "preemptedBy": preemption.preempted_by,
                "reason": preemption.reason.value,
            }
            for preemption in result.preemptions
        ],
    }


def write_json(document: Mapping[str, Any], out: Any) -> None:
    """Valid JSON with one decision per line: readable, and C-speed for 100,000 decisions."""
    out.write("{")
    for index, (key, items) in enumerate(document.items()):
        out.write(",\n " if index else "\n ")
        out.write(json.dumps(key))
        if not items:
            out.write(": []")
            continue
        out.write(": [\n  ")
        out.write(",\n  ".join(json.dumps(item) for item in items))
        out.write("\n ]")
    out.write("\n}\n")


def render_table(result: CycleResult, snapshot: Snapshot, wide: bool = False) -> str:
    workloads: dict[str, Workload] = {workload.key: workload for workload in snapshot.pending}
    header = TABLE_COLUMNS + (("MESSAGE",) if wide else ())
    rows = [header]
    for decision in result.decisions:
        workload = workloads.get(decision.key)
        row = (
            decision.namespace,
            decision.name,
            decision.workload_class or "-",
            _value(decision.action),
            _value(decision.reason),
            str(workload.total_gpus) if workload else "-",
            f"{decision.margin_per_gpu_hour:.2f}" if decision.margin_per_gpu_hour is not None else "-",
            str(decision.queue_position) if decision.queue_position is not None else "-",
            ",".join(f"{entry.node}:{entry.gpus}" for entry in decision.placement) or "-",
        )
        rows.append(row + ((decision.message,) if wide else ()))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    for preemption in result.preemptions:
        lines.append(f"preempted: {preemption.key} by {preemption.preempted_by} ({_value(preemption.reason)})")
    lines.append(summary_line(result, workloads, snapshot.now))
    return "\n".join(lines) + "\n"


def summary_line(result: CycleResult, workloads: Mapping[str, Workload], now: float) -> str:
    by_action: dict[str, Counter[str]] = {"admit": Counter(), "queue": Counter(), "reject": Counter()}
    gpus_placed = 0
    margin_per_hour = 0.0
    for decision in result.decisions:
        action = _value(decision.action)
        by_action.setdefault(action, Counter())[decision.workload_class or "invalid"] += 1
        if action == "admit":
            placed = sum(entry.gpus for entry in decision.placement)
            gpus_placed += placed
            margin_per_hour += (decision.margin_per_gpu_hour or 0.0) * placed
    parts = []
    for action, label in (("admit", "admitted"), ("queue", "queued"), ("reject", "rejected")):
        counts = by_action[action]
        detail = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        parts.append(f"{label} {sum(counts.values())}" + (f" ({detail})" if detail else ""))
    preempted = f"; preempted {len(result.preemptions)}" if result.preemptions else ""
    return (
        f"{'; '.join(parts)}{preempted}; {gpus_placed} GPUs placed; "
        f"margin admitted {margin_per_hour:.2f}/h; at {format_rfc3339(now)}"
    )


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


def _yaml_dumper() -> type:
    return getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `decide` directly (``python -m gpuadmit.decide``), the same as ``gpuadmit decide``."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
