"""`gpuadmit decide`: what the policy would do with a cluster dump, and why.

    kubectl get nodes,pods,namespaces,gpuworkloads,marginpolicies,gpuquotas -A -o yaml | gpuadmit decide -f -

Reads multi-document YAML or JSON (``kind: List`` and ``<Kind>List`` included),
builds the same snapshot the operator builds, runs the engine and prints one
decision per pending workload. Input problems are reported as one line each on
stderr, never as a traceback (exit codes shared by every command, see ``gpuadmit.inputs``):

- exit 0: decided;
- exit 2: bad input: the input (or the policy, or ``--now``) could not be used, or some
  objects in it were skipped (not Kubernetes objects, or a node advertising more GPUs
  than a node can have); the decisions for the rest are still printed;
- exit 1: the engine itself failed (a bug: please report the line printed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import reprlib
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import CycleResult, Decision, Policy, Snapshot, Workload
from gpuadmit.core.native import (
    MIRROR_NOT_TRUSTED,
    SUSPENDABLE,
    mirrors_in,
    name_of,
    namespace_of,
    ray_jobs_by_cluster,
)
from gpuadmit.core.nodes import advertised_gpu_problem
from gpuadmit.core.quota import Tenancy, tenancy
from gpuadmit.core.snapshot import build_snapshot, objects_by_kind
from gpuadmit.core.timefmt import format_rfc3339, parse_rfc3339, parse_rfc3339_or_none
from gpuadmit.inputs import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError, display_name, load_documents, load_policy

PROG = "gpuadmit decide"
KINDS_READ = ("Node", "Pod", "Namespace", "GPUWorkload", "MarginPolicy", "GPUQuota", "Job")
TABLE_COLUMNS = ("NAMESPACE", "NAME", "CLASS", "ACTION", "REASON", "GPUS", "MARGIN", "POS", "PLACEMENT")


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
        documents = [document for document in load_documents(args.filename) if document is not None]
        if not documents:
            raise InputError(f"{display_name(args.filename)}: holds no objects")
        grouped = objects_by_kind(documents)
        problems = find_unusable_objects(grouped)
        policies: list[Mapping[str, Any] | Policy] = list(grouped.get("MarginPolicy", []))
        policy_name = args.policy_name
        if args.policy:
            policy = load_policy(args.policy)
            policies, policy_name = [policy], policy.name
        now = parse_now(args.now) if args.now else dump_time(grouped)
        tenants = tenancy(grouped.get("GPUQuota", []), grouped.get("Namespace", []))
        problems.extend(quota_problems(tenants))
        # Mirrors of native workloads (docs/native-workloads.md) are judged as the operator judges them.
        suspendable = [obj for kind in SUSPENDABLE for obj in grouped.get(kind.value, [])]
        mirrors, untrusted = mirrors_in(grouped.get("GPUWorkload", []), suspendable,
                                        grouped.get("Pod", []), grouped.get("Namespace", []))
        problems.extend(f"GPUWorkload {key}: not trusted as a mirror ({MIRROR_NOT_TRUSTED}): {why}"
                        for key, why in sorted(untrusted.items()))
        workloads = grouped.get("GPUWorkload", [])
        if untrusted:
            workloads = [w for w in workloads if f"{namespace_of(w)}/{name_of(w)}" not in untrusted]
        snapshot = build_snapshot(
            nodes=grouped.get("Node", []),
            pods=grouped.get("Pod", []),
            namespaces=grouped.get("Namespace", []),
            workloads=workloads,
            policies=policies,
            now=now,
            policy_name=policy_name,
            quotas=tenants,
            mirrors=mirrors, ray_jobs=ray_jobs_by_cluster(grouped.get("RayJob", [])),
        )
    except InputError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SpecError as error:
        print(f"{PROG}: MarginPolicy {args.policy_name!r} is invalid: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError:  # a template nested past what the parsers follow
        print(f"{PROG}: {display_name(args.filename)}: nested too deeply to be a Kubernetes object", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"{PROG}: {display_name(args.filename)}: too large to decide in the memory available", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - the parsers never raise; if one does, one line, not a traceback
        print(f"{PROG}: could not read the input: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        result = solve(snapshot, args.solver)
    except Exception as error:  # noqa: BLE001 - one line, not a traceback, even for our own bugs
        print(f"{PROG}: the {args.solver} solver failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED

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
    return EXIT_BAD_INPUT if problems else EXIT_OK


def solve(snapshot: Snapshot, solver: str) -> CycleResult:
    if solver == "exact":
        from gpuadmit.core.exact import solve_exact

        return solve_exact(snapshot)
    from gpuadmit.core.engine import decide

    return decide(snapshot)


# --- reading ------------------------------------------------------------------------------


def parse_now(text: str) -> float:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise InputError(f"--now: not an RFC 3339 timestamp: {text!r} (example: 2026-11-26T10:00:00Z)") from None


def find_unusable_objects(grouped: Mapping[str, list[Any]]) -> list[str]:
    """One line per object left out: not a mapping, no kind, no metadata.name, or a node of impossibly many GPUs."""
    problems = [f"an object without a kind: {_preview(obj)}" for obj in grouped.get("", [])]
    for kind in KINDS_READ:
        for obj in grouped.get(kind, []):
            metadata = obj.get("metadata")
            name = metadata.get("name") if isinstance(metadata, Mapping) else None
            if not isinstance(name, str) or not name:
                problems.append(f"a {kind} without metadata.name: {_preview(obj)}")
            elif kind == "Node":
                problem = advertised_gpu_problem(obj)
                if problem is not None:
                    problems.append(f"Node {name!r}: {problem}")
    return problems


def quota_problems(tenants: Tenancy) -> list[str]:
    """GPUQuotas left out (invalid) and namespaces matched by two: one line each."""
    lines = [f"GPUQuota {name}: {error.field}: {error.message}" for name, error in sorted(tenants.invalid.items())]
    lines += [
        f"GPUQuota {c.lost}: namespace {c.namespace} is also matched by the older GPUQuota {c.kept}, which applies there"
        for c in tenants.conflicts
    ]
    return lines


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
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
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
