"""The router's fast path (router_fast): inference served from callbacks, and every way it
hands over to the coroutine path. The real Router and its REST server on real sockets, in
front of two scripted stand-in groups (raw asyncio servers) whose answers the test chooses:
an answer, a 503, a connection closed before or in the middle of the answer, no answer."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from statmux.runtime.lean_http import LeanServer
from statmux.runtime.router_config import build_config
from statmux.runtime.router_core import Router
from statmux.runtime.router_http import start_router_http
from statmux.runtime.router_upstream import Upstreams
from statmux.runtime.server_limits import ServerLimits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from plans import make_test_plan

MODEL = "m"
PATH = f"/v2/models/{MODEL}/infer"


class StubGroup:
    """A group leader that answers health checks, and inference requests as scripted: each
    request takes the next action ("ok" when the script is empty): "ok" echoes the body
    with the group's name, "503" refuses, "drop" closes before answering, "half" sends half
    an answer then closes, "hang" never answers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script: deque[str] = deque()
        self.inferences = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if head.startswith(b"GET /v2/health/ready"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.inferences += 1
                action = self.script.popleft() if self.script else "ok"
                if action == "hang":
                    await asyncio.sleep(3600)
                if action == "drop":
                    writer.close()
                    return
                answer = self.name.encode() + b":" + body
                if action == "503":
                    answer = b'{"error":"stopping"}'
                status = b"503 Service Unavailable" if action == "503" else b"200 OK"
                message = (
                    b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (status, len(answer), answer)
                )
                if action == "half":
                    writer.write(message[: len(message) // 2])
                    await writer.drain()
                    writer.close()
                    return
                writer.write(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def request(body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (PATH.encode(), len(body), body)
    )


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


class Setup:
    def __init__(self, router: Router, server: LeanServer, groups: list[StubGroup]) -> None:
        self.router = router
        self.server = server
        self.groups = groups

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)

    async def ask(self, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self.connect()
        try:
            writer.write(request(body))
            return await read_answer(reader)
        finally:
            writer.close()

    def counts(self) -> dict[str, int]:
        mm = self.router.model_metrics(MODEL)
        return {
            "requests": mm.requests,
            "success": mm.success,
            "retries": mm.retries,
            **{f"failed_{k}": v for k, v in mm.failed.items() if v},
            **{f"rejected_{k}": v for k, v in mm.rejected.items() if v},
        }

    def outstanding(self) -> int:
        return self.router.outstanding()


def run(test: Callable[[Setup], Awaitable[None]], replicas: int = 2, hop_s: float = 30.0) -> None:
    async def main() -> None:
        groups = [StubGroup(f"g{i}") for i in range(replicas)]
        urls = {g.name: await g.start() for g in groups}
        plan = make_test_plan([(1, 1, [MODEL]) for _ in groups])
        router = Router(build_config(plan, urls, strict=True), Upstreams(1.0, hop_s))
        await router.probe_all()  # each group's health check leaves an idle connection
        server = await start_router_http(router, "127.0.0.1", 0, 1 << 16, ServerLimits())
        try:
            await test(Setup(router, server, groups))
        finally:
            await server.close(1.0)
            await router.stop()
            for g in groups:
                g.close()

    asyncio.run(main())


def test_keep_alive_inference_takes_the_fast_path_and_is_counted() -> None:
    async def test(s: Setup) -> None:
        reader, writer = await s.connect()
        for i in range(20):
            writer.write(request(b"%d" % i))
            assert await read_answer(reader) == (200, b"g0:%d" % i)
        writer.close()
        assert s.router.fast_requests == 20
        assert s.counts() == {"requests": 20, "success": 20, "retries": 0}
        assert s.outstanding() == 0

    run(test)


def test_pipelined_requests_behind_a_fast_one_are_answered_in_order() -> None:
    async def test(s: Setup) -> None:
        reader, writer = await s.connect()
        writer.write(b"".join(request(b"%d" % i) for i in range(5)))
        answers = [await read_answer(reader) for _ in range(5)]
        writer.close()
        assert answers == [(200, b"g0:%d" % i) for i in range(5)]
        assert s.router.fast_requests >= 1  # the first one at least; the rest queued
        assert s.counts() == {"requests": 5, "success": 5, "retries": 0}

    run(test)


def test_a_503_is_retried_on_the_other_replica() -> None:
    async def test(s: Setup) -> None:
        s.groups[0].script.append("503")
        assert await s.ask(b"x") == (200, b"g1:x")
        assert s.router.fast_requests == 1
        assert s.counts() == {"requests": 1, "success": 1, "retries": 1}
        g0 = s.router.by_model[MODEL][0]
        assert not g0.up and "503" in g0.why_down and "stopping" in g0.why_down
        assert s.outstanding() == 0

    run(test)


def test_a_connection_broken_mid_answer_is_retried_on_the_other_replica() -> None:
    async def test(s: Setup) -> None:
        s.groups[0].script.append("half")
        assert await s.ask(b"y") == (200, b"g1:y")
        assert s.counts() == {"requests": 1, "success": 1, "retries": 1}
        assert not s.router.by_model[MODEL][0].up
        assert s.outstanding() == 0

    run(test)


def test_an_idle_connection_the_group_closed_is_resent_to_the_same_group() -> None:
    async def test(s: Setup) -> None:
        s.groups[0].script.append("drop")  # closed with no byte of answer: as if idle-closed
        assert await s.ask(b"z") == (200, b"g0:z")
        assert s.groups[0].inferences == 2  # the dropped send and the resend
        assert s.counts() == {"requests": 1, "success": 1, "retries": 0}
        assert s.router.by_model[MODEL][0].up  # not suspect
        assert s.outstanding() == 0

    run(test)


def test_no_answer_within_the_hop_timeout_is_504_and_counted() -> None:
    async def test(s: Setup) -> None:
        s.groups[0].script.append("hang")
        status, body = await s.ask(b"t")
        assert status == 504 and b"g0" in body and b"no answer within 0.3 s" in body
        assert s.counts() == {"requests": 1, "success": 0, "retries": 0, "failed_timeout": 1}
        assert s.outstanding() == 0
        # the timed-out connection is not reused: the next request gets a clean answer
        assert await s.ask(b"u") == (200, b"g0:u")

    run(test, replicas=1, hop_s=0.3)


def test_a_client_that_goes_away_cancels_its_fast_request() -> None:
    async def test(s: Setup) -> None:
        s.groups[0].script.append("hang")
        _, writer = await s.connect()
        writer.write(request(b"c"))
        for _ in range(200):
            if s.groups[0].inferences:
                break
            await asyncio.sleep(0.01)
        assert s.outstanding() == 1
        writer.close()
        for _ in range(200):
            if not s.outstanding():
                break
            await asyncio.sleep(0.01)
        assert s.outstanding() == 0
        assert s.counts() == {"requests": 1, "success": 0, "retries": 0, "failed_cancelled": 1}
        assert await s.ask(b"d") == (200, b"g0:d")  # the abandoned connection is not reused

    run(test, replicas=1)


def test_refusals_go_the_coroutine_path_with_the_same_answers() -> None:
    async def test(s: Setup) -> None:
        for g in s.router.by_model[MODEL]:
            s.router.mark_down(g, "test: stopped")
        status, body = await s.ask(b"n")
        assert status == 503 and b"no live group hosts model 'm'" in body
        assert s.router.fast_requests == 0
        assert s.counts() == {
            "requests": 1,
            "success": 0,
            "retries": 0,
            "rejected_unavailable": 1,
        }

    run(test)
