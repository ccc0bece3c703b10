"""The gRPC front end against real tritonclient.grpc, a real server and real torch models."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.local_engine import LocalEngine, LocalModel, tiny_embedder, tiny_mlp
from statmux.runtime.server_runner import BackgroundServer


@pytest.fixture(scope="module")
def models() -> dict[str, LocalModel]:
    strict = tiny_mlp(name="strict", slo_seconds=0.001)
    strict.info.stage_latency_s = {1: [1.0]}
    return {m.info.name: m for m in (tiny_mlp(), tiny_embedder(), strict)}


@pytest.fixture(scope="module")
def server(models: dict[str, LocalModel]) -> Iterator[BackgroundServer]:
    engine = LocalEngine(models.values())
    srv = BackgroundServer(FrontEnd(engine, max_request_bytes=1 << 20))
    yield srv
    srv.stop()
    engine.shutdown()


@pytest.fixture()
def client(server: BackgroundServer) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture()
def stub(server: BackgroundServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def mlp_input(x: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def code_of(stub_call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        stub_call()  # type: ignore[operator]
    return e.value.code()  # type: ignore[attr-defined, no-any-return]


def test_health_metadata_and_config(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "statmux"
    assert client.is_model_ready("tiny-embed")
    meta = client.get_model_metadata("tiny-embed", as_json=True)
    assert meta["inputs"][0] == {"name": "input_ids", "datatype": "INT64", "shape": ["-1", "-1"]}
    config = client.get_model_config("tiny-mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 8


def test_infer_raw_contents_matches_torch(
    client: tg.InferenceServerClient, models: dict[str, LocalModel]
) -> None:
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    result = client.infer(
        "tiny-mlp", [mlp_input(x)], outputs=[tg.InferRequestedOutput("OUTPUT0")], request_id="g1"
    )
    with torch.inference_mode():
        want = models["tiny-mlp"].module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), want, rtol=1e-5)
    assert result.get_response().id == "g1"


def test_infer_with_typed_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, models: dict[str, LocalModel]
) -> None:
    ids = [[3, 1, 4, 1, 5]]
    req = service_pb2.ModelInferRequest(model_name="tiny-embed")
    t = req.inputs.add(name="input_ids", datatype="INT64", shape=[1, 5])
    t.contents.int64_contents.extend(ids[0])
    resp = stub.ModelInfer(req)
    got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(1, 8)
    with torch.inference_mode():
        want = models["tiny-embed"].module(torch.tensor(ids)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_error_codes(
    client: tg.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    x = np.zeros((1, 16), np.float32)
    with pytest.raises(InferenceServerException, match="unknown model 'ghost'") as e:
        client.infer("ghost", [mlp_input(x)])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match=r"expected \[-1, 16\]") as e:
        client.infer("tiny-mlp", [mlp_input(np.zeros((1, 3), np.float32))])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="rejected by SLO admission") as e:
        client.infer("strict", [mlp_input(x)])
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"

    req = service_pb2.ModelInferRequest(model_name="tiny-mlp")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(b"\x00" * 10)
    assert code_of(lambda: stub.ModelInfer(req)) == grpc.StatusCode.INVALID_ARGUMENT
    req = service_pb2.ModelInferRequest(model_name="tiny-mlp")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1 << 20])
    req.raw_input_contents.append(b"")
    assert code_of(lambda: stub.ModelInfer(req)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    meta_req = service_pb2.ModelMetadataRequest(name="ghost")
    assert code_of(lambda: stub.ModelMetadata(meta_req)) == grpc.StatusCode.NOT_FOUND


def test_repository_and_statistics(client: tg.InferenceServerClient) -> None:
    names = {m.name for m in client.get_model_repository_index().models}
    assert names == {"tiny-mlp", "tiny-embed", "strict"}
    client.unload_model("tiny-mlp")
    assert not client.is_model_ready("tiny-mlp")
    with pytest.raises(InferenceServerException) as e:
        client.infer("tiny-mlp", [mlp_input(np.zeros((1, 16), np.float32))])
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    client.load_model("tiny-mlp")
    before = client.get_inference_statistics("tiny-mlp").model_stats[0]
    client.infer("tiny-mlp", [mlp_input(np.zeros((2, 16), np.float32))])
    after = client.get_inference_statistics("tiny-mlp").model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 2
    assert any(b.batch_size == 2 for b in after.batch_stats)


def test_unhealthy_engine_is_unavailable() -> None:
    engine = LocalEngine([tiny_mlp()])
    srv = BackgroundServer(FrontEnd(engine), grpc_port=0)
    try:
        client = tg.InferenceServerClient(srv.grpc_url)
        engine.mark_unhealthy("rank 2 exited")
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready("tiny-mlp")
        with pytest.raises(InferenceServerException, match="unhealthy") as e:
            client.infer("tiny-mlp", [mlp_input(np.zeros((1, 16), np.float32))])
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        client.close()
    finally:
        srv.stop()
        engine.shutdown()
