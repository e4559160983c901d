"""The default scenario: the shared Alibaba trace shaped so that queueing matters.

At real speed the trace keeps at most 70 of its 6,212 GPUs busy, so every policy admits
everything at once and they all earn the same. The default replays it faster on a
product-stratified subset of the nodes, under a MarginPolicy that prices the trace's GPU
models (docs/simulate.md gives the measured figures and why these values).
"""

from __future__ import annotations

from typing import Any

from gpuadmit.sim.trace import LoadShape

DEFAULT_SHAPE = LoadShape(time_compression=16.0, compress_durations=False, node_count=40, resample=1.0, seed=0)

# The trace's GPU models keep their names as products; costs per GPU-hour are rough public
# cloud rates for the same cards, the undisclosed G2/G3 at the default.
DEFAULT_POLICY_OBJECT: dict[str, Any] = {
    "apiVersion": "gpuadmit.io/v1alpha1",
    "kind": "MarginPolicy",
    "metadata": {"name": "default"},
    "spec": {
        "gpuCostPerHour": {
            "T4": 0.35,
            "P100": 1.46,
            "V100M16": 2.48,
            "V100M32": 2.48,
            "A10": 0.75,
            "default": 1.20,
        },
        "pricePerGPUHour": {"inference": 6.00, "training": 2.00},
        "minMarginPerGPUHour": 0.0,
        "inferenceReserveFraction": 0.0,
        "preemption": {"enabled": True, "minRuntimeSeconds": 60, "minMarginGainPerGPUHour": 0.5},
        "agingPerHour": 0.0,
        "defaultMaxQueueSeconds": 14400,
    },
}
