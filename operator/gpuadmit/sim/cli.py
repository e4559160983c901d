"""`gpuadmit simulate`: replay a GPU trace through the margin engine and peer policies."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import Policy
from gpuadmit.core.quota import Tenancy
from gpuadmit.inputs import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError
from gpuadmit.inputs import load_policy as load_policy_file
from gpuadmit.sim.replay import POLICY_NAMES, ReplayResult, SimulationError, contender_for, replay
from gpuadmit.sim.trace import (
    SHARED_TRACE_SUBDIR,
    TRACE_DIR_ENV,
    LoadShape,
    Trace,
    TraceError,
    find_trace_dir,
    read_alibaba,
    read_plain,
)

PROG = "gpuadmit simulate"
PROGRESS_WIDTH = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gpuadmit.sim.scenario import DEFAULT_SHAPE

    source = parser.add_argument_group("trace (default: the shared Alibaba 2023 trace)")
    source.add_argument("--trace", metavar="DIR|FILE", help="directory holding the Alibaba 2023 CSVs, or one of its pod lists (openb_pod_list_*.csv) with the node list beside it (default: $GPUADMIT_TRACE_DIR, then shared/traces/alibaba-gpu-2023 in a directory above this one)")
    source.add_argument("--workloads", metavar="FILE", help="your own workloads, CSV or JSON (see docs/simulate.md); needs --cluster")
    source.add_argument("--cluster", metavar="FILE", help="your own nodes, CSV or JSON: name, gpus, product[, memory_mib, count]")
    source.add_argument("--horizon", type=float, metavar="SECONDS", help="with --workloads: replay this long (default: until the last workload would finish)")

    shape = parser.add_argument_group(
        "load (defaults: the scenario in docs/simulate.md on the Alibaba trace; none on your own data)"
    )
    shape.add_argument("--time-compression", type=float, metavar="F", help=f"divide inter-arrival times by F (Alibaba default {DEFAULT_SHAPE.time_compression:g})")
    shape.add_argument("--compress-durations", action="store_true", default=None, help="divide run times by F too")
    shape.add_argument("--nodes", metavar="N|all", help=f"replay on N nodes, a product-stratified subset (Alibaba default {DEFAULT_SHAPE.node_count or 'all'})")
    shape.add_argument("--resample", type=float, metavar="K", help="K times as many workloads, drawn from the trace (default 1)")
    shape.add_argument("--seed", type=int, default=0, help="seed for --resample (default %(default)s)")

    parser.add_argument("--policy", metavar="FILE", help="MarginPolicy YAML or JSON that prices everything (default: the scenario's policy on the Alibaba trace, the README's example policy on your own data)")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated, of %(default)s")
    parser.add_argument("--quotas", metavar="FILE", help="YAML of GPUQuota objects; the trace's namespaces map to them by name (kubernetes.io/metadata.name) or by the namespaceSelector; the margin engine applies them")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--plot", metavar="DIR", help="write margin.png, queue.png, utilization.png, waits.png here")
    parser.add_argument("--progress", choices=("auto", "bar", "plain", "off"), default="auto", help="progress on stderr: a bar on a terminal, lines otherwise (default auto)")


def run(args: argparse.Namespace) -> int:
    try:
        own_data = bool(args.workloads or args.cluster)
        policy = load_policy(args.policy, own_data)
        names = [name.strip() for name in args.policies.split(",") if name.strip()]
        unknown = [name for name in names if name not in POLICY_NAMES]
        if unknown or not names:
            raise UsageError(f"--policies: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(POLICY_NAMES)}")
        trace = load_trace(args)
        if args.plot:  # before the replay, not after minutes of it
            try:
                os.makedirs(args.plot, exist_ok=True)
            except OSError as error:
                raise UsageError(f"--plot {args.plot}: cannot create the directory: {error.strerror or error}") from None
        tenants = load_quotas(args.quotas, trace)
    except (UsageError, TraceError, SpecError, InputError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError:
        print(f"{PROG}: an input is nested too deeply", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"{PROG}: the trace is too large for the memory available (try --nodes or a smaller --resample)", file=sys.stderr)
        return EXIT_BAD_INPUT
    results: list[ReplayResult] = []
    for name in names:
        report_progress = progress_reporter(name, args.progress, sys.stderr)
        try:
            results.append(replay(trace, policy, contender_for(name, policy), progress=report_progress,
                                  quotas=tenants.quotas, quota_of_namespace=tenants.quota_of_namespace))
        except SimulationError as error:
            print(f"\n{PROG}: {error}", file=sys.stderr)
            return EXIT_FAILED
    from gpuadmit.sim.report import summarize, to_json, to_table

    summaries = [summarize(result) for result in results]
    if args.output == "json":
        print(to_json(trace, summaries, scenario_of(args, policy)))
    else:
        print(to_table(trace, summaries))
    if args.plot:
        from gpuadmit.sim.plots import write_plots

        for path in write_plots(results, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


class UsageError(ValueError):
    pass


def load_policy(path: str | None, own_data: bool = False) -> Policy:
    """The MarginPolicy in ``path`` (YAML or JSON; the first MarginPolicy document); without one,
    the README's example policy for a user's own data, the scenario's for the Alibaba trace."""
    from gpuadmit.core.policy import DEFAULT_POLICY, parse_policy

    if path is None and own_data:
        return DEFAULT_POLICY
    if path is None:
        from gpuadmit.sim.scenario import DEFAULT_POLICY_OBJECT

        return parse_policy(DEFAULT_POLICY_OBJECT)
    return load_policy_file(path, "--policy")


