"""``EmulatedApiServer``: the handler on a real TCP port, in the caller's loop or its own thread.

Two ways to run it in tests:

- ``async with EmulatedApiServer() as url:`` serves from the running loop; call it with async
  clients (aiohttp, kopf) only — a synchronous client would block the loop that serves it.
- ``with EmulatedApiServer() as url:`` serves from a background thread with its own loop; any
  client (the official ``kubernetes`` package, kubectl, a subprocess) can call it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import yaml

from kubeapi_emulator.audit import AuditLog
from kubeapi_emulator.faults import FaultPlan
from kubeapi_emulator.handler import KubernetesApiEmulator
from kubeapi_emulator.resources import load_crd_files
from kubeapi_emulator.scheduler import SchedulerStandIn
from kubeapi_emulator.store import DEFAULT_HISTORY_LIMIT


def write_kubeconfig(url: str, path: str | os.PathLike[str], *, namespace: str = "default") -> Path:
    """Write a kubeconfig whose current context points at ``url`` (plain HTTP, no credentials).

    Written atomically (temp file, then rename) so a process polling for it never reads half.
    """
    path = Path(path)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "gpuadmit-emulator", "cluster": {"server": url}}],
        "users": [{"name": "gpuadmit-emulator", "user": {}}],
        "contexts": [{"name": "gpuadmit-emulator", "context": {
            "cluster": "gpuadmit-emulator", "user": "gpuadmit-emulator", "namespace": namespace}}],
        "current-context": "gpuadmit-emulator",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        yaml.safe_dump(config, tmp, sort_keys=False)
    os.replace(tmp.name, path)
    return path


class EmulatedApiServer:
    """An emulated Kubernetes API server on ``http://HOST:PORT`` (port 0 picks a free one).

    ``crds`` are CRD YAML files or directories of them, served from the start. ``handler`` is
    the kmock handler: its ``store`` holds the objects, its ``faults`` is the ``FaultPlan``,
    and kmock's DSL works on it (``server.handler['patch'] << 500``). With ``audit=True``,
    ``audit_records`` lists every request as RBAC sees it (verb, group, resource, subresource,
    namespace; see ``kubeapi_emulator.audit``); ``audit_log`` also writes them as JSON lines.
    ``scheduler`` (on by default) runs a kube-scheduler stand-in that binds pending pods
    (``kubeapi_emulator.scheduler``); with ``scheduler=False`` pods stay unbound until a
    client binds them (``POST pods/{name}/binding``), as when a test plays the scheduler.
    Admission webhooks registered through the API are called (``kubeapi_emulator.admission``);
    ``webhook_services`` maps a webhook's ``clientConfig.service`` (``"namespace/name"``) to the
    ``"host:port"`` that serves it, since the emulator has no cluster network.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 crds: Iterable[str | os.PathLike[str]] = (),
                 crd_objects: Iterable[Mapping[str, Any]] = (),
                 require_namespaces: bool = False,
                 history_limit: int = DEFAULT_HISTORY_LIMIT,
                 bookmark_interval: float = 5.0,
                 faults: FaultPlan | None = None,
                 audit: bool = False,
                 audit_log: str | os.PathLike[str] | None = None,
                 scheduler: bool = True,
                 webhook_services: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        # The audit: records in memory with ``audit=True``, JSON lines in ``audit_log`` (or both).
        self.audit = AuditLog(audit_log, keep=audit) if audit or audit_log is not None else None
        self.handler = KubernetesApiEmulator(
            require_namespaces=require_namespaces, history_limit=history_limit,
            bookmark_interval=bookmark_interval, faults=faults or FaultPlan(), audit=self.audit,
            webhook_services=dict(webhook_services or {}))
        for crd in [*load_crd_files(Path(p) for p in crds), *crd_objects]:
            self.handler.install_crd(crd)
        self.scheduler = SchedulerStandIn(self.handler.store, self.handler.spec_for) if scheduler else None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def faults(self) -> FaultPlan:
        return self.handler.faults

    @property
    def audit_records(self) -> list[dict[str, Any]]:
        """The requests recorded so far (empty unless started with ``audit=True``)."""
        return list(self.audit.records) if self.audit is not None else []

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the emulated API server is not running")
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> Path:
        return write_kubeconfig(self.url, path)

    async def start(self) -> str:
        """Start serving from the running event loop; return the base URL."""
        await self.handler.__aenter__()
        server = aiohttp.web.Server(self.handler)
        self._runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        if self.scheduler is not None:
            self.scheduler.start()
        return self.url

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        self.handler.store.close_all_watches()  # open watches would hold the shutdown otherwise
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.handler.__aexit__(None, None, None)
        if self.audit is not None:
            self.audit.close()

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    # -- in a background thread ----------------------------------------------------------------

    def __enter__(self) -> str:
        started = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # noqa: BLE001 - reported to the caller of __enter__
                failure.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="gpuadmit-emulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self.url

    def __exit__(self, *exc_info: Any) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._thread = None

    def cut_watches(self) -> None:
        """End every open watch stream now (clients resume from their last resourceVersion)."""
        self.call(self.handler.store.close_all_watches)

    def call(self, function: Any, *args: Any) -> Any:
        """Run a plain function in the server's loop (thread-safe access to ``handler.store``)."""
        if self._loop is None or self._thread is None:
            return function(*args)

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)
