"""The Open Inference Protocol's REST routes and error answers: one definition for every server.

The group front end (aiohttp, http_server) and the router (lean_http, router_http) serve the
same paths and answer errors the same way: `{"error": "..."}` with the status of the
ServingError, Retry-After on a 429, and Connection: close when the connection cannot be reused
(a drain: go elsewhere; a request timeout: the byte stream is out of step). Unknown paths get
404 and known paths with another method 405, in the same shape.

Matching follows aiohttp's rules, so both servers resolve a path alike: routes are tried in
order, `{name}` matches one path segment (percent-encoded as sent, decoded in the result), a
GET route answers HEAD too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from statmux.runtime.serving_errors import (
    Draining,
    InvalidRequest,
    Rejected,
    RequestTimeout,
    ServingError,
)

JSON = "application/json"

# (method, path, handler name); the hot route first: both servers try them in this order.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v2/models/{model}/infer", "infer"),
    ("POST", "/v2/models/{model}/versions/{version}/infer", "infer"),
    ("GET", "/v2", "server_metadata"),
    ("GET", "/v2/health/live", "live"),
    ("GET", "/v2/health/ready", "ready"),
    ("GET", "/v2/models/stats", "stats"),
    *(
        route
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
        for route in (
            ("GET", base, "model_metadata"),
            ("GET", base + "/ready", "model_ready"),
            ("GET", base + "/config", "model_config"),
            ("GET", base + "/stats", "stats"),
        )
    ),
    ("POST", "/v2/repository/index", "repository_index"),
    ("POST", "/v2/repository/models/{model}/load", "load"),
    ("POST", "/v2/repository/models/{model}/unload", "unload"),
    ("GET", "/metrics", "metrics"),
)
HANDLER_NAMES = tuple(dict.fromkeys(name for _, _, name in ROUTES))

_VAR = re.compile(r"\{(\w+)\}")


def json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: bytes  # {"error": "..."}
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # answer with Connection: close and close the connection


def error_answer(message: str, status: int) -> ErrorAnswer:
    return ErrorAnswer(status, json_bytes({"error": message}))


def serving_error_answer(e: ServingError) -> ErrorAnswer:
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(e, Rejected):
        headers = (("Retry-After", str(max(1, math.ceil(e.retry_after_s)))),)
    close = isinstance(e, (Draining, RequestTimeout))
    return ErrorAnswer(e.http_status, json_bytes({"error": str(e)}), headers, close)


def parse_optional_json(body: bytes) -> dict[str, Any]:
    """A request body that may be empty or a JSON object (repository requests)."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("body must be a JSON object")
    return doc


class RouteNotFound(Exception):
    """No route has this path (404) or none for this method (405); the message is aiohttp's."""

    def __init__(self, status: int, method: str, path: str) -> None:
        reason = "Not Found" if status == 404 else "Method Not Allowed"
        super().__init__(f"{reason}: {method} {unquote(path)}")
        self.status = status


MATCH_CACHE = 1024  # matched (method, path) pairs kept


class RouteTable:
    """ROUTES compiled for servers that do their own dispatch (the lean one)."""

    def __init__(self) -> None:
        self._routes = [
            (
                method,
                _compile(path) if "{" in path else None,
                path,
                name,
            )
            for method, path, name in ROUTES
        ]
        self._matched: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}

    def match(self, method: str, path: str) -> tuple[str, dict[str, str]]:
        """(handler name, path parameters) for a request path without its query. The
        parameters are shared between calls: read them, never change them."""
        key = (method, path)
        hit = self._matched.get(key)
        if hit is not None:  # a served model's paths repeat: no regex per request
            return hit
        found = self._match(method, path)
        if len(self._matched) >= MATCH_CACHE:  # arbitrary paths must not grow it forever
            self._matched.clear()
        self._matched[key] = found
        return found

    def _match(self, method: str, path: str) -> tuple[str, dict[str, str]]:
        want_method = "GET" if method == "HEAD" else method
        allowed = False
        for want, pattern, static, name in self._routes:
            if pattern is None:
                if path != static:
                    continue
                params: dict[str, str] = {}
            else:
                m = pattern.match(path)
                if m is None:
                    continue
                params = {k: unquote(v) if "%" in v else v for k, v in m.groupdict().items()}
            if want == want_method:
                return name, params
            allowed = True
        raise RouteNotFound(405 if allowed else 404, method, path)


def _compile(path: str) -> re.Pattern[str]:
    """`{name}` matches one segment, as aiohttp's; _VAR.split puts the names at odd places."""
    out = []
    for i, part in enumerate(_VAR.split(path)):
        out.append(f"(?P<{part}>[^{{}}/]+)" if i % 2 else re.escape(part))
    return re.compile("".join(out) + r"\Z")
