"""A lean HTTP/1.1 server: asyncio.Protocol and the httptools parser, for the router's hot path.

The router forwards each request to a group and back; aiohttp's server turn alone costs more
than the router's whole budget (docs/router.md, "Overhead"). This server does what the router
needs and little else:

- HTTP/1.1 keep-alive (and HTTP/1.0 with or without it); Content-Length and chunked request
  bodies; Expect: 100-continue; HEAD.
- Pipelining: answers go out in request order, one request handled at a time per connection;
  reading pauses while MAX_PIPELINED requests wait for their answers.
- Guards (ServerLimits): a request head must be complete within head_timeout_s of its first
  byte (else 408 and close: slowloris), a body within body_timeout_s of its head (408 and
  close), an idle keep-alive connection closes after keepalive_timeout_s, a head over
  MAX_HEAD_BYTES or malformed is 400 and close, a body over max_body_bytes is 413,
  connections beyond max_connections are closed as they are accepted.
- A client that disconnects cancels the request being handled for it.
- Drain: from `drain()` on every answer says Connection: close and its connection closes;
  `close()` then stops listening, closes idle connections and waits for the others.

What it does not do: TLS, upgrades (an Upgrade request is answered, then the connection
closes), streaming bodies (a request is handled once its body is complete).

Per request it costs no task (one per connection), no timer (one sweeper checks every
connection's deadlines a few times per timeout) and no copy of headers (names are lower-cased
bytes, values bytes as sent). An app may also answer a request from callbacks (App.start),
without waking the connection's task at all: the router's fast path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools

from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.serving_errors import (
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
)

log = logging.getLogger(__name__)

MAX_PIPELINED = 16  # requests parsed ahead of their answers before reading pauses
MAX_HEAD_BYTES = 64 * 1024  # request line and headers
LINGER_S = 2.0  # after a last answer, input is read and dropped this long before closing
_SMALL_BODY = 64 * 1024  # answers up to this size go out in one write (head + body)

# Where a connection is in parsing its current request (deadlines are per phase).
_IDLE, _HEAD, _BODY = 0, 1, 2

Cancel = Callable[[], None]


@dataclass(slots=True, eq=False)
class Request:
    method: str
    target: str  # the request target as sent: path and query, percent-encoded
    headers: dict[bytes, bytes]  # lower-case names; a repeated header keeps its last value
    keep_alive: bool
    http10: bool
    body: bytes = b""
    state: Any = None  # the app's, set in App.head (its route, when it arrived)
    answer: Response | None = None  # decided before the body was read (App.head, a refusal)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass(slots=True, eq=False)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # Connection: close, then close the connection


class App(Protocol):
    def head(self, request: Request) -> Response | None:
        """Called once the request head is in: an answer now (the body is then read and
        dropped), or None to have the request handled once its body is complete."""

    def handle(self, request: Request) -> Awaitable[Response]:
        """The answer to a complete request. Must not raise: errors are answers."""

    def start(self, request: Request, finish: Callable[[Response], None]) -> Cancel | None:
        """The fast path, offered a complete request when nothing is ahead of it on its
        connection: start answering it without the connection's task and return how to
        cancel it (the client went away), then call `finish` with the answer later, from the
        event loop, never before returning. None: not taken (nothing done), `handle` answers
        it. Must not raise."""

    def refuse(self, request: Request | None, error: ServingError) -> Response:
        """The answer when the server refuses a request: malformed (400), too slow (408),
        too large (413). `request` is None when no request head was understood."""


class _HeadTooLarge(Exception):
    pass


_STATUS_LINES: dict[tuple[int, bool], bytes] = {}


def _status_line(status: int, http10: bool) -> bytes:
    """An HTTP/1.0 client gets an HTTP/1.0 answer (as aiohttp gives it)."""
    line = _STATUS_LINES.get((status, http10))
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        version = "1.0" if http10 else "1.1"
        line = _STATUS_LINES[status, http10] = f"HTTP/{version} {status} {phrase}\r\n".encode()
    return line


_CONTENT_TYPES: dict[str, bytes] = {}
_OCTET_STREAM = b"Content-Type: application/octet-stream\r\n"


def _content_type(value: str) -> bytes:
    line = _CONTENT_TYPES.get(value)
    if line is None:
        line = _CONTENT_TYPES[value] = f"Content-Type: {value}\r\n".encode("latin-1")
    return line


class _Connection(asyncio.Protocol):
    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.app = server.app
        self.limits = server.limits
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Request] = collections.deque()
        # the request the app's fast path is answering (App.start); requests behind it wait
        # in the queue, and the worker is woken when it is answered
        self.busy: Request | None = None
        self.cancel_busy: Cancel | None = None
        self.worker: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None  # set while the worker waits
        self.closing = False  # the next answer is the last; input is ignored
        self.linger_since: float | None = None  # the last answer is out
        self.read_paused = False
        self.write_paused: asyncio.Future[None] | None = None
        self.now = 0.0
        self.last_active = 0.0
        # the request being parsed
        self.phase = _IDLE
        self.phase_since = 0.0
        self.url = b""
        self.head_bytes = 0
        self.headers: dict[bytes, bytes] = {}
        self.current: Request | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    # ----------------------------------------------------------------- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        server = self.server
        server.connections.add(self)
        if len(server.connections) > self.limits.max_connections:
            log.warning(
                "closing a connection: %d open, the limit is %d",
                len(server.connections),
                self.limits.max_connections,
            )
            self.closing = True
            self.transport.close()
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_active = self.loop.time()
        self.worker = self.loop.create_task(self._work())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.closing = True
        if self.worker is not None:
            self.worker.cancel()  # a request being handled is cancelled: the client is gone
        cancel, self.cancel_busy, self.busy = self.cancel_busy, None, None
        if cancel is not None:
            cancel()
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.write_paused = self.write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.now = self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_reading()  # what follows the request is not HTTP/1.1: answer, close
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _HeadTooLarge):
                detail = f"the request head is larger than {MAX_HEAD_BYTES} bytes"
            elif self.phase == _HEAD and data.startswith(b"\x16\x03"):  # a TLS ClientHello
                detail = "Received HTTPS traffic on an HTTP port"
            else:
                detail = (str(e) or type(e).__name__).splitlines()[0][:200]
            request = self.current
            self.current = None
            if request is not None and request.answer is not None:
                request = None  # answered (and queued) at its head already
            self._enqueue_refusal(request, InvalidRequest(f"malformed HTTP request: {detail}"))

    # ----------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self.phase = _HEAD
        self.phase_since = self.now
        self.url = b""
        self.head_bytes = 0
        self.headers = {}

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        # inlined size check: this runs for every header of every request
        self.headers[name.lower()] = value
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        parser = self.parser
        http10 = parser.get_http_version() == "1.0"
        request = Request(
            parser.get_method().decode("ascii"),
            self.url.decode("latin-1"),
            self.headers,
            parser.should_keep_alive(),
            http10,
        )
        self.current = request
        self.chunks = []
        self.size = 0
        self.phase = _BODY
        self.phase_since = self.now
        answer = self.app.head(request)
        if answer is None:
            length = request.headers.get(b"content-length")
            limit = self.server.max_body_bytes
            if length is not None and int(length) > limit:
                answer = self.app.refuse(request, _too_large(limit, int(length)))
        if answer is not None:
            request.answer = answer  # goes out now, in order; the body is dropped
            self._enqueue(request)
        elif (
            request.headers.get(b"expect", b"").lower() == b"100-continue"
            and self.waiter is not None
            and not self.queue
            and self.busy is None
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.current
        if request is None or request.answer is not None:
            return  # answered already: read and dropped
        self.size += len(body)
        limit = self.server.max_body_bytes
        if self.size > limit:
            self.current = None
            self._enqueue_refusal(request, _too_large(limit, self.size))
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        self.current = None
        self.phase = _IDLE
        if request is None or request.answer is not None:
            return
        chunks = self.chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self._enqueue(request)

    # ----------------------------------------------------------------- answering
    def _enqueue(self, request: Request) -> None:
        waiter = self.waiter
        if (
            request.answer is None
            and self.busy is None
            and not self.queue
            and waiter is not None
            and not waiter.done()  # else the worker is about to run: keep the order
            and self.write_paused is None
            and not self.closing
        ):
            self.busy = request
            cancel = self.app.start(request, self._answer_busy)
            if cancel is not None:
                self.cancel_busy = cancel
                return
            self.busy = None
        self.queue.append(request)
        if waiter is not None and not waiter.done() and self.busy is None:
            waiter.set_result(None)
        if len(self.queue) >= MAX_PIPELINED and not self.read_paused and self.transport:
            self.read_paused = True
            self.transport.pause_reading()

    def _enqueue_refusal(self, request: Request | None, error: ServingError) -> None:
        """Answer `error` after the answers already due, then close (the stream is out of
        step: nothing after it can be parsed)."""
        answer = dataclasses.replace(self.app.refuse(request, error), close=True)
        if request is None:
            request = Request("GET", "", {}, False, False)
        request.answer = answer
        self._enqueue(request)
        self._stop_reading()

    def _stop_reading(self) -> None:
        self.closing = True
        self.phase = _IDLE
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def _work(self) -> None:
        """Answer the queued requests in order, for as long as the connection lives."""
        queue = self.queue
        app = self.app
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                if not queue:
                    if self.closing:
                        self._finish()  # e.g. an Upgrade request was answered
                        return
                    self.waiter = self.loop.create_future()
                    await self.waiter
                    self.waiter = None
                    continue
                request = queue.popleft()
                if self.read_paused and not self.closing and len(queue) < MAX_PIPELINED // 2:
                    self.read_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                answer = request.answer
                if answer is None:
                    try:
                        answer = await app.handle(request)
                    except Exception:  # the app's bug: do not leave the client hanging
                        log.exception("unhandled error for %s %s", request.method, request.path)
                        if self.transport is not None:
                            self.transport.abort()
                        return
                if self.transport is None:
                    return
                if self._write(request, answer):
                    self._finish()
                    return
                if self.write_paused is not None:
                    await self.write_paused

    def _answer_busy(self, answer: Response) -> None:
        """The fast path's answer (App.start): write it, then hand over to the worker."""
        request, self.busy, self.cancel_busy = self.busy, None, None
        if request is None or self.transport is None:
            return  # the client went away meanwhile
        if self._write(request, answer):
            self._finish()
            return
        waiter = self.waiter
        if (self.queue or self.closing) and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        """Close after the last answer, gently: a client still sending (a refused body) must
        read the answer, and the kernel resets a socket closed with unread input. So: send
        FIN, keep reading and dropping, close when the client does or after LINGER_S."""
        transport = self.transport
        if transport is None:
            return
        self.closing = True
        self.linger_since = self.loop.time()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def _write(self, request: Request, answer: Response) -> bool:
        """Send `answer`; True when the connection closes after it."""
        assert self.transport is not None
        close = (
            answer.close
            or not request.keep_alive
            or self.server.draining
            or (self.closing and not self.queue)  # the last answer (e.g. to an Upgrade)
        )
        body = answer.body
        parts = [_status_line(answer.status, request.http10)]
        if answer.content_type is not None:
            parts.append(_content_type(answer.content_type))
        elif body:  # RFC 9110 8.3: what a recipient may assume
            parts.append(_OCTET_STREAM)
        for name, value in answer.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(self.server.date_line())
        if close:
            parts.append(b"Connection: close\r\n\r\n")
            self.closing = True
        elif request.http10:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        head = b"".join(parts)
        if request.method == "HEAD" or not body:
            self.transport.write(head)
        elif len(body) <= _SMALL_BODY:
            self.transport.write(head + body)
        else:  # no copy of a large body
            self.transport.write(head)
            self.transport.write(body)
        self.last_active = self.loop.time()
        return close

    # ----------------------------------------------------------------- deadlines
    def idle(self) -> bool:
        """No request waiting for or being answered."""
        return self.waiter is not None and not self.queue and self.busy is None

    def check(self, now: float) -> None:
        """The sweeper's visit: enforce this connection's deadlines."""
        transport = self.transport
        if transport is None:
            return
        if self.linger_since is not None:
            if now - self.linger_since > LINGER_S:
                transport.close()
            return
        if self.closing:
            return
        limits = self.limits
        if self.phase == _HEAD and now - self.phase_since > limits.head_timeout_s:
            if self.idle():  # else: a pipelined answer is due first; look again next time
                self.current = None
                self._enqueue_refusal(
                    None,
                    RequestTimeout(
                        f"the request head did not arrive within {limits.head_timeout_s:g} s"
                    ),
                )
        elif self.phase == _BODY and now - self.phase_since > limits.body_timeout_s:
            request = self.current
            self.current = None
            if request is not None and request.answer is None:
                self._enqueue_refusal(
                    request,
                    RequestTimeout(
                        f"the request body did not arrive within {limits.body_timeout_s:g} s"
                    ),
                )
            else:  # answered at its head; its body never finished: done with this client
                self._stop_reading()
                if self.idle():
                    self._finish()
        elif (
            self.phase == _IDLE
            and self.idle()
            and now - self.last_active > limits.keepalive_timeout_s
        ):
            self.closing = True
            transport.close()


