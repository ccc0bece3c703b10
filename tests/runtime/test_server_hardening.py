"""Hostile and unlucky clients against the real servers (tritonclient, raw sockets, grpc).

Each test pins one defect of issue 9: bounded request cost, cancellation, every outcome
counted once, 4xx for malformed input with the OIP error body, Retry-After, slow or
half-open connections, Triton-exact metric names and types, and a drain that loses nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
import tritonclient.http.aio as tha
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from statmux.runtime.engine import ModelInfo, TensorSpec
from statmux.runtime.frontend import FrontEnd
from statmux.runtime.local_engine import LocalEngine, LocalModel, tiny_embedder, tiny_mlp
from statmux.runtime.server_runner import BackgroundServer, ServerLimits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from slow_models import slow_model

MAX_BYTES = 1 << 20
SLOW_S = 0.25


def broken_model() -> LocalModel:
    """Fails with a torch-style error that carries a build path: must not leak."""

    def forward(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise RuntimeError("/pytorch/aten/src/ATen/native/cpu/Secret.cpp:42: internal assert")

    info = ModelInfo(
        name="broken",
        platform="statmux-test-broken",
        inputs=[TensorSpec("INPUT0", "FP32", (-1, 4))],
        outputs=[TensorSpec("OUTPUT0", "FP32", (-1, 4))],
        max_batch_size=1,
    )
    return LocalModel(info, torch.nn.Identity(), forward)


def raw_grpc_infer_error(
    server: BackgroundServer, request: service_pb2.ModelInferRequest
) -> pytest.ExceptionInfo[grpc.RpcError]:
    """Send a hand-built ModelInferRequest (no tritonclient checks); the error it gets."""
    with grpc.insecure_channel(server.grpc_url) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=30)
    return e


def models() -> list[LocalModel]:
    strict = tiny_mlp(name="strict", slo_seconds=0.5)
    strict.info.stage_latency_s = {1: [10.0]}  # admission rejects every request
    embed = tiny_embedder()
    embed.info.max_sequence_length = 64
    return [tiny_mlp(), embed, strict, slow_model(seconds=SLOW_S), broken_model()]


@pytest.fixture(scope="module")
def hosted() -> dict[str, LocalModel]:
    return {m.info.name: m for m in models()}


@pytest.fixture(scope="module")
def server(hosted: dict[str, LocalModel]) -> Iterator[BackgroundServer]:
    engine = LocalEngine(hosted.values())
    limits = ServerLimits(head_timeout_s=0.5, body_timeout_s=0.5, max_connections=64)
    srv = BackgroundServer(FrontEnd(engine, max_request_bytes=MAX_BYTES), limits=limits)
    yield srv
    srv.stop()
    engine.shutdown()


def raw(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def send_raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes on a fresh socket and read until the server closes or stops talking."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except TimeoutError:
            pass
        return out


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def json_body(x: np.ndarray) -> bytes:
    """A plain-JSON inference body with one FP32 input INPUT0."""
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def oip_error(body: bytes) -> str:
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    return str(doc["error"])


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], str]:
    """Samples by their exposed name (prometheus-client's parser renames counters)."""
    status, _, body = raw(port, "GET", "/metrics")
    assert status == 200
    text = body.decode()
    # still a valid exposition for Prometheus' own parser
    assert list(text_string_to_metric_families(text))
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or line.startswith("#"):
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out, text


def outcomes(port: int, model: str) -> dict[str, float]:
    samples, _ = scrape(port)
    got: dict[str, float] = {}
    for (name, labels), value in samples.items():
        d = dict(labels)
        if name == "statmux_requests_total" and d.get("model") == model:
            got[d["outcome"]] = value
    return got


def mlp_input(x: np.ndarray) -> th.InferInput:
    inp = th.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def grpc_input(x: np.ndarray, name: str = "INPUT0", dtype: str = "FP32") -> tg.InferInput:
    inp = tg.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return inp


# --------------------------------------------------------------------------- bounded cost
def test_sequence_length_beyond_the_limit_is_invalid_on_both_protocols(
    server: BackgroundServer,
) -> None:
    ok = np.zeros((1, 64), dtype=np.int64)
    long = np.zeros((1, 65), dtype=np.int64)
    client = th.InferenceServerClient(server.http_url)
    inp = th.InferInput("input_ids", list(ok.shape), "INT64")
    inp.set_data_from_numpy(ok)
    assert client.infer("tiny-embed", [inp]).as_numpy("embedding").shape == (1, 8)
    inp = th.InferInput("input_ids", list(long.shape), "INT64")
    inp.set_data_from_numpy(long)
    with pytest.raises(InferenceServerException, match=r"sequence length 65.*64") as e:
        client.infer("tiny-embed", [inp])
    assert e.value.status() == "400"
    gc = tg.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match=r"sequence length 65.*64") as e:
        gc.infer("tiny-embed", [grpc_input(long, "input_ids", "INT64")])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_the_sequence_limit_is_in_the_model_config(server: BackgroundServer) -> None:
    config = th.InferenceServerClient(server.http_url).get_model_config("tiny-embed")
    assert config["parameters"]["max_sequence_length"] == {"string_value": "64"}