def load_quotas(path: str | None, trace: Trace) -> Tenancy:
    """The GPUQuotas in ``path`` applied to the trace's namespaces (which carry only their name
    label, as every namespace does); an invalid quota is a usage error naming its field."""
    from gpuadmit.core.quota import tenancy
    from gpuadmit.core.snapshot import objects_by_kind
    from gpuadmit.inputs import load_documents

    if path is None:
        return Tenancy()
    objects = objects_by_kind(load_documents(path, "--quotas")).get("GPUQuota", [])
    if not objects:
        raise UsageError(f"--quotas {path}: no GPUQuota in it")
    namespaces = [{"metadata": {"name": ns}} for ns in sorted({w.namespace for w in trace.workloads})]
    tenants = tenancy(objects, namespaces)
    for name, error in sorted(tenants.invalid.items()):
        raise UsageError(f"--quotas {path}: GPUQuota {name}: {error.field}: {error.message}")
    return tenants


def load_shape(args: argparse.Namespace, own_data: bool) -> LoadShape:
    """The flags given, the rest from the default scenario (Alibaba) or left alone (own data)."""
    from gpuadmit.sim.scenario import DEFAULT_SHAPE

    base = LoadShape() if own_data else DEFAULT_SHAPE
    if args.nodes is None:
        nodes = base.node_count
    else:
        nodes = None if str(args.nodes).lower() == "all" else _positive_int(args.nodes, "--nodes")
    return LoadShape(
        time_compression=base.time_compression if args.time_compression is None else args.time_compression,
        compress_durations=base.compress_durations if args.compress_durations is None else args.compress_durations,
        node_count=nodes,
        resample=base.resample if args.resample is None else args.resample,
        seed=args.seed,
    )


def load_trace(args: argparse.Namespace) -> Trace:
    own_data = bool(args.workloads or args.cluster)
    shape = load_shape(args, own_data)
    args.shape = shape  # for the JSON's scenario block
    if own_data:
        if not (args.workloads and args.cluster):
            raise UsageError("--workloads and --cluster go together")
        return read_plain(args.workloads, args.cluster, shape, end_time=args.horizon)
    directory = find_trace_dir(args.trace)
    if directory is None:
        where = args.trace or os.environ.get(TRACE_DIR_ENV) or f"$GPUADMIT_TRACE_DIR or {SHARED_TRACE_SUBDIR} above here"
        raise UsageError(f"no Alibaba 2023 trace found in {where} (give --trace DIR, or --workloads and --cluster)")
    return read_alibaba(directory, shape)


def scenario_of(args: argparse.Namespace, policy: Policy) -> dict[str, Any]:
    shape: LoadShape = args.shape
    own_data = bool(args.workloads or args.cluster)
    default_policy = "the README's example policy" if own_data else "the default scenario's policy (gpuadmit.sim.scenario)"
    return {
        "timeCompression": shape.time_compression,
        "compressDurations": shape.compress_durations,
        "nodes": shape.node_count if shape.node_count is not None else "all",
        "resample": shape.resample,
        "seed": shape.seed,
        "policy": args.policy or default_policy,
        "gpuCostPerHour": dict(policy.gpu_cost_per_hour),
        "pricePerGPUHour": dict(policy.price_per_gpu_hour),
    }


def progress_reporter(name: str, mode: str, stream: TextIO) -> Callable[[float], None] | None:
    """A bar redrawn in place on a terminal; a line per quarter otherwise; nothing when off."""
    if mode == "off":
        return None
    bar = mode == "bar" or (mode == "auto" and stream.isatty())
    last_quarter = -1

    def report(done: float) -> None:
        nonlocal last_quarter
        if bar:
            filled = int(done * PROGRESS_WIDTH)
            stream.write(f"\r{name:>8} [{'#' * filled}{'.' * (PROGRESS_WIDTH - filled)}] {done:4.0%}")
            if done >= 1.0:
                stream.write("\n")
            stream.flush()
            return
        quarter = int(done * 4)
        if quarter > last_quarter:
            last_quarter = quarter
            stream.write(f"{name}: {done:.0%} replayed\n")
            stream.flush()

    return report


def _positive_int(value: str, flag: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{flag} must be a whole number or 'all', got {value!r}") from None
    if number < 1:
        raise UsageError(f"{flag} must be at least 1, got {number}")
    return number
