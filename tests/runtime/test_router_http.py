"""The router's REST server (lean_http) at the protocol level: real sockets, the real router
(in this process on its own event loop, or as `statmux router` for SIGTERM) in front of a real
group front end (LocalEngine: a tiny MLP and a slow model)."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.lean_http import LeanServer
from statmux.runtime.local_engine import LocalEngine, tiny_mlp
from statmux.runtime.oip_routes import MATCH_CACHE, RouteNotFound, RouteTable
from statmux.runtime.router_config import build_config
from statmux.runtime.router_core import Router
from statmux.runtime.router_http import start_router_http
from statmux.runtime.router_upstream import Upstreams
from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.server_runner import BackgroundServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from plans import make_test_plan
from slow_models import slow_model

MAX_BYTES = 1 << 16
SLOW_S = 0.5
LIMITS = ServerLimits(head_timeout_s=0.5, body_timeout_s=0.5, max_connections=16)


class RouterThread:
    """The real router (Router + its REST server) on a background event loop."""

    def __init__(self, group_url: str, limits: ServerLimits) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: LeanServer | None = None
        started = threading.Event()

        async def start() -> None:
            plan = make_test_plan([(1, 1, ["tiny-mlp", "slow"])])
            config = build_config(plan, {"g0": group_url}, strict=True)
            self.router = Router(config, Upstreams(1.0, 30.0))
            await self.router.probe_all()
            self.server = await start_router_http(self.router, "127.0.0.1", 0, MAX_BYTES, limits)

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(30), "the router did not start"

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            await self.server.close(1.0)
            await self.router.stop()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def group() -> Iterator[BackgroundServer]:
    engine = LocalEngine([tiny_mlp(), slow_model(seconds=SLOW_S)])
    srv = BackgroundServer(FrontEnd(engine, max_request_bytes=MAX_BYTES), grpc_port=None)
    yield srv
    srv.stop()
    engine.shutdown()


@pytest.fixture(scope="module")
def router(group: BackgroundServer) -> Iterator[RouterThread]:
    r = RouterThread(f"http://{group.http_url}", LIMITS)
    yield r
    r.stop()


def mlp_body(rows: int = 1) -> bytes:
    x = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16).tolist()
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [rows, 16], "data": x}
    return json.dumps({"inputs": [tensor]}).encode()


def slow_body() -> bytes:
    t = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}
    return json.dumps({"inputs": [t]}).encode()


def request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class Answers:
    """Read HTTP/1.1 answers (Content-Length framed) off one socket, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def next(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"closed before an answer: {self.buf!r}"
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        length = 0 if head_request else int(headers["content-length"])
        while len(rest) < length:
            assert self._fill(), "closed mid-body"
            rest = self.buf.partition(b"\r\n\r\n")[2]
        self.buf = rest[length:]
        return int(lines[0].split()[1]), headers, rest[:length]

    def closed(self) -> bool:
        """The server closed the connection (and sent nothing more)."""
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def oip_error(body: bytes) -> str:
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    return str(doc["error"])


# --------------------------------------------------------------------------- framing
def test_keep_alive_serves_many_requests_on_one_connection(router: RouterThread) -> None:
    with connect(router.port) as s:
        answers = Answers(s)
        for _ in range(3):
            s.sendall(request("POST", "/v2/models/tiny-mlp/infer", mlp_body()))
            status, headers, body = answers.next()
            assert status == 200, body
            assert "connection" not in headers
            assert json.loads(body)["outputs"][0]["shape"] == [1, 4]
            s.sendall(request("GET", "/v2/health/live"))
            assert answers.next()[0] == 200


def test_a_chunked_body_gives_the_same_answer(router: RouterThread) -> None:
    body = mlp_body(2)
    with connect(router.port) as s:
        answers = Answers(s)
        s.sendall(request("POST", "/v2/models/tiny-mlp/infer", body))
        want = answers.next()
        s.sendall(
            b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(0, len(body), 100):  # several chunks, in several segments
            part = body[i : i + 100]
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.01)
        s.sendall(b"0\r\n\r\n")
        got = answers.next()
    assert got[0] == want[0] == 200
    assert got[2] == want[2]


def test_pipelined_requests_are_answered_in_order(router: RouterThread) -> None:
    with connect(router.port) as s:
        answers = Answers(s)
        s.sendall(
            request("POST", "/v2/models/slow/infer", slow_body())  # the slowest goes first
            + request("GET", "/v2/models/nope/ready")
            + request("POST", "/v2/models/tiny-mlp/infer", mlp_body(3))
            + request("HEAD", "/v2")
            + request("GET", "/v2")
        )
        slow = answers.next()
        assert slow[0] == 200 and json.loads(slow[2])["outputs"][0]["data"] == [2, 4, 6, 8]
        nope = answers.next()
        assert nope[0] == 404 and "unknown model 'nope'" in oip_error(nope[2])
        mlp = answers.next()
        assert mlp[0] == 200 and json.loads(mlp[2])["outputs"][0]["shape"] == [3, 4]
        head = answers.next(head_request=True)  # HEAD: the GET's headers, no body
        get = answers.next()
        assert head[0] == get[0] == 200 and head[2] == b""
        assert head[1]["content-length"] == get[1]["content-length"] != "0"
        assert json.loads(get[2])["name"] == "statmux"


def test_http10_and_connection_close_are_honoured(router: RouterThread) -> None:
    with connect(router.port) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        answers = Answers(s)
        assert answers.next()[0] == 200
        assert answers.closed()
    with connect(router.port) as s:
        s.sendall(request("GET", "/v2/health/live", extra="Connection: close\r\n"))
        answers = Answers(s)
        status, headers, _ = answers.next()
        assert status == 200 and headers["connection"] == "close"
        assert answers.closed()


def test_expect_100_continue(router: RouterThread) -> None:
    body = mlp_body()
    with connect(router.port) as s:
        s.sendall(
            b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert Answers(s).next()[0] == 200


# --------------------------------------------------------------------------- bad clients
@pytest.mark.parametrize(
    "data",
    [
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
        b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET /v2 HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 binary junk\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    ],
)
def test_a_malformed_head_is_400_with_the_oip_body_and_closes(
    router: RouterThread, data: bytes
) -> None:
    with connect(router.port) as s:
        s.sendall(data)
        answers = Answers(s)
        status, headers, body = answers.next()
        assert status == 400 and headers["content-type"] == "application/json"
        assert oip_error(body).startswith("malformed HTTP request: ")
        assert headers["connection"] == "close"
        assert answers.closed()


def test_a_malformed_request_after_good_ones_is_answered_after_them(router: RouterThread) -> None:
    with connect(router.port) as s:
        s.sendall(request("POST", "/v2/models/slow/infer", slow_body()) + b"GARBAGE\r\n\r\n")
        answers = Answers(s)
        assert answers.next()[0] == 200
        assert answers.next()[0] == 400
        assert answers.closed()


def test_a_bad_body_after_an_answered_head_gets_one_400(router: RouterThread) -> None:
    """404 from the head, then a malformed chunk: each answered once, then the close."""
    with connect(router.port) as s:
        s.sendall(
            b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"\r\nzz\r\n"
        )
        answers = Answers(s)
        assert answers.next()[0] == 404
        status, _, body = answers.next()
        assert status == 400 and oip_error(body).startswith("malformed HTTP request")
        assert answers.closed()


def test_an_upgrade_request_is_answered_then_closed(router: RouterThread) -> None:
    with connect(router.port) as s:
        s.sendall(
            request("GET", "/v2/health/live", extra="Upgrade: h2c\r\nConnection: Upgrade\r\n")
        )
        answers = Answers(s)
        status, headers, _ = answers.next()
        assert status == 200 and headers["connection"] == "close"
        assert answers.closed()


def test_slowloris_heads_get_408_and_are_closed(router: RouterThread) -> None:
    socks = [connect(router.port) for _ in range(5)]
    try:
        start = time.monotonic()
        for s in socks:
            s.sendall(b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for s in socks:
            answers = Answers(s)
            status, headers, body = answers.next()
            assert status == 408 and "request head did not arrive" in oip_error(body)
            assert headers["connection"] == "close"
            assert answers.closed()
        assert time.monotonic() - start < 5  # head timeout 0.5 s, checked a few times a second
    finally:
        for s in socks:
            s.close()


def counted(router: RouterThread, name: str, model: str, reason: str) -> float:
    labels = {"model": model, "reason": reason}
    value = router.router.metrics.registry.get_sample_value(name, labels)
    assert value is not None
    return value


def test_a_body_that_never_arrives_gets_408_and_is_counted(router: RouterThread) -> None:
    before = counted(router, "statmux_router_failed_total", "tiny-mlp", "invalid")
    with connect(router.port) as s:
        s.sendall(request("POST", "/v2/models/tiny-mlp/infer").replace(b": 0", b": 1000") + b"{")
        answers = Answers(s)
        status, _, body = answers.next()
        assert status == 408 and "request body did not arrive" in oip_error(body)
        assert answers.closed()
    assert counted(router, "statmux_router_failed_total", "tiny-mlp", "invalid") == before + 1


def test_too_large_bodies_are_413(router: RouterThread) -> None:
    # declared: answered from the head, before the body is sent; the connection stays usable
    with connect(router.port) as s:
        s.sendall(
            b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BYTES + 1)
        )
        answers = Answers(s)
        status, _, body = answers.next()
        assert status == 413 and f"more than the maximum {MAX_BYTES} bytes" in oip_error(body)
        s.sendall(b"x" * (MAX_BYTES + 1))  # read and dropped
        s.sendall(request("GET", "/v2/health/live"))
        assert answers.next()[0] == 200
    # chunked: refused once it grows past the limit (with room for the JSON header); the
    # client, still sending, reads the answer (the server drops the rest, then closes)
    with connect(router.port) as s:
        s.sendall(
            b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        for _ in range(4):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answers = Answers(s)
        status, headers, body = answers.next()
        assert status == 413 and "request body too large" in oip_error(body)
        assert headers["connection"] == "close"
        assert answers.closed()


def test_connections_beyond_the_cap_are_closed(router: RouterThread) -> None:
    socks = [connect(router.port) for _ in range(LIMITS.max_connections + 8)]
    try:
        time.sleep(0.3)
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 8
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # and once they are gone it serves again
        try:
            with connect(router.port) as s:
                s.sendall(request("GET", "/v2/health/ready"))
                assert Answers(s).next()[0] == 200
            break
        except (AssertionError, ConnectionError):
            assert time.monotonic() < deadline, "the router never took connections again"
            time.sleep(0.1)


def test_a_client_that_goes_away_cancels_its_request(router: RouterThread) -> None:
    before = counted(router, "statmux_router_failed_total", "slow", "cancelled")
    with connect(router.port) as s:
        s.sendall(request("POST", "/v2/models/slow/infer", slow_body()))
        time.sleep(SLOW_S / 3)
    deadline = time.monotonic() + 10
    while counted(router, "statmux_router_failed_total", "slow", "cancelled") == before:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.05)
    assert counted(router, "statmux_router_failed_total", "slow", "cancelled") == before + 1


# --------------------------------------------------------------------------- clients, routes
def test_tritonclient_sync_and_asyncio(router: RouterThread, group: BackgroundServer) -> None:
    x = np.ones((2, 16), dtype=np.float32)
    direct = th.InferenceServerClient(group.http_url)
    c = th.InferenceServerClient(f"127.0.0.1:{router.port}")
    try:
        inp = th.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        want = direct.infer("tiny-mlp", [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(c.infer("tiny-mlp", [inp]).as_numpy("OUTPUT0"), want)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("slow")
        assert c.get_model_metadata("tiny-mlp") == direct.get_model_metadata("tiny-mlp")
    finally:
        c.close()
        direct.close()

    async def run() -> list[np.ndarray]:
        ac = tha.InferenceServerClient(f"127.0.0.1:{router.port}")
        try:
            inp = tha.InferInput("INPUT0", [2, 16], "FP32")
            inp.set_data_from_numpy(x)
            results = await asyncio.gather(*(ac.infer("tiny-mlp", [inp]) for _ in range(6)))
            return [r.as_numpy("OUTPUT0") for r in results]
        finally:
            await ac.close()

    for out in asyncio.run(run()):
        np.testing.assert_array_equal(out, want)


ROUTE_CASES = [
    ("GET", "/nope"),
    ("GET", "/v2/"),
    ("POST", "/v2"),
    ("GET", "/v2/models/tiny-mlp/infer"),
    ("POST", "/v2/models/stats"),
    ("DELETE", "/v2/models/tiny-mlp"),
    ("GET", "/v2/repository/index"),
    ("GET", "/v2/models/a/b/c"),
]


@pytest.mark.parametrize(("method", "path"), ROUTE_CASES)
def test_unknown_routes_get_the_group_front_ends_answer(
    router: RouterThread, group: BackgroundServer, method: str, path: str
) -> None:
    """One route table (oip_routes): aiohttp's group front end and the lean router agree."""
    answers = []
    for port in (group.http_port, router.port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, path)
        resp = conn.getresponse()
        answers.append((resp.status, resp.getheader("Content-Type"), resp.read()))
        conn.close()
    assert answers[0] == answers[1]
    assert answers[0][0] in (404, 405)
    assert oip_error(answers[0][2]).startswith(("Not Found: ", "Method Not Allowed: "))


def test_route_table_matches_like_aiohttp() -> None:
    t = RouteTable()
    assert t.match("POST", "/v2/models/bert/infer") == ("infer", {"model": "bert"})
    assert t.match("POST", "/v2/models/a%2Fb/versions/2/infer") == (
        "infer",
        {"model": "a/b", "version": "2"},
    )
    assert t.match("GET", "/v2/models/stats") == ("stats", {})
    assert t.match("HEAD", "/v2/models/bert/stats") == ("stats", {"model": "bert"})
    assert t.match("POST", "/v2/models/stats/infer") == ("infer", {"model": "stats"})


def test_route_table_remembers_matches_within_a_bound() -> None:
    t = RouteTable()
    for _ in range(2):  # the second round is answered from what the first matched
        assert t.match("POST", "/v2/models/bert/infer") == ("infer", {"model": "bert"})
        with pytest.raises(RouteNotFound) as wrong_method:  # misses are never remembered
            t.match("GET", "/v2/models/bert/infer")
        assert wrong_method.value.status == 405
        with pytest.raises(RouteNotFound) as unknown:
            t.match("GET", "/v2/nothing")
        assert unknown.value.status == 404
    for i in range(3 * MATCH_CACHE):  # many distinct paths (e.g. hostile) do not grow it
        assert t.match("POST", f"/v2/models/m{i}/infer") == ("infer", {"model": f"m{i}"})
    assert len(t._matched) <= MATCH_CACHE


# --------------------------------------------------------------------------- drain
def test_sigterm_drain_finishes_in_flight_keep_alive_requests_and_refuses_new_ones(
    group: BackgroundServer, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    make_test_plan([(1, 1, ["tiny-mlp", "slow"])]).write(plan)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "router.log"
    cmd = [sys.executable, "-m", "statmux", "router", "--plan", str(plan), "--no-grpc"]
    cmd += ["--groups", f"g0=http://{group.http_url}", "--host", "127.0.0.1"]
    cmd += ["--http-port", str(port), "--drain-timeout", "20"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with connect(port) as s:
                    s.sendall(request("GET", "/v2/health/ready"))
                    if Answers(s).next()[0] == 200:
                        break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        socks = [connect(port, 60) for _ in range(3)]
        busy, idle = [Answers(s) for s in socks[:2]], Answers(socks[2])
        for s in socks:  # keep-alive connections, each used once
            s.sendall(request("GET", "/v2/health/live"))
        for a in [*busy, idle]:
            assert a.next()[0] == 200
        for s in socks[:2]:  # two requests in flight (the group runs one at a time)
            s.sendall(request("POST", "/v2/models/slow/infer", slow_body()))
        time.sleep(SLOW_S / 3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        socks[2].sendall(request("POST", "/v2/models/tiny-mlp/infer", mlp_body()))
        status, headers, body = idle.next()
        assert status == 503 and headers["connection"] == "close", body
        assert "shutting down" in oip_error(body)
        assert idle.closed()
        for a in busy:  # accepted before the drain began: answered, then closed
            status, headers, body = a.next()
            assert status == 200 and headers["connection"] == "close", body
            assert json.loads(body)["outputs"][0]["data"] == [2, 4, 6, 8]
            assert a.closed()
        assert proc.wait(60) == 0, log.read_text()
        for s in socks:
            s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
