"""HTTP/1.1 to the group leaders: forward a request as bytes, keep-alive pools, timeouts.

The router talks REST to every group (the group Services expose REST; gRPC requests are
re-framed as the binary tensor extension, see router_grpc). Bodies pass through as bytes:
nothing is decoded here. The groups are statmux's own aiohttp servers, so the client is a
small asyncio.Protocol: one write per request, the answer parsed in the transport's callback
and handed over through one future. A general-purpose client (aiohttp's ClientSession) costs
more per request than the whole router's budget, and asyncio streams cost several wake-ups
per answer (docs/router.md, "Overhead"). For the same reason the hot path does no URL
parsing (a request line and Host header are built once per group and path), reads only the
answer headers it forwards (found with bytes.find, not parsed line by line), and bounds a
hop with one timer handle rather than an asyncio.timeout context.

Failures are classified for the router's retry rule:
- NotAccepted: the group never got the request (connection refused, DNS, connect timeout).
- Broken: the connection broke after the request was sent (the group died mid-request).
- HopTimeout: the group took longer than the hop timeout to answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

HEADER_LENGTH = "Inference-Header-Content-Length"
IDLE_S = 30.0  # idle connections older than this are not reused (servers close at 75 s)
MAX_IDLE = 64  # idle connections kept per group
HEAD_LIMIT = 64 * 1024  # a response head larger than this is a broken group
MAX_TARGETS = 4096  # request lines kept ready (one per group and path; queries vary)
_HEADER_LENGTH = HEADER_LENGTH.lower().encode()


class UpstreamError(Exception):
    pass


class NotAccepted(UpstreamError):
    """The group did not receive the request: safe to send it elsewhere."""


class Broken(UpstreamError):
    """The connection failed after the request was sent."""


class HopTimeout(UpstreamError):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None
    header_length: str | None  # Inference-Header-Content-Length, when binary


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a (method, url) goes, and the start of its request head, encoded once."""

    addr: tuple[str, int]
    prefix: bytes  # request line and Host header


@dataclass(slots=True)
class _Head:
    """What the router needs from an answer's head."""

    status: int
    content_type: str | None
    header_length: str | None
    close: bool
    length: int | None  # Content-Length; None: chunked or until the connection closes
    chunked: bool
    start: int  # where the body starts in the buffer


def parse_head(head: bytes) -> _Head:
    """An answer's status line and the headers the router uses (a repeated header keeps its
    last value). ValueError: not HTTP."""
    if not head.startswith(b"HTTP/"):
        raise ValueError(f"not an HTTP answer: {head[:80]!r}")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value
    ctype = fields.get(b"content-type")
    hlen = fields.get(_HEADER_LENGTH)
    length = fields.get(b"content-length")
    encoding = fields.get(b"transfer-encoding")
    connection = fields.get(b"connection")
    return _Head(
        status=int(parts[1]),
        content_type=None if ctype is None else ctype.strip().decode("latin-1"),
        header_length=None if hlen is None else hlen.strip().decode("latin-1"),
        close=connection is not None and connection.strip().lower() == b"close",
        length=None if length is None else int(length),
        chunked=encoding is not None and encoding.strip().lower() == b"chunked",
        start=len(head) + 4,
    )


