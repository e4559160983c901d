"""GPUQuota as the peers' real counterparts model it, for ``gpuadmit simulate --quotas``.

The peers are price-blind and, here, product-blind about quotas: a tenant's guarantee is the sum of
its ``guaranteed`` GPUs (every product and "*"), its usage the GPUs its running work holds. What
each peer does with it, after its real counterpart:

- ``fifo`` (Kueue ClusterQueues in one cohort, ``nominalQuota`` = the guarantee, BestEffortFIFO):
  work that fits in its queue's nominal quota is admitted before work that borrows (Kueue's
  scheduler orders heads "not borrowing" first), arrival order inside each; idle quota is lent to
  anyone; no reclaim (Kueue's default ``reclaimWithinCohort: Never``); ``maxGPUs`` is the
  ``borrowingLimit``'s effect, a cap.
- ``priority``, ``binpack`` (KAI-Scheduler queues, Volcano's proportion plugin: deserved quota):
  the same order, and a workload within its deserved quota that does not fit reclaims from
  borrowers -- preemptible running work of tenants over their deserved quota, or of none -- and
  work within its own deserved quota is never preempted, also not by inference.

Everything here is a pure function of the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpuadmit.core.model import ANY_PRODUCT, Quota, Snapshot, Workload


def _quota_of(snapshot: Snapshot, workload: Workload) -> Quota | None:
    return snapshot.quotas.get(snapshot.quota_of_namespace.get(workload.namespace, ""))


def _deserved(quota: Quota) -> int:
    return sum(gpus for product, gpus in quota.guaranteed.items() if product != ANY_PRODUCT) + quota.guaranteed.get(ANY_PRODUCT, 0)


def usage(snapshot: Snapshot) -> tuple[dict[str, int], set[str]]:
    """GPUs each quota's tenant holds, and the running work within its deserved quota (the
    oldest admissions first)."""
    used: dict[str, int] = {name: 0 for name in snapshot.quotas}
    protected: set[str] = set()
    for workload in sorted(snapshot.holding, key=lambda w: (w.admitted_at or 0.0, w.key)):
        quota = _quota_of(snapshot, workload)
        if quota is None:
            continue
        gpus = sum(entry.gpus for entry in workload.placement)
        if used[quota.name] + gpus <= _deserved(quota):
            protected.add(workload.key)
        used[quota.name] += gpus
    return used, protected


def within_quota(snapshot: Snapshot, in_rank_order: Iterable[Workload], used: Mapping[str, int]) -> set[str]:
    """Pending work that fits its tenant's deserved quota, counted in the peer's own order."""
    running = dict(used)
    within: set[str] = set()
    for workload in in_rank_order:
        quota = _quota_of(snapshot, workload)
        if quota is not None and running[quota.name] + workload.total_gpus <= _deserved(quota):
            within.add(workload.key)
            running[quota.name] += workload.total_gpus
    return within


def over_cap(snapshot: Snapshot, workload: Workload, used: Mapping[str, int]) -> bool:
    """Whether admitting ``workload`` takes its tenant past ``maxGPUs``."""
    quota = _quota_of(snapshot, workload)
    return quota is not None and quota.max_gpus is not None and used[quota.name] + workload.total_gpus > quota.max_gpus


def charge(snapshot: Snapshot, workload: Workload, used: dict[str, int], sign: int = 1) -> None:
    quota = _quota_of(snapshot, workload)
    if quota is not None:
        used[quota.name] += sign * workload.total_gpus
