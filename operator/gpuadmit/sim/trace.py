"""Trace readers: a GPU cluster's nodes and the workloads submitted to it, as plain data.

Two formats:

- the Alibaba 2023 GPU trace (``openb_node_list_gpu_node.csv`` + ``openb_pod_list_default.csv``),
  read with the proxies the trace forces on us (qos LS -> inference, the rest -> training;
  fractional GPUs rounded up to one) and reported in ``Trace.notes``;
- a plain CSV or JSON workload list and cluster list, for a user's own data
  (columns documented in docs/simulate.md).

Every reader returns a ``Trace`` whose workloads are sorted by submit time then name, so a
replay of the same files is the same replay. Load shaping (time compression, a node subset,
resampling) is applied here, deterministically, before the replay sees anything.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpuadmit.core.errors import show_number
from gpuadmit.core.model import CLASSES, GpuNode, Resources, WorkloadClass
from gpuadmit.core.nodes import MAX_GPUS_PER_NODE
from gpuadmit.inputs import InputError, load_json, read_text

ALIBABA_NODES_FILE = "openb_node_list_gpu_node.csv"
ALIBABA_PODS_FILE = "openb_pod_list_default.csv"
ALIBABA_NAMESPACE = "alibaba"
# Where the trace is when nobody says otherwise: $GPUADMIT_TRACE_DIR, else a shared copy in this
# folder below some directory above the working directory or the package (e.g. ../shared/...
# beside a clone). A user points --trace (simulate) or --trace-dir (demo) at their own.
TRACE_DIR_ENV = "GPUADMIT_TRACE_DIR"
SHARED_TRACE_SUBDIR = Path("shared") / "traces" / "alibaba-gpu-2023"

# What a pod list must have to be replayed: without the times there is nothing to replay
# (the trace's multigpu50 and gpuspec files carry no times; they describe load, not arrivals).
ALIBABA_POD_COLUMNS = ("num_gpu", "creation_time", "scheduled_time", "deletion_time")

# Bounds on a simulated cluster and its load, far beyond any real one, so that a hostile or
# mistaken file is refused at once instead of hanging the replay or exhausting memory.
# Kubernetes supports clusters of 5,000 nodes; the Alibaba trace has 1,213.
MAX_NODES = 100_000
# A million workloads take about a GB in memory as they are replayed (the Alibaba trace: 7,064).
MAX_WORKLOADS = 1_000_000
MAX_REPLICAS = MAX_NODES
# Times are seconds from the trace start; a thousand years keeps every sum of them finite
# (1e308 made the figures inf and nan).
MAX_TRACE_SECONDS = 1000 * 365 * 86400.0

PLAIN_WORKLOAD_COLUMNS = ("name", "submit_time", "duration_s", "gpus", "replicas", "class", "products", "tier", "namespace")
PLAIN_NODE_COLUMNS = ("name", "gpus", "product", "memory_mib", "count")


class TraceError(ValueError):
    """A trace file that cannot be read: names the file, the row and the column."""


@dataclass(frozen=True, slots=True)
class TraceWorkload:
    """One workload as submitted: what it asks for and how long it runs once admitted."""

    name: str
    submit_time: float  # seconds from the trace start, after time compression
    duration_s: float | None  # None: long-lived, still running when the trace ends
    gpus: int  # whole GPUs per replica
    replicas: int
    workload_class: WorkloadClass
    products: tuple[str, ...] = ()  # allowed GPU products; empty = any
    tier: str | None = None
    namespace: str = "default"
    requests: Resources = ()  # per replica, every resource but GPUs (the Alibaba trace's CPU and memory)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.replicas


@dataclass(frozen=True, slots=True)
class Trace:
    nodes: tuple[GpuNode, ...]
    workloads: tuple[TraceWorkload, ...]  # sorted by (submit_time, name)
    end_time: float  # the replay's horizon: nothing is credited after it
    source: str
    notes: tuple[str, ...] = ()  # proxies and skipped rows, to print beside the results
    skipped: Mapping[str, int] = field(default_factory=dict)  # why -> how many rows

    @property
    def total_gpus(self) -> int:
        return sum(node.allocatable for node in self.nodes)


@dataclass(frozen=True, slots=True)
class LoadShape:
    """How to turn a trace into a harder one, deterministically.

    ``time_compression`` divides the time between arrivals (and, with ``compress_durations``,
    run times too); ``node_count`` keeps a product-stratified subset of the nodes;
    ``resample`` multiplies the number of workloads by drawing extra copies (seeded).
    """

    time_compression: float = 1.0
    compress_durations: bool = False
    node_count: int | None = None
    resample: float = 1.0
    seed: int = 0


def find_trace_dir(explicit: str | None = None, starts: Iterable[Path] | None = None) -> Path | None:
    """The Alibaba trace, for ``gpuadmit simulate`` and ``gpuadmit demo`` alike: ``explicit``,
    else $GPUADMIT_TRACE_DIR, else the first ``shared/traces/alibaba-gpu-2023`` found going up
    from ``starts`` (default: the working directory, then this package's directory).

    A directory holding both CSVs, or one of the trace's pod lists (``openb_pod_list_*.csv``,
    e.g. ``gpuspec33``) with the node list beside it. None when there is none (an explicit
    or $GPUADMIT_TRACE_DIR location that does not hold it is not replaced by another).
    """

    def complete(path: Path) -> bool:
        pods = path if path.is_file() else path / ALIBABA_PODS_FILE
        return pods.is_file() and (pods.parent / ALIBABA_NODES_FILE).is_file()

    named = explicit or os.environ.get(TRACE_DIR_ENV)
    if named:
        path = Path(named).expanduser()
        return path if complete(path) else None
    for start in (Path.cwd(), Path(__file__).resolve().parent) if starts is None else starts:
        for folder in (start.resolve(), *start.resolve().parents):
            if complete(folder / SHARED_TRACE_SUBDIR):
                return folder / SHARED_TRACE_SUBDIR
    return None


# --------------------------------------------------------------------------- Alibaba 2023


def read_alibaba(location: str | os.PathLike[str], shape: LoadShape = LoadShape()) -> Trace:
    """The Alibaba 2023 trace, shaped by ``shape``: a directory (its default pod list), or a pod
    list file with the node list beside it."""
    location = Path(location)
    pods_path = location if location.is_file() else location / ALIBABA_PODS_FILE
    directory = pods_path.parent
    nodes = read_nodes(directory / ALIBABA_NODES_FILE)
    skipped: Counter[str] = Counter()
    raw: list[tuple[float, float | None, TraceWorkload]] = []  # (submit, scheduled, workload)
    rows = list(_csv_rows(pods_path, required=ALIBABA_POD_COLUMNS))
    trace_end = 0.0
    for line, row in rows:
        trace_end = max(trace_end, _float(row, "deletion_time", pods_path, line, default=0.0) or 0.0)
    for line, row in rows:
        num_gpu = _int(row, "num_gpu", pods_path, line, default=0)
        if num_gpu <= 0:
            skipped["no GPU"] += 1
            continue
        scheduled = _float(row, "scheduled_time", pods_path, line, default=None)
        if scheduled is None:
            skipped["never scheduled (no scheduled_time)"] += 1
            continue
        created = _float(row, "creation_time", pods_path, line, default=scheduled)
        deleted = _float(row, "deletion_time", pods_path, line, default=None)
        if deleted is None or deleted >= trace_end:
            duration: float | None = None  # still running when the trace ends
        else:
            duration = max(0.0, deleted - scheduled)
        qos = (row.get("qos") or "").strip()
        products = tuple(p.strip() for p in (row.get("gpu_spec") or "").split("|") if p.strip())
        raw.append(
            (
                created,
                scheduled,
                TraceWorkload(
                    name=row.get("name") or f"pod-{line}",
                    submit_time=created,
                    duration_s=duration,
                    gpus=1 if num_gpu < 1 else num_gpu,  # a fractional share takes a whole GPU here
                    replicas=1,
                    workload_class="inference" if qos == "LS" else "training",
                    products=products,
                    namespace=ALIBABA_NAMESPACE,
                    requests=host_resources(row, pods_path, line),
                ),
            )
        )
    workloads = [workload for _, _, workload in raw]
    if not workloads:
        reasons = "; ".join(f"{count} {why}" for why, count in sorted(skipped.items())) or "no rows"
        raise TraceError(f"{pods_path}: no pod to replay ({reasons})")
    fractional = sum(
        1
        for line, row in rows
        if _int(row, "num_gpu", pods_path, line, default=0) == 1 and 0 < _int(row, "gpu_milli", pods_path, line, default=1000) < 1000
    )
    notes = [
        "class is a proxy: qos LS -> inference, BE/Burstable/Guaranteed -> training (the trace has no class column)",
        f"{fractional} fractional-GPU pods rounded up to one whole GPU",
        f"{sum(1 for w in workloads if w.duration_s is None)} pods still running at the trace end replayed as long-lived",
    ]
    notes += [f"skipped {count} pods: {why}" for why, count in sorted(skipped.items()) if why != "no GPU"]
    return shape_trace(
        Trace(nodes=nodes, workloads=_sorted(workloads), end_time=trace_end, source=str(location), notes=tuple(notes), skipped=dict(skipped)),
        shape,
    )


def host_resources(row: Mapping[str, Any], path: Path, line: int) -> Resources:
    """CPU (millicores) and memory (bytes) of an Alibaba row's ``cpu_milli`` and ``memory_mib`` (host
    memory there, not GPU memory), those present and above 0."""
    amounts = (("cpu", _int(row, "cpu_milli", path, line, default=0)), ("memory", _int(row, "memory_mib", path, line, default=0) * 2**20))
    return tuple((resource, amount) for resource, amount in amounts if amount > 0)


def read_nodes(path: str | os.PathLike[str]) -> tuple[GpuNode, ...]:
    """Nodes from CSV or JSON: columns ``name, gpus, product[, memory_mib, count]``.

    The Alibaba node list's own columns (``sn, gpu, model``) are accepted too. ``count``
    makes that many alike nodes named ``<name>-0``, ``<name>-1``, ...
    """
    path = Path(path)
    nodes: list[GpuNode] = []
    for line, row in _rows(path, "nodes"):
        name = str(row.get("name") or row.get("sn") or "").strip()
        if not name:
            raise TraceError(f"{path}:{line}: column 'name' is empty")
        gpus = _int(row, "gpus" if "gpus" in row else "gpu", path, line)
        if gpus < 0:
            raise TraceError(f"{path}:{line}: column 'gpus' must be at least 0, got {gpus}")
        product = str(row.get("product") or row.get("model") or "").strip()
        memory = _int(row, "memory_mib", path, line, default=0) if "product" in row else 0  # Alibaba's memory_mib is host memory
        host = host_resources(row, path, line) if "product" not in row else ()
        if gpus > MAX_GPUS_PER_NODE:
            raise TraceError(f"{path}:{line}: column 'gpus' is {show_number(gpus)}, more than the {MAX_GPUS_PER_NODE} one node can have")
        count = _int(row, "count", path, line, default=1)
        if count < 1 or len(nodes) + count > MAX_NODES:
            raise TraceError(
                f"{path}:{line}: column 'count' must be at least 1 and the cluster at most {MAX_NODES:,} nodes, got {show_number(count)}"
            )
        names = [name] if count == 1 else [f"{name}-{index}" for index in range(count)]
        nodes += [GpuNode(name=node_name, allocatable=gpus, product=product, memory_mib=memory, resources=host) for node_name in names]
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise TraceError(f"{path}: node {node.name!r} appears twice")
        seen.add(node.name)
    if not any(node.allocatable > 0 for node in nodes):
        raise TraceError(f"{path}: no node with GPUs in it")
    return tuple(sorted(nodes, key=lambda node: node.name))


# --------------------------------------------------------------------------- plain format


def read_plain(workloads_path: str | os.PathLike[str], nodes_path: str | os.PathLike[str], shape: LoadShape = LoadShape(), end_time: float | None = None) -> Trace:
    """A user's own trace: a workload list and a node list, each CSV or JSON (see docs/simulate.md).

    The horizon is ``end_time``, else the last submit time plus the longest finite duration.
    """
    workloads_path = Path(workloads_path)
    nodes = read_nodes(nodes_path)
    workloads: list[TraceWorkload] = []
    for line, row in _rows(workloads_path, "workloads"):
        if len(workloads) >= MAX_WORKLOADS:
            raise TraceError(f"{workloads_path}: more than {MAX_WORKLOADS:,} workloads")
        workloads.append(_plain_workload(row, workloads_path, line))
    if not workloads:
        raise TraceError(f"{workloads_path}: no workload in it")
    keys = Counter(workload.key for workload in workloads)
    duplicates = sorted(key for key, count in keys.items() if count > 1)
    if duplicates:
        raise TraceError(f"{workloads_path}: workload names must be unique per namespace, repeated: {', '.join(duplicates[:5])}")
    if end_time is not None and not 0 < end_time <= MAX_TRACE_SECONDS:
        raise TraceError(f"--horizon must be more than 0 and at most {MAX_TRACE_SECONDS:.0f} seconds, got {show_number(end_time)}")
    if end_time is None:
        end_time = max(
            (w.submit_time + (w.duration_s or 0.0) for w in workloads),
            default=0.0,
        )
    return shape_trace(
        Trace(nodes=nodes, workloads=_sorted(workloads), end_time=float(end_time), source=str(workloads_path)),
        shape,
    )


def _plain_workload(row: Mapping[str, Any], path: Path, line: int) -> TraceWorkload:
    name = str(row.get("name") or "").strip()
    if not name:
        raise TraceError(f"{path}:{line}: column 'name' is empty")
    workload_class = str(row.get("class") or "training").strip().lower()
    if workload_class not in CLASSES:
        raise TraceError(f"{path}:{line}: column 'class' must be one of {', '.join(CLASSES)}, got {workload_class!r}")
    gpus = _int(row, "gpus", path, line)
    replicas = _int(row, "replicas", path, line, default=1)
    if not (1 <= gpus <= MAX_GPUS_PER_NODE and 1 <= replicas <= MAX_REPLICAS):
        raise TraceError(
            f"{path}:{line}: columns 'gpus' and 'replicas' must be 1..{MAX_GPUS_PER_NODE} and 1..{MAX_REPLICAS:,}, "
            f"got {show_number(gpus)} and {show_number(replicas)}"
        )
    submit = _float(row, "submit_time", path, line)
    duration = _float(row, "duration_s", path, line, default=None)
    if submit is None or not 0 <= submit <= MAX_TRACE_SECONDS or (duration is not None and not 0 <= duration <= MAX_TRACE_SECONDS):
        raise TraceError(f"{path}:{line}: 'submit_time' and 'duration_s' must be 0..{MAX_TRACE_SECONDS:.0f} seconds")
    products_value = row.get("products") or ()
    if isinstance(products_value, str):
        products = tuple(p.strip() for p in products_value.split("|") if p.strip())
    elif isinstance(products_value, (list, tuple)):
        products = tuple(str(p).strip() for p in products_value if str(p).strip())
    else:
        raise TraceError(f"{path}:{line}: column 'products' must be '|'-joined names or a list")
    tier = str(row.get("tier") or "").strip() or None
    namespace = str(row.get("namespace") or "").strip() or "default"
    return TraceWorkload(
        name=name,
        submit_time=submit,
        duration_s=duration,
        gpus=gpus,
        replicas=replicas,
        workload_class=workload_class,
        products=products,
        tier=tier,
        namespace=namespace,
    )


# --------------------------------------------------------------------------- load shaping


def shape_trace(trace: Trace, shape: LoadShape) -> Trace:
    """``trace`` resampled, node-subsetted and time-compressed as ``shape`` says."""
    if not (shape.time_compression > 0 and math.isfinite(shape.time_compression)):
        raise TraceError(f"time compression must be a positive number, got {shape.time_compression}")
    if not (shape.resample >= 1 and math.isfinite(shape.resample)):
        raise TraceError(f"resample must be at least 1, got {shape.resample}")
    if len(trace.workloads) * shape.resample > MAX_WORKLOADS:
        raise TraceError(
            f"resample x{show_number(shape.resample)} would make {show_number(len(trace.workloads) * shape.resample)} workloads, "
            f"more than {MAX_WORKLOADS:,}"
        )
    nodes = subset_nodes(trace.nodes, shape.node_count) if shape.node_count is not None else trace.nodes
    workloads = resample_workloads(trace.workloads, shape.resample, shape.seed) if shape.resample != 1 else list(trace.workloads)
    notes = list(trace.notes)
    end_time = trace.end_time
    if shape.time_compression != 1:
        factor = shape.time_compression
        start = min((w.submit_time for w in workloads), default=0.0)
        workloads = [
            replace(
                w,
                submit_time=start + (w.submit_time - start) / factor,
                duration_s=w.duration_s / factor if (shape.compress_durations and w.duration_s is not None) else w.duration_s,
            )
            for w in workloads
        ]
        end_time = start + (end_time - start) / factor
        notes.append(f"inter-arrival times divided by {factor:g}" + (" and run times too" if shape.compress_durations else ""))
    if not (math.isfinite(end_time) and end_time <= MAX_TRACE_SECONDS):
        raise TraceError(f"the replay would last {show_number(end_time)} seconds, more than {MAX_TRACE_SECONDS:.0f}")
    if shape.node_count is not None:
        notes.append(f"replayed on {len(nodes)} of {len(trace.nodes)} nodes (product-stratified subset)")
    if shape.resample != 1:
        notes.append(f"resampled x{shape.resample:g} (seed {shape.seed}): {len(workloads)} workloads")
    return replace(trace, nodes=tuple(nodes), workloads=_sorted(workloads), end_time=end_time, notes=tuple(notes))


def subset_nodes(nodes: Sequence[GpuNode], count: int) -> tuple[GpuNode, ...]:
    """``count`` nodes spread evenly over the list sorted by (product, GPUs, name): keeps the mix."""
    if count < 1:
        raise TraceError(f"--nodes must be at least 1, got {count}")
    ordered = sorted(nodes, key=lambda node: (node.product, node.allocatable, node.name))
    if count >= len(ordered):
        return tuple(ordered)
    picked = [ordered[(index * len(ordered)) // count] for index in range(count)]
    return tuple(sorted(picked, key=lambda node: node.name))


def resample_workloads(workloads: Sequence[TraceWorkload], factor: float, seed: int) -> list[TraceWorkload]:
    """The originals plus extra copies up to ``factor`` times as many (the FGD paper's "inflation").

    Each copy takes the shape (size, class, run time) of one workload drawn at random and the
    submit time of another, so the arrival pattern over the day is kept. Seeded: same input,
    same output.
    """
    originals = list(workloads)
    extra = round(len(originals) * factor) - len(originals)
    if extra <= 0 or not originals:
        return originals
    rng = random.Random(seed)
    copies = []
    for index in range(extra):
        template = originals[rng.randrange(len(originals))]
        submit = originals[rng.randrange(len(originals))].submit_time
        copies.append(replace(template, name=f"{template.name}-x{index}", submit_time=submit))
    return originals + copies


# --------------------------------------------------------------------------- helpers


def _sorted(workloads: Iterable[TraceWorkload]) -> tuple[TraceWorkload, ...]:
    return tuple(sorted(workloads, key=lambda w: (w.submit_time, w.namespace, w.name)))


def _rows(path: Path, key: str) -> Iterable[tuple[int, Mapping[str, Any]]]:
    """(line or index, row) from a CSV file, or a JSON list of objects, or ``{key: [...]}``."""
    if path.suffix.lower() == ".json":
        try:
            data = load_json(read_text(str(path)), str(path))
        except InputError as error:
            raise TraceError(str(error)) from None
        if isinstance(data, Mapping):
            data = data.get(key)
        if not isinstance(data, list):
            raise TraceError(f'{path}: expected a JSON list of objects, or {{"{key}": [...]}}')
        for index, item in enumerate(data):
            if not isinstance(item, Mapping):
                raise TraceError(f"{path}: item {index} is not an object")
            yield index, item
        return
    yield from _csv_rows(path)


def _csv_rows(path: Path, required: Sequence[str] = ()) -> Iterable[tuple[int, Mapping[str, Any]]]:
    """(line, row) of a UTF-8 CSV file with a header; ``required`` columns must be in the header."""
    try:
        text = read_text(str(path))
    except InputError as error:
        raise TraceError(str(error)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    line = 1
    try:
        if reader.fieldnames is None:
            raise TraceError(f"{path}: is empty (a CSV file with a header row is expected)")
        missing = [column for column in required if column not in reader.fieldnames]
        if missing:
            raise TraceError(
                f"{path}: lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(it has {', '.join(_preview(name) for name in reader.fieldnames[:20])})"
            )
        for row in reader:
            line = reader.line_num
            yield line, row
    except csv.Error as error:
        raise TraceError(f"{path}: line {line + 1}: not a valid CSV: {error}") from None


def _float(row: Mapping[str, Any], column: str, path: Path, line: int, default: Any = ...) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is ...:
            raise TraceError(f"{path}:{line}: column {column!r} is missing")
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{line}: column {column!r} must be a number, got {_preview(value)}") from None
    except OverflowError:  # a JSON integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise TraceError(f"{path}:{line}: column {column!r} must be finite, got {_preview(value)}")
    return number


def _int(row: Mapping[str, Any], column: str, path: Path, line: int, default: Any = ...) -> Any:
    number = _float(row, column, path, line, default=default)
    if number is default and default is not ...:
        return default
    if not float(number).is_integer():
        raise TraceError(f"{path}:{line}: column {column!r} must be a whole number, got {_preview(row.get(column))}")
    return int(number)


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
