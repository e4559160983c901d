"""controller/http1.py: the keep-alive client speaks HTTP/1.1 to a real aiohttp server, over TLS too;
controller/api.py's RequestSlots hands freed slots to the most urgent waiter."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from gpuadmit.controller.api import RequestSlots, Urgency
from gpuadmit.controller.http1 import ConnectionFailed, Http1Pool
from gpuadmit.localcluster import free_port
from gpuadmit.tlsutil import generate_self_signed


class Server:
    """A real aiohttp server recording what it was asked and over which connections."""

    def __init__(self, keepalive_timeout: float = 75.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.ssl_context = ssl_context
        self.requests: list[dict] = []
        self.peers: set = set()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.peers.add(request.transport.get_extra_info("peername"))
        self.requests.append({"method": request.method, "path": request.path_qs, "host": request.host,
                              "headers": dict(request.headers), "body": body})
        if request.path.endswith("/chunked"):
            response = web.StreamResponse(status=200)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b'{"items": [', b'1, 2', b", 3]}"):
                await response.write(part)
            await response.write_eof()
            return response
        if request.path.endswith("/close"):
            return web.json_response({"closing": True}, headers={"Connection": "close"})
        if request.path.endswith("/conflict"):
            return web.json_response({"kind": "Status", "reason": "Conflict"}, status=409, headers={"Retry-After": "3"})
        if request.path.endswith("/empty"):
            return web.Response(status=204)
        return web.json_response({"echo": json.loads(body) if body else None})

    async def __aenter__(self) -> "Server":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, keepalive_timeout=self.keepalive_timeout, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def wait_for_no_open_connection(self, deadline_s: float = 30.0) -> None:
        """Until the server has closed every connection (aiohttp's live request handlers)."""
        assert self.runner is not None and self.runner.server is not None
        deadline = asyncio.get_running_loop().time() + deadline_s
        while self.runner.server.connections:
            assert asyncio.get_running_loop().time() < deadline, "the server kept its idle connection open"
            await asyncio.sleep(0.02)


async def test_requests_reuse_one_connection_and_carry_host_headers_and_body() -> None:
    async with Server() as server:
        pool = Http1Pool(f"http://127.0.0.1:{server.port}", headers={"Authorization": "Bearer t0ken"})
        for index in range(5):
            answer = await pool.request("PATCH", f"/apis/x/{index}?dryRun=All", {"Content-Type": "application/json"},
                                        json.dumps({"n": index}).encode())
            assert answer.status == 200 and json.loads(answer.body) == {"echo": {"n": index}}
        pool.close()
    assert len(server.peers) == 1  # keep-alive: five requests, one connection
    last = server.requests[-1]
    assert last["method"] == "PATCH" and last["path"] == "/apis/x/4?dryRun=All"
    assert last["host"] == f"127.0.0.1:{server.port}" and last["headers"]["Authorization"] == "Bearer t0ken"
    assert last["headers"]["Content-Length"] == str(len(b'{"n": 4}'))


async def test_chunked_empty_and_error_answers() -> None:
    async with Server() as server:
        pool = Http1Pool(f"http://127.0.0.1:{server.port}/prefix")
        chunked = await pool.request("GET", "/chunked")
        assert json.loads(chunked.body) == {"items": [1, 2, 3]}
        empty = await pool.request("DELETE", "/empty")
        assert empty.status == 204 and empty.body == b""
        conflict = await pool.request("PATCH", "/conflict", body=b"{}")
        assert conflict.status == 409 and conflict.headers["retry-after"] == "3"
        assert json.loads(conflict.body)["reason"] == "Conflict"
        assert (await pool.request("GET", "/after")).status == 200  # the connection is still good
        pool.close()
    assert [r["path"] for r in server.requests] == ["/prefix/chunked", "/prefix/empty", "/prefix/conflict", "/prefix/after"]
    assert len(server.peers) == 1


async def test_a_connection_the_server_closes_is_not_reused() -> None:
    async with Server() as server:
        pool = Http1Pool(f"http://127.0.0.1:{server.port}")
        assert json.loads((await pool.request("GET", "/close")).body) == {"closing": True}
        assert (await pool.request("GET", "/next")).status == 200
        pool.close()
    assert len(server.peers) == 2


async def test_an_idle_connection_closed_by_the_server_is_replaced_transparently() -> None:
    async with Server(keepalive_timeout=0.1) as server:
        pool = Http1Pool(f"http://127.0.0.1:{server.port}")
        assert (await pool.request("POST", "/one", body=b"{}")).status == 200
        await server.wait_for_no_open_connection()  # its keep-alive timeout passed: it closed ours
        assert (await pool.request("POST", "/two", body=b'{"a": 1}')).status == 200
        pool.close()
    assert [r["path"] for r in server.requests] == ["/one", "/two"]  # sent once each
    assert len(server.peers) == 2


async def test_no_server_is_a_connection_failure() -> None:
    pool = Http1Pool(f"http://127.0.0.1:{free_port()}", connect_timeout_s=2)
    with pytest.raises(ConnectionFailed):
        await pool.request("GET", "/")


async def test_tls_with_the_callers_context(tmp_path: Path) -> None:
    files = generate_self_signed(tmp_path, ["127.0.0.1"])
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.certfile, files.keyfile)
    async with Server(ssl_context=server_context) as server:
        trusting = ssl.create_default_context(cafile=str(files.cafile))
        pool = Http1Pool(f"https://127.0.0.1:{server.port}", trusting)
        answer = await pool.request("POST", "/secure", {"Content-Type": "application/json"}, b'{"ok": true}')
        assert json.loads(answer.body) == {"echo": {"ok": True}}
        pool.close()
        untrusting = Http1Pool(f"https://127.0.0.1:{server.port}", ssl.create_default_context())
        with pytest.raises(ConnectionFailed):  # a server the context does not trust is refused
            await untrusting.request("GET", "/secure")