# --------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(
    "shape", [[2**32, 2**32], [0, 2**62], [2**63], [2**64, 0], [0, 2**32, 2**32]]
)
def test_absurd_shapes_are_400_with_the_oip_body(server: BackgroundServer, shape: list) -> None:
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": []}]}
    ).encode()
    status, _, resp = raw(server.http_port, "POST", "/v2/models/tiny-mlp/infer", body)
    assert status == 400, resp
    assert "shape" in oip_error(resp)


@pytest.mark.parametrize("shape", [[2**32, 2**32], [0, 2**62], [2**62, 4], [0, 2**32, 2**32]])
def test_absurd_shapes_are_invalid_argument_over_grpc(
    server: BackgroundServer, shape: list
) -> None:
    request = service_pb2.ModelInferRequest(model_name="tiny-mlp")
    t = request.inputs.add()
    t.name, t.datatype = "INPUT0", "FP32"
    t.shape.extend(shape)
    e = raw_grpc_infer_error(server, request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


def test_an_invalid_protobuf_is_invalid_argument(server: BackgroundServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff\x0f garbage", timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "protobuf" in (e.value.details() or "")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
        b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET /v2 HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 binary junk\r\n\r\n",
    ],
)
def test_parser_level_errors_get_the_oip_json_body(
    server: BackgroundServer, request_bytes: bytes
) -> None:
    response = send_raw(server.http_port, request_bytes)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert 400 <= status < 500, response
    assert b"application/json" in head.lower()
    assert oip_error(body)


def test_internal_errors_do_not_leak_paths_or_exception_texts(server: BackgroundServer) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    status, _, body = raw(
        server.http_port,
        "POST",
        "/v2/models/broken/infer",
        json_body(x),
    )
    assert status == 500
    message = oip_error(body)
    assert "/pytorch" not in message and ".cpp" not in message and "assert" not in message


def test_a_429_carries_retry_after(server: BackgroundServer) -> None:
    x = np.ones((1, 16), dtype=np.float32)
    body = json_body(x)
    status, headers, resp = raw(server.http_port, "POST", "/v2/models/strict/infer", body)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert "SLO" in oip_error(resp)


# --------------------------------------------------------------------------- cancellation
def _slow_body() -> bytes:
    x = [[1.0, 2.0, 3.0, 4.0]]
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": x}]}
    ).encode()


def test_a_disconnected_rest_client_cancels_its_queued_request(
    server: BackgroundServer, hosted: dict[str, LocalModel]
) -> None:
    runs: list[int] = hosted["slow"].runs  # type: ignore[attr-defined]
    before = outcomes(server.http_port, "slow")
    runs_before = len(runs)
    body = _slow_body()
    blocker = threading.Thread(
        target=raw, args=(server.http_port, "POST", "/v2/models/slow/infer", body)
    )
    blocker.start()
    # the blocker runs (a loaded machine can take longer than a fixed sleep to start it);
    # the next requests queue behind it
    deadline = time.monotonic() + 30
    while len(runs) == runs_before and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(runs) == runs_before + 1, "the blocking request never started"
    head = (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.http_port)) as s:
            s.sendall(head + body)
            time.sleep(0.02)  # arrived and queued, then the client goes away
    blocker.join(30)
    time.sleep(SLOW_S * 2)
    after = outcomes(server.http_port, "slow")
    assert after.get("cancelled", 0) - before.get("cancelled", 0) == 3
    assert after.get("success", 0) - before.get("success", 0) == 1
    assert len(runs) - runs_before == 1  # the cancelled requests never ran


