"""One rank of a test group (run as a script by the test_parallel_* tests, not collected).

usage: group_rank.py RANK WORLD PORT SCENARIO WORKDIR (or runpy with RANK_ARGV in globals)
WORKDIR holds group.json (the Plan group entry and start options); rank 0 runs SCENARIO
against the engine and writes result.json (errors as a traceback string); a rank that fails
writes its traceback to rank<N>.err.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from statmux.placement.plan import PlanGroup
from statmux.placement.spec import WeightSource
from statmux.runtime.checkpoint import build_full_model, build_stage, load_state, state_bytes
from statmux.runtime.dist_env import DistInfo
from statmux.runtime.engine import EngineError
from statmux.runtime.group import start_group
from statmux.runtime.pipeline_engine import PipelineEngine
from statmux.runtime.presets import resolve_config


def _reference(entry: dict[str, Any]) -> torch.nn.Module:
    ws = WeightSource.model_validate(entry["weights"])
    return build_full_model(resolve_config(ws), ws)


def _request(arch: str, rows: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(0, 128, (rows, length), dtype=np.int64)
    req = {"input_ids": ids}
    if arch == "bert":
        mask = np.ones_like(ids)
        if length > 2:
            mask[0, length - 1 :] = 0  # a request with its own padding
        req["attention_mask"] = mask
        req["token_type_ids"] = rng.integers(0, 2, ids.shape, dtype=np.int64)
    return req


def _expected(model: torch.nn.Module, arch: str, req: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        ids = torch.from_numpy(req["input_ids"])
        if arch == "bert":
            xs = [
                ids,
                torch.from_numpy(req["attention_mask"]),
                torch.from_numpy(req["token_type_ids"]),
            ]
        else:
            xs = [ids]
        return model(xs)[0].numpy()


def scenario_exact(engine: PipelineEngine, group: dict[str, Any]) -> dict[str, Any]:
    """Many batches in flight, variable batch sizes and lengths; max error per model."""
    rng = np.random.default_rng(0)
    refs = {m["name"]: (_reference(m), m["weights"]["architecture"]) for m in group["models"]}
    jobs = []
    shapes = [(1, 1), (2, 7), (1, 13), (3, 4), (1, 9)]
    for rounds in range(2):
        for name, (_, arch) in refs.items():
            for k in range(len(shapes)):
                # a batch of 1-3 requests with different lengths, padded together
                batch = [
                    _request(arch, *shapes[(k + j + rounds) % len(shapes)], rng)
                    for j in range(1 + k % 3)
                ]
                jobs.append((name, batch, engine.submit(name, batch)))
    errors: dict[str, float] = {}
    for name, batch, fut in jobs:
        model, arch = refs[name]
        responses = fut.result(timeout=120)
        assert len(responses) == len(batch)
        for req, resp in zip(batch, responses, strict=True):
            (out,) = resp.values()
            want = _expected(model, arch, req)
            assert out.shape == want.shape, (out.shape, want.shape)
            err = float(np.abs(out - want).max())
            errors[name] = max(errors.get(name, 0.0), err)
    infos = {
        n: {
            "inputs": [t.name for t in i.inputs],
            "outputs": [(t.name, t.shape) for t in i.outputs],
            "slo": i.slo_seconds,
            "stage_latency": {str(k): v for k, v in i.stage_latency_s.items()},
            "max_batch_size": i.max_batch_size,
        }
        for n, i in engine.model_infos().items()
    }
    return {"errors": errors, "batches": len(jobs), "infos": infos, "healthy": engine.healthy()}


def scenario_swap(engine: PipelineEngine, group: dict[str, Any]) -> dict[str, Any]:
    names = [m["name"] for m in group["models"]]
    refs = {m["name"]: _reference(m) for m in group["models"]}
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"initial": sorted(engine.loaded())}
    # idle past the collective timeout: keep-alive pings must keep the receives from expiring
    time.sleep(float(group.get("idleSeconds", 0)))
    errors = []

    def run(name: str) -> None:
        req = _request("bert", 2, 6, rng)
        (resp,) = engine.submit(name, [req]).result(timeout=60)
        errors.append(
            float(np.abs(resp["last_hidden_state"] - _expected(refs[name], "bert", req)).max())
        )

    run(names[0])  # names[0] becomes most recently used
    run(names[2])  # not resident: swaps in, evicting the LRU (names[1])
    out["after_submit"] = sorted(engine.loaded())
    out["load_seconds"] = engine.load(names[1])  # evicts names[0] (LRU now)
    out["after_load"] = sorted(engine.loaded())
    engine.unload(names[2])
    out["after_unload"] = sorted(engine.loaded())
    run(names[0])
    out["final"] = sorted(engine.loaded())
    out["errors"] = errors
    out["swaps"] = engine.swap_totals()
    return out


def scenario_withdraw(engine: PipelineEngine, group: dict[str, Any]) -> dict[str, Any]:
    """A job withdrawn (its future cancelled) while it waits behind another is skipped by
    the dispatcher: it neither runs nor swaps its model in. The stages take their profiled
    time (emulated), so the first job holds the dispatcher for that long."""
    first_model, other = (m["name"] for m in group["models"])
    rng = np.random.default_rng(2)
    initial = sorted(engine.loaded())
    first = engine.submit(first_model, [_request("bert", 1, 4, rng)])
    second = engine.submit(other, [_request("bert", 1, 4, rng)])  # would swap `other` in
    withdrawn = second.cancel()
    third = engine.submit(first_model, [_request("bert", 1, 4, rng)])
    first.result(timeout=60)
    third.result(timeout=60)
    return {
        "initial": initial,
        "withdrawn": withdrawn,
        "cancelled": second.cancelled(),
        "loaded": sorted(engine.loaded()),
        "swaps": {name: count for name, (count, _) in engine.swap_totals().items()},
    }


def scenario_failure(
    engine: PipelineEngine, group: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    name = group["models"][0]["name"]
    req = {"input_ids": np.ones((1, 4), dtype=np.int64)}
    engine.submit(name, [req]).result(timeout=60)  # the group works
    (workdir / "ready").touch()
    while not (workdir / "killed").exists():
        time.sleep(0.05)
    start = time.monotonic()
    in_flight = engine.submit(name, [req])
    outcome = "result"
    try:
        in_flight.result(timeout=60)
    except EngineError as err:
        outcome = f"EngineError: {err}"
    deadline = time.monotonic() + 60
    while engine.healthy() and time.monotonic() < deadline:
        time.sleep(0.05)
    later = engine.submit(name, [req])
    try:
        later.result(timeout=5)
        later_outcome = "result"
    except EngineError as err:
        later_outcome = f"EngineError: {err}"
    return {
        "in_flight": outcome,
        "healthy": engine.healthy(),
        "later": later_outcome,
        "seconds": time.monotonic() - start,
    }


def main(argv: list[str]) -> None:
    rank = int(argv[0])
    try:
        run(argv)
    except BaseException:
        (Path(argv[4]) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def run(argv: list[str]) -> None:
    rank, world, port = (int(a) for a in argv[0:3])
    scenario, workdir = argv[3], Path(argv[4])
    torch.set_num_threads(1)
    spec = json.loads((workdir / "group.json").read_text())
    group, options = spec["group"], spec.get("options", {})
    if "budget_models" in options:  # a budget that fits this many of the (equal) models
        ws = WeightSource.model_validate(group["models"][0]["weights"])
        cfg = resolve_config(ws)
        largest = max(
            state_bytes(load_state(build_stage(cfg, s, group["pp"]), ws))
            for s in range(group["pp"])
        )
        options["memory_budget_bytes"] = int(largest * options.pop("budget_models"))
    plan_group = PlanGroup.model_validate(group)  # as the runtime parses it from the Plan
    engine = start_group(plan_group, DistInfo(rank, world, "127.0.0.1", port), "cpu", **options)
    if rank != 0:
        return
    assert engine is not None
    try:
        if scenario == "exact":
            result = scenario_exact(engine, group)
        elif scenario == "swap":
            result = scenario_swap(engine, group)
        elif scenario == "withdraw":
            result = scenario_withdraw(engine, group)
        else:
            result = scenario_failure(engine, group, workdir)
    except BaseException:
        result = {"error": traceback.format_exc()}
    engine.shutdown()
    (workdir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(globals().get("RANK_ARGV") or sys.argv[1:])
