"""The router's Open Inference Protocol over REST: the group front end's paths and errors.

Inference bodies are forwarded as bytes (JSON or the binary tensor extension) and the group's
answer comes back as bytes: the router never decodes tensors. It reads only the JSON header's
first input shape, to know the request's rows for dispatch (cached per distinct header, as
tritonclient sends the same header for every request of a shape). A malformed request goes to
a group like any other, so its 4xx is exactly the group's.
"""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from statmux.runtime.frontend import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from statmux.runtime.http_server import (
    _errors,
    _GuardedRunner,
    _header_length,
    _json,
    _optional_json,
    _read_body,
)
from statmux.runtime.router_core import Router
from statmux.runtime.router_upstream import HEADER_LENGTH, Reply
from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.serving_errors import InvalidRequest, PayloadTooLarge, ServingError

_ROWS_CACHE_SIZE = 1024
_ROWS: dict[bytes, int] = {}


def request_rows(header: bytes) -> int:
    """Rows (the first input's batch dimension) of a REST inference request; 1 when the
    header is not what the group would accept (the group's answer explains why)."""
    rows = _ROWS.get(header)
    if rows is not None:
        return rows
    rows = 1
    try:
        doc = json.loads(header)
        shape = doc["inputs"][0]["shape"]
        if shape and type(shape[0]) is int and shape[0] > 0:
            rows = shape[0]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return 1
    if len(header) <= 4096:
        if len(_ROWS) >= _ROWS_CACHE_SIZE:
            _ROWS.clear()
        _ROWS[header] = rows
    return rows


def _reply(reply: Reply) -> web.Response:
    headers = {}
    if reply.content_type:
        headers["Content-Type"] = reply.content_type
    if reply.header_length is not None:
        headers[HEADER_LENGTH] = reply.header_length
    return web.Response(body=reply.body, status=reply.status, headers=headers)


class RouterRest:
    def __init__(self, router: Router, max_request_bytes: int, limits: ServerLimits) -> None:
        self.router = router
        self.max_request_bytes = max_request_bytes
        self.limits = limits

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=self.max_request_bytes + 65536)
        r = app.router
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_post(base + "/infer", self.infer)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2/models/stats", self.stats)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(base, self.forward)
            r.add_get(base + "/ready", self.model_ready)
            r.add_get(base + "/config", self.forward)
            r.add_get(base + "/stats", self.stats)
        r.add_post("/v2/repository/index", self.repository_index)
        r.add_post("/v2/repository/models/{model}/load", self.repository_change)
        r.add_post("/v2/repository/models/{model}/unload", self.repository_change)
        r.add_get("/metrics", self.metrics)
        return app

    # ----------------------------------------------------------------- inference
    async def infer(self, request: web.Request) -> web.Response:
        router = self.router
        arrival = router.clock()
        model = request.match_info["model"]
        router.check_model(model)  # 404 before reading a body for nothing
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            router.record_invalid(model)
            raise PayloadTooLarge(
                f"request body has {length} bytes, more than the maximum "
                f"{self.max_request_bytes} bytes"
            )
        try:
            body = await _read_body(request, self.limits.body_timeout_s)
        except (ServingError, web.HTTPException):  # too slow (408), too large (413)
            router.record_invalid(model)
            raise
        headers: dict[str, str] = {}
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            headers[HEADER_LENGTH] = header_length
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            cut = _header_length(header_length)
        except InvalidRequest:
            cut = None  # the group names the problem
        header = body if cut is None or not 0 <= cut <= len(body) else body[:cut]
        reply = await router.infer(
            model, request.raw_path, body, headers, request_rows(header), arrival
        )
        return _reply(reply)

    # ----------------------------------------------------------------- health, metadata
    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if self.router.ready():
            return web.Response(status=200)
        return _json({"error": self.router.not_ready_reason()}, 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        self.router.check_model(model)
        if self.router.model_ready(model):
            return web.Response(status=200)
        return _json({"error": f"model '{model}' is not ready: no live group hosts it"}, 503)

    async def forward(self, request: web.Request) -> web.Response:
        reply = await self.router.forward(request.match_info["model"], "GET", request.raw_path)
        return _reply(reply)

    async def stats(self, request: web.Request) -> web.Response:
        model = request.match_info.get("model")
        if model is None:
            return _json(await self.router.all_stats())
        self.router.check_model(model)
        reply = await self.router.forward(model, "GET", request.raw_path)
        return _reply(reply)

    # ----------------------------------------------------------------- repository
    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _optional_json(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("'ready' must be true or false")
        return _json(self.router.repository_index(ready))

    async def repository_change(self, request: web.Request) -> web.Response:
        body = await request.read()
        replies = await self.router.forward_each(
            request.match_info["model"], "POST", request.raw_path, body
        )
        bad = [r for r in replies if r.status != 200]
        return _reply(bad[0] if bad else replies[0])

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.router.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


async def start_router_http(
    router: Router, host: str, port: int, max_request_bytes: int, limits: ServerLimits
) -> web.AppRunner:
    """The group front end's hardened aiohttp server (head/body timeouts, a connection cap,
    OIP errors for malformed HTTP), with a client disconnect cancelling the group request."""
    runner = _GuardedRunner(
        RouterRest(router, max_request_bytes, limits).app(),
        limits,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        keepalive_timeout=limits.keepalive_timeout_s,
        shutdown_timeout=limits.drain_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
