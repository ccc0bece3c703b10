"""`statmux router` end to end: real groups (`statmux runtime`, a pp1 and a pp2 gloo group),
the real router process, and tritonclient (http + grpc, sync + asyncio) against it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
import tritonclient.http.aio as tha
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from statmux.runtime.router import router_main

BERT = {"source": "synthetic", "architecture": "bert", "preset": "tiny", "dtype": "float32"}
IDS = np.array([[101, 7, 42, 99, 5, 102], [101, 8, 8, 8, 3, 102]], dtype=np.int64)


def model(name: str, stages: int, slo: float = 30.0) -> dict:
    return {
        "name": name,
        "sloSeconds": slo,
        "maxBatchSize": 4,
        "stageLatencySeconds": {"1": [0.01] * stages, "4": [0.02] * stages},
        "weightBytesPerGpu": 1e6,
        "weights": BERT,
    }


def plan_doc(groups: list[dict]) -> dict:
    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "Plan",
        "modelSet": "test",
        "policy": "manual",
        "cluster": {"gpus": 3, "gpuMemoryBytes": 1e9, "gpusPerNode": 8},
        "groups": groups,
        "predicted": {"attainment": 1.0},
    }


# g0 (pp1): bert-a, bert-b, bert-tight (an SLO no group can meet) and bert-bound (a loose
# SLO, but the Plan admits it by a bound no group can meet); g1 (pp2): bert-a.
G0 = {
    "name": "g0",
    "gpus": 1,
    "pp": 1,
    "tp": 1,
    "memoryPerGpuBytes": 0,
    "models": [
        model("bert-a", 1),
        model("bert-b", 1),
        model("bert-tight", 1, slo=0.001),
        model("bert-bound", 1) | {"admissionSeconds": 0.001},
    ],
}
G1 = {"name": "g1", "gpus": 2, "pp": 2, "tp": 1, "memoryPerGpuBytes": 0, "models": []}
G1["models"] = [model("bert-a", 2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check, what: str, procs: list[subprocess.Popen], limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                out = p.stdout.read().decode() if p.stdout else ""
                raise AssertionError(f"a process exited with {p.returncode}:\n{out[-3000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {limit} s")


@dataclass
class Group:
    name: str
    http: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def output(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in self.logs if p.exists())


def start_group(plan: Path, name: str, ranks: int, http: int | None = None) -> Group:
    """Output goes to files next to the plan (a pipe nobody reads would fill and block)."""
    g = Group(name, http or free_port())
    master = free_port()
    for rank in range(ranks):
        log = (plan.parent / f"{name}-{g.http}-rank{rank}.log").open("ab")
        env = dict(os.environ)
        if ranks > 1:
            env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master)}
            env |= {"RANK": str(rank), "WORLD_SIZE": str(ranks)}
        cmd = [sys.executable, "-m", "statmux.runtime.main", "--plan", str(plan), "--group"]
        cmd += [name, "--host", "127.0.0.1", "--http-port", str(g.http), "--no-grpc"]
        g.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        g.logs.append(plan.parent / f"{name}-{g.http}-rank{rank}.log")
    return g


def stop_procs(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class RouterProc:
    proc: subprocess.Popen
    http: int
    grpc: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def metrics(self) -> dict[tuple, float]:
        _, body = get(self.url + "/metrics")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
        }


def start_router(plan: Path, *flags: str) -> RouterProc:
    http, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "statmux", "router", "--plan", str(plan), *flags]
    cmd += ["--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc_port)]
    cmd += ["--health-interval", "0.3"]
    log = plan.parent / f"router-{http}.log"
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    r = RouterProc(proc, http, grpc_port, log)
    wait_until(lambda: get(r.url + "/v2/health/live")[0] == 200, "router start", [proc], 60)
    return r


@dataclass
class Cluster:
    plan: Path
    groups: dict[str, Group]
    router: RouterProc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("router")
    plan = tmp / "plan.json"
    plan.write_text(json.dumps(plan_doc([G0, G1])))
    groups = {"g0": start_group(plan, "g0", 1), "g1": start_group(plan, "g1", 2)}
    router = None
    try:
        spec = ",".join(f"{n}={g.url}" for n, g in groups.items())
        router = start_router(plan, "--groups", spec)
        procs = [router.proc] + [p for g in groups.values() for p in g.procs]
        wait_until(lambda: get(router.url + "/v2/health/ready")[0] == 200, "ready", procs)
        yield Cluster(plan, groups, router)
    finally:
        if router is not None:
            stop_procs([router.proc])
        for g in groups.values():
            stop_procs(g.procs)


def http_input(binary: bool = True) -> th.InferInput:
    inp = th.InferInput("input_ids", list(IDS.shape), "INT64")
    inp.set_data_from_numpy(IDS, binary_data=binary)
    return inp


def grpc_input() -> tg.InferInput:
    inp = tg.InferInput("input_ids", list(IDS.shape), "INT64")
    inp.set_data_from_numpy(IDS)
    return inp


# --------------------------------------------------------------------------- usage errors
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_doc([G0, G1])))
    cases = [
        (["--plan", str(tmp_path / "no.json"), "--groups", "g0=a:1"], "does not exist"),
        (["--plan", str(plan), "--groups", "g0=a:1"], "no address for plan group(s) g1"),
        (["--plan", str(plan), "--groups", "g0=a:1,g1=b:2,g9=c:3"], "does not have: g9"),
        (["--plan", str(plan), "--groups", "g0"], "is not GROUP=ADDRESS"),
    ]
    for argv, message in cases:
        assert router_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    modelset = tmp_path / "ms.yaml"
    modelset.write_text("apiVersion: statmux.io/v1alpha1\nkind: ModelSet\n")
    assert router_main(["--plan", str(modelset), "--groups", "g0=a:1"]) == 2
    assert "this is a ModelSet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        router_main(["--plan", str(plan), "--groups", "g0=a:1", "--hop-timeout", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # --groups or --groups-file is required
        router_main(["--plan", str(plan)])
    assert e.value.code == 2


# --------------------------------------------------------------------------- serving
def test_tritonclient_http_and_grpc_sync_against_the_router(cluster: Cluster) -> None:
    r = cluster.router
    direct = th.InferenceServerClient(cluster.groups["g0"].url[len("http://") :])
    c = th.InferenceServerClient(f"127.0.0.1:{r.http}")
    g = tg.InferenceServerClient(f"127.0.0.1:{r.grpc}")
    try:
        want = direct.infer("bert-b", [http_input()]).as_numpy("last_hidden_state")
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("bert-a") and c.is_model_ready("bert-b")
        assert c.get_server_metadata()["name"] == "statmux"
        assert c.get_model_metadata("bert-a") == direct.get_model_metadata("bert-a")
        assert c.get_model_config("bert-b")["max_batch_size"] == 4
        got = c.infer("bert-b", [http_input()]).as_numpy("last_hidden_state")
        np.testing.assert_array_equal(got, want)
        # pure JSON in and out (no Content-Type, no binary extension)
        out = th.InferRequestedOutput("last_hidden_state", binary_data=False)
        js = c.infer("bert-b", [http_input(False)], outputs=[out])
        np.testing.assert_allclose(js.as_numpy("last_hidden_state"), want, rtol=1e-6)
        # a version path, and bert-a on either group (pp1 and pp2 give the same answer)
        for _ in range(4):
            a = c.infer("bert-a", [http_input()], model_version="1").as_numpy("last_hidden_state")
            np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-5)
        assert g.is_server_ready() and g.is_model_ready("bert-a")
        got = g.infer("bert-b", [grpc_input()]).as_numpy("last_hidden_state")
        np.testing.assert_array_equal(got, want)
        assert g.get_model_metadata("bert-a").name == "bert-a"
        assert g.get_model_config("bert-b").config.max_batch_size == 4
        stats = g.get_inference_statistics("bert-b").model_stats[0]
        assert stats.name == "bert-b" and stats.inference_count >= 2
        names = {m["name"] for m in c.get_model_repository_index()}
        assert names == {"bert-a", "bert-b", "bert-tight", "bert-bound"}
    finally:
        c.close()
        g.close()
        direct.close()


def test_tritonclient_asyncio_http_and_grpc(cluster: Cluster) -> None:
    r = cluster.router

    async def run() -> list[np.ndarray]:
        hc = tha.InferenceServerClient(f"127.0.0.1:{r.http}")
        gc = tga.InferenceServerClient(f"127.0.0.1:{r.grpc}")
        try:
            gi = tga.InferInput("input_ids", list(IDS.shape), "INT64")
            gi.set_data_from_numpy(IDS)
            hi = tha.InferInput("input_ids", list(IDS.shape), "INT64")
            hi.set_data_from_numpy(IDS)
            results = await asyncio.gather(
                *(hc.infer("bert-a", [hi]) for _ in range(8)),
                *(gc.infer("bert-a", [gi]) for _ in range(8)),
            )
            return [x.as_numpy("last_hidden_state") for x in results]
        finally:
            await hc.close()
            await gc.close()

    outs = asyncio.run(run())
    assert len(outs) == 16
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-4, atol=1e-5)
    m = r.metrics()
    # bert-a went to both groups: the pp1 and the pp2 one
    assert m[("statmux_router_success_total", (("model", "bert-a"),))] >= 16


def test_grpc_typed_contents_are_sent_as_raw_bytes(cluster: Cluster) -> None:
    """A client that sends int64_contents instead of raw bytes gets the same answer."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    req = service_pb2.ModelInferRequest(model_name="bert-b", id="typed-1")
    t = req.inputs.add()
    t.name, t.datatype = "input_ids", "INT64"
    t.shape.extend(IDS.shape)
    t.contents.int64_contents.extend(IDS.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{cluster.router.grpc}") as ch:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=60)
    assert reply.id == "typed-1" and reply.outputs[0].name == "last_hidden_state"
    got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(reply.outputs[0].shape)
    c = th.InferenceServerClient(cluster.groups["g0"].url[len("http://") :])
    want = c.infer("bert-b", [http_input()]).as_numpy("last_hidden_state")
    c.close()
    np.testing.assert_array_equal(got, want)


def test_unknown_model_is_404_on_both_protocols(cluster: Cluster) -> None:
    r = cluster.router
    status, body = post(r.url + "/v2/models/nope/infer", b"{}")
    assert status == 404
    assert json.loads(body)["error"].startswith("unknown model 'nope' (this ModelSet serves: ")
    assert get(r.url + "/v2/models/nope")[0] == 404
    g = tg.InferenceServerClient(f"127.0.0.1:{r.grpc}")
    with pytest.raises(InferenceServerException) as e:
        g.infer("nope", [grpc_input()])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    g.close()


def test_slo_admission_rejects_at_once_with_429(cluster: Cluster) -> None:
    r = cluster.router
    c = th.InferenceServerClient(f"127.0.0.1:{r.http}")
    g = tg.InferenceServerClient(f"127.0.0.1:{r.grpc}")
    with pytest.raises(InferenceServerException) as e:
        c.infer("bert-tight", [http_input()])
    assert e.value.status() == "429"
    assert "rejected by the router's SLO admission" in str(e.value)
    assert "> SLO 1.0 ms" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        g.infer("bert-tight", [grpc_input()])
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    c.close()
    g.close()
    m = r.metrics()
    assert m[("statmux_router_rejected_total", (("model", "bert-tight"), ("reason", "slo")))] == 2
    # the group never saw them
    _, stats = get(cluster.groups["g0"].url + "/v2/models/bert-tight/stats")
    assert json.loads(stats)["model_stats"][0]["inference_stats"]["success"]["count"] == 0


def test_admission_uses_the_plans_bound_below_the_slo(cluster: Cluster) -> None:
    """admissionSeconds (a re-plan keeps a previous plan's bound after the SLO was loosened):
    the router and the group admit by it, and report the SLO itself as the SLO."""
    r = cluster.router
    c = th.InferenceServerClient(f"127.0.0.1:{r.http}")
    with pytest.raises(InferenceServerException) as e:
        c.infer("bert-bound", [http_input()])
    assert e.value.status() == "429"
    assert "admission bound 1.0 ms (the Plan's admissionSeconds, below the SLO 30000.0 ms)" in (
        str(e.value)
    )
    c.close()
    g0 = th.InferenceServerClient(cluster.groups["g0"].url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as e:
        g0.infer("bert-bound", [http_input()])
    assert e.value.status() == "429"
    assert "admission bound 1.0 ms (the Plan's admissionSeconds, below the SLO 30000.0 ms)" in (
        str(e.value)
    )
    config = g0.get_model_config("bert-bound")
    g0.close()
    assert config["parameters"]["admission_seconds"]["string_value"] == "0.001"
    m = r.metrics()
    assert m[("statmux_router_rejected_total", (("model", "bert-bound"), ("reason", "slo")))] == 1
    assert m[("statmux_router_slo_seconds", (("model", "bert-bound"),))] == 30.0


MALFORMED = [
    (b"{", {}),
    (b'{"inputs": []}', {}),
    (b'{"inputs":[{"name":"input_ids","datatype":"FP99","shape":[1,2],"data":[1,2]}]}', {}),
    (b'{"inputs":[{"name":"input_ids","datatype":"INT64","shape":[1,2],"data":[1]}]}', {}),
    (b'{"inputs":[{"name":"nope","datatype":"INT64","shape":[1,1],"data":[1]}]}', {}),
    (b"xx", {"Inference-Header-Content-Length": "x"}),
    (b"{}", {"Inference-Header-Content-Length": "99"}),
    (
        b'{"inputs":[{"name":"input_ids","datatype":"INT64","shape":[1,2],'
        b'"parameters":{"binary_data_size":16}}]}abc',
        {"Inference-Header-Content-Length": "99"},
    ),
    (b"\xff\xfe", {}),
]


def test_malformed_requests_get_the_groups_4xx_and_the_router_stays_up(cluster: Cluster) -> None:
    r, g0 = cluster.router, cluster.groups["g0"]
    for body, headers in MALFORMED:
        via_router = post(r.url + "/v2/models/bert-b/infer", body, headers)
        direct = post(g0.url + "/v2/models/bert-b/infer", body, headers)
        assert 400 <= via_router[0] < 500, via_router
        assert via_router == direct, (body, via_router, direct)
        assert "error" in json.loads(via_router[1])
    # a gRPC request with more raw contents than inputs: the group front end's message
    g = tg.InferenceServerClient(f"127.0.0.1:{r.grpc}")
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="bert-b")
    t = req.inputs.add()
    t.name, t.datatype = "input_ids", "INT64"
    t.shape.extend([1, 1])
    req.raw_input_contents.extend([b"\0" * 8, b"\0" * 8])
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{r.grpc}") as ch:
        from tritonclient.grpc import service_pb2_grpc

        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 raw_input_contents for 1 inputs" in str(e.value.details())
    # still serving
    assert g.infer("bert-b", [grpc_input()]).as_numpy("last_hidden_state").shape == (2, 6, 32)
    g.close()
    m = r.metrics()
    invalid = m[("statmux_router_failed_total", (("model", "bert-b"), ("reason", "invalid")))]
    assert invalid == len(MALFORMED) + 1


def test_metrics_per_model(cluster: Cluster) -> None:
    m = cluster.router.metrics()
    key = (("model", "bert-b"),)
    assert m[("statmux_router_requests_total", key)] >= m[("statmux_router_success_total", key)]
    assert m[("statmux_router_within_slo_total", key)] == m[("statmux_router_success_total", key)]
    assert m[("statmux_router_request_duration_seconds_count", key)] >= 1
    assert m[("statmux_router_arrival_rate", key)] > 0
    assert m[("statmux_router_slo_seconds", (("model", "bert-tight"),))] == 0.001
    for g in ("g0", "g1"):
        assert m[("statmux_router_group_outstanding", (("group", g),))] == 0

    # group_up follows the health probes: on a loaded machine a group's heartbeat can lapse
    # for a moment (it answers 503 not-ready) and the gauge says so; it must come back to 1.
    def both_up() -> bool:
        now = cluster.router.metrics()
        return all(now[("statmux_router_group_up", (("group", g),))] == 1 for g in ("g0", "g1"))

    procs = [cluster.router.proc] + [p for g in cluster.groups.values() for p in g.procs]
    wait_until(both_up, "statmux_router_group_up == 1 for g0 and g1", procs, 60)


def test_plan_changes_are_followed_through_a_symlink_swap(cluster: Cluster, tmp_path: Path) -> None:
    """The operator's ConfigMap mount: plan.json -> ..data/plan.json, ..data -> a dated dir."""

    def publish(version: str, plan: dict | str, groups: dict) -> None:
        d = tmp_path / version
        d.mkdir()
        (d / "plan.json").write_text(plan if isinstance(plan, str) else json.dumps(plan))
        (d / "groups.json").write_text(json.dumps(groups))
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(version)
        os.replace(tmp_link, tmp_path / "..data")  # atomic, as kubelet does

    urls = {n: g.url for n, g in cluster.groups.items()}
    publish("v1", plan_doc([G0]), {"g0": urls["g0"]})
    for name in ("plan.json", "groups.json"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    r = start_router(
        tmp_path / "plan.json", "--groups-file", str(tmp_path / "groups.json"),
        "--reload-interval", "0.2", "--no-grpc",
    )  # fmt: skip
    try:
        wait_until(lambda: get(r.url + "/v2/health/ready")[0] == 200, "ready", [r.proc], 60)
        assert post(r.url + "/v2/models/bert-b/infer", json_request())[0] == 200

        # v2, a rollout: g0's models move to a new group g2 that is not up yet; g0 left the
        # plan but keeps serving them until g2 is live (make before break)
        g2 = dict(G0, name="g2")
        publish("v2", plan_doc([g2]), {"g2": f"http://127.0.0.1:{free_port()}"})
        wait_until(
            lambda: (
                r.metrics().get(("statmux_router_plan_reloads_total", (("result", "ok"),))) == 1
            ),
            "plan v2",
            [r.proc],
            30,
        )
        for _ in range(3):
            assert post(r.url + "/v2/models/bert-b/infer", json_request())[0] == 200
        assert get(r.url + "/v2/health/ready")[0] == 200

        # v3: only g1 (bert-a); bert-b leaves the ModelSet. Requests in flight finish.
        results: list[int] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                results.append(post(r.url + "/v2/models/bert-a/infer", json_request())[0])

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.5)
        publish("v3", plan_doc([G1]), {"g1": urls["g1"]})
        wait_until(
            lambda: get(r.url + "/v2/models/bert-b/ready")[0] == 404, "plan v3", [r.proc], 30
        )
        time.sleep(0.5)
        stop.set()
        worker.join(30)
        assert results and set(results) == {200}, set(results)
        assert post(r.url + "/v2/models/bert-b/infer", json_request())[0] == 404
        m = r.metrics()
        assert m[("statmux_router_group_up", (("group", "g1"),))] == 1

        # a broken plan: logged and counted, the last good one keeps serving
        publish("v4", "{not json", {"g1": urls["g1"]})
        wait_until(
            lambda: (
                r.metrics().get(("statmux_router_plan_reloads_total", (("result", "error"),))) == 1
            ),
            "the bad plan is noticed",
            [r.proc],
            30,
        )
        assert post(r.url + "/v2/models/bert-a/infer", json_request())[0] == 200
    finally:
        stop_procs([r.proc])


def json_request() -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
    ).encode()


