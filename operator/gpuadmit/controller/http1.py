"""A small HTTP/1.1 keep-alive client for the operator's single-object requests.

Why not aiohttp for these: its per-request machinery (cookie jar, tracing hooks, redirect
handling, URL objects, ...) costs about 0.4 ms of CPU per request, three times this client's
cost, and an admission takes four requests (status, pod, Event, label): in a burst that made
the operator's own CPU the limit of its decision rate. Lists and watches (long, streamed)
stay on aiohttp; so does everything when a proxy is configured.

It speaks what the API server needs and nothing else: one origin (http or https with the
caller's SSL context), persistent connections, request bodies with Content-Length, answers
with Content-Length, chunked, or read-to-close bodies. A request that finds its idle
connection closed by the server before any answer byte is sent again once on a fresh one
(what browsers and urllib3 do): the server never saw it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

_NO_BODY_STATUSES = frozenset({204, 304})
_MAX_HEADER_BYTES = 64 * 1024


class ConnectionFailed(Exception):
    """The request got no complete answer (refused, reset, cut mid-answer, malformed)."""


class _ClosedBeforeAnswer(ConnectionFailed):
    """The connection ended before the first byte of the answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


class Http1Pool:
    """Keep-alive connections to one origin. Concurrency is bounded by the caller (each request
    holds one connection; idle ones are reused, most recent first)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None = None,
                 headers: Mapping[str, str] | None = None, connect_timeout_s: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r}")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self.prefix = parts.path.rstrip("/")  # an API server behind a path (e.g. a cluster proxy)
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        if ":" in self.host and not self.host.startswith("["):
            host_header = f"[{self.host}]" + (f":{parts.port}" if parts.port else "")
        common = {"Host": host_header, **(headers or {})}
        self._common = "".join(f"{name}: {value}\r\n" for name, value in common.items())
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Answer:
        """One request; ``path`` includes the query string. Raises ConnectionFailed."""
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._common}"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body or b'')}\r\n"
        message = (head + "\r\n").encode("latin-1") + (body or b"")
        while True:
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                answer, keep_alive = await self._exchange(reader, writer, message, method)
            except _ClosedBeforeAnswer as error:
                writer.close()
                if reused:
                    continue  # the server had closed this idle connection: try a fresh one
                raise ConnectionFailed(str(error)) from error
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                writer.close()
                raise ConnectionFailed(f"{type(error).__name__}: {error}") from error
            except BaseException:  # cancelled or timed out mid-exchange: the connection's state is unknown
                writer.close()
                raise
            if keep_alive:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return answer

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=_MAX_HEADER_BYTES),
                self.connect_timeout_s)
        except (TimeoutError, OSError) as error:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {error}") from error

    @staticmethod
    async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes,
                        method: str) -> tuple[Answer, bool]:
        try:
            writer.write(message)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError) as error:
            raise _ClosedBeforeAnswer(str(error)) from error
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise
            raise _ClosedBeforeAnswer("connection closed before the answer") from error
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()  # delimited by the end of the connection
            keep_alive = False
        return Answer(status, reason, headers, body), keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
