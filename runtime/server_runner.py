"""Run the REST and gRPC front ends on one event loop, in this thread or a background one.

`serve()` is what `statmux runtime` runs on the group leader; `start_in_thread()` runs the
same servers on a background thread (tests, benchmarks, embedding in another program).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
from aiohttp import web

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.grpc_server import start_grpc
from statmux.runtime.http_server import bound_port, start_http
from statmux.runtime.server_limits import ServerLimits

__all__ = ["BackgroundServer", "ServerLimits", "Servers", "serve", "start_servers"]

log = logging.getLogger(__name__)


@dataclass
class Servers:
    http: web.AppRunner
    http_port: int
    grpc: grpc.aio.Server | None
    grpc_port: int | None
    limits: ServerLimits = field(default_factory=ServerLimits)

    async def stop(self, front: FrontEnd) -> None:
        """Drain, then close: readiness goes false and new requests get 503 at once, the
        listeners stay open (in-flight keep-alive connections keep working) until every
        accepted request is answered or the drain timeout passes, then everything closes."""
        start = time.monotonic()
        front.drain()
        log.info("draining: readiness is false; waiting for accepted requests to finish")
        done = await front.drained(self.limits.drain_timeout_s)
        if done:
            log.info("drained in %.2f s", time.monotonic() - start)
        else:
            log.warning(
                "drain timeout %.1f s passed with requests still running; failing them",
                self.limits.drain_timeout_s,
            )
        front.close()
        if self.grpc is not None:
            await self.grpc.stop(1.0)
        await self.http.cleanup()


async def start_servers(
    front: FrontEnd,
    host: str,
    http_port: int,
    grpc_port: int | None,
    limits: ServerLimits | None = None,
) -> Servers:
    limits = limits or ServerLimits()
    runner = await start_http(front, host, http_port, limits)
    grpc_server, bound = (None, None)
    if grpc_port is not None:
        try:
            grpc_server, bound = await start_grpc(front, host, grpc_port, limits)
        except BaseException:
            await runner.cleanup()
            raise
    return Servers(runner, bound_port(runner), grpc_server, bound, limits)


async def serve(
    front: FrontEnd,
    host: str,
    http_port: int,
    grpc_port: int | None,
    stop: asyncio.Event,
    limits: ServerLimits | None = None,
) -> None:
    """Serve until `stop` is set, then drain (see Servers.stop) and shut the servers down."""
    servers = await start_servers(front, host, http_port, grpc_port, limits)
    try:
        await stop.wait()
    finally:
        await servers.stop(front)


class BackgroundServer:
    """The servers on a daemon thread with its own event loop; `stop()` joins it."""

    def __init__(
        self,
        front: FrontEnd,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int | None = 0,
        limits: ServerLimits | None = None,
    ) -> None:
        self.front = front
        self.host = host
        self.limits = limits
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._servers: Servers | None = None
        self._thread = threading.Thread(
            target=self._run, args=(http_port, grpc_port), name="statmux-frontend", daemon=True
        )
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if self._servers is None:
            raise TimeoutError("the servers did not start within 30 s")

    @property
    def http_port(self) -> int:
        assert self._servers is not None
        return self._servers.http_port

    @property
    def grpc_port(self) -> int | None:
        assert self._servers is not None
        return self._servers.grpc_port

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def _run(self, http_port: int, grpc_port: int | None) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._servers = self._loop.run_until_complete(
                start_servers(self.front, self.host, http_port, grpc_port, self.limits)
            )
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._servers.stop(self.front))
        self._loop.close()

    def call(self, fn: object) -> None:
        """Run a plain callable on the server's loop (for changing state from tests)."""
        assert callable(fn)
        self._loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
