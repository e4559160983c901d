"""One active replica at a time: the scheduling loop follows kopf's peering verdict.

kopf's peering pauses the watches of every replica but the one with the highest
priority, but our scheduling loop is our own task: kopf cannot pause it. So
before each cycle the loop reads the same peering object kopf keeps alive
(``ClusterKopfPeering/NAME``, or ``KopfPeering/NAME`` in the first watched
namespace) and runs only if no other live peer has an equal or higher priority,
the same rule kopf applies. Each replica gets a random priority at start, so two
replicas never tie (kopf pauses both on a tie).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller.api import ApiError, KubeApi
from gpuadmit.core.timefmt import parse_rfc3339_or_none

logger = logging.getLogger(__name__)

STANDBY_RECHECK_S = 10.0


def random_priority() -> int:
    return random.randint(1, 1_000_000)


def we_lead(peering_status: Mapping[str, Any], identity: str, priority: int, now: datetime) -> bool:
    """True when no other live peer in the peering object's status has a priority >= ours."""
    for peer_id, peer in (peering_status or {}).items():
        if peer_id == identity or not isinstance(peer, Mapping):
            continue
        lastseen = parse_rfc3339_or_none(peer.get("lastseen"))  # kopf writes it without a zone: UTC
        lifetime = peer.get("lifetime", 60)
        if lastseen is None or not isinstance(lifetime, (int, float)):
            continue
        if lastseen + float(lifetime) < now.timestamp():
            continue  # dead peer: kopf ignores it too
        if int(peer.get("priority", 0)) >= priority:
            return False
    return True


class PeeringGate:
    """Reads the peering object before each cycle. Two replicas started together would each
    see only itself for a moment, so a replica decides only once kopf has announced it there
    and ``settle_seconds`` have passed since: long enough for every peer to have announced itself."""

    def __init__(self, api: KubeApi, name: str, identity: str, priority: int, namespace: str | None = None,
                 settle_seconds: float = 5.0) -> None:
        self.api = api
        self.name = name
        self.identity = identity
        self.priority = priority
        self.namespace = namespace
        self.settle_seconds = settle_seconds
        self._announced_at: float | None = None
        self._was_active: bool | None = None

    async def is_active(self) -> bool:
        resource = kube.NAMESPACED_PEERINGS if self.namespace else kube.CLUSTER_PEERINGS
        try:
            peering = await self.api.get(resource, self.name, self.namespace)
        except ApiError as error:
            self._log(False, f"peering object {self.name} unreadable ({error.status}); kopf pauses too")
            return False
        peers = peering.get("status") or {}
        if self.identity not in peers:
            self._log(False, "kopf has not announced this replica yet")
            self._check_again_in(1.0)
            return False
        if self._announced_at is None:
            self._announced_at = time.monotonic()
        if time.monotonic() - self._announced_at < self.settle_seconds:
            self._log(False, "waiting for other replicas to announce themselves")
            self._check_again_in(self.settle_seconds)
            return False
        active = we_lead(peers, self.identity, self.priority, datetime.now(UTC))
        self._log(active, "another replica leads" if not active else "this replica leads")
        if not active:
            self._check_again_in(STANDBY_RECHECK_S)  # take over soon after the leader's lifetime ends
        return active

    def _check_again_in(self, delay: float) -> None:
        if self.on_settled is not None:
            asyncio.get_running_loop().call_later(delay, self.on_settled)

    on_settled: Callable[[], None] | None = None  # the loop's trigger: check again later

    def _log(self, active: bool, why: str) -> None:
        if active != self._was_active:
            logger.info("Peering %s: %s (%s)", self.name, "active" if active else "standby", why)
            self._was_active = active