class _Conn(asyncio.Protocol):
    """One keep-alive connection to a group. Answers are parsed as they arrive, in the
    transport's callback, and handed over through one future per exchange."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.head: _Head | None = None
        # whoever waits for the current answer: a future (Upstreams.request) or a callback
        # (Upstreams.start, the router's fast path); exactly one is set during an exchange
        self.waiter: asyncio.Future[tuple[Reply, bool]] | None = None
        self.callback: Callable[[tuple[Reply, bool] | BaseException], None] | None = None
        self.used = time.monotonic()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(
        self,
        waiter: asyncio.Future[tuple[Reply, bool]] | None = None,
        callback: Callable[[tuple[Reply, bool] | BaseException], None] | None = None,
    ) -> None:
        self.chunks = []
        self.size = 0
        self.head = None
        self.waiter = waiter
        self.callback = callback

    def _waiting(self) -> bool:
        waiter = self.waiter
        return self.callback is not None or (waiter is not None and not waiter.done())

    def _settle(self, outcome: tuple[Reply, bool] | BaseException) -> None:
        """Hand the exchange's outcome to whoever waits for it, once."""
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(outcome)
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self._waiting():
            return
        head = self.head
        if head is not None and head.length is None and not head.chunked:
            # an answer without a length ends with the connection
            body = b"".join(self.chunks)[head.start :]
            self._settle((_reply(head, body), False))
            return
        self._settle(_Closed(self.size > 0))

    def data_received(self, data: bytes) -> None:
        if not self._waiting():
            self.lost = True  # unasked-for bytes (or an answer after a timeout): never reuse
            if self.transport is not None:
                self.transport.close()
            return
        self.chunks.append(data)
        self.size += len(data)
        try:
            done = self._answer()
        except ValueError as e:
            self._settle(e)
            return
        if done is not None:
            self._settle(done)

    def _answer(self) -> tuple[Reply, bool] | None:
        """The whole answer and whether the connection may be kept, once it is in."""
        head = self.head
        if head is None:
            buf = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
            self.chunks = [buf]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > HEAD_LIMIT:
                    raise ValueError("the group's answer head is too large")
                return None
            head = self.head = parse_head(buf[:end])
        if head.length is not None:
            stop = head.start + head.length
            if self.size < stop:
                return None
            if self.size > stop:
                raise ValueError("the group sent more than one answer")
            buf = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
            return _reply(head, buf[head.start :]), not head.close
        if head.chunked:
            buf = b"".join(self.chunks)
            self.chunks = [buf]
            body = _dechunk(buf, head.start)
            return None if body is None else (_reply(head, body), not head.close)
        return None  # until the connection closes

    def timed_out(self) -> None:
        """The hop's timer: fail the exchange; the connection is not reused (its answer may
        still come)."""
        self.lost = True
        if self.transport is not None:
            self.transport.close()
        self._settle(_TimedOut())

    def abandon(self) -> None:
        """The exchange's requester is gone: drop the connection (its answer may still come)
        without telling anyone."""
        self.callback = None
        self.waiter = None
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def usable(self, now: float) -> bool:
        t = self.transport
        return t is not None and not self.lost and not t.is_closing() and now - self.used < IDLE_S

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _reply(head: _Head, body: bytes) -> Reply:
    return Reply(head.status, body, head.content_type, head.header_length)


class _Closed(Exception):
    """The group closed the connection before a whole answer (`partial`: after some of it)."""

    def __init__(self, partial: bool) -> None:
        super().__init__("the connection closed before the answer")
        self.partial = partial


class Stale(UpstreamError):
    """A reused keep-alive connection the group had already closed: it never read the
    request, so it is safe to send again, and the group is not suspect."""


class _TimedOut(Exception):
    pass


def _classify(error: BaseException, limit: float, reused: bool) -> UpstreamError:
    """What an exchange's failure means for the router's retry rule."""
    if isinstance(error, _Closed):
        if reused and not error.partial:
            return Stale("the group closed an idle connection")
        return Broken("the connection closed before the answer")
    if isinstance(error, _TimedOut):
        return HopTimeout(f"no answer within {limit:g} s")
    if isinstance(error, ConnectionError | OSError | ValueError):
        return Broken(f"connection broke: {error or type(error).__name__}")
    raise error


Outcome = Reply | UpstreamError


