"""HTTP/1.1 to the group leaders: forward a request as bytes, keep-alive pools, timeouts.

The router talks REST to every group (the group Services expose REST; gRPC requests are
re-framed as the binary tensor extension, see router_grpc). Bodies pass through as bytes:
nothing is decoded here. The groups are statmux's own aiohttp servers, so the client is a
small asyncio.Protocol (one write per request, the answer parsed in the transport's callback
and handed over through one future; Content-Length, chunked or until-close answers): a
general-purpose client (aiohttp's ClientSession) costs more per request than the whole
router's budget, and asyncio streams cost several wake-ups per answer (docs/router.md,
"Overhead").

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
from dataclasses import dataclass
from typing import cast
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


class _Conn(asyncio.Protocol):
    """One keep-alive connection to a group. Answers are parsed as they arrive, in the
    transport's callback, and handed over through one future per exchange (a stream reader
    costs several wake-ups and copies per answer)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.used = time.monotonic()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:  # an answer without a length ends with the connection
            answer = _parse_answer(self.buf, eof=True)
        except ValueError:
            answer = None
        if answer is None:
            waiter.set_exception(_Closed(bool(self.buf)))
        else:
            answer[1]["connection"] = "close"
            waiter.set_result(answer)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = _parse_answer(self.buf)
        except ValueError as e:
            waiter.set_exception(e)
            return
        if answer is not None:
            waiter.set_result(answer)

    def usable(self, now: float) -> bool:
        t = self.transport
        return t is not None and not self.lost and not t.is_closing() and now - self.used < IDLE_S

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Closed(Exception):
    """The group closed the connection before a whole answer (`partial`: after some of it)."""

    def __init__(self, partial: bool) -> None:
        super().__init__("the connection closed before the answer")
        self.partial = partial


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
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                transport, conn = await loop.create_connection(_Conn, *addr)
        except TimeoutError:
            raise NotAccepted(f"connect timed out after {timeout_s:g} s") from None
        except OSError as e:
            raise NotAccepted(f"cannot connect: {e}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _exchange(
        self, addr: tuple[str, int], conn: _Conn, message: bytes, reused: bool
    ) -> Reply:
        keep = False
        try:
            if conn.lost or conn.transport is None:
                raise _Closed(False)
            conn.buf.clear()
            waiter = conn.waiter = asyncio.get_running_loop().create_future()
            conn.transport.write(message)
            try:
                status, headers, payload = await waiter
            except _Closed as e:
                if reused and not e.partial:
                    raise _Stale() from None
                raise Broken("the connection closed before the answer") from None
            finally:
                conn.waiter = None
            keep = headers.get("connection", "").lower() != "close"
            return Reply(
                status,
                payload,
                headers.get("content-type"),
                headers.get(HEADER_LENGTH.lower()),
            )
        except (ConnectionError, OSError, ValueError) as e:
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


def _parse_answer(buf: bytearray, eof: bool = False) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) once `buf` holds a whole answer; None while it does not.
    Headers are lower-cased. `eof`: the connection closed, so an answer with neither a
    Content-Length nor chunked encoding is complete. ValueError: not HTTP."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > HEAD_LIMIT:
            raise ValueError("the group's answer head is too large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    length = headers.get("content-length")
    if length is not None:
        stop = start + int(length)
        if len(buf) < stop:
            return None
        if len(buf) > stop:
            raise ValueError("the group sent more than one answer")
        return int(parts[1]), headers, bytes(buf[start:stop])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(buf, start)
        return None if body is None else (int(parts[1]), headers, body)
    return (int(parts[1]), headers, bytes(buf[start:])) if eof else None


def _dechunk(buf: bytearray, pos: int) -> bytes | None:
    """A chunked body starting at `pos`, or None while incomplete (no trailers: our groups
    send none)."""
    chunks: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            return b"".join(chunks) if len(buf) >= eol + 4 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        chunks.append(bytes(buf[eol + 2 : eol + 2 + size]))
        pos = eol + 2 + size + 2


async def probe_ready(upstreams: Upstreams, url: str, timeout_s: float) -> str | None:
    """None when GET /v2/health/ready answers 200, else why not."""
    try:
        reply = await upstreams.request("GET", url + "/v2/health/ready", timeout_s=timeout_s)
    except UpstreamError as e:
        return str(e)
    if reply.status == 200:
        return None
    return f"not ready (HTTP {reply.status})"
