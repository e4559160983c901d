"""The running operator's parts, assembled once at start-up and taken apart at exit.

``OperatorRuntime`` owns the API client, the cache, the watch streams, the writer,
the scheduling loop task, the health server and (when available) the metrics
server. kopf's start-up handler calls ``start()``; the loop starts only after
every stream has listed its kind, so the first cycle never decides on half a
picture.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from gpuadmit.controller import restore
from gpuadmit.controller.api import KubeApi, Resource, resolve_credentials
from gpuadmit.controller.cache import NAMESPACE, NODE, ObjectCache
from gpuadmit.controller.heap import HeapKeeper
from gpuadmit.controller.loop import LoopSettings, MetricsSink, SchedulingLoop
from gpuadmit.controller.peering import PeeringGate
from gpuadmit.controller.queueview import DEFAULT_EXACT_HEAD, NOT_DECIDED
from gpuadmit.controller.watch import Stream
from gpuadmit.controller.writer import Writer
from gpuadmit.core.model import GPU_PRODUCT_LABEL
from gpuadmit.core.podsecurity import DEFAULT_LEVEL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorOptions:
    """Everything `gpuadmit run` was asked for (see main.add_arguments)."""

    metrics_port: int = 8080
    health_port: int = 8081
    webhook_port: int = 9443
    webhook_cert_dir: str | None = None
    resync_seconds: float = 600.0
    debounce_seconds: float = 0.2
    peering: str | None = None
    namespaces: tuple[str, ...] = ()
    policy_name: str = "default"
    identity: str = ""
    priority: int = 0
    max_concurrency: int = 48
    per_namespace_metrics: bool = False  # opt-in: metrics then name tenants' namespaces
    pod_security_level: str = DEFAULT_LEVEL  # the Pod Security Standards level templates are held to
    max_failed_cycles: int = 5  # whole-cycle failures in a row after which /readyz fails (0: never)
    unschedulable_seconds: float = 120.0  # a pod Unschedulable this long requeues its workload
    exact_queue_positions: int = DEFAULT_EXACT_HEAD  # queue positions written exactly; beyond, banded


class OperatorRuntime:
    def __init__(self, options: OperatorOptions) -> None:
        self.options = options
        self.cache = ObjectCache()
        self.api: KubeApi | None = None
        self.loop: SchedulingLoop | None = None
        self.writer: Writer | None = None
        self.metrics: MetricsSink | None = None
        self._metrics_server: Any = None
        self._loop_task: asyncio.Task[None] | None = None
        self.streams: list[Stream] = []
        self._stream_tasks: list[asyncio.Task[None]] = []
        self.discovered: list[tuple[str, Resource]] = []  # restore.DISCOVERED_KINDS the cluster serves, watched
        self._health_runner: web.AppRunner | None = None
        # More conditions of readiness, by name (the webhook configurations registered, say): all must hold.
        self.readiness_gates: dict[str, Callable[[], bool]] = {}
        self.heap = HeapKeeper()  # the garbage collector kept off the cache (controller.heap)

    async def start(self) -> None:
        options = self.options
        self.metrics = self._start_metrics()
        on_error = getattr(self.metrics, "observe_api_error", None)
        self.api = await KubeApi(resolve_credentials(), max_concurrency=options.max_concurrency, on_error=on_error).open()
        writer = self.writer = Writer(self.api, self.cache, instance=options.identity or socket.gethostname())
        gate = None
        if options.peering:
            namespace = options.namespaces[0] if options.namespaces else None
            gate = PeeringGate(self.api, options.peering, options.identity, options.priority, namespace)
        self.loop = SchedulingLoop(
            self.cache, writer,
            LoopSettings(options.debounce_seconds, options.resync_seconds, options.policy_name, options.namespaces,
                         options.pod_security_level, options.max_failed_cycles, options.unschedulable_seconds,
                         options.exact_queue_positions),
            metrics=self.metrics, gate=gate, resync=self.resync,
        )
        if gate is not None:
            gate.on_settled = self.loop.trigger
        await self._start_health_server()
        self.discovered = await restore.served_kinds(self.api)
        logger.info("Optional kinds served and watched: %s", ", ".join(
            f"{kind} {'yes' if (kind, resource) in self.discovered else 'no (CRD not installed)'}"
            for kind, resource in restore.DISCOVERED_KINDS))
        self._start_streams(restore.watch_scopes(options.namespaces, self.discovered))
        # Restart safety: no decision before every kind's first list is in the cache.
        await asyncio.gather(*(stream.listed.wait() for stream in self.streams))
        self.cache.seeded = True
        restore.log_seeded(self.cache)
        self.heap.install()  # the seeded cache frozen, and what survives every full collection
        self._loop_task = asyncio.create_task(self.loop.run(), name="gpuadmit scheduling loop")
        self.loop.trigger()  # the first cycle: restored state, decided once

    def _start_streams(self, scopes: list[tuple[str, Resource, str | None]]) -> None:
        assert self.api is not None and self.loop is not None
        streams = [Stream(self.api, self.cache, kind, resource, self.loop.notify, self.loop.trigger, namespace)
                   for kind, resource, namespace in scopes]
        self.streams.extend(streams)
        self._stream_tasks.extend(asyncio.create_task(stream.run(), name=f"watch {stream.name}") for stream in streams)

    async def resync(self) -> None:
        try:
            await self._relist()
        finally:
            self.heap.full_scan()  # here, where a whole cycle follows anyway (controller.heap)

    async def _relist(self) -> None:
        assert self.api is not None
        # A CRD installed since start-up (the Kubeflow training operator, KubeRay) is watched from now
        # on; one uninstalled is watched no more (its objects went with it).
        served = await restore.served_kinds(self.api, known=self.discovered)
        new = [found for found in served if found not in self.discovered]
        gone = [found for found in self.discovered if found not in served]
        if new:
            logger.info("Now served, watched from now on: %s", ", ".join(kind for kind, _ in new))
            self._start_streams(restore.watch_scopes(self.options.namespaces, new))
        if gone:
            logger.info("No longer served, not watched any more: %s", ", ".join(kind for kind, _ in gone))
            await self._stop_streams({resource for _, resource in gone})
            for kind, _ in gone:
                self.cache.replace_all(kind, [])
        self.discovered = served
        await restore.seed_cache(self.api, self.cache, self.options.namespaces, self.discovered)

    async def _stop_streams(self, resources: set[Resource]) -> None:
        stopping = [task for stream, task in zip(self.streams, self._stream_tasks, strict=True) if stream.resource in resources]
        kept = [(stream, task) for stream, task in zip(self.streams, self._stream_tasks, strict=True)
                if stream.resource not in resources]
        self.streams, self._stream_tasks = [stream for stream, _ in kept], [task for _, task in kept]
        for task in stopping:
            task.cancel()
        await asyncio.gather(*stopping, return_exceptions=True)

    async def stop(self) -> None:
        tasks = [*self._stream_tasks, *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.loop is not None:
            await self.loop.pods.close()
        if self.writer is not None:
            await self.writer.follow_ups.close()
        if self._health_runner is not None:
            await self._health_runner.cleanup()
        if self.api is not None:
            await self.api.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        self.heap.uninstall()

    def known_gpu_products(self) -> set[str]:
        """GPU products the cluster's nodes carry: for the webhook's "no node has it" warning."""
        products = set()
        for node in self.cache.all(NODE):
            product = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_PRODUCT_LABEL)
            if product:
                products.add(str(product))
        return products

    def namespace_object(self, name: str) -> dict[str, Any] | None:
        """The cached Namespace (every replica watches them): the webhook reads its pod-security rules."""
        return self.cache.get(NAMESPACE, name)

    # -- health ---------------------------------------------------------------------------

    def alive(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def ready(self) -> bool:
        """Seeded and through its first cycle (a standby replica's skipped one counts), not
        failing cycle after cycle (``--max-failed-cycles`` in a row), and every readiness gate open."""
        return (self.alive() and self.loop is not None and self.loop.attempts > 0 and self.loop.healthy()
                and all(gate() for gate in self.readiness_gates.values()))

    async def _start_health_server(self) -> None:
        if not self.options.health_port:
            return

        async def healthz(_: web.Request) -> web.Response:
            # Alive while seeding too: a slow first list must not get the pod restarted.
            ok = self.alive() or self._loop_task is None
            return web.json_response({"alive": ok}, status=200 if ok else 500)

        async def readyz(_: web.Request) -> web.Response:
            ok = self.ready()
            cycles = self.loop.cycles if self.loop else 0
            failed = self.loop.failed_cycles_in_a_row if self.loop else 0
            body = {"ready": ok, "cycles": cycles, "failed_cycles_in_a_row": failed, "cached": self.cache.counts(),
                    "streams_events": sum(s.events_seen for s in self.streams),
                    **{name: gate() for name, gate in self.readiness_gates.items()}}
            return web.json_response(body, status=200 if ok else 503)

        async def queue(request: web.Request) -> web.Response:
            # The exact queue as the last cycle decided it (statuses band positions past the head).
            view = self.loop.queue_view if self.loop is not None else None
            if view is None:
                return web.json_response(NOT_DECIDED, status=503)
            status, body = view.answer(request.query)
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/queue", queue)
        self._health_runner = web.AppRunner(app, access_log=None)
        await self._health_runner.setup()
        await web.TCPSite(self._health_runner, "0.0.0.0", self.options.health_port).start()

    def _namespace_names(self) -> set[str] | None:
        """The namespaces in the cache; None (unknown) before the first list or when none is seen."""
        names = {(obj.get("metadata") or {}).get("name") for obj in self.cache.all(NAMESPACE)}
        names.discard(None)
        return names if self.cache.seeded and names else None  # type: ignore[return-value]

    def _start_metrics(self) -> MetricsSink | None:
        try:
            from gpuadmit.metrics import Metrics, start_metrics_server
        except ImportError:
            logger.warning("gpuadmit.metrics is not available: running without metrics")
            return None
        metrics = Metrics(per_namespace=self.options.per_namespace_metrics, existing_namespaces=self._namespace_names)
        if self.options.metrics_port:
            try:
                self._metrics_server = start_metrics_server(metrics, self.options.metrics_port)
            except OSError as error:
                raise kopf.PermanentError(f"cannot serve metrics on port {self.options.metrics_port}: {error}") from error
        return metrics