def _too_large(limit: int, size: int) -> PayloadTooLarge:
    # aiohttp's wording (the group front end's answer for the same request)
    return PayloadTooLarge(
        f"request body too large: Maximum request body size {limit} exceeded, "
        f"actual body size {size}"
    )


class LeanServer:
    """Serve `app` on host:port from the running loop (`await LeanServer.start(...)`)."""

    def __init__(self, app: App, limits: ServerLimits, max_body_bytes: int) -> None:
        self.app = app
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._date_second = -1
        self._date = b""

    @classmethod
    async def start(
        cls, app: App, host: str, port: int, limits: ServerLimits, max_body_bytes: int
    ) -> LeanServer:
        self = cls(app, limits, max_body_bytes)
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=128
        )
        self._sweeper = self.loop.create_task(self._sweep())
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._date

    async def _sweep(self) -> None:
        limits = self.limits
        shortest = min(limits.head_timeout_s, limits.body_timeout_s, limits.keepalive_timeout_s)
        interval = min(1.0, max(0.05, shortest / 4))
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check(now)

    def drain(self) -> None:
        """From now on every answer says Connection: close (the client goes elsewhere)."""
        self.draining = True

    async def close(self, timeout_s: float) -> None:
        """Stop listening, close idle connections, give the others `timeout_s` to finish."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        end = self.loop.time() + timeout_s
        while self.connections:
            for conn in list(self.connections):
                if conn.idle() and conn.transport is not None:
                    conn.transport.close()
            if self.loop.time() >= end:
                break
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # let connection_lost run
