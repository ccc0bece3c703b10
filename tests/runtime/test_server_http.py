"""The REST front end against real tritonclient.http, a real server and real torch models."""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.local_engine import LocalEngine, LocalModel, tiny_embedder, tiny_mlp
from statmux.runtime.server_runner import BackgroundServer

MAX_BYTES = 1 << 20


def strict_model() -> LocalModel:
    """Profiled at 10 s per batch with a 5 s SLO: admission must reject every request."""
    m = tiny_mlp(name="strict", slo_seconds=5.0)
    m.info.stage_latency_s = {1: [10.0], 8: [10.0]}
    return m


@pytest.fixture(scope="module")
def models() -> dict[str, LocalModel]:
    return {m.info.name: m for m in (tiny_mlp(), tiny_embedder(), strict_model())}


@pytest.fixture(scope="module")
def server(models: dict[str, LocalModel]) -> Iterator[BackgroundServer]:
    engine = LocalEngine(models.values())
    srv = BackgroundServer(FrontEnd(engine, max_request_bytes=MAX_BYTES), grpc_port=None)
    yield srv
    srv.stop()
    engine.shutdown()


@pytest.fixture()
def client(server: BackgroundServer) -> Iterator[th.InferenceServerClient]:
    c = th.InferenceServerClient(server.http_url)
    yield c
    c.close()


