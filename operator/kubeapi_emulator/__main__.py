"""``python -m kubeapi_emulator --port N [--crds DIR] [--kubeconfig-out FILE]``: serve until stopped."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.server import EmulatedApiServer

# The process keeps every stored object, their encodings and the watch history (parsed JSON, no
# reference cycles: reference counting frees them). CPython's cyclic collector examined them again
# in every older generation's collection and scanned them all every second or two under load (a
# third or more of the server's CPU in benchmarks/e2e.py, measured with gc.callbacks timings,
# 2026-12-07), so what survives a collection is frozen (gc.freeze: each object examined once), and
# everything is thawed into one full collection this often, which frees cyclic garbage among them.
FULL_SCAN_EVERY_S = 1800.0  # requests leave no cyclic garbage (none found after 12,000); a scan of a big store is a pause


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    if phase == "stop":
        gc.freeze()


async def _full_scans() -> None:
    while True:
        await asyncio.sleep(FULL_SCAN_EVERY_S)
        gc.unfreeze()
        gc.collect()  # its survivors frozen again by _freeze_survivors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kubeapi_emulator",
                                     description="An emulated Kubernetes API server (plain HTTP, no auth).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free port)")
    parser.add_argument("--crds", action="append", default=[], metavar="PATH",
                        help="a CRD YAML file or a directory of them to serve from the start (repeatable)")
    parser.add_argument("--kubeconfig-out", metavar="FILE",
                        help="write a kubeconfig pointing at this server once it listens")
    parser.add_argument("--require-namespaces", action="store_true",
                        help="refuse namespaced objects in namespaces that do not exist, as a real server does")
    parser.add_argument("--history-limit", type=int, default=100_000,
                        help="watch events kept for resuming watches (older resourceVersions get 410 Gone)")
    parser.add_argument("--audit-log", metavar="FILE",
                        help="append one JSON line per request: the RBAC verb, API group, resource, "
                             "subresource, namespace, name and user agent")
    parser.add_argument("--no-scheduler", dest="scheduler", action="store_false",
                        help="do not run the kube-scheduler stand-in: pods stay unbound (no spec.nodeName) "
                             "until a client binds them through pods/{name}/binding")
    parser.add_argument("--webhook-service", action="append", default=[], metavar="NAMESPACE/NAME=HOST:PORT",
                        help="where an admission webhook's clientConfig.service is served (repeatable); webhooks "
                             "given by clientConfig.url need nothing")
    return parser


def webhook_services(values: Sequence[str]) -> dict[str, str]:
    """``NAMESPACE/NAME=HOST:PORT`` flags as a mapping; ValueError naming a malformed one."""
    routes = {}
    for value in values:
        service, _, target = value.partition("=")
        namespace, _, name = service.partition("/")
        host, _, port = target.rpartition(":")
        if not (namespace and name and host and port.isdigit()):
            raise ValueError(f"--webhook-service {value!r}: expected NAMESPACE/NAME=HOST:PORT")
        routes[f"{namespace}/{name}"] = target
    return routes


async def serve(args: argparse.Namespace) -> None:
    try:
        server = EmulatedApiServer(host=args.host, port=args.port, crds=args.crds,
                                   require_namespaces=args.require_namespaces, history_limit=args.history_limit,
                                   audit_log=args.audit_log, scheduler=args.scheduler,
                                   webhook_services=args.webhook_services)
    except (ApiError, yaml.YAMLError) as e:
        raise SystemExit(f"python -m kubeapi_emulator: cannot serve the CRDs given: {e}") from None
    # Recording every request is for assertions in tests; a long-running process keeps few.
    server.handler.max_recorded_requests = 100
    url = await server.start()
    if args.kubeconfig_out:
        server.write_kubeconfig(args.kubeconfig_out)
    print(f"emulated Kubernetes API server at {url}", flush=True)
    gc.callbacks.append(_freeze_survivors)  # this process only: never the tests' in-process servers
    gc.collect()
    full_scans = asyncio.create_task(_full_scans())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        full_scans.cancel()
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.webhook_services = webhook_services(args.webhook_service)
    except ValueError as error:
        parser.error(str(error))
    missing = [path for path in args.crds if not Path(path).exists()]
    if missing:
        parser.error(f"--crds: no such file or directory: {', '.join(missing)}")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