class Exchange:
    """One request in flight on a reused connection (`Upstreams.start`): its outcome goes to
    `done` from the connection's callback, with no task or future in between."""

    __slots__ = ("_addr", "_conn", "_done", "_limit", "_timer", "_upstreams")

    def __init__(
        self,
        upstreams: Upstreams,
        addr: tuple[str, int],
        conn: _Conn,
        limit: float,
        done: Callable[[Outcome], None],
    ) -> None:
        self._upstreams = upstreams
        self._addr = addr
        self._conn = conn
        self._limit = limit
        self._done = done
        self._timer: asyncio.TimerHandle | None = None

    def _on_outcome(self, outcome: tuple[Reply, bool] | BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
        conn = self._conn
        if isinstance(outcome, BaseException):
            conn.close()
            self._done(_classify(outcome, self._limit, reused=True))
            return
        reply, keep = outcome
        if keep:
            self._upstreams._keep(self._addr, conn)
        else:
            conn.close()
        self._done(reply)

    def cancel(self) -> None:
        """The requester is gone: no outcome will be delivered; the connection is dropped."""
        if self._timer is not None:
            self._timer.cancel()
        self._conn.abandon()


class Upstreams:
    """Keep-alive connections to every group, and the per-hop timeouts."""

    def __init__(self, connect_timeout_s: float, hop_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.hop_timeout_s = hop_timeout_s
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._targets: dict[tuple[str, str], _Target] = {}

    def _target(self, method: str, url: str) -> _Target:
        key = (method, url)
        target = self._targets.get(key)
        if target is None:
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            addr = (parts.hostname or "127.0.0.1", parts.port or 80)
            prefix = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode("latin-1")
            target = _Target(addr, prefix)
            if len(self._targets) >= MAX_TARGETS:  # e.g. many distinct query strings
                self._targets.clear()
            self._targets[key] = target
        return target

    def start(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: bytes,
        done: Callable[[Outcome], None],
    ) -> Exchange | None:
        """Send on an idle keep-alive connection to `url`'s group, if there is one, and return
        at once: the Reply or the UpstreamError (Stale, Broken, HopTimeout) goes to `done`
        later, from the event loop, never before this returns. None when no idle connection
        is ready (nothing was sent: use `request`)."""
        target = self._target(method, url)
        addr = target.addr
        conn = self._reuse(addr)
        if conn is None:
            return None
        transport = conn.transport
        assert transport is not None  # _reuse returns usable connections only
        loop = asyncio.get_running_loop()
        limit = self.hop_timeout_s
        exchange = Exchange(self, addr, conn, limit, done)
        conn.start(callback=exchange._on_outcome)
        exchange._timer = loop.call_at(loop.time() + limit, conn.timed_out)
        transport.write(
            b"%s%sContent-Length: %d\r\n\r\n%s" % (target.prefix, headers, len(body), body)
        )
        return exchange

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: bytes = b"",
        timeout_s: float | None = None,
    ) -> Reply:
        """`url` is the group's base (http://host:port) followed by the path; `headers` the
        header lines to add, encoded (b"Name: value\\r\\n" each)."""
        limit = self.hop_timeout_s if timeout_s is None else timeout_s
        target = self._target(method, url)
        data = body or b""
        message = b"%s%sContent-Length: %d\r\n\r\n%s" % (target.prefix, headers, len(data), data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        addr = target.addr
        conn = self._reuse(addr)
        if conn is not None:
            try:
                return await self._exchange(addr, conn, message, deadline, limit, reused=True)
            except Stale:
                pass  # the server closed it while idle: a fresh connection
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise HopTimeout(f"no answer within {limit:g} s")
        try:
            async with asyncio.timeout(min(self.connect_timeout_s, remaining)):
                transport, conn = await loop.create_connection(_Conn, *addr)
        except TimeoutError:
            if remaining <= self.connect_timeout_s:
                raise HopTimeout(f"no answer within {limit:g} s") from None
            raise NotAccepted(f"connect timed out after {self.connect_timeout_s:g} s") from None
        except OSError as e:
            raise NotAccepted(f"cannot connect: {e}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return await self._exchange(addr, conn, message, deadline, limit, reused=False)

    def _reuse(self, addr: tuple[str, int]) -> _Conn | None:
        pool = self._idle.get(addr)
        if not pool:
            return None
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _keep(self, addr: tuple[str, int], conn: _Conn) -> None:
        """Back to the pool after a complete answer on a keep-alive connection."""
        conn.used = time.monotonic()
        pool = self._idle.setdefault(addr, [])
        if len(pool) < MAX_IDLE:
            pool.append(conn)
        else:
            conn.close()

    async def _exchange(
        self,
        addr: tuple[str, int],
        conn: _Conn,
        message: bytes,
        deadline: float,
        limit: float,
        reused: bool,
    ) -> Reply:
        keep = False
        transport = conn.transport
        if conn.lost or transport is None:
            if reused:
                raise Stale("the group closed an idle connection")
            raise Broken("the connection closed before the answer")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[Reply, bool]] = loop.create_future()
        conn.start(waiter)
        timer = loop.call_at(deadline, conn.timed_out)
        try:
            transport.write(message)
            reply, keep = await waiter
            return reply
        except (_Closed, _TimedOut, ConnectionError, OSError, ValueError) as e:
            raise _classify(e, limit, reused) from None
        finally:
            timer.cancel()
            conn.waiter = None
            if keep:
                self._keep(addr, conn)
            else:
                conn.close()

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()


def _dechunk(buf: bytes, pos: int) -> bytes | None:
    """A chunked body starting at `pos`, or None while incomplete (no trailers: our groups
    send none)."""
    chunks: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(chunks) if len(buf) >= eol + 4 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        chunks.append(buf[eol + 2 : eol + 2 + size])
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