# --------------------------------------------------------------------------- faults
def test_hop_timeout_answers_504_and_is_counted(tmp_path: Path) -> None:
    """A group that accepts requests and never answers: the router does not hang."""
    from aiohttp import web

    hang = asyncio.Event()

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def infer(_: web.Request) -> web.Response:
        await hang.wait()
        return web.Response(status=200)

    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/models/{m}/infer", infer)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_doc([G0])))
    r = start_router(plan, "--groups", f"g0=127.0.0.1:{port}", "--hop-timeout", "0.5")
    try:
        wait_until(lambda: get(r.url + "/v2/health/ready")[0] == 200, "ready", [r.proc], 30)
        start = time.monotonic()
        status, body = post(r.url + "/v2/models/bert-a/infer", json_request())
        assert status == 504 and "no answer within 0.5 s" in json.loads(body)["error"]
        assert time.monotonic() - start < 10
        m = r.metrics()
        assert m[("statmux_router_hop_timeouts_total", (("group", "g0"),))] == 1
        assert m[("statmux_router_failed_total", (("model", "bert-a"), ("reason", "timeout")))] == 1
    finally:
        stop_procs([r.proc])
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_no_live_group_is_503_with_the_reason(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_doc([G0])))
    dead = free_port()
    r = start_router(plan, "--groups", f"g0=127.0.0.1:{dead}")
    try:
        status, body = get(r.url + "/v2/health/ready")
        assert status == 503 and "no group is reachable" in json.loads(body)["error"]
        start = time.monotonic()
        status, body = post(r.url + "/v2/models/bert-a/infer", json_request())
        assert status == 503
        assert "no live group hosts model 'bert-a'" in json.loads(body)["error"]
        assert "cannot connect" in json.loads(body)["error"]
        assert time.monotonic() - start < 5
    finally:
        stop_procs([r.proc])