def test_a_passed_grpc_deadline_cancels_and_counts_canceled(server: BackgroundServer) -> None:
    before = outcomes(server.http_port, "slow")
    client = tg.InferenceServerClient(server.grpc_url)
    x = np.ones((1, 4), dtype=np.float32)
    done = threading.Thread(target=client.infer, args=("slow", [grpc_input(x)]))
    done.start()
    time.sleep(SLOW_S / 5)
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.infer("slow", [grpc_input(x)], client_timeout=SLOW_S / 4)
    done.join(30)
    time.sleep(SLOW_S * 2)
    after = outcomes(server.http_port, "slow")
    assert after.get("cancelled", 0) - before.get("cancelled", 0) == 1
    samples, _ = scrape(server.http_port)
    canceled = samples[
        (
            "nv_inference_request_failure",
            (("model", "slow"), ("reason", "CANCELED"), ("version", "1")),
        )
    ]
    assert canceled >= 1


def test_a_cancelled_batch_that_has_not_started_is_withdrawn() -> None:
    """Two batches in flight (pp 2) on a one-worker engine: the second waits in the engine
    behind the first. When its client's deadline passes, it is withdrawn: it never runs,
    so the request after it is not held behind it, and it counts as CANCELED."""
    model = slow_model(seconds=SLOW_S)
    runs: list[int] = model.runs  # type: ignore[attr-defined]
    engine = LocalEngine([model])
    srv = BackgroundServer(FrontEnd(engine, max_in_flight=2, max_request_bytes=MAX_BYTES))
    client = tg.InferenceServerClient(srv.grpc_url)
    x = np.ones((1, 4), dtype=np.float32)
    try:
        first = threading.Thread(target=client.infer, args=("slow", [grpc_input(x)]))
        first.start()
        time.sleep(SLOW_S / 5)  # the first runs; the next is submitted to the engine behind it
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("slow", [grpc_input(x)], client_timeout=SLOW_S / 4)
        first.join(30)
        out = client.infer("slow", [grpc_input(x)])  # served once the first is done
        np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), x * 2)
        assert runs == [1, 1]  # the first and the last: the withdrawn batch never ran
        counts = outcomes(srv.http_port, "slow")
        assert counts.get("success") == 2 and counts.get("cancelled") == 1
    finally:
        client.close()
        srv.stop()
        engine.shutdown()


# --------------------------------------------------------------------------- counting
def test_every_outcome_is_counted_once_on_both_protocols(server: BackgroundServer) -> None:
    """A mix over REST and gRPC (sync and asyncio): the counters add up to what was sent."""
    port = server.http_port
    models_ = ["tiny-mlp", "strict", "tiny-embed", "broken"]
    before = {m: outcomes(port, m) for m in models_}
    unknown_before = scrape(port)[0].get(("statmux_requests_unknown_model_total", ()), 0)
    hc = th.InferenceServerClient(server.http_url)
    gc = tg.InferenceServerClient(server.grpc_url)
    good = np.ones((1, 16), dtype=np.float32)
    sent: dict[str, dict[str, int]] = {m: {} for m in models_}

    def expect(model: str, outcome: str, fn: object) -> None:
        sent[model][outcome] = sent[model].get(outcome, 0) + 1
        try:
            fn()  # type: ignore[operator]
        except InferenceServerException:
            assert outcome != "success"
        else:
            assert outcome == "success"

    for _ in range(3):
        expect("tiny-mlp", "success", lambda: hc.infer("tiny-mlp", [mlp_input(good)]))
        expect("tiny-mlp", "success", lambda: gc.infer("tiny-mlp", [grpc_input(good)]))
        expect("strict", "rejected", lambda: hc.infer("strict", [mlp_input(good)]))
        expect("strict", "rejected", lambda: gc.infer("strict", [grpc_input(good)]))
    bad = np.ones((1, 3), dtype=np.float32)  # wrong width
    expect("tiny-mlp", "invalid", lambda: hc.infer("tiny-mlp", [mlp_input(bad)]))
    expect("tiny-mlp", "invalid", lambda: gc.infer("tiny-mlp", [grpc_input(bad)]))
    big = np.zeros((1, 2**19), dtype=np.float32)  # 2 MiB: over the request size limit
    expect("tiny-mlp", "invalid", lambda: hc.infer("tiny-mlp", [mlp_input(big)]))
    ids = np.full((1, 4), 5000, dtype=np.int64)  # out of the vocabulary: the engine refuses
    expect(
        "tiny-embed",
        "invalid",
        lambda: gc.infer("tiny-embed", [grpc_input(ids, "input_ids", "INT64")]),
    )
    four = np.ones((1, 4), np.float32)
    expect("broken", "internal", lambda: hc.infer("broken", [mlp_input(four)]))

    async def aio() -> None:
        ha = tha.InferenceServerClient(server.http_url)
        ga = tga.InferenceServerClient(server.grpc_url)
        try:
            inp = tha.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(good)
            await ha.infer("tiny-mlp", [inp])
            await ga.infer("tiny-mlp", [grpc_input(good)])
            with pytest.raises(InferenceServerException):
                await ga.infer("strict", [grpc_input(good)])
        finally:
            await ha.close()
            await ga.close()

    asyncio.run(aio())
    sent["tiny-mlp"]["success"] += 2
    sent["strict"]["rejected"] += 1
    for protocol in (hc, gc):
        with pytest.raises(InferenceServerException):
            protocol.infer("ghost", [mlp_input(good) if protocol is hc else grpc_input(good)])
    for m in models_:
        after = outcomes(port, m)
        delta = {k: after.get(k, 0) - before[m].get(k, 0) for k in after}
        assert {k: v for k, v in delta.items() if v} == sent[m], m
    samples, _ = scrape(port)
    assert samples[("statmux_requests_unknown_model_total", ())] - unknown_before == 2
    # Triton's own counters agree: successes plus failures is everything that was sent
    for m in models_:
        success = samples[("nv_inference_request_success", (("model", m), ("version", "1")))]
        failure = sum(
            v
            for (name, labels), v in samples.items()
            if name == "nv_inference_request_failure" and dict(labels)["model"] == m
        )
        total = sum(v for k, v in outcomes(port, m).items())
        assert success + failure == total, m


