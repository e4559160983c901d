"""The plain-data vocabulary shared by the whole of gpuadmit.

Everything in ``gpuadmit.core`` speaks in these types: frozen dataclasses built
from Kubernetes objects (plain dicts) by the parsers, consumed by the engine,
and turned back into plain dicts by the edge. Nothing here does I/O or imports
kopf, the kubernetes client, aiohttp or prometheus-client.

Times are seconds since the Unix epoch (floats), so the engine never asks the
clock: the caller passes ``now`` in the snapshot, which keeps decisions
reproducible.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

API_GROUP = "gpuadmit.io"
API_VERSION = "v1alpha1"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
TIER_LABEL = "gpuadmit.io/tier"
CLASS_LABEL = "gpuadmit.io/class"
WORKLOAD_LABEL = "gpuadmit.io/workload"
REPLICA_LABEL = "gpuadmit.io/replica"
DEFAULT_POLICY_NAME = "default"

WorkloadClass = Literal["training", "inference"]
CLASSES: tuple[WorkloadClass, ...] = ("inference", "training")


class Phase(str, enum.Enum):
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PREEMPTED = "Preempted"
    REJECTED = "Rejected"


# Phases whose workload waits for a decision, and phases whose workload holds GPUs.
PENDING_PHASES = frozenset({None, "", Phase.QUEUED.value, Phase.PREEMPTED.value})
HOLDING_PHASES = frozenset({Phase.ADMITTED.value, Phase.RUNNING.value})


class Action(str, enum.Enum):
    ADMIT = "admit"
    QUEUE = "queue"
    REJECT = "reject"


class Reason(str, enum.Enum):
    """Machine reasons: the same strings appear in status, Events and metric labels."""

    ADMITTED = "Admitted"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    INFERENCE_RESERVE = "InferenceReserve"
    NO_NODE_CAN_FIT = "NoNodeCanFit"
    MARGIN_BELOW_FLOOR = "MarginBelowFloor"
    QUEUE_TIMEOUT = "QueueTimeout"
    QUEUE_FULL = "QueueFull"
    INVALID_SPEC = "InvalidSpec"
    PREEMPTED_BY_HIGHER_MARGIN = "PreemptedByHigherMargin"
    # GPUQuota (core/quota.py, core/guarantee.py)
    GUARANTEE_RESERVED = "GuaranteeReserved"
    OVER_QUOTA = "OverQuota"
    EXCEEDS_QUOTA = "ExceedsQuota"
    RECLAIMED_BY_GUARANTEE = "ReclaimedByGuarantee"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"  # Equal | Exists
    value: str | None = None
    effect: str | None = None  # None tolerates every effect


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str | None
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute


Resources = tuple[tuple[str, int], ...]  # (resource, amount) sorted by resource; CPU in millicores


@dataclass(frozen=True, slots=True)
class NodeSelectorRequirement:
    """One ``matchExpressions`` (on a label) or ``matchFields`` (on ``metadata.name``) entry."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist | Gt | Lt
    values: tuple[str, ...] = ()
    field: bool = False  # a matchFields entry: key is "metadata.name"


@dataclass(frozen=True, slots=True)
class NodeConstraints:
    """Where a template's pods may run besides taints: ``nodeSelector`` (every pair must match) and
    the required node affinity's ``nodeSelectorTerms`` (one term must match; a term matches when all
    its requirements do). ``terms`` None means no required affinity."""

    selector: tuple[tuple[str, str], ...] = ()
    terms: tuple[tuple[NodeSelectorRequirement, ...], ...] | None = None

    def __bool__(self) -> bool:
        return bool(self.selector) or self.terms is not None


@dataclass(frozen=True, slots=True)
class GpuNode:
    """One node as the engine sees it.

    ``gpus_used_by_pods`` counts GPUs requested by every non-terminal pod bound
    to the node, ours included; ``Inventory`` subtracts reservations on top.
    """

    name: str
    allocatable: int
    product: str = ""  # value of nvidia.com/gpu.product; "" when unlabelled
    memory_mib: int = 0  # value of nvidia.com/gpu.memory; 0 when unknown
    schedulable: bool = True  # Ready and not cordoned
    taints: tuple[Taint, ...] = ()
    gpus_used_by_pods: int = 0
    unschedulable_reason: str = ""  # why schedulable is False, for messages
    # Beyond GPUs (left out of ==, which stays about the GPU view; the inventory compares them itself):
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # sorted; what node selectors match
    resources: Resources = field(default=(), compare=False)  # status.allocatable of every resource but GPUs
    resources_used_by_pods: Resources = field(default=(), compare=False)  # requested by non-terminal pods on it


@dataclass(frozen=True, slots=True)
class PlacementEntry:
    node: str
    gpus: int  # total GPUs of this workload on the node (replicas x gpus per replica)
    replicas: int = 1
    # Every other resource this entry holds (replicas x per-replica requests): bookkeeping for the
    # ledger, not part of what status.placement records or compares.
    resources: Resources = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Workload:
    """A GPUWorkload after parsing and classification.

    ``preemptible`` and ``max_queue_seconds`` are already resolved (class and
    policy defaults applied) by the parser, so the engine never guesses.
    """

    namespace: str
    name: str
    gpus_per_replica: int
    replicas: int
    workload_class: WorkloadClass
    class_reason: str = ""
    uid: str = ""
    gpu_products: tuple[str, ...] = ()  # empty: any product
    min_gpu_memory_mib: int = 0
    preemptible: bool = True
    max_queue_seconds: float | None = None
    tier: str | None = None  # namespace label gpuadmit.io/tier
    tolerations: tuple[Toleration, ...] = ()
    created_at: float = 0.0
    queued_since: float = 0.0  # creation, or the last preemption: what aging and timeouts count from
    phase: str | None = None
    placement: tuple[PlacementEntry, ...] = ()  # for Admitted/Running workloads
    # Why status.placement does not account for its replicas (core.placement); None when it does.
    placement_problem: str | None = None
    admitted_at: float | None = None
    preemptions: int = 0
    # status.marginPerGPUHour as written at admission: what held work earns, even if the policy changed since.
    margin_per_gpu_hour: float | None = None
    # Per replica, every resource but GPUs (core.nodes.pod_requests of the template), and where its
    # pods may run (nodeSelector, required node affinity) besides taints.
    requests: Resources = ()
    node_constraints: NodeConstraints = field(default_factory=NodeConstraints)
    avoided_nodes: frozenset[str] = frozenset()  # nodes its pods were Unschedulable on, lately
    # "namespace/name", kept: every cycle looks workloads up by it many times over.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_replica * self.replicas


