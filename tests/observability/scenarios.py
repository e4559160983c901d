"""A hand-built cycle with one decision of each kind, for tests that need known numbers."""

from __future__ import annotations

from gpuadmit.core.model import (
    Action,
    CycleResult,
    Decision,
    GpuNode,
    InvalidWorkload,
    PlacementEntry,
    Policy,
    Preemption,
    Reason,
    Snapshot,
    Workload,
)

NOW = 1_800_000_000.0
A100 = "NVIDIA-A100-SXM4-80GB"
POLICY = Policy(
    gpu_cost_per_hour={A100: 2.0, "H100": 4.0, "default": 1.0},
    price_per_gpu_hour={"inference": 6.0, "training": 3.0},
)
INFERENCE_MARGIN_ON_A100 = 6.0 - 2.0
TRAINING_MARGIN_ON_A100 = 3.0 - 2.0


def workload(key: str, cls: str, gpus: int, replicas: int = 1, **extra: object) -> Workload:
    namespace, name = key.split("/")
    fields: dict[str, object] = {"created_at": NOW - 3600, "queued_since": NOW - 3600, **extra}
    return Workload(namespace=namespace, name=name, gpus_per_replica=gpus, replicas=replicas,
                    workload_class=cls, **fields)  # type: ignore[arg-type]


def decision(key: str, action: Action, reason: Reason, cls: str | None, **extra: object) -> Decision:
    namespace, name = key.split("/")
    return Decision(namespace=namespace, name=name, action=action, reason=reason, message=f"{action.value} {key}",
                    workload_class=cls, **extra)  # type: ignore[arg-type]


def cluster_after_a_busy_cycle() -> tuple[Snapshot, CycleResult]:
    """Two A100 nodes, a cordoned H100 node, an unlabelled node; one of each kind of decision.

    prod/new-serve preempts research/old-train on a2 and is admitted there.
    """
    serving = workload("prod/serve", "inference", 3, phase="Running",
                       placement=(PlacementEntry("a1", 3),), admitted_at=NOW - 600)
    old_training = workload("research/old-train", "training", 2, replicas=2, phase="Admitted",
                            placement=(PlacementEntry("a2", 4, replicas=2),), admitted_at=NOW - 1800)
    snapshot = Snapshot(
        nodes=(
            GpuNode("a1", 8, A100, gpus_used_by_pods=5),  # 3 for prod/serve, 2 for someone else's pod
            GpuNode("a2", 8, A100, gpus_used_by_pods=4),  # research/old-train's pods
            GpuNode("h1", 4, "H100", schedulable=False, unschedulable_reason="cordoned"),
            GpuNode("plain", 2, ""),
        ),
        holding=(serving, old_training),
        pending=(
            workload("prod/new-serve", "inference", 4),
            workload("research/train-big", "training", 8, queued_since=NOW - 7200),
            workload("research/train-small", "training", 2, queued_since=NOW - 100),
            workload("lab/cheap", "training", 1),
            workload("lab/too-long", "training", 1, replicas=2),
        ),
        policy=POLICY,
        now=NOW,
        invalid=(InvalidWorkload("lab", "broken", "spec.gpus", "must be a positive integer"),),
        gpus_of_own_pods={("prod/serve", "a1"): 3, ("research/old-train", "a2"): 4},
    )
    result = CycleResult(
        decisions=(
            decision("prod/new-serve", Action.ADMIT, Reason.ADMITTED, "inference",
                     placement=(PlacementEntry("a2", 4),), margin_per_gpu_hour=INFERENCE_MARGIN_ON_A100),
            decision("research/train-big", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, "training",
                     margin_per_gpu_hour=TRAINING_MARGIN_ON_A100, queue_position=1),
            decision("research/train-small", Action.QUEUE, Reason.INFERENCE_RESERVE, "training",
                     margin_per_gpu_hour=TRAINING_MARGIN_ON_A100, queue_position=2),
            decision("lab/cheap", Action.REJECT, Reason.MARGIN_BELOW_FLOOR, "training", margin_per_gpu_hour=-0.5),
            decision("lab/too-long", Action.REJECT, Reason.QUEUE_TIMEOUT, "training",
                     margin_per_gpu_hour=TRAINING_MARGIN_ON_A100),
            decision("lab/broken", Action.REJECT, Reason.INVALID_SPEC, None, field="spec.gpus"),
        ),
        preemptions=(Preemption("research", "old-train", preempted_by="prod/new-serve",
                                freed=(PlacementEntry("a2", 4, replicas=2),)),),
    )
    return snapshot, result