# -- RequestSlots ------------------------------------------------------------------------------------


async def test_slots_bound_concurrency_and_serve_the_most_urgent_waiter_first() -> None:
    slots = RequestSlots(2)
    order: list[str] = []
    release = asyncio.Event()
    in_flight = 0
    most_in_flight = 0

    async def request(name: str, urgency: Urgency) -> None:
        nonlocal in_flight, most_in_flight
        async with slots.slot(urgency):
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            order.append(name)
            if name.startswith("first"):
                await release.wait()
            in_flight -= 1

    holders = [asyncio.create_task(request(f"first{i}", Urgency.DECISION)) for i in range(2)]
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(request(name, urgency)) for name, urgency in [
        ("event", Urgency.EXPLAIN), ("pod-a", Urgency.MATERIALISE), ("status-a", Urgency.DECISION),
        ("pod-b", Urgency.MATERIALISE), ("status-b", Urgency.DECISION)]]
    await asyncio.sleep(0.01)
    assert order == ["first0", "first1"]  # both slots taken; everyone else waits
    release.set()
    await asyncio.gather(*holders, *waiters)
    assert order[2:] == ["status-a", "status-b", "pod-a", "pod-b", "event"]
    assert most_in_flight == 2


async def test_a_cancelled_waiter_gives_up_its_place_without_losing_a_slot() -> None:
    slots = RequestSlots(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.slot(Urgency.DECISION):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with slots.slot(Urgency.EXPLAIN):  # the one slot is free again
        pass
    async with slots.slot(Urgency.EXPLAIN):
        pass


async def test_a_turn_waits_behind_more_urgent_waiters_and_keeps_no_slot() -> None:
    slots = RequestSlots(1)
    release = asyncio.Event()
    order: list[str] = []

    async def request(name: str) -> None:
        async with slots.slot(Urgency.DECISION):
            order.append(name)
            if name == "holder":
                await release.wait()

    async def turn() -> None:
        await slots.turn(Urgency.MATERIALISE)
        order.append("pod's turn")

    holder = asyncio.create_task(request("holder"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(turn()), asyncio.create_task(request("status"))]
    await asyncio.sleep(0.01)
    assert order == ["holder"]  # the one slot is held: the turn waits like a request
    release.set()
    await asyncio.gather(holder, *waiting)
    assert order == ["holder", "status", "pod's turn"]  # the status write, though it came later, went first

    async def one_more() -> None:
        async with slots.slot(Urgency.EXPLAIN):
            pass
    await asyncio.wait_for(one_more(), 1.0)  # the turn kept nothing: the one slot is free
