"""The router's Open Inference Protocol over REST: the group front end's paths and errors.

Served by lean_http (aiohttp's server turn costs more than the router's whole budget: see
docs/router.md, "Overhead"); the routes and error answers are oip_routes', the same ones the
group front end's aiohttp app serves.

Inference bodies are forwarded as bytes (JSON or the binary tensor extension) and the group's
answer comes back as bytes: the router never decodes tensors. It only scans the JSON header
for the first tensor shape, to know the request's rows for dispatch. A malformed request goes to
a group like any other, so its 4xx is exactly the group's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from statmux.runtime.frontend import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from statmux.runtime.lean_http import Cancel, LeanServer, Request, Response
from statmux.runtime.oip_routes import (
    HANDLER_NAMES,
    JSON,
    RouteNotFound,
    RouteTable,
    error_answer,
    json_bytes,
    parse_optional_json,
    serving_error_answer,
)
from statmux.runtime.router_core import Router
from statmux.runtime.router_fast import Result, start_fast
from statmux.runtime.router_upstream import HEADER_LENGTH, Reply
from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.serving_errors import InvalidRequest, PayloadTooLarge, ServingError

log = logging.getLogger(__name__)

_SHAPE = re.compile(rb'"shape"\s*:\s*\[\s*(\d+)')
_ROWS_SCAN = 4096
_HEADER_LENGTH = HEADER_LENGTH.lower().encode()
_FORWARD_HEADER_LENGTH = HEADER_LENGTH.encode() + b": "
# Leave room for the JSON header around a maximum-size tensor (as the group front end does).
BODY_SLACK = 65536

Params = dict[str, str]
Handler = Callable[[Request, Params], Awaitable[Response]]


def request_rows(header: bytes) -> int:
    """Rows of a REST inference request: the first tensor shape's batch dimension, found by a
    scan of the header's first bytes rather than a JSON parse (a plain-JSON body can be
    large); 1 when there is none (the group names what is wrong)."""
    m = _SHAPE.search(header, 0, _ROWS_SCAN)
    rows = int(m.group(1)) if m else 1
    return rows if rows > 0 else 1


def _header_cut(value: bytes | None) -> int | None:
    """Where the JSON header ends (Inference-Header-Content-Length); None when absent or
    not a number (the group then names the problem)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _forwarded(request: Request) -> tuple[bytes, int]:
    """The header lines a group reads, passed on as the client sent them (httptools accepted
    them, so they hold no line breaks), and the request's rows."""
    body = request.body
    get = request.headers.get
    header_length = get(_HEADER_LENGTH)
    content_type = get(b"content-type")
    headers = b""
    if header_length is not None:
        headers = _FORWARD_HEADER_LENGTH + header_length + b"\r\n"
    if content_type is not None:
        headers += b"Content-Type: " + content_type + b"\r\n"
    cut = _header_cut(header_length)
    header = body if cut is None or not 0 <= cut <= len(body) else body[:cut]
    return headers, request_rows(header)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(status, json_bytes(doc), JSON)


def _error(e: ServingError) -> Response:
    a = serving_error_answer(e)
    return Response(a.status, a.body, JSON, a.headers, a.close)


def _reply(reply: Reply) -> Response:
    headers = () if reply.header_length is None else ((HEADER_LENGTH, reply.header_length),)
    return Response(reply.status, reply.body, reply.content_type, headers)


_OK = Response(200)


