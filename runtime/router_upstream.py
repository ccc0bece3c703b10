"""HTTP/1.1 to the group leaders: forward a request as bytes, keep-alive pools, timeouts.

The router talks REST to every group (the group Services expose REST; gRPC requests are
re-framed as the binary tensor extension, see router_grpc). Bodies pass through as bytes:
nothing is decoded here. The groups are statmux's own aiohttp servers, so the client is a
small one over asyncio streams (one write per request, Content-Length or chunked answers):
a general-purpose client (aiohttp's ClientSession) costs more per request than the whole
router's budget (docs/router.md, "Overhead").

Failures are classified for the router's retry rule:
- NotAccepted: the group never got the request (connection refused, DNS, connect timeout).
- Broken: the connection broke after the request was sent (the group died mid-request).
- HopTimeout: the group took longer than the hop timeout to answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HEADER_LENGTH = "Inference-Header-Content-Length"
IDLE_S = 30.0  # idle connections older than this are not reused (servers close at 75 s)
MAX_IDLE = 64  # idle connections kept per group
HEAD_LIMIT = 64 * 1024  # a response head larger than this is a broken group


class UpstreamError(Exception):
    pass


class NotAccepted(UpstreamError):
    """The group did not receive the request: safe to send it elsewhere."""


class Broken(UpstreamError):
    """The connection failed after the request was sent."""


class HopTimeout(UpstreamError):
    pass


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None
    header_length: str | None  # Inference-Header-Content-Length, when binary


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: float = field(default_factory=time.monotonic)

    def usable(self, now: float) -> bool:
        return (
            not self.writer.is_closing() and not self.reader.at_eof() and now - self.used < IDLE_S
        )

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused keep-alive connection the server had already closed."""


class Upstreams:
    """Keep-alive connections to every group, and the per-hop timeouts."""

    def __init__(self, connect_timeout_s: float, hop_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.hop_timeout_s = hop_timeout_s
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._addresses: dict[str, tuple[str, int]] = {}

    def _address(self, url: str) -> tuple[str, int]:
        addr = self._addresses.get(url)
        if addr is None:
            parts = urlsplit(url)
            addr = (parts.hostname or "127.0.0.1", parts.port or 80)
            self._addresses[url] = addr
        return addr

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """`url` is the group's base (http://host:port) followed by the path."""
        limit = self.hop_timeout_s if timeout_s is None else timeout_s
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        addr = self._address(base)
        head = [f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}\r\n")
        data = body or b""
        head.append(f"Content-Length: {len(data)}\r\n\r\n")
        message = "".join(head).encode("latin-1") + data
        try:
            async with asyncio.timeout(limit):
                conn = self._reuse(addr)
                if conn is not None:
                    try:
                        return await self._exchange(addr, conn, message, reused=True)
                    except _Stale:
                        pass  # the server closed it while idle: a fresh connection
                conn = await self._connect(addr, min(self.connect_timeout_s, limit))
                try:
                    return await self._exchange(addr, conn, message, reused=False)
                except _Stale as e:
                    raise Broken("the group closed the connection without answering") from e
        except TimeoutError as e:
            raise HopTimeout(f"no answer within {limit:g} s") from e

    def _reuse(self, addr: tuple[str, int]) -> _Conn | None:
        pool = self._idle.get(addr)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, addr: tuple[str, int], timeout_s: float) -> _Conn:
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(*addr, limit=HEAD_LIMIT)
        except TimeoutError:
            raise NotAccepted(f"connect timed out after {timeout_s:g} s") from None
        except OSError as e:
            raise NotAccepted(f"cannot connect: {e}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    async def _exchange(
        self, addr: tuple[str, int], conn: _Conn, message: bytes, reused: bool
    ) -> Reply:
        keep = False
        try:
            conn.writer.write(message)
            try:
                raw = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if reused and not e.partial:
                    raise _Stale() from None
                raise Broken("the connection closed before the answer") from None
            except asyncio.LimitOverrunError:
                raise Broken("the group's answer head is too large") from None
            status, headers = _parse_head(raw)
            length = headers.get("content-length")
            if length is not None:
                payload = await conn.reader.readexactly(int(length))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                payload = await _read_chunked(conn.reader)
            else:
                payload = await conn.reader.read()
                headers["connection"] = "close"
            keep = headers.get("connection", "").lower() != "close"
            return Reply(
                status,
                payload,
                headers.get("content-type"),
                headers.get(HEADER_LENGTH.lower()),
            )
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as e:
            raise Broken(f"connection broke: {e or type(e).__name__}") from None
        finally:
            if keep:
                conn.used = time.monotonic()
                pool = self._idle.setdefault(addr, [])
                if len(pool) < MAX_IDLE:
                    pool.append(conn)
                else:
                    conn.close()
            else:
                conn.close()

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from our groups
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def probe_ready(upstreams: Upstreams, url: str, timeout_s: float) -> str | None:
    """None when GET /v2/health/ready answers 200, else why not."""
    try:
        reply = await upstreams.request("GET", url + "/v2/health/ready", timeout_s=timeout_s)
    except UpstreamError as e:
        return str(e)
    if reply.status == 200:
        return None
    return f"not ready (HTTP {reply.status})"
