"""`gpuadmit demo`: the whole system on an emulated cluster, no cluster and no network needed.

What runs, all on loopback:

1. the emulated API server (``python -m kubeapi_emulator``, a subprocess) serving the CRDs;
2. a MarginPolicy (``--policy``, else the example policy), nodes from the Alibaba 2023 GPU trace
   (a product-stratified subset, so queueing shows) or the sample cluster: what is submitted,
   and when, is planned in ``demo_plan``; CRDs, policy and sample cluster ship as package data;
3. the REAL operator (``gpuadmit run``, a subprocess) with /metrics on a local port;
4. this process submits the planned GPUWorkloads and plays kubelet (``demo_kubelet``: the
   emulator has none): our pods turn Running when created and Succeeded when their compressed
   run time is over; it shows the decisions live (``demo_screen``) and ends with a summary.
   ``--plot DIR`` draws the dashboard's main panels from the metrics scraped meanwhile
   (``demo_plot``); ``--serve`` then keeps the cluster up for kubectl until Ctrl-C.

Time is compressed by ``--time-scale`` (one demo second stands for that many trace seconds): run
times, and the policy's own durations (preemption's minimum run time, the default queue
timeout), are divided by it. Best-effort (BE) pods give up after ``--be-patience-minutes`` of
trace time in the queue.

The operator registers its webhooks with the emulated API server (``gpuadmit run
--manage-webhook-configurations``), which calls the GPUWorkload ones for every create (mutate,
then validate) as a real API server does; one training workload in
``FORGER_EVERY`` carries a forged ``gpuadmit.io/tier`` label, which the validating webhook refuses:
the API server answers the create with the webhook's refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from gpuadmit.controller.webhook_configs import CONFIGURATION_NAME as WEBHOOK_CONFIGURATION_NAME
from gpuadmit.core.model import TIER_LABEL, WORKLOAD_LABEL
from gpuadmit.demo_kubelet import Kubelet
from gpuadmit.demo_plan import (
    GOLD_NAMESPACE,
    INFERENCE_NAMESPACES,
    TRAINING_NAMESPACE,
    DemoNode,
    Plan,
    demo_policy,
    guaranteed_tenant_quota,
    load_trace,
    node_object,
    package_file,
    plan_submissions,
    sample_cluster,
    workload_object,
)
from gpuadmit.demo_plot import MetricsRecorder, plot_panels
from gpuadmit.demo_screen import Ledger, Screen, summary
from gpuadmit.inputs import InputError
from gpuadmit.localcluster import EmulatorProcess, LocalClusterError, OperatorProcess, free_port
from gpuadmit.sim.trace import ALIBABA_NODES_FILE, ALIBABA_PODS_FILE, TraceError, find_trace_dir

DEFAULT_MAX_RATE = 5.0  # workloads/s that the emulator, the operator and this process keep up with on a busy laptop
STARTUP_DEADLINE = 60.0
# What --serve suggests trying, with the kubeconfig it prints.
KUBECTL_EXAMPLES = (
    "kubectl get gpuworkloads -A",
    "kubectl get gw -n research -w",
    "kubectl get nodes,pods -A -o wide",
    "kubectl explain gpuworkload.spec",
    "kubectl get marginpolicy default -o yaml",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of submissions before the summary (default 180)")
    parser.add_argument("--nodes", type=int, default=32, help="trace nodes to emulate, a product-stratified subset (default 32)")
    parser.add_argument("--trace-dir", default=None, help="directory with the Alibaba 2023 trace CSVs (default: $GPUADMIT_TRACE_DIR, then shared/traces/alibaba-gpu-2023 in a directory above this one, as gpuadmit simulate finds it)")
    parser.add_argument("--no-trace", action="store_true", help="use the built-in sample cluster even when the trace is there")
    parser.add_argument("--time-scale", type=float, default=10.0, help="trace seconds per demo second (default 10)")
    parser.add_argument("--load", type=float, default=1.5, help="offered GPU load as a multiple of the cluster's GPUs (default 1.5)")
    parser.add_argument("--be-patience-minutes", type=float, default=10.0, help="trace minutes a BE pod waits in the queue before giving up (default 10)")
    parser.add_argument("--max-rate", type=float, default=DEFAULT_MAX_RATE, help=f"most workloads submitted per second (default {DEFAULT_MAX_RATE:g})")
    parser.add_argument("--seed", type=int, default=7, help="random seed for the pods drawn (default 7)")
    parser.add_argument("--metrics-port", type=int, default=0, help="the operator's /metrics port (default: a free one)")
    parser.add_argument("--policy", default=None, help="MarginPolicy YAML or JSON (default: the example policy shipped with gpuadmit, as examples/policy.yaml)")
    parser.add_argument("--no-webhooks", action="store_true", help="create workloads directly, without the admission webhooks")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the operator's and emulator's logs")
    parser.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    parser.add_argument("--serve", action="store_true",
                        help="after the summary keep the emulated cluster and the operator running, print a kubeconfig "
                             "and kubectl commands to try, until Ctrl-C")
    parser.add_argument("--plot", metavar="DIR", default=None,
                        help="at the end, write PNGs of the dashboard's main panels into DIR, drawn from the metrics "
                             "scraped while the demo ran (needs matplotlib: pip install 'gpuadmit[sim]')")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(Demo(args, sys.stdout).run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("gpuadmit demo: interrupted; the emulator and the operator were stopped", file=sys.stderr)
        return 130
    except DemoInputError as error:
        print(f"gpuadmit demo: {error}", file=sys.stderr)
        return 2
    except (DemoError, LocalClusterError) as error:
        print(f"gpuadmit demo: {error}", file=sys.stderr)
        return 1


class DemoError(RuntimeError):
    """The demo could not run (a process did not start, a file is missing): said plainly."""


class DemoInputError(DemoError):
    """What the demo was given is wrong (a malformed trace or policy, a bad option): exit 2."""


# --------------------------------------------------------------------------- the trace


# --------------------------------------------------------------------------- the API, minimally


class EmulatorClient:
    """Plain-HTTP JSON calls to the emulated server (no credentials, loopback only)."""

    def __init__(self, base_url: str) -> None:
        import aiohttp

        self.base_url = base_url.rstrip("/")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self.in_flight = asyncio.Semaphore(16)

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, *, merge: bool = False, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self.in_flight:
            async with self.session.request(
                method, self.base_url + path, data=None if body is None else json.dumps(body), headers=headers, params=params
            ) as response:
                text = await response.text()
        try:
            return response.status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return response.status, text

    async def must(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, payload = await self.call(method, path, body, **kwargs)
        if status >= 300 and not (method == "POST" and status == 409):
            raise DemoError(f"{method} {path} answered {status}: {str(payload)[:300]}")
        return payload

    async def follow(self, path: str, on_event: Callable[[str, dict[str, Any]], Awaitable[None] | None], params: Mapping[str, str] | None = None) -> None:
        """List, then watch from there, forever; every object arrives as an event, re-listed after a break."""
        import aiohttp

        while True:
            try:
                listing = await self.must("GET", path, params=params)
                for item in listing.get("items") or []:
                    await _maybe_await(on_event("ADDED", item))
                version = (listing.get("metadata") or {}).get("resourceVersion", "")
                watch_params = {**(params or {}), "watch": "true", "resourceVersion": str(version), "allowWatchBookmarks": "true"}
                async with self.session.get(self.base_url + path, params=watch_params) as response:
                    if response.status != 200:
                        raise DemoError(f"watch {path} answered {response.status}")
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            await _maybe_await(on_event(event["type"], event.get("object") or {}))
                        elif event.get("type") == "ERROR":
                            break  # e.g. 410 Gone: list again
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, DemoError):
                await asyncio.sleep(0.5)  # the server restarts or drops the stream: list again shortly


# What the API server's answer to a create says when an admission webhook refused it, and when
# one could not be called (kube-apiserver's wording, which the emulator keeps).
DENIED_BY_WEBHOOK = "denied the request: "
WEBHOOK_CALL_FAILED = "failed calling webhook"
WEBHOOK_CONFIGURATIONS = ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")


async def webhooks_registered(api: EmulatorClient) -> bool:
    """Whether the operator (``--manage-webhook-configurations``) has written both configurations,
    which it does once its webhook server listens."""
    for plural in WEBHOOK_CONFIGURATIONS:
        status, _ = await api.call("GET", f"/apis/admissionregistration.k8s.io/v1/{plural}/{WEBHOOK_CONFIGURATION_NAME}")
        if status != 200:
            return False
    return True


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


# --------------------------------------------------------------------------- running it all


class Demo:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.processes: list[EmulatorProcess | OperatorProcess] = []
        self.workdir = Path()  # made once the inputs are read: bad input leaves nothing behind
        self.webhooks = False  # registered with the API server, which calls them
        self.webhook_refusals = 0
        self.webhook_failures = 0  # creates the API server refused because a webhook could not be called

    def read_inputs(self) -> tuple[list[DemoNode], list[Plan], str, float, float, dict[str, Any]]:
        """The cluster, the submissions, where they come from, the rate, the load offered and the policy."""
        args = self.args
        if min(args.duration, args.time_scale, args.load, args.max_rate) <= 0 or args.nodes < 1:
            raise DemoInputError("--duration, --time-scale, --load, --max-rate and --nodes must be positive")
        if args.plot:
            try:
                import matplotlib  # noqa: F401  (checked now rather than after the whole run)
            except ImportError:
                raise DemoInputError("--plot needs matplotlib: pip install 'gpuadmit[sim]'") from None
        trace_dir = None if args.no_trace else find_trace_dir(args.trace_dir)
        if trace_dir is None and args.trace_dir:
            raise DemoInputError(f"--trace-dir {args.trace_dir}: no {ALIBABA_NODES_FILE} and {ALIBABA_PODS_FILE} there")
        try:
            if trace_dir is not None:
                nodes, pods, source = load_trace(trace_dir, args.nodes)
            else:
                nodes, pods, source = sample_cluster(args.seed)
                source += "" if args.no_trace else " (no trace found; see --trace-dir)"
        except TraceError as error:
            raise DemoInputError(str(error)) from None
        if not nodes or not pods:
            raise DemoInputError(f"the {source} has no {'GPU nodes' if not nodes else 'GPU pods'} to run")
        total_gpus = sum(node.gpus for node in nodes)
        plans, rate, offered = plan_submissions(pods, total_gpus, args)
        try:
            policy = demo_policy(Path(args.policy) if args.policy else None, args.time_scale)
        except InputError as error:
            raise DemoInputError(str(error)) from None
        return nodes, plans, source, rate, offered, policy

    async def run(self) -> int:
        args = self.args
        nodes, plans, source, rate, offered, policy = self.read_inputs()
        total_gpus = sum(node.gpus for node in nodes)
        self.workdir = Path(tempfile.mkdtemp(prefix="gpuadmit-demo-"))
        api: EmulatorClient | None = None
        tasks: list[asyncio.Task[None]] = []
        succeeded = False
        main_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):  # stop the child processes, as on Ctrl-C
            if main_task is not None:
                loop.add_signal_handler(signum, main_task.cancel)
        try:
            url = await self.start_emulator(package_file("crds"))
            api = EmulatorClient(url)
            await self.populate(api, nodes, policy)
            metrics_port = args.metrics_port or free_port()
            await self.start_operator(metrics_port, api)
            ledger = Ledger(total_gpus=total_gpus, time_scale=args.time_scale)
            kubelet = Kubelet(api)
            recorder = MetricsRecorder(f"http://127.0.0.1:{metrics_port}/metrics")
            header = (
                f"gpuadmit demo: {len(nodes)} nodes, {total_gpus} GPUs from the {source}\n"
                f"1 s here = {args.time_scale:g} s of trace; ~{rate:.1f} workloads/s offering {offered:.1f}x the GPUs; "
                f"metrics: http://127.0.0.1:{metrics_port}/metrics"
            )
            self.out.write(header + "\n")
            self.out.write(f"logs: {self.workdir}" + ("" if args.keep_logs else " (removed at the end unless --keep-logs or a failure)") + "\n")
            self.out.flush()
            live = self.out.isatty() and not args.plain and os.environ.get("TERM") != "dumb"
            screen = Screen(self.out, ledger, header, live, args.duration)
            tasks = [
                asyncio.create_task(api.follow("/apis/gpuadmit.io/v1alpha1/gpuworkloads", ledger.observe)),
                asyncio.create_task(api.follow("/api/v1/pods", kubelet.observe, {"labelSelector": WORKLOAD_LABEL})),
                asyncio.create_task(kubelet.finish_pods()),
            ]
            if args.plot:
                tasks.append(asyncio.create_task(recorder.run()))
            submitted = await self.submit_all(api, plans, ledger, screen, kubelet)
            ledger.tick()
            screen.update(submitted, final=True)
            quota = guaranteed_tenant_quota(total_gpus)
            lines = summary(ledger, ledger.now(), args.time_scale, (TRAINING_NAMESPACE, quota["spec"]["guaranteed"]["*"]))
            lines.append(await metrics_line(recorder.url))
            if self.webhooks:
                lines.append(f"admission webhooks: every create went through /mutate-gpuworkload and /validate-gpuworkload,"
                             f" called by the API server ({self.webhook_refusals} refused,"
                             f" {self.webhook_failures} not created: a webhook could not be called)")
            if args.plot:
                with contextlib.suppress(asyncio.TimeoutError):  # one last sample, taken now
                    await asyncio.wait_for(recorder.scrape_once(), 10)
                written = plot_panels(recorder, Path(args.plot))
                lines.append(f"plots: {', '.join(str(path) for path in written)}")
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            if args.serve:
                await self.serve()
            succeeded = True
            return 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if api is not None:
                await api.close()
            self.stop_processes()
            if succeeded and not args.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
            elif not succeeded:
                print(f"gpuadmit demo: logs kept in {self.workdir}", file=sys.stderr)

    async def serve(self) -> None:
        """Keep the cluster (and the kubelet stand-in) running for kubectl until Ctrl-C or SIGTERM."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        kubeconfig = self.workdir / "kubeconfig"
        commands = "\n".join(f"  {command}" for command in KUBECTL_EXAMPLES)
        self.out.write(f"\nThe demo cluster keeps running. Point kubectl at it:\n  export KUBECONFIG={kubeconfig}\n"
                       f"then try:\n{commands}\nPress Ctrl-C to stop.\n")
        self.out.flush()
        try:
            while not stop.is_set():
                self.check_processes()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        self.out.write("gpuadmit demo: stopping the emulated cluster\n")
        self.out.flush()

    async def start_emulator(self, crds: Path) -> str:
        emulator = EmulatorProcess(self.workdir, (crds,), own_session=True)  # own session: we stop it after the operator
        self.processes.append(emulator)
        await emulator.start_async(STARTUP_DEADLINE)
        return emulator.url

    async def populate(self, api: EmulatorClient, nodes: list[DemoNode], policy: dict[str, Any]) -> None:
        await api.must("POST", "/apis/gpuadmit.io/v1alpha1/marginpolicies", policy)
        for namespace in (*INFERENCE_NAMESPACES, TRAINING_NAMESPACE):
            labels = {TIER_LABEL: "gold"} if namespace == GOLD_NAMESPACE else {}
            await api.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        await asyncio.gather(*(api.must("POST", "/api/v1/nodes", node_object(node)) for node in nodes))
        await api.must("POST", "/apis/gpuadmit.io/v1alpha1/gpuquotas", guaranteed_tenant_quota(sum(node.gpus for node in nodes)))

    async def start_operator(self, metrics_port: int, api: EmulatorClient) -> None:
        webhook_port = 0 if self.args.no_webhooks else free_port()
        cert_dir = self.workdir / "certs"
        # With its webhook server on, the operator registers its webhooks with the API server itself.
        webhook_flags = ("--manage-webhook-configurations",) if webhook_port else ()
        operator = OperatorProcess(
            self.workdir / "kubeconfig", self.workdir,
            ("--webhook-cert-dir", str(cert_dir), "--resync-seconds", "10", *webhook_flags),
            env={"GPUADMIT_WEBHOOK_ADDR": "127.0.0.1"}, metrics_port=metrics_port, webhook_port=webhook_port,
            own_session=True)
        self.processes.append(operator)
        operator.launch(wait_ready=False)
        await operator.wait_ready_async(STARTUP_DEADLINE)
        if webhook_port:
            await self.wait_for(lambda: webhooks_registered(api), "the operator to register its admission webhooks")
            self.webhooks = True

    async def submit_all(self, api: EmulatorClient, plans: list[Plan], ledger: Ledger, screen: Screen, kubelet: Kubelet) -> int:
        """Create each workload at its time; refresh the screen meanwhile; return how many were created."""
        submitted = 0
        pending: set[asyncio.Task[None]] = set()

        async def submit(plan: Plan) -> None:
            nonlocal submitted
            key = f"{plan.namespace}/{plan.name}"
            kubelet.run_seconds[key] = plan.run_seconds
            sent_at = ledger.now()
            path = f"/apis/gpuadmit.io/v1alpha1/namespaces/{plan.namespace}/gpuworkloads"
            status, answer = await api.call("POST", path, workload_object(plan))
            message = str(answer.get("message", "")) if isinstance(answer, dict) else str(answer)
            if status >= 300 and status != 409:  # 409: created before, by an earlier attempt
                if DENIED_BY_WEBHOOK in message:  # the API server relays the webhook's refusal
                    self.webhook_refusals += 1
                    ledger.refused(plan, sent_at, message.split(DENIED_BY_WEBHOOK, 1)[1])
                    return
                if WEBHOOK_CALL_FAILED in message:
                    self.webhook_failures += 1
                    return
                raise DemoError(f"POST {path} answered {status}: {message[:300]}")
            ledger.submitted(plan, sent_at)
            submitted += 1

        refresh = 1.0 if screen.live else 0.5
        next_refresh = 0.0
        index = 0
        while True:
            now = ledger.now()
            while index < len(plans) and plans[index].at <= now:
                task = asyncio.create_task(submit(plans[index]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
            if now >= next_refresh:
                ledger.tick()
                screen.update(submitted)
                next_refresh = now + refresh
                self.check_processes()
            if now >= self.args.duration:
                break
            wake = min(next_refresh, plans[index].at if index < len(plans) else next_refresh, self.args.duration)
            await asyncio.sleep(max(0.01, wake - ledger.now()))
        for task in list(pending):  # what the server has not taken by the end is not submitted
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return submitted

    # -- processes ------------------------------------------------------------------------------

    def check_processes(self) -> None:
        for process in self.processes:
            if process.child is not None:
                process.child.check_running()

    async def wait_for(self, condition: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            self.check_processes()
            if time.monotonic() > deadline:
                raise DemoError(f"gave up waiting for {what} after {STARTUP_DEADLINE:.0f} s")
            await asyncio.sleep(0.2)

    def stop_processes(self) -> None:
        for process in reversed(self.processes):  # the operator first, then its API server
            process.stop()


async def metrics_line(url: str) -> str:
    """Proof that /metrics was served while the operator ran: how many gpuadmit samples it had."""
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                text = await response.text()
    except (TimeoutError, aiohttp.ClientError) as error:
        return f"metrics: {url} not reachable ({type(error).__name__})"
    samples = sum(1 for line in text.splitlines() if line.startswith("gpuadmit_"))
    return f"metrics: {samples} gpuadmit_ samples served at {url}"