def test_sigterm_drains_and_every_request_gets_an_answer(cluster: Cluster) -> None:
    spec = ",".join(f"{n}={g.url}" for n, g in cluster.groups.items())
    r = start_router(cluster.plan, "--groups", spec, "--no-grpc")
    wait_until(lambda: get(r.url + "/v2/health/ready")[0] == 200, "ready", [r.proc], 60)
    outcomes: list[object] = []

    def one() -> None:
        try:
            outcomes.append(post(r.url + "/v2/models/bert-a/infer", json_request())[0])
        except OSError as e:  # connected after the listener closed: never accepted
            outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for i, t in enumerate(threads):
        t.start()
        if i == 5:
            r.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert r.proc.wait(60) == 0
    answered = [o for o in outcomes if isinstance(o, int)]
    assert set(answered) <= {200, 503}, outcomes
    assert len(outcomes) == 12


def test_kill_a_group_leader_under_load(cluster: Cluster) -> None:
    """bert-a has a second replica (g1) and keeps succeeding; bert-b (only on g0) gets quick
    503s; every request gets an answer and the counts add up; g0 is back once it restarts.
    Runs last: it kills g0 of the shared cluster."""
    r = cluster.router
    counts: dict[str, dict[str, int]] = {m: {} for m in ("bert-a", "bert-b")}
    slow: list[float] = []
    messages: dict[str, str] = {}
    stop = threading.Event()
    killed = threading.Event()

    def load(model: str) -> None:
        c = th.InferenceServerClient(f"127.0.0.1:{r.http}", network_timeout=60)
        while not stop.is_set():
            start = time.monotonic()
            try:
                c.infer(model, [http_input()])
                outcome = "ok"
            except InferenceServerException as e:
                outcome = str(e.status())
                messages.setdefault(f"{model} {outcome}", str(e))
            took = time.monotonic() - start
            if killed.is_set() and outcome == "503":
                slow.append(took)
            counts[model][outcome] = counts[model].get(outcome, 0) + 1
        c.close()

    workers = [threading.Thread(target=load, args=(m,)) for m in ("bert-a", "bert-a", "bert-b")]
    for w in workers:
        w.start()
    time.sleep(2)
    g0 = cluster.groups["g0"]
    g0.procs[0].kill()  # the leader dies without a goodbye
    g0.procs[0].wait()
    killed.set()
    time.sleep(3)
    a_after = dict(counts["bert-a"])
    time.sleep(2)
    stop.set()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers), "a client hung"
    a, b = counts["bert-a"], counts["bert-b"]
    # bert-a: only successes, before and after the kill (in-flight requests were retried)
    assert set(a) == {"ok"} and a["ok"] > a_after["ok"], (a, messages)
    # bert-b: successes before, then 503s, answered quickly
    assert b.get("ok", 0) > 0 and b.get("503", 0) > 0 and set(b) <= {"ok", "503"}, (
        b,
        messages,
        g0.output(),
        r.log.read_text()[-3000:],
    )
    assert slow and max(slow) < 5.0
    m = r.metrics()
    for name, c in counts.items():
        key = (("model", name),)
        sent = sum(c.values())
        ok = m[("statmux_router_success_total", key)]
        rejected = sum(
            v for (n, labels), v in m.items()
            if n == "statmux_router_rejected_total" and ("model", name) in labels
        )  # fmt: skip
        failed = sum(
            v for (n, labels), v in m.items()
            if n == "statmux_router_failed_total" and ("model", name) in labels
        )  # fmt: skip
        # the router saw this test's requests plus the earlier tests': its counts add up
        assert m[("statmux_router_requests_total", key)] == ok + rejected + failed
        assert sent <= m[("statmux_router_requests_total", key)]
    assert m[("statmux_router_group_up", (("group", "g0"),))] == 0

    # g0 comes back on the same port: the health checks put it back in rotation
    stop_procs(g0.procs)
    cluster.groups["g0"] = start_group(cluster.plan, "g0", 1, http=g0.http)
    wait_until(
        lambda: get(r.url + "/v2/models/bert-b/ready")[0] == 200,
        "g0 back in rotation",
        cluster.groups["g0"].procs,
    )
    assert post(r.url + "/v2/models/bert-b/infer", json_request())[0] == 200