def raw(
    server: BackgroundServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def error_of(body: bytes) -> str:
    doc = json.loads(body)
    assert set(doc) == {"error"}
    return str(doc["error"])


def expected_mlp(models: dict[str, LocalModel], x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return models["tiny-mlp"].module(torch.from_numpy(x)).numpy()


def scrape(server: BackgroundServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = raw(server, "GET", "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            # the parser appends _total to counter samples; Triton's names have none
            name = s.name.removesuffix("_total") if s.name.startswith("nv_") else s.name
            out[(name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --------------------------------------------------------------------------- health, metadata
def test_health_and_metadata(client: th.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "statmux"
    assert client.is_model_ready("tiny-mlp") and client.is_model_ready("tiny-mlp", "1")
    meta = client.get_model_metadata("tiny-embed")
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
    assert meta["outputs"][0]["datatype"] == "FP32"
    config = client.get_model_config("tiny-mlp")
    assert config["max_batch_size"] == 8 and config["input"][0]["data_type"] == "TYPE_FP32"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="no version '2'"):
        client.get_model_metadata("tiny-mlp", "2")


# --------------------------------------------------------------------------- inference
@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_torch_module(
    client: th.InferenceServerClient, models: dict[str, LocalModel], binary: bool
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    inp = th.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = th.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer("tiny-mlp", [inp], outputs=[out], request_id="r1", model_version="1")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected_mlp(models, x), rtol=1e-5)
    assert result.get_response()["id"] == "r1"


def test_infer_int64_embedding_model(
    client: th.InferenceServerClient, models: dict[str, LocalModel]
) -> None:
    ids = np.array([[5, 17, 900, 3], [1, 2, 3, 4]], dtype=np.int64)
    inp = th.InferInput("input_ids", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids)
    got = client.infer("tiny-embed", [inp]).as_numpy("embedding")
    with torch.inference_mode():
        want = models["tiny-embed"].module(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_plain_json_without_content_type(
    server: BackgroundServer, models: dict[str, LocalModel]
) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16) / 16
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": x.tolist()}]}
    ).encode()
    status, resp = raw(server, "POST", "/v2/models/tiny-mlp/infer", body)
    assert status == 200
    out = json.loads(resp)["outputs"][0]
    assert out["name"] == "OUTPUT0" and out["shape"] == [1, 4]
    np.testing.assert_allclose(
        np.array(out["data"], dtype=np.float32).reshape(1, 4), expected_mlp(models, x), rtol=1e-5
    )


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows() -> None:
    """32 requests queue behind a running batch: they run in few batches, rows intact."""
    model = tiny_mlp(name="gated", max_batch_size=8)
    gate = threading.Event()
    run_model = model.forward

    def gated(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        gate.wait(60)  # hold the first batch until every request is queued behind it
        return run_model(x)

    model.forward = gated
    engine = LocalEngine([model])
    srv = BackgroundServer(FrontEnd(engine), grpc_port=None)
    client = th.InferenceServerClient(srv.http_url, concurrency=32)
    try:
        xs = [np.full((1, 16), i / 10, dtype=np.float32) for i in range(32)]
        pending = []
        for x in xs:
            inp = th.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            pending.append(client.async_infer("gated", [inp]))
        labels = (("model", "gated"), ("version", "1"))
        deadline = time.monotonic() + 60
        while scrape(srv).get(("nv_inference_pending_request_count", labels), 0) < 32:
            assert time.monotonic() < deadline, "the 32 requests never all reached the server"
            time.sleep(0.05)
        gate.set()
        for x, p in zip(xs, pending, strict=True):
            with torch.inference_mode():
                want = model.module(torch.from_numpy(x)).numpy()
            got = p.get_result().as_numpy("OUTPUT0")
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # batched matmul
        after = scrape(srv)
        assert after[("nv_inference_count", labels)] == 32  # rows
        # the first batch (1 request, or the few that arrived with it) held the engine; the
        # others queued behind it and went in batches of up to 8: 4 or 5 batches, not 32
        assert 1 + math.ceil(24 / 8) <= after[("nv_inference_exec_count", labels)] <= 5
    finally:
        gate.set()
        client.close()
        srv.stop()
        engine.shutdown()


# --------------------------------------------------------------------------- admission
def test_admission_rejection_is_429_with_prediction_and_counted(
    server: BackgroundServer, client: th.InferenceServerClient
) -> None:
    before = scrape(server)
    inp = th.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("strict", [inp])
    assert e.value.status() == "429"
    # predicted from arrival: the profile's 10 s plus the little time spent decoding
    assert re.search(
        r"rejected by SLO admission: predicted 100\d\d\.\d ms > SLO 5000\.0 ms", str(e.value)
    )
    after = scrape(server)
    key = (
        "statmux_requests_rejected_total",
        (("model", "strict"), ("reason", "admission"), ("version", "1")),
    )
    assert after[key] == before.get(key, 0) + 1
    fail = (
        "nv_inference_request_failure",
        (("model", "strict"), ("reason", "REJECTED"), ("version", "1")),
    )
    assert after[fail] == before.get(fail, 0) + 1


# --------------------------------------------------------------------------- bad input
def infer_body(name: str, dtype: str, shape: list[int], data: list[object]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": dtype, "shape": shape, "data": data}]}
    ).encode()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "fragment"),
    [
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "FP32", [1, 3], [1, 2, 3]),
            {},
            400,
            "has shape [1, 3], expected [-1, 16]",
        ),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "INT32", [1, 16], [1] * 16),
            {},
            400,
            "has datatype INT32, expected FP32",
        ),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("OTHER", "FP32", [1, 16], [1.0] * 16),
            {},
            400,
            "has no input 'OTHER'",
        ),
        (
            "/v2/models/tiny-embed/infer",
            json.dumps({"inputs": []}).encode(),
            {},
            400,
            "non-empty 'inputs'",
        ),
        (
            "/v2/models/missing/infer",
            infer_body("INPUT0", "FP32", [1, 16], [1.0] * 16),
            {},
            404,
            "unknown model 'missing'",
        ),
        ("/v2/models/tiny-mlp/infer", b"{not json", {}, 400, "not valid JSON"),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "FP32", [1, 16], [1.0] * 15),
            {},
            400,
            "15 data elements, but shape [1, 16] needs 16",
        ),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "FP32", [1, 16], ["a"] * 16),
            {},
            400,
            "cannot be FP32",
        ),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "FP32", [9, 16], [1.0] * 144),
            {},
            400,
            "more than model 'tiny-mlp' max_batch_size 8",
        ),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "FP32", [1, 1 << 20], []),
            {},
            413,
            "more than the maximum request size",
        ),
        (
            "/v2/models/tiny-mlp/infer",
            infer_body("INPUT0", "FP128", [1, 16], []),
            {},
            400,
            "unsupported datatype 'FP128'",
        ),
    ],
)
def test_bad_json_requests(
    server: BackgroundServer,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    got, resp = raw(server, "POST", path, body, headers)
    assert got == status
    assert fragment in error_of(resp)


def binary_request(blob: bytes, size: int, header_len: int | None = None) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    length = len(header) if header_len is None else header_len
    return header + blob, {"Inference-Header-Content-Length": str(length)}


def test_malformed_binary_payloads(server: BackgroundServer) -> None:
    good = np.ones((1, 16), np.float32).tobytes()
    cases = [
        (binary_request(good[:-4], 60), "needs 64"),
        (binary_request(good, 128), "runs past the end of the body"),
        (binary_request(good + b"xx", 64), "2 binary bytes after the header"),
        (binary_request(good, 64, header_len=10_000), "outside the body"),
        (binary_request(good, 64, header_len=5), "not valid JSON"),
    ]
    for (body, headers), fragment in cases:
        status, resp = raw(server, "POST", "/v2/models/tiny-mlp/infer", body, headers)
        assert status == 400, fragment
        assert fragment in error_of(resp)
    body, headers = binary_request(good, 64)
    headers["Inference-Header-Content-Length"] = "abc"
    status, resp = raw(server, "POST", "/v2/models/tiny-mlp/infer", body, headers)
    assert status == 400 and "must be an integer" in error_of(resp)
    body, headers = binary_request(good, 64)
    assert raw(server, "POST", "/v2/models/tiny-mlp/infer", body, headers)[0] == 200


def test_oversized_body_is_413(server: BackgroundServer) -> None:
    status, resp = raw(server, "POST", "/v2/models/tiny-mlp/infer", b"x" * (MAX_BYTES + 100_000))
    assert status == 413
    assert "maximum" in error_of(resp)


def test_unknown_routes_and_methods_answer_json(server: BackgroundServer) -> None:
    status, resp = raw(server, "GET", "/v3/everything")
    assert status == 404 and "Not Found" in error_of(resp)
    status, resp = raw(server, "DELETE", "/v2/models/tiny-mlp/infer")
    assert status == 405 and "Method Not Allowed" in error_of(resp)


# --------------------------------------------------------------------------- repository, stats
def test_repository_unload_and_load(
    server: BackgroundServer, client: th.InferenceServerClient
) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["tiny-embed"]["state"] == "READY"
    swaps_before = scrape(server)[("statmux_model_swap_seconds_count", (("model", "tiny-embed"),))]
    client.unload_model("tiny-embed")
    assert not client.is_model_ready("tiny-embed")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["tiny-embed"]["state"] == "UNAVAILABLE"
    inp = th.InferInput("input_ids", [1, 2], "INT64")
    inp.set_data_from_numpy(np.array([[1, 2]], np.int64))
    with pytest.raises(InferenceServerException, match="not loaded") as e:
        client.infer("tiny-embed", [inp])
    assert e.value.status() == "503"
    client.load_model("tiny-embed")
    assert client.is_model_ready("tiny-embed")
    assert client.infer("tiny-embed", [inp]).as_numpy("embedding").shape == (1, 8)
    metrics = scrape(server)
    assert metrics[("statmux_model_swap_seconds_count", (("model", "tiny-embed"),))] == (
        swaps_before + 1
    )
    assert metrics[("statmux_models_loaded", ())] == 3
    with pytest.raises(InferenceServerException, match="not supported"):
        client.load_model("tiny-embed", config="{}")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.load_model("ghost")


def test_statistics_and_metrics_count_requests(
    server: BackgroundServer, client: th.InferenceServerClient
) -> None:
    def success() -> int:
        stats = client.get_inference_statistics("tiny-mlp")["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before_stats = success()
    before = scrape(server)
    x = np.ones((2, 16), np.float32)
    for _ in range(3):
        inp = th.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        client.infer("tiny-mlp", [inp])
    after = scrape(server)
    assert success() == before_stats + 3
    labels = (("model", "tiny-mlp"), ("version", "1"))
    assert after[("nv_inference_request_success", labels)] == (
        before[("nv_inference_request_success", labels)] + 3
    )
    assert after[("nv_inference_count", labels)] == before[("nv_inference_count", labels)] + 6
    assert after[("statmux_requests_within_slo_total", labels)] == (
        before[("statmux_requests_within_slo_total", labels)] + 3
    )
    assert after[("nv_inference_pending_request_count", labels)] == 0
    for name in (
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert after[(name, labels)] > before[(name, labels)], name
    stage = (("model", "tiny-mlp"), ("stage", "0"))
    assert after[("statmux_stage_compute_seconds_count", stage)] > 0
    assert ("statmux_stage_transfer_seconds_sum", stage) in after
    all_stats = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in all_stats} == {"tiny-mlp", "tiny-embed", "strict"}


# --------------------------------------------------------------------------- health
def test_unhealthy_engine_is_not_ready_and_fails_requests() -> None:
    engine = LocalEngine([tiny_mlp()])
    srv = BackgroundServer(FrontEnd(engine), grpc_port=None)
    try:
        client = th.InferenceServerClient(srv.http_url)
        assert client.is_server_ready() and client.is_model_ready("tiny-mlp")
        engine.mark_unhealthy("rank 1 of group g0 exited")
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert not client.is_model_ready("tiny-mlp")
        inp = th.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
        with pytest.raises(InferenceServerException, match="unhealthy") as e:
            client.infer("tiny-mlp", [inp])
        assert e.value.status() == "503"
        status, body = raw(srv, "GET", "/v2/health/ready")
        assert status == 503 and "not ready" in error_of(body)
        client.close()
    finally:
        srv.stop()
        engine.shutdown()


def test_non_resident_model_is_served_by_swapping_in_on_demand(
    models: dict[str, LocalModel],
) -> None:
    engine = LocalEngine([tiny_mlp()], load_all=False)
    srv = BackgroundServer(FrontEnd(engine), grpc_port=None)
    try:
        assert engine.loaded() == set()
        client = th.InferenceServerClient(srv.http_url)
        assert client.is_model_ready("tiny-mlp")  # servable: the engine swaps it in
        x = np.ones((1, 16), np.float32)
        inp = th.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(
            client.infer("tiny-mlp", [inp]).as_numpy("OUTPUT0"),
            expected_mlp(models, x),
            rtol=1e-5,
        )
        assert engine.loaded() == {"tiny-mlp"}
        assert scrape(srv)[("statmux_models_loaded", ())] == 1
        client.close()
    finally:
        srv.stop()
        engine.shutdown()
