"""`statmux runtime`: clear exit-2 errors, and real groups served end to end in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families

from statmux.contract import ENV_DEVICE
from statmux.runtime.main import UsageError, device_of, runtime_main

BERT = {"source": "synthetic", "architecture": "bert", "preset": "tiny", "dtype": "float32"}


def plan_doc() -> dict:
    def model(stages: int) -> dict:
        return {
            "name": "bert-a",
            "sloSeconds": 30.0,
            "maxBatchSize": 4,
            "stageLatencySeconds": {"1": [0.01] * stages, "4": [0.02] * stages},
            "weightBytesPerGpu": 1e6,
            "weights": BERT,
        }

    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "Plan",
        "modelSet": "test",
        "policy": "manual",
        "cluster": {"gpus": 3, "gpuMemoryBytes": 1e9, "gpusPerNode": 8},
        "groups": [
            {
                "name": "g0",
                "gpus": 1,
                "pp": 1,
                "tp": 1,
                "memoryPerGpuBytes": 1e6,
                "models": [model(1)],
            },
            {
                "name": "g1",
                "gpus": 2,
                "pp": 2,
                "tp": 1,
                "memoryPerGpuBytes": 1e6,
                "models": [model(2)],
            },
        ],
        "predicted": {"attainment": 1.0, "goodput": 1.0, "perModel": {}, "baselines": {}},
        "search": {"seconds": 0, "simulations": 0},
    }


@pytest.fixture()
def plan_file(tmp_path: Path) -> Path:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan_doc()))
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- usage errors
def test_missing_plan_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert runtime_main(["--plan", str(tmp_path / "nope.json"), "--group", "g0"]) == 2
    err = capsys.readouterr().err
    assert "nope.json: cannot read the Plan: No such file" in err and "Traceback" not in err


def test_not_a_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "Deployment"}')
    assert runtime_main(["--plan", str(bad), "--group", "g0"]) == 2
    assert "bad.json: not a statmux Plan: expected kind: Plan" in capsys.readouterr().err


def test_a_modelset_is_not_a_plan(capsys: pytest.CaptureFixture[str]) -> None:
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"
    assert runtime_main(["--plan", str(demo), "--group", "g0"]) == 2
    err = capsys.readouterr().err
    assert "this is a ModelSet: make a Plan from it with `statmux plan`" in err
    assert "Traceback" not in err


def test_unknown_group(capsys: pytest.CaptureFixture[str], plan_file: Path) -> None:
    assert runtime_main(["--plan", str(plan_file), "--group", "g9"]) == 2
    assert "has no group 'g9' (groups: g0, g1)" in capsys.readouterr().err


def test_bad_environment(
    capsys: pytest.CaptureFixture[str], plan_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LWS_LEADER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    # a two-rank group needs rendezvous variables
    assert runtime_main(["--plan", str(plan_file), "--group", "g1"]) == 2
    assert "bad environment: no rendezvous variables" in capsys.readouterr().err
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    assert runtime_main(["--plan", str(plan_file), "--group", "g1"]) == 2
    assert "RANK='two' is not an integer" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")  # the plan says pp2 x tp1
    assert runtime_main(["--plan", str(plan_file), "--group", "g1"]) == 2
    assert "world size is 3" in capsys.readouterr().err


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        runtime_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--plan", "--group", "--memory-budget", "--switch-interval", "--rendezvous-"):
        assert flag in out


def write_plan(tmp_path: Path, change: Callable[[dict], None]) -> Path:
    doc = plan_doc()
    change(doc)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(doc))
    return path


def weights_of(doc: dict, **weights: object) -> None:
    doc["groups"][0]["models"][0]["weights"] = {**BERT, **weights}


@pytest.mark.parametrize(
    ("change", "flags", "message"),
    [
        (
            lambda d: weights_of(d, preset="bert-huge"),
            [],
            "weights.preset 'bert-huge' is not a bert preset",
        ),
        (
            lambda d: weights_of(d, source="huggingface", path="/nonexistent"),
            [],
            "weights.path: cannot read /nonexistent/config.json",
        ),
        (
            lambda d: d["groups"][0]["models"][0].update(maxBatchSize="lots"),
            [],
            "groups.0.models.0.maxBatchSize: Input should be a valid integer",
        ),
        (
            lambda d: d["groups"][0].update(pp=0),
            [],
            "groups.0.pp: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d["groups"][0]["models"][0].pop("sloSeconds"),
            [],
            "groups.0.models.0.sloSeconds: Field required",
        ),
        (
            lambda d: None,
            ["--memory-budget", "1000"],
            "memory budget 1000 bytes per device is smaller than the largest shard of "
            "model 'bert-a'",
        ),
    ],
)
def test_bad_plans_and_budgets_exit_2_with_the_reason(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    change: Callable[[dict], None],
    flags: list[str],
    message: str,
) -> None:
    plan = write_plan(tmp_path, change)
    code = runtime_main(["--plan", str(plan), "--group", "g0", "--no-grpc", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_unreachable_leader_exits_2_after_the_rendezvous_timeout(
    capsys: pytest.CaptureFixture[str], plan_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
    for var, value in [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))]:
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["--plan", str(plan_file), "--group", "g1", "--rendezvous-timeout", "1"]
    assert runtime_main(argv) == 2
    err = capsys.readouterr().err
    assert f"rank 1 of 2 cannot reach the leader's rendezvous at 127.0.0.1:{port}" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_exits_2(
    capsys: pytest.CaptureFixture[str], plan_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_DEVICE, raising=False)  # no node said "cpu": no fallback
    assert runtime_main(["--plan", str(plan_file), "--group", "g0", "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_device_from_the_node_overrides_the_flag() -> None:
    # The e2e node's GPU stand-in sets STATMUX_DEVICE=cpu on pods that the operator starts
    # with --device cuda; unset (a real GPU node), the flag stands.
    assert device_of("cuda", {ENV_DEVICE: "cpu"}) == "cpu"
    assert device_of("cuda", {ENV_DEVICE: " "}) == "cuda"
    assert device_of("cpu", {}) == "cpu"
    assert device_of("cpu", {ENV_DEVICE: "cuda"}) == "cuda"
    with pytest.raises(UsageError, match=r"STATMUX_DEVICE='gpu'; allowed: cpu, cuda"):
        device_of("cuda", {ENV_DEVICE: "gpu"})


def test_bad_device_env_exits_2(
    capsys: pytest.CaptureFixture[str], plan_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DEVICE, "tpu")
    assert runtime_main(["--plan", str(plan_file), "--group", "g0", "--device", "cuda"]) == 2
    assert "STATMUX_DEVICE='tpu'; allowed: cpu, cuda" in capsys.readouterr().err


def test_bad_flags_exit_2(plan_file: Path) -> None:
    with pytest.raises(SystemExit) as e:
        runtime_main(["--plan", str(plan_file), "--group", "g0", "--http-port", "70000"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        runtime_main(["--plan", str(plan_file), "--group", "g0", "--device", "tpu"])
    assert e.value.code == 2
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(SystemExit) as e:
            runtime_main(["--plan", str(plan_file), "--group", "g0", "--switch-interval", bad])
        assert e.value.code == 2


# --------------------------------------------------------------------------- real groups
def launch(
    plan: Path,
    group: str,
    http: int,
    grpc: int,
    env: dict[str, str],
    flags: tuple[str, ...] = (),
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "statmux.runtime.main", "--plan", str(plan), "--group", group]
    cmd += ["--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc), *flags]
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def wait_ready(client: th.InferenceServerClient, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                out = p.stdout.read().decode() if p.stdout else ""
                raise AssertionError(f"rank exited with {p.returncode}:\n{out}")
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError("the group did not become ready")


def stop(procs: list[subprocess.Popen]) -> list[int | None]:
    procs[0].send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(60))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(None)
    return codes


IDS = np.array([[101, 7, 42, 99, 5, 102], [101, 8, 8, 8, 3, 102]], dtype=np.int64)


def serve_and_query(plan: Path, group: str, ranks: int) -> tuple[np.ndarray, dict[tuple, float]]:
    """Serve a group, query it over REST and gRPC; the output and the /metrics samples."""
    http, grpc_port, master = free_port(), free_port(), free_port()
    procs = []
    for rank in range(ranks):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master)}
        env |= {"RANK": str(rank), "WORLD_SIZE": str(ranks)}
        procs.append(launch(plan, group, http, grpc_port, env if ranks > 1 else {}))
    client = th.InferenceServerClient(f"127.0.0.1:{http}")
    try:
        wait_ready(client, procs)
        inp = th.InferInput("input_ids", list(IDS.shape), "INT64")
        inp.set_data_from_numpy(IDS)
        for _ in range(3):
            rest = client.infer("bert-a", [inp]).as_numpy("last_hidden_state")
        g = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        ginp = tg.InferInput("input_ids", list(IDS.shape), "INT64")
        ginp.set_data_from_numpy(IDS)
        via_grpc = g.infer("bert-a", [ginp]).as_numpy("last_hidden_state")
        g.close()
        np.testing.assert_array_equal(rest, via_grpc)
        metrics = client._get("metrics", None, None).read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
        }
        # prometheus-client's parser names a counter's sample <name>_total
        success = ("nv_inference_request_success_total", (("model", "bert-a"), ("version", "1")))
        assert samples[success] == 4  # three REST requests and one gRPC request
    finally:
        client.close()
        codes = stop(procs)
    assert codes == [0] * ranks
    return rest, samples


def stage_series(samples: dict[tuple, float], kind: str, stage: int) -> tuple[float, float]:
    """(batches, seconds) of statmux_stage_<kind>_seconds for bert-a at `stage`."""
    labels = (("model", "bert-a"), ("stage", str(stage)))
    name = f"statmux_stage_{kind}_seconds"
    return samples[(name + "_count", labels)], samples[(name + "_sum", labels)]


def test_single_rank_group_serves_without_rendezvous_env(plan_file: Path) -> None:
    out, samples = serve_and_query(plan_file, "g0", 1)
    assert out.shape == (2, 6, 32) and np.isfinite(out).all()
    batches, seconds = stage_series(samples, "compute", 0)
    assert batches >= 4 and seconds > 0  # 3 REST + 1 gRPC requests, one stage


@pytest.mark.slow
def test_two_stage_pipeline_group_matches_single_rank(plan_file: Path) -> None:
    single, _ = serve_and_query(plan_file, "g0", 1)
    piped, samples = serve_and_query(plan_file, "g1", 2)
    np.testing.assert_allclose(piped, single, rtol=1e-4, atol=1e-5)
    # every stage of the real two-process group reports its compute and transfer time
    for stage in (0, 1):
        for kind in ("compute", "transfer"):
            batches, seconds = stage_series(samples, kind, stage)
            assert batches >= 3, (stage, kind, batches)
            assert seconds > 0, (stage, kind)


# --------------------------------------------------------------------------- drain, restart
def launch_group(
    plan: Path, group: str, ranks: int, flags: tuple[str, ...] = ()
) -> tuple[list[subprocess.Popen], int]:
    http, grpc_port, master = free_port(), free_port(), free_port()
    procs = []
    for rank in range(ranks):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master)}
        env |= {"RANK": str(rank), "WORLD_SIZE": str(ranks)}
        procs.append(launch(plan, group, http, grpc_port, env if ranks > 1 else {}, flags))
    return procs, http


def infer_body() -> bytes:
    tensor = {"name": "input_ids", "datatype": "INT64", "shape": list(IDS.shape)}
    return json.dumps({"inputs": [tensor | {"data": IDS.ravel().tolist()}]}).encode()


def test_sigterm_under_load_drains_every_accepted_request(plan_file: Path) -> None:
    """Clients on keep-alive connections keep sending while the leader gets SIGTERM: every
    request is answered 200, or refused 503 with Connection: close; none is reset or lost."""
    import http.client
    import threading

    procs, port = launch_group(plan_file, "g0", 1, ("--drain-timeout", "60"))
    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    body = infer_body()
    answers: list[int | str] = []
    lock = threading.Lock()
    sigterm_sent = threading.Event()

    def keep_sending() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                try:
                    conn.request("POST", "/v2/models/bert-a/infer", body=body)
                    resp = conn.getresponse()
                    resp.read()
                except (ConnectionError, http.client.HTTPException) as e:
                    if sigterm_sent.is_set():  # the server closed an idle connection: done
                        return
                    with lock:
                        answers.append(repr(e))
                    return
                with lock:
                    answers.append(resp.status)
                if resp.status == 503:
                    assert resp.getheader("Connection", "").lower() == "close"
                    return
        finally:
            conn.close()

    try:
        wait_ready(client, procs)
        threads = [threading.Thread(target=keep_sending) for _ in range(8)]
        for t in threads:
            t.start()
        while len(answers) < 16:
            time.sleep(0.05)
        sigterm_sent.set()
        procs[0].send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        code = procs[0].wait(90)
        log = procs[0].stdout.read().decode() if procs[0].stdout else ""
    finally:
        client.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code == 0, log
    assert all(a in (200, 503) for a in answers), answers
    assert answers.count(200) >= 16
    for phase in ("SIGTERM: draining", "drained in", "group shut down in", "exit 0"):
        assert phase in log, (phase, log)


@pytest.mark.slow
def test_a_dead_rank_restarts_the_whole_group_which_serves_again(plan_file: Path) -> None:
    """SIGKILL a worker: the leader turns not-ready, then exits with the reason (so the pod
    group restarts as a gang); the restarted group serves again within a bounded time."""
    flags = ("--heartbeat-timeout", "2", "--rendezvous-timeout", "60")
    procs, port = launch_group(plan_file, "g1", 2, flags)
    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    inp = th.InferInput("input_ids", list(IDS.shape), "INT64")
    inp.set_data_from_numpy(IDS)
    try:
        wait_ready(client, procs)
        before = client.infer("bert-a", [inp]).as_numpy("last_hidden_state")
        procs[1].kill()
        procs[1].wait(30)
        code = procs[0].wait(60)  # bounded: the heartbeat timeout, then the exit
        log = procs[0].stdout.read().decode() if procs[0].stdout else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code == 3, log
    # whichever notices first: the heartbeat monitor or the pipeline's receiver
    assert (
        "rank 1 of the group stopped sending heartbeats" in log
        or "lost the last pipeline stage" in log
    ), log
    assert "exiting with status 3" in log and "restarts as a gang" in log
    # what LWS does: restart the whole group
    procs, port = launch_group(plan_file, "g1", 2, flags)
    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        started = time.monotonic()
        wait_ready(client, procs)
        after = client.infer("bert-a", [inp]).as_numpy("last_hidden_state")
        assert time.monotonic() - started < 180
    finally:
        client.close()
        codes = stop(procs)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert codes == [0, 0]


@pytest.mark.slow
def test_worker_health_answers_the_pods_readiness_probe(plan_file: Path) -> None:
    """In Kubernetes every pod of a group gets the same readinessProbe; a pod of worker ranks
    answers it with --worker-health (here on its own port: both 'pods' share one host)."""
    import urllib.error
    import urllib.request

    http, worker_http, grpc_port, master = free_port(), free_port(), free_port(), free_port()
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master), "WORLD_SIZE": "2"}
    flags = ("--worker-health",)
    procs = [
        launch(plan_file, "g1", http, grpc_port, env | {"RANK": "0"}, flags),
        launch(plan_file, "g1", worker_http, free_port(), env | {"RANK": "1"}, flags),
    ]

    def get(port: int, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    client = th.InferenceServerClient(f"127.0.0.1:{http}")
    try:
        wait_ready(client, procs)
        assert get(worker_http, "/v2/health/ready")[0] == 200
        assert get(worker_http, "/v2/health/live")[0] == 200
        status, body = get(worker_http, "/v2/models/bert-a/infer")
        assert status == 404
        assert "worker rank 1 of group g1" in json.loads(body)["error"]
        inp = th.InferInput("input_ids", list(IDS.shape), "INT64")
        inp.set_data_from_numpy(IDS)
        assert client.infer("bert-a", [inp]).as_numpy("last_hidden_state").shape == (2, 6, 32)
    finally:
        client.close()
        codes = stop(procs)
    assert codes == [0, 0]
