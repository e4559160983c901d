"""`make bench` part: what the operator's native-workload passes (controller.native) add to a cycle.

A cache of N GPUWorkloads and N running GPU pods spread over 100 namespaces, first with no
namespace labelled ``gpuadmit.io/managed`` (every cluster that does not use native workloads pays
this), then with every one labelled (every pod a native pod running unmanaged: the most those
passes read). Printed: the milliseconds of ``prepare`` (before the snapshot) and ``reconcile``
(after the decisions) per cycle, the median of ``--cycles`` cycles after a first one. No API call
is made: nothing is held, so nothing is written.

    python -m benchmarks.native --objects 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from gpuadmit.controller.cache import NAMESPACE, POD, WORKLOAD, ObjectCache
from gpuadmit.controller.native import NativeWorkloads

NAMESPACES = 100


class _QuietWriter:
    """Stands in for the writer: the unmanaged pods' one Warning each is queued, not sent."""

    def explain_later(self, *_: Any, **__: Any) -> None:
        return None


def cache_of(objects: int, managed: bool) -> ObjectCache:
    cache = ObjectCache()
    labels = {"gpuadmit.io/managed": "true"} if managed else {}
    for index in range(NAMESPACES):
        cache.put(NAMESPACE, {"metadata": {"name": f"ns{index}", "labels": labels}})
    for index in range(objects):
        namespace = f"ns{index % NAMESPACES}"
        cache.put(WORKLOAD, {"metadata": {"name": f"w{index}", "namespace": namespace, "uid": f"w{index}",
                                          "resourceVersion": "1"}, "spec": {"gpus": 1}})
        cache.put(POD, {"metadata": {"name": f"p{index}", "namespace": namespace, "uid": f"p{index}",
                                     "resourceVersion": "1"},
                        "spec": {"nodeName": f"n{index % 1000}", "containers": [
                            {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                        "status": {"phase": "Running"}})
    return cache


async def measure(objects: int, managed: bool, cycles: int) -> tuple[float, float]:
    native = NativeWorkloads(cache_of(objects, managed), _QuietWriter())  # type: ignore[arg-type]
    await native.prepare(0.0)
    await native.reconcile(0.0)  # the first cycle reads every pod once
    prepare_ms, reconcile_ms = [], []
    for _ in range(cycles):
        started = time.perf_counter()
        await native.prepare(0.0)
        middle = time.perf_counter()
        await native.reconcile(0.0)
        prepare_ms.append((middle - started) * 1000)
        reconcile_ms.append((time.perf_counter() - middle) * 1000)
    return statistics.median(prepare_ms), statistics.median(reconcile_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.native", description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10_000, help="GPUWorkloads, and as many GPU pods")
    parser.add_argument("--cycles", type=int, default=9)
    args = parser.parse_args(argv if argv is not None else [])
    print(f"{args.objects} GPUWorkloads and {args.objects} GPU pods in {NAMESPACES} namespaces; "
          f"median of {args.cycles} cycles")
    for managed in (False, True):
        prepare_ms, reconcile_ms = asyncio.run(measure(args.objects, managed, args.cycles))
        print(f"  namespaces managed: {'all ' if managed else 'none'}  prepare {prepare_ms:7.1f} ms  "
              f"reconcile {reconcile_ms:7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
