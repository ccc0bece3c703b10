"""Real multi-process groups on CPU (gloo): pipeline + tensor parallel outputs equal the
single-process model, swapping follows LRU under a byte budget, a dead rank fails futures."""

from __future__ import annotations

import json
import multiprocessing as mp
import runpy
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from statmux.placement.plan import PlanGroup

RANK_SCRIPT = Path(__file__).with_name("group_rank.py")
TOL = 1e-5
# Ranks fork from a server that imported torch once: starting a rank costs milliseconds
# instead of a fresh torch import per process (slow on a busy 2-core machine).
_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "numpy", "statmux.runtime.group"])
Proc = Any  # a multiprocessing Process of _CTX


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(name: str, arch: str, **config: Any) -> dict[str, Any]:
    weights: dict[str, Any] = {
        "source": "synthetic",
        "architecture": arch,
        "preset": "tiny",
        "dtype": "float32",
    }
    if config:
        weights["config"] = config
    return {"name": name, "sloSeconds": 0.5, "maxBatchSize": 3, "weights": weights}


def _launch(
    tmp: Path,
    pp: int,
    tp: int,
    models: list[dict[str, Any]],
    scenario: str,
    options: dict[str, Any] | None = None,
    idle_seconds: float = 0.0,
    latency: float = 0.01,
) -> list[Proc]:
    stage_latency = {"1": [latency] * pp, "4": [2 * latency] * pp}
    entries = [m | {"stageLatencySeconds": stage_latency, "weightBytesPerGpu": 1} for m in models]
    group = PlanGroup(
        name="g0", gpus=pp * tp, pp=pp, tp=tp, memory_per_gpu_bytes=0, models=entries
    ).model_dump(mode="json", by_alias=True) | {"idleSeconds": idle_seconds}
    (tmp / "group.json").write_text(json.dumps({"group": group, "options": options or {}}))
    port = _free_port()
    procs = []
    for r in range(pp * tp):
        argv = [str(r), str(pp * tp), str(port), scenario, str(tmp)]
        p = _CTX.Process(
            target=runpy.run_path,
            args=(str(RANK_SCRIPT),),
            kwargs={"init_globals": {"RANK_ARGV": argv}, "run_name": "__main__"},
        )
        p.start()
        procs.append(p)
    return procs


def _errors(tmp: Path) -> str:
    return "\n".join(f.read_text() for f in sorted(tmp.glob("rank*.err")))[-4000:]


def _wait(procs: list[Proc], tmp: Path, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
    if any(p.is_alive() for p in procs):
        for p in procs:
            p.kill()
        pytest.fail("the group hung\n" + _errors(tmp))
    result_file = tmp / "result.json"
    assert result_file.exists(), "rank 0 wrote no result:\n" + _errors(tmp)
    result = json.loads(result_file.read_text())
    assert "error" not in result, result["error"]
    return result


ALL_MODELS = [_model("bert-a", "bert"), _model("gpt2-a", "gpt2"), _model("llama-a", "llama")]


@pytest.mark.parametrize(("pp", "tp"), [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)])
def test_group_output_equals_single_process(tmp_path: Path, pp: int, tp: int) -> None:
    result = _wait(_launch(tmp_path, pp, tp, ALL_MODELS, "exact"), tmp_path)
    assert set(result["errors"]) == {"bert-a", "gpt2-a", "llama-a"}
    for name, err in result["errors"].items():
        assert err <= TOL, f"pp{pp} tp{tp} {name}: max abs error {err}"
    assert result["healthy"]
    infos = result["infos"]
    assert infos["bert-a"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert infos["bert-a"]["outputs"] == [["last_hidden_state", [-1, -1, 32]]]
    assert infos["gpt2-a"]["outputs"] == [["logits", [-1, -1, 128]]]
    assert infos["llama-a"]["slo"] == 0.5
    assert infos["llama-a"]["stage_latency"] == {"1": [0.01] * pp, "4": [0.02] * pp}
    assert infos["llama-a"]["max_batch_size"] == 3  # the Plan's per-model maxBatchSize


def test_swapping_is_lru_under_a_byte_budget(tmp_path: Path) -> None:
    models = [_model(f"bert-{c}", "bert") for c in "abc"]
    # a 3 s collective timeout and 4 s idle: only the keep-alive pings keep the group alive
    options = {"budget_models": 2.5, "collective_timeout_s": 3.0}
    result = _wait(_launch(tmp_path, 2, 1, models, "swap", options, idle_seconds=4.0), tmp_path)
    assert result["initial"] == ["bert-a", "bert-b"]  # plan order, while it fits
    assert result["after_submit"] == ["bert-a", "bert-c"]  # bert-b was least recently used
    assert result["load_seconds"] > 0
    assert result["after_load"] == ["bert-b", "bert-c"]
    assert result["after_unload"] == ["bert-b"]
    assert result["final"] == ["bert-a", "bert-b"]
    assert max(result["errors"]) <= TOL
    # every swap-in is timed, on-demand ones too (the start-up residency is not a swap)
    swaps = result["swaps"]
    assert {name: count for name, (count, _) in swaps.items()} == {
        "bert-a": 1,
        "bert-b": 1,
        "bert-c": 1,
    }
    assert all(seconds > 0 for _, seconds in swaps.values())


def test_a_withdrawn_job_is_skipped_without_running_or_swapping(tmp_path: Path) -> None:
    """The scheduler withdraws a batch whose clients all went away by cancelling its engine
    future (tested with the LocalEngine in test_server_hardening). On a pp2 group the
    dispatcher skips it: while the first job holds stage 0 for its emulated 1 s, the second
    (for the model that is not resident) is cancelled, and the third runs without any swap."""
    models = [_model("bert-a", "bert"), _model("bert-b", "bert")]
    options = {"budget_models": 1.5, "emulate_device": True}  # one model resident at a time
    result = _wait(_launch(tmp_path, 2, 1, models, "withdraw", options, latency=1.0), tmp_path)
    assert result["initial"] == ["bert-a"]
    assert result["withdrawn"] and result["cancelled"]
    assert result["loaded"] == ["bert-a"]  # bert-b was never swapped in for it
    assert result["swaps"] == {}


def test_a_dead_rank_fails_futures_and_health(tmp_path: Path) -> None:
    procs = _launch(
        tmp_path, 2, 1, [_model("gpt2-a", "gpt2")], "failure", {"heartbeat_timeout_s": 2.0}
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline, "the group never became ready"
        assert procs[0].is_alive(), _errors(tmp_path)
        time.sleep(0.05)
    procs[1].kill()  # SIGKILL: no clean-up, like a crashed pod
    procs[1].join()
    (tmp_path / "killed").touch()
    result = _wait(procs[:1], tmp_path)
    assert result["in_flight"].startswith("EngineError")
    assert result["later"].startswith("EngineError")
    assert not result["healthy"]
