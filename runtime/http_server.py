"""Open Inference Protocol over REST (aiohttp), plus /metrics, on the group leader.

Errors are always `{"error": "..."}` with a 4xx/5xx status from serving_errors; unknown paths
and methods get 404/405 in the same shape, and so do requests the HTTP parser refuses. A
request without a Content-Type is accepted (that is what tritonclient.http sends for pure
JSON). A 429 carries Retry-After.

Connections are guarded (`ServerLimits`): a request head must arrive within a timeout (else
408 and close: slowloris), a body within another, and connections beyond a cap are closed
at once. A client that disconnects cancels its request (aiohttp handler cancellation): a
queued request is dropped and counted as CANCELED.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.metrics import exposition
from statmux.runtime.oip_codec import decode_rest_request, encode_rest_response
from statmux.runtime.oip_routes import (
    HANDLER_NAMES,
    JSON,
    ROUTES,
    ErrorAnswer,
    error_answer,
    json_bytes,
    parse_optional_json,
    serving_error_answer,
)
from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.serving_errors import (
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
)

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_BINARY = "application/octet-stream"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_bytes(doc), status=status, content_type=JSON)


def _answer(a: ErrorAnswer) -> web.Response:
    resp = web.Response(body=a.body, status=a.status, content_type=JSON, headers=dict(a.headers))
    if a.close:
        resp.force_close()
    return resp


def _error(message: str, status: int) -> web.Response:
    return _answer(error_answer(message, status))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as e:
        return _answer(serving_error_answer(e))
    except web.HTTPRequestEntityTooLarge as e:
        return _error(f"request body too large: {e.text}", 413)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(f"{e.reason}: {request.method} {request.path}", e.status)
    except Exception:  # a bug: log it, answer a generic error, keep serving
        log.exception("unhandled error for %s %s", request.method, request.path)
        return _error("internal server error", 500)


def oip_app(max_request_bytes: int, **handlers: Handler) -> web.Application:
    """The Open Inference Protocol's REST routes (oip_routes.ROUTES, which the router's lean
    server matches too) with the shared error answers; one handler per name in
    oip_routes.HANDLER_NAMES."""
    missing = set(HANDLER_NAMES) ^ set(handlers)
    if missing:
        raise TypeError(f"oip_app: handlers missing or unknown: {sorted(missing)}")
    # Leave room for the JSON header around a maximum-size tensor.
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=max_request_bytes + 65536
    )
    for method, path, name in ROUTES:
        app.router.add_route(method, path, handlers[name])
        if method == "GET":  # aiohttp's add_get answers HEAD too; the lean server does
            app.router.add_route("HEAD", path, handlers[name])
    return app


class RestServer:
    def __init__(self, front: FrontEnd, limits: ServerLimits | None = None) -> None:
        self.front = front
        self.limits = limits or ServerLimits()

    def app(self) -> web.Application:
        return oip_app(
            self.front.max_request_bytes,
            infer=self.infer,
            server_metadata=self.server_metadata,
            live=self.live,
            ready=self.ready,
            stats=self.stats,
            model_metadata=self.model_metadata,
            model_ready=self.model_ready,
            model_config=self.model_config,
            repository_index=self.repository_index,
            load=self.load,
            unload=self.unload,
            metrics=self.metrics,
        )

    # ----------------------------------------------------------------- health, metadata
    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(self.front.server_metadata())

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if self.front.ready():
            return web.Response(status=200)
        return _error("the group is not ready (a rank is gone or the server is stopping)", 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(self.front.model_metadata(m["model"], m.get("version")))

    async def model_config(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(self.front.model_config(m["model"], m.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        m = request.match_info
        if self.front.model_ready(m["model"], m.get("version")):
            return web.Response(status=200)
        return _error(f"model '{m['model']}' is not ready", 503)

    async def stats(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(self.front.statistics(m.get("model"), m.get("version")))

    # ----------------------------------------------------------------- inference
    async def infer(self, request: web.Request) -> web.Response:
        arrival = self.front.clock()
        m = request.match_info
        model = m["model"]
        version = m.get("version")
        front = self.front
        with front.handling():
            with front.refusals(model, arrival):
                info = front.info(model, version)  # 404 before reading a body for nothing
                length = request.content_length
                if length is not None and length > front.max_request_bytes:
                    raise PayloadTooLarge(
                        f"request body has {length} bytes, more than the maximum "
                        f"{front.max_request_bytes} bytes"
                    )
                body = await _read_body(request, self.limits.body_timeout_s)
                decoded = decode_rest_request(
                    body,
                    _header_length(request.headers.get(HEADER_LENGTH)),
                    front.max_request_bytes,
                )
            info, outputs = await front.infer(model, version, decoded, arrival, info)
            started = front.clock()
            payload, header_len = encode_rest_response(info.name, info.version, decoded.id, outputs)
            front.record_output(model, started)
        if header_len is None:
            return web.Response(body=payload, content_type=JSON)
        return web.Response(
            body=payload, content_type=_BINARY, headers={HEADER_LENGTH: str(header_len)}
        )

    # ----------------------------------------------------------------- repository
    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _optional_json(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("'ready' must be true or false")
        return _json(self.front.repository_index(ready))

    async def load(self, request: web.Request) -> web.Response:
        body = await _optional_json(request)
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequest("'parameters' must be an object")
        unsupported = [k for k in params if k == "config" or k.startswith("file:")]
        if unsupported:
            raise InvalidRequest(
                f"load parameters {unsupported} are not supported: statmux loads the models "
                "of its Plan, it does not take model configs or files"
            )
        await self.front.load(request.match_info["model"])
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        await _optional_json(request)
        await self.front.unload(request.match_info["model"])
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        body = exposition(self.front.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


async def _read_body(request: web.Request, timeout_s: float) -> bytes:
    try:
        return await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


async def _optional_json(request: web.Request) -> dict[str, Any]:
    return parse_optional_json(await _read_body(request, 30.0))


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, with OIP JSON parser errors, a head timeout and a cap."""

    def __init__(self, manager: web.Server, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._limits.max_connections:
            log.warning(
                "closing a connection: %d open, the limit is %d",
                len(manager.connections),
                self._limits.max_connections,
            )
            self.force_close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._current_request is not None:
            self._stop_head_timer()  # a complete head: the handler takes over
        elif data and self._head_timer is None and self.transport is not None:
            self._head_timer = self._loop.call_later(
                self._limits.head_timeout_s, self._head_timed_out
            )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._messages or self._current_request is not None or self.transport is None:
            return
        body = json.dumps(
            {"error": f"the request head did not arrive within {self._limits.head_timeout_s:g} s"}
        ).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Errors raised outside the app (mostly the HTTP parser's): the OIP JSON body."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already under way")
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            text = "internal server error"
        else:
            detail = (message or (str(exc) if exc else "") or "malformed request").strip()
            text = f"malformed HTTP request: {detail.splitlines()[0][:200]}"
        resp = _error(text, status)
        resp.force_close()
        return resp


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, limits=self._limits, **self._kwargs)


class _GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _GuardedServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            limits=self._limits,
            **base._kwargs,
        )


async def start_http(
    front: FrontEnd, host: str, port: int, limits: ServerLimits | None = None
) -> web.AppRunner:
    """Serve on host:port from the running event loop; returns the runner to clean up."""
    limits = limits or ServerLimits()
    runner = _GuardedRunner(
        RestServer(front, limits).app(),
        limits,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,  # a client that disconnects cancels its request
        keepalive_timeout=limits.keepalive_timeout_s,
        shutdown_timeout=limits.drain_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (for port 0)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    raise RuntimeError("the HTTP server is not bound to a TCP port")