def test_unavailable_outcomes_are_counted(server: BackgroundServer) -> None:
    before = outcomes(server.http_port, "tiny-mlp")
    hc = th.InferenceServerClient(server.http_url)
    hc.unload_model("tiny-mlp")
    try:
        with pytest.raises(InferenceServerException) as e:
            hc.infer("tiny-mlp", [mlp_input(np.ones((1, 16), np.float32))])
        assert e.value.status() == "503"
    finally:
        hc.load_model("tiny-mlp")
    after = outcomes(server.http_port, "tiny-mlp")
    assert after.get("unavailable", 0) - before.get("unavailable", 0) == 1


# --------------------------------------------------------------------------- metrics
# Triton's per-model inference metrics, as its documentation lists them
# (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/metrics.html
# "Inference Request Metrics": counts and latencies, all counters, labels model and version;
# the failure count adds reason; the pending count is a gauge).
TRITON_METRICS = {
    "nv_inference_request_success": ("counter", {"model", "version"}),
    "nv_inference_request_failure": ("counter", {"model", "version", "reason"}),
    "nv_inference_count": ("counter", {"model", "version"}),
    "nv_inference_exec_count": ("counter", {"model", "version"}),
    "nv_inference_pending_request_count": ("gauge", {"model", "version"}),
    "nv_inference_request_duration_us": ("counter", {"model", "version"}),
    "nv_inference_queue_duration_us": ("counter", {"model", "version"}),
    "nv_inference_compute_input_duration_us": ("counter", {"model", "version"}),
    "nv_inference_compute_infer_duration_us": ("counter", {"model", "version"}),
    "nv_inference_compute_output_duration_us": ("counter", {"model", "version"}),
}
TRITON_FAILURE_REASONS = {"REJECTED", "CANCELED", "BACKEND", "OTHER"}


def test_metrics_names_types_and_labels_match_triton(server: BackgroundServer) -> None:
    th.InferenceServerClient(server.http_url).infer(
        "tiny-mlp", [mlp_input(np.ones((1, 16), np.float32))]
    )
    _, text = scrape(server.http_port)
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    reasons: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            if "{" in line:
                body = line.split("{", 1)[1].rsplit("}", 1)[0]
                keys = {kv.split("=")[0] for kv in body.split(",")}
                labels.setdefault(name, set()).update(keys)
                if name == "nv_inference_request_failure":
                    reasons.add(body.split('reason="')[1].split('"')[0])
    for name, (kind, keys) in TRITON_METRICS.items():
        assert types.get(name) == kind, (name, types.get(name))
        assert labels.get(name) == keys, (name, labels.get(name))
    assert reasons == TRITON_FAILURE_REASONS