class RouterRest:
    """lean_http's App: route (oip_routes), check what can be checked from the head, forward."""

    def __init__(self, router: Router, max_request_bytes: int, limits: ServerLimits) -> None:
        self.router = router
        self.max_request_bytes = max_request_bytes
        self.limits = limits
        self.routes = RouteTable()
        self.handlers: dict[str, Handler] = {
            "infer": self.infer,
            "server_metadata": self.server_metadata,
            "live": self.live,
            "ready": self.ready,
            "stats": self.stats,
            "model_metadata": self.forward,
            "model_ready": self.model_ready,
            "model_config": self.forward,
            "repository_index": self.repository_index,
            "load": self.repository_change,
            "unload": self.repository_change,
            "metrics": self.metrics,
        }
        assert set(self.handlers) == set(HANDLER_NAMES)

    # ----------------------------------------------------------------- lean_http.App
    def head(self, request: Request) -> Response | None:
        try:
            name, params = self.routes.match(request.method, request.path)
        except RouteNotFound as e:
            a = error_answer(str(e), e.status)
            return Response(a.status, a.body, JSON)
        request.state = (name, params, self.router.clock())
        if name != "infer":
            return None
        model = params["model"]
        try:
            self.router.check_model(model)  # 404 before reading a body for nothing
        except ServingError as e:
            return _error(e)
        length = request.headers.get(b"content-length")
        if length is not None and int(length) > self.max_request_bytes:
            self.router.record_invalid(model)
            return _error(
                PayloadTooLarge(
                    f"request body has {int(length)} bytes, more than the maximum "
                    f"{self.max_request_bytes} bytes"
                )
            )
        return None

    async def handle(self, request: Request) -> Response:
        name, params, _ = request.state
        try:
            return await self.handlers[name](request, params)
        except ServingError as e:
            return _error(e)
        except Exception:  # a bug: log it, answer a generic error, keep serving
            log.exception("unhandled error for %s %s", request.method, request.path)
            return _error_500()

    def refuse(self, request: Request | None, error: ServingError) -> Response:
        if request is not None and request.state is not None and request.state[0] == "infer":
            self.router.record_invalid(request.state[1]["model"])  # too slow, too large
        return _error(error)

    def start(self, request: Request, finish: Callable[[Response], None]) -> Cancel | None:
        """Inference requests that can go straight to a group's idle connection are answered
        from callbacks (router_fast); everything else through `handle`."""
        state = request.state
        if state is None or state[0] != "infer":
            return None
        headers, rows = _forwarded(request)

        def done(result: Result) -> None:
            if isinstance(result, Reply):
                finish(_reply(result))
            elif isinstance(result, ServingError):
                finish(_error(result))
            else:
                finish(_error_500())

        fast = start_fast(
            self.router,
            state[1]["model"],
            request.target,
            request.body,
            headers,
            rows,
            state[2],
            done,
        )
        return None if fast is None else fast.cancel

    # ----------------------------------------------------------------- inference
    async def infer(self, request: Request, params: Params) -> Response:
        headers, rows = _forwarded(request)
        reply = await self.router.infer(
            params["model"], request.target, request.body, headers, rows, request.state[2]
        )
        return _reply(reply)

    # ----------------------------------------------------------------- health, metadata
    async def server_metadata(self, request: Request, params: Params) -> Response:
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    async def live(self, request: Request, params: Params) -> Response:
        return _OK

    async def ready(self, request: Request, params: Params) -> Response:
        if self.router.ready():
            return _OK
        return _json({"error": self.router.not_ready_reason()}, 503)

    async def model_ready(self, request: Request, params: Params) -> Response:
        model = params["model"]
        self.router.check_model(model)
        if self.router.model_ready(model):
            return _OK
        return _json({"error": f"model '{model}' is not ready: no live group hosts it"}, 503)

    async def forward(self, request: Request, params: Params) -> Response:
        return _reply(await self.router.forward(params["model"], "GET", request.target))

    async def stats(self, request: Request, params: Params) -> Response:
        model = params.get("model")
        if model is None:
            return _json(await self.router.all_stats())
        self.router.check_model(model)
        return _reply(await self.router.forward(model, "GET", request.target))

    # ----------------------------------------------------------------- repository
    async def repository_index(self, request: Request, params: Params) -> Response:
        ready = parse_optional_json(request.body).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("'ready' must be true or false")
        return _json(self.router.repository_index(ready))

    async def repository_change(self, request: Request, params: Params) -> Response:
        replies = await self.router.forward_each(
            params["model"], "POST", request.target, request.body
        )
        bad = [r for r in replies if r.status != 200]
        return _reply(bad[0] if bad else replies[0])

    async def metrics(self, request: Request, params: Params) -> Response:
        return Response(200, generate_latest(self.router.metrics.registry), CONTENT_TYPE_LATEST)


def _error_500() -> Response:
    a = error_answer("internal server error", 500)
    return Response(a.status, a.body, JSON)


async def start_router_http(
    router: Router, host: str, port: int, max_request_bytes: int, limits: ServerLimits
) -> LeanServer:
    """The router's REST server (lean_http: head/body timeouts, a connection cap, OIP errors
    for malformed HTTP, a client disconnect cancelling its group request)."""
    app = RouterRest(router, max_request_bytes, limits)
    return await LeanServer.start(app, host, port, limits, max_request_bytes + BODY_SLACK)
