"""Open Inference Protocol over REST (aiohttp), plus /metrics, on the group leader.

Errors are always `{"error": "..."}` with a 4xx/5xx status from serving_errors; unknown paths
and methods get 404/405 in the same shape. A request without a Content-Type is accepted (that
is what tritonclient.http sends for pure JSON).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.oip_codec import decode_rest_request, encode_rest_response
from statmux.runtime.serving_errors import InvalidRequest, PayloadTooLarge, ServingError

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON = "application/json"
_BINARY = "application/octet-stream"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc, separators=(",", ":")).encode(), status=status, content_type=_JSON
    )


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as e:
        return _error(str(e), e.http_status)
    except web.HTTPRequestEntityTooLarge as e:
        return _error(f"request body too large: {e.text}", 413)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(f"{e.reason}: {request.method} {request.path}", e.status)
    except Exception:  # a bug: log it, answer a generic error, keep serving
        log.exception("unhandled error for %s %s", request.method, request.path)
        return _error("internal server error", 500)


class RestServer:
    def __init__(self, front: FrontEnd) -> None:
        self.front = front

    def app(self) -> web.Application:
        # Leave room for the JSON header around a maximum-size tensor.
        app = web.Application(
            middlewares=[_errors], client_max_size=self.front.max_request_bytes + 65536
        )
        r = app.router
        # aiohttp tries dynamic routes in order: the hot one first
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_post(base + "/infer", self.infer)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2/models/stats", self.stats)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(base, self.model_metadata)
            r.add_get(base + "/ready", self.model_ready)
            r.add_get(base + "/config", self.model_config)
            r.add_get(base + "/stats", self.stats)
        r.add_post("/v2/repository/index", self.repository_index)
        r.add_post("/v2/repository/models/{model}/load", self.load)
        r.add_post("/v2/repository/models/{model}/unload", self.unload)
        r.add_get("/metrics", self.metrics)
        return app

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
        info = self.front.info(model, version)  # 404 before reading a body for nothing
        length = request.content_length
        if length is not None and length > self.front.max_request_bytes:
            raise PayloadTooLarge(
                f"request body has {length} bytes, more than the maximum "
                f"{self.front.max_request_bytes} bytes"
            )
        body = await request.read()
        try:
            decoded = decode_rest_request(
                body,
                _header_length(request.headers.get(HEADER_LENGTH)),
                self.front.max_request_bytes,
            )
        except ServingError as e:
            self.front.record_invalid(model, e, arrival)
            raise
        info, outputs = await self.front.infer(model, version, decoded, arrival, info)
        payload, header_len = encode_rest_response(info.name, info.version, decoded.id, outputs)
        if header_len is None:
            return web.Response(body=payload, content_type=_JSON)
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
        body = generate_latest(self.front.registry)
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


async def _optional_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("body must be a JSON object")
    return doc


async def start_http(front: FrontEnd, host: str, port: int) -> web.AppRunner:
    """Serve on host:port from the running event loop; returns the runner to clean up."""
    runner = web.AppRunner(RestServer(front).app(), access_log=None, handle_signals=False)
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