def test_request_duration_is_paired_with_successes(server: BackgroundServer) -> None:
    port = server.http_port
    key = ("nv_inference_request_duration_us", (("model", "strict"), ("version", "1")))
    before = scrape(port)[0].get(key, 0)
    with pytest.raises(InferenceServerException):
        th.InferenceServerClient(server.http_url).infer(
            "strict", [mlp_input(np.ones((1, 16), np.float32))]
        )
    assert scrape(port)[0][key] == before  # a failure adds no success duration


def test_compute_input_and_output_durations_grow_with_successes(server: BackgroundServer) -> None:
    port = server.http_port
    labels = (("model", "tiny-mlp"), ("version", "1"))
    before = scrape(port)[0]
    th.InferenceServerClient(server.http_url).infer(
        "tiny-mlp", [mlp_input(np.ones((2, 16), np.float32))]
    )
    after = scrape(port)[0]
    for stage in ("input", "output"):
        key = (f"nv_inference_compute_{stage}_duration_us", labels)
        assert after[key] > before.get(key, 0)


# --------------------------------------------------------------------------- timeouts
def test_half_sent_request_heads_are_closed(server: BackgroundServer) -> None:
    """Slowloris: sockets that never finish their head are closed by the server."""
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        s.sendall(b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    try:
        for s in socks:
            data = s.recv(65536)  # the server answers 408 and closes (or just closes)
            while data and not data.endswith(b"}"):
                more = s.recv(65536)
                if not more:
                    break
                data += more
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_arrives_is_closed(server: BackgroundServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        data = s.recv(65536)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data


def test_open_connections_are_capped(server: BackgroundServer) -> None:
    socks = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(80)]
    try:
        time.sleep(0.2)
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except (TimeoutError, ConnectionResetError):
                pass
        assert closed >= 80 - 64
    finally:
        for s in socks:
            s.close()
    # and once they are gone the server serves again (closing them takes a moment)
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _, _ = raw(server.http_port, "GET", "/v2/health/ready")
            break
        except ConnectionError:
            assert time.monotonic() < deadline, "the server never took connections again"
            time.sleep(0.1)
    assert status == 200


# --------------------------------------------------------------------------- gRPC connections
def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_a_grpc_connection_without_its_http2_preface_is_closed(server: BackgroundServer) -> None:
    """Slowloris over gRPC: half a preface, then silence; closed after --head-timeout (0.5 s
    here) with a GOAWAY that says why, not after grpc's default two minutes."""
    assert server.grpc_port is not None
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=20) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n")
        data = _read_until_closed(s)  # a socket timeout here fails the test
    assert b"handshake timeout" in data, data


def test_open_grpc_connections_are_capped(server: BackgroundServer) -> None:
    """Beyond --max-connections (64 here) a gRPC connection is closed before the server
    sends its HTTP/2 settings; the server serves again once they are gone."""
    assert server.grpc_port is not None
    socks = [socket.create_connection(("127.0.0.1", server.grpc_port)) for _ in range(80)]
    try:
        refused = 0
        for s in socks:
            s.settimeout(10)
            try:
                first = s.recv(65536)  # the accepted ones get the server's SETTINGS frame
            except ConnectionResetError:
                first = b""
            refused += first == b""
        assert refused >= 80 - 64
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert tg.InferenceServerClient(server.grpc_url).is_server_live()
            break
        except InferenceServerException:
            assert time.monotonic() < deadline, "the gRPC server never took connections again"
            time.sleep(0.1)


def test_grpc_calls_beyond_the_limit_get_resource_exhausted_and_are_counted() -> None:
    engine = LocalEngine([slow_model(seconds=0.4)])
    srv = BackgroundServer(
        FrontEnd(engine, max_request_bytes=MAX_BYTES), limits=ServerLimits(grpc_max_calls=2)
    )
    x = np.ones((1, 4), dtype=np.float32)

    async def burst(n: int) -> list[str]:
        client = tga.InferenceServerClient(srv.grpc_url)
        try:

            async def one() -> str:
                try:
                    await client.infer("slow", [grpc_input(x)])
                    return "ok"
                except InferenceServerException as e:
                    return f"{e.status()}: {e.message()}"

            return list(await asyncio.gather(*(one() for _ in range(n))))
        finally:
            await client.close()

    try:
        results = asyncio.run(burst(6))
        refused = [r for r in results if r != "ok"]
        assert results.count("ok") >= 2 and refused, results
        for r in refused:
            assert "RESOURCE_EXHAUSTED" in r and "--grpc-max-calls" in r, r
        counts = outcomes(srv.http_port, "slow")
        assert counts.get("success") == results.count("ok")
        assert counts.get("rejected") == len(refused)
        # the slots free again: a call after the burst is served
        assert asyncio.run(burst(1)) == ["ok"]
    finally:
        srv.stop()
        engine.shutdown()


