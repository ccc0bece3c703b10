"""The router's Open Inference Protocol over REST: the group front end's paths and errors.

Inference bodies are forwarded as bytes (JSON or the binary tensor extension) and the group's
answer comes back as bytes: the router never decodes tensors. It only scans the JSON header
for the first tensor shape, to know the request's rows for dispatch. A malformed request goes to
a group like any other, so its 4xx is exactly the group's.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from statmux.runtime.frontend import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from statmux.runtime.http_server import (
    _GuardedRunner,
    _header_length,
    _json,
    _optional_json,
    oip_app,
)
from statmux.runtime.router_core import Router
from statmux.runtime.router_upstream import HEADER_LENGTH, Reply
from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.serving_errors import (
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
)

_SHAPE = re.compile(rb'"shape"\s*:\s*\[\s*(\d+)')
_ROWS_SCAN = 4096


def request_rows(header: bytes) -> int:
    """Rows of a REST inference request: the first tensor shape's batch dimension, found by a
    scan of the header's first bytes rather than a JSON parse (a plain-JSON body can be
    large); 1 when there is none (the group names what is wrong)."""
    m = _SHAPE.search(header, 0, _ROWS_SCAN)
    rows = int(m.group(1)) if m else 1
    return rows if rows > 0 else 1


async def _read_body_fast(request: web.Request, timeout_s: float) -> bytes:
    """The body within timeout_s; asyncio.timeout, unlike wait_for, runs no extra task (a
    small body is already read with the head, and this returns without suspending)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


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
        return oip_app(
            self.max_request_bytes,
            infer=self.infer,
            server_metadata=self.server_metadata,
            live=self.live,
            ready=self.ready,
            stats=self.stats,
            model_metadata=self.forward,
            model_ready=self.model_ready,
            model_config=self.forward,
            repository_index=self.repository_index,
            load=self.repository_change,
            unload=self.repository_change,
            metrics=self.metrics,
        )

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
            body = await _read_body_fast(request, self.limits.body_timeout_s)
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