@dataclass(frozen=True, slots=True)
class InvalidWorkload:
    """A GPUWorkload object that could not be parsed: it gets an InvalidSpec rejection."""

    namespace: str
    name: str
    field: str  # e.g. "spec.gpus"
    message: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PreemptionRules:
    enabled: bool = True
    min_runtime_seconds: float = 600.0
    min_margin_gain_per_gpu_hour: float = 0.5


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed MarginPolicy. Prices come from here, never from a workload."""

    gpu_cost_per_hour: Mapping[str, float] = field(default_factory=lambda: {"default": 0.0})
    price_per_gpu_hour: Mapping[str, float] = field(
        default_factory=lambda: {"inference": 0.0, "training": 0.0}
    )
    tier_multipliers: Mapping[str, float] = field(default_factory=dict)
    min_margin_per_gpu_hour: float = 0.0
    inference_reserve_fraction: float = 0.0
    preemption: PreemptionRules = field(default_factory=PreemptionRules)
    aging_per_hour: float = 0.0
    default_max_queue_seconds: float = 86400.0
    max_queued_per_namespace: int | None = None  # past it: QueueFull
    name: str = DEFAULT_POLICY_NAME

    def cost_of(self, product: str) -> float:
        if product in self.gpu_cost_per_hour:
            return self.gpu_cost_per_hour[product]
        return self.gpu_cost_per_hour.get("default", 0.0)

    def price_of(self, workload_class: str, tier: str | None) -> float:
        multiplier = self.tier_multipliers.get(tier, 1.0) if tier else 1.0
        return self.price_per_gpu_hour.get(workload_class, 0.0) * multiplier

    def margin_per_gpu_hour(self, workload_class: str, tier: str | None, product: str) -> float:
        return self.price_of(workload_class, tier) - self.cost_of(product)


ANY_PRODUCT = "*"  # a GPUQuota guarantee of GPUs of any product


@dataclass(frozen=True, slots=True)
class Quota:
    """A parsed GPUQuota: what its tenant (the namespaces it covers) is guaranteed and capped at."""

    name: str
    guaranteed: Mapping[str, int] = field(default_factory=dict)  # product (or ANY_PRODUCT) -> GPUs
    max_gpus: int | None = None
    lend_idle: bool = True
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the engine needs for one cycle, and nothing else."""

    nodes: tuple[GpuNode, ...]
    holding: tuple[Workload, ...]  # Admitted or Running: their placement holds GPUs
    pending: tuple[Workload, ...]  # no phase, Queued or Preempted
    policy: Policy
    now: float
    invalid: tuple[InvalidWorkload, ...] = ()
    # GPUs that our own pods already request, by (workload key, node): the part of a
    # reservation that gpus_used_by_pods already counts, so it is not subtracted twice.
    gpus_of_own_pods: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # GPUQuotas in force, by name, and the quota each covered namespace belongs to. Empty: no tenants.
    quotas: Mapping[str, Quota] = field(default_factory=dict)
    quota_of_namespace: Mapping[str, str] = field(default_factory=dict)
    # The same for every other resource: (workload key, node) -> what its own pods request there.
    resources_of_own_pods: Mapping[tuple[str, str], Resources] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    namespace: str
    name: str
    action: Action
    reason: Reason
    message: str
    workload_class: WorkloadClass | None = None
    class_reason: str = ""
    placement: tuple[PlacementEntry, ...] = ()
    margin_per_gpu_hour: float | None = None
    queue_position: int | None = None
    field: str | None = None  # for InvalidSpec: the offending field

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def about(cls, workload: Workload, action: Action, reason: Reason, message: str, **details: object) -> Decision:
        """A decision on ``workload``, carrying its class and the reason for it."""
        return cls(
            namespace=workload.namespace,
            name=workload.name,
            action=action,
            reason=reason,
            message=message,
            workload_class=workload.workload_class,
            class_reason=workload.class_reason,
            **details,  # type: ignore[arg-type]
        )

    @classmethod
    def invalid(cls, item: InvalidWorkload) -> Decision:
        """The InvalidSpec rejection of an object that could not be parsed, naming its field."""
        return cls(
            namespace=item.namespace,
            name=item.name,
            action=Action.REJECT,
            reason=Reason.INVALID_SPEC,
            message=item.message or f"{item.field} is not valid",
            field=item.field,
        )


@dataclass(frozen=True, slots=True)
class Preemption:
    namespace: str
    name: str
    preempted_by: str  # "namespace/name" of the preemptor
    reason: Reason = Reason.PREEMPTED_BY_HIGHER_MARGIN
    message: str = ""
    freed: tuple[PlacementEntry, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one engine cycle decided: exactly one decision per pending or invalid workload."""

    decisions: tuple[Decision, ...]
    preemptions: tuple[Preemption, ...] = ()