# --------------------------------------------------------------------------- drain
def test_drain_finishes_accepted_requests_and_refuses_new_ones() -> None:
    engine = LocalEngine([slow_model(seconds=0.1)])
    srv = BackgroundServer(
        FrontEnd(engine, max_request_bytes=MAX_BYTES), limits=ServerLimits(drain_timeout_s=30)
    )
    body = _slow_body()
    results: list[int] = []
    conns = [http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60) for _ in range(8)]

    def fire(conn: http.client.HTTPConnection) -> None:
        conn.request("POST", "/v2/models/slow/infer", body=body)
        resp = conn.getresponse()
        resp.read()
        results.append(resp.status)

    try:
        threads = [threading.Thread(target=fire, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        time.sleep(0.15)  # all eight accepted; about one has run
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        time.sleep(0.05)
        status, headers, _ = raw(srv.http_port, "GET", "/v2/health/ready")
        assert status == 503
        status, headers, resp = raw(srv.http_port, "POST", "/v2/models/slow/infer", body)
        assert status == 503 and headers.get("Connection", "").lower() == "close"
        assert "drain" in oip_error(resp)
        for t in threads:
            t.join(60)
        stopper.join(60)
        assert results == [200] * 8
    finally:
        for c in conns:
            c.close()
        srv.stop()
        engine.shutdown()


# --------------------------------------------------------------------------- learning admission
def test_admission_learns_a_profile_that_is_five_times_too_optimistic() -> None:
    """Profiled at 20 ms, the model takes 100 ms: after a warm-up, admission predicts with
    the observed latency, rejects what it cannot serve in time, and reports the drift."""
    model = slow_model("drifty", seconds=0.1)
    model.info.slo_seconds = 0.35
    model.info.stage_latency_s = {1: [0.02]}
    engine = LocalEngine([model])
    srv = BackgroundServer(FrontEnd(engine, max_request_bytes=MAX_BYTES), grpc_port=None)
    x = np.ones((1, 4), dtype=np.float32)

    async def burst(n: int) -> list[int]:
        client = tha.InferenceServerClient(srv.http_url)
        try:
            inp = tha.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(x)

            async def one() -> int:
                try:
                    await client.infer("drifty", [inp])
                    return 200
                except InferenceServerException as e:
                    return int(e.status() or 0)

            return list(await asyncio.gather(*(one() for _ in range(n))))
        finally:
            await client.close()

    try:
        for _ in range(4):  # warm-up: alone on the pipeline, each measures the drift
            asyncio.run(burst(1))
        samples, _ = scrape(srv.http_port)
        ratio = samples[("statmux_profile_drift_ratio", (("model", "drifty"),))]
        assert 3 < ratio < 10, ratio
        within_before = samples[
            ("statmux_requests_within_slo_total", (("model", "drifty"), ("version", "1")))
        ]
        codes = asyncio.run(burst(10))
        # 10 x 100 ms cannot fit a 350 ms SLO: trusting the profile (10 x 20 ms) admitted all
        assert codes.count(429) >= 5, codes
        assert set(codes) <= {200, 429}
        samples, _ = scrape(srv.http_port)
        within = samples[
            ("statmux_requests_within_slo_total", (("model", "drifty"), ("version", "1")))
        ]
        assert within - within_before == codes.count(200)  # every admitted one made it
    finally:
        srv.stop()
        engine.shutdown()


def test_bytes_tensors_claiming_billions_of_elements_are_invalid(server: BackgroundServer) -> None:
    """Found by the fuzzer: BYTES of shape [2**32] with a few raw bytes allocated 32 GiB."""
    request = service_pb2.ModelInferRequest(model_name="tiny-mlp")
    t = request.inputs.add()
    t.name, t.datatype = "INPUT0", "BYTES"
    t.shape.extend([2**32])
    request.raw_input_contents.append(b"\x00" * 64)
    e = raw_grpc_infer_error(server, request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "BYTES elements" in (e.value.details() or "")
