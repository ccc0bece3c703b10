"""Pure-logic parts of the engine: rendezvous variables, batching, LRU residency, headers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from statmux.placement.plan import PlanGroup
from statmux.placement.spec import WeightSource
from statmux.runtime.batching import InputError, make_batch, split_output
from statmux.runtime.dist_env import DistEnvError, dist_info_from_env
from statmux.runtime.model_base import stage_layers
from statmux.runtime.pipeline import Message, Op, header_len, pack_header, unpack_header
from statmux.runtime.presets import ModelConfigError, resolve_config
from statmux.runtime.stage_timing import StageClock, StageTimes
from statmux.runtime.swap import Residency


def test_torch_env_variables() -> None:
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234", "RANK": "2", "WORLD_SIZE": "4"}
    info = dist_info_from_env(env)
    assert (info.rank, info.world_size, info.master_addr, info.master_port) == (
        2,
        4,
        "10.0.0.1",
        1234,
    )
    assert not info.is_leader


def test_leaderworkerset_variables_with_default_port() -> None:
    env = {"LWS_LEADER_ADDRESS": "g0-0.g0", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "0"}
    info = dist_info_from_env(env)
    assert (info.rank, info.world_size, info.master_addr, info.master_port) == (
        0,
        2,
        "g0-0.g0",
        29500,
    )
    assert info.is_leader


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MASTER_ADDR": "a", "WORLD_SIZE": "2"}, "RANK"),
        ({"MASTER_ADDR": "a", "RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"MASTER_ADDR": "a", "RANK": "3", "WORLD_SIZE": "2"}, "RANK=3"),
        (
            {"MASTER_ADDR": "a", "RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "70000"},
            "MASTER_PORT",
        ),
        ({"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "0"}, "LWS_LEADER_ADDRESS"),
        ({}, "MASTER_ADDR"),
    ],
)
def test_bad_rendezvous_variables_are_named(env: dict[str, str], names: str) -> None:
    with pytest.raises(DistEnvError, match=names):
        dist_info_from_env(env)


def _bert_cfg():
    return resolve_config(WeightSource(architecture="bert", preset="tiny", dtype="float32"))


def test_batch_pads_and_splits_back() -> None:
    cfg = _bert_cfg()
    a = {"input_ids": np.array([[5, 6, 7]])}
    b = {"input_ids": np.array([[1], [2]]), "token_type_ids": np.array([[1], [0]])}
    (ids, mask, types), splits = make_batch(cfg, [a, b])
    assert ids.shape == (3, 3) and mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert types[:, 0].tolist() == [0, 1, 0]
    out = torch.arange(3 * 3 * 2, dtype=torch.float32).reshape(3, 3, 2)
    ra, rb = split_output("last_hidden_state", out, splits)
    assert ra["last_hidden_state"].shape == (1, 3, 2)
    assert rb["last_hidden_state"].shape == (2, 1, 2)
    assert np.array_equal(rb["last_hidden_state"], out[1:, :1].numpy())


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({}, "input_ids"),
        ({"input_ids": np.array([[1.5]])}, "integers"),
        ({"input_ids": np.array([1, 2])}, "shape"),
        ({"input_ids": np.array([[999]])}, r"\[0, 128\)"),
        ({"input_ids": np.ones((1, 65), dtype=np.int64)}, "64 positions"),
        ({"input_ids": np.ones((1, 2), dtype=np.int64), "pixels": np.ones(1)}, "pixels"),
        (
            {"input_ids": np.ones((1, 2), dtype=np.int64), "attention_mask": np.ones((1, 3))},
            "attention_mask",
        ),
    ],
)
def test_bad_inputs_name_the_input(request_: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InputError, match=message):
        make_batch(_bert_cfg(), [request_])


def test_lru_evicts_least_recently_used_bytes_not_counts() -> None:
    r = Residency({"a": 40, "b": 40, "c": 70}, budget=100)
    r.mark_loaded("a")
    r.mark_loaded("b")
    r.touch("a")  # b is now least recently used
    assert r.plan_load("c") == ["b", "a"]  # 70 bytes need both gone
    assert Residency({"a": 40, "b": 40}, budget=100).plan_load("a") == []
    with pytest.raises(ValueError, match="more than the memory budget"):
        Residency({"big": 200}, budget=100).plan_load("big")


def test_header_round_trip() -> None:
    msg = Message(Op.RUN, 7, 2, [torch.zeros(3, 5, 2), torch.ones(3, 5, dtype=torch.int64)])
    got, specs = unpack_header(pack_header(msg))
    assert (got.op, got.batch_id, got.model) == (Op.RUN, 7, 2)
    assert specs == [(torch.float32, [3, 5, 2]), (torch.int64, [3, 5])]


def test_header_carries_each_stages_timings() -> None:
    # stage 1 of 3 stamps its totals over what stage 0 wrote; stage 2's slot stays empty
    clock = StageClock()
    clock.add(model=2, compute_ns=500, transfer_ns=70)
    clock.add(model=2, compute_ns=0, transfer_ns=30, batches=0)  # the send, after the stamp
    from_stage0 = [11, 12, 1, 0, 0, 0, 0, 0, 0]
    msg = Message(Op.RUN, 7, 2, [torch.zeros(1, 4)], clock.stamp(from_stage0, 1, 3, 2))
    header = pack_header(msg, stages=3)
    assert header.numel() == header_len(3)
    got, _ = unpack_header(header)
    assert got.timings == [11, 12, 1, 500, 100, 1, 0, 0, 0]
    times = StageTimes(stages=3)
    times.update(2, got.timings)
    times.update(2, [9, 9, 0, 1, 1, 0, 0, 0, 0])  # an older report never replaces a newer one
    assert times.reported() == {2: [(11, 12, 1), (500, 100, 1), (0, 0, 0)]}
    with pytest.raises(ValueError, match="more than 1 stages"):
        pack_header(Message(Op.RUN, timings=[0] * 6), stages=1)


def test_stage_layers_cover_every_layer_once() -> None:
    for n, pp in [(4, 1), (4, 4), (24, 5), (7, 3)]:
        ranges = [stage_layers(n, pp, s) for s in range(pp)]
        assert [i for r in ranges for i in r] == list(range(n))
    with pytest.raises(ValueError, match="at least 4 layers"):
        stage_layers(3, 4, 0)


def test_bad_group_entries_and_presets_are_named() -> None:
    model = {
        "name": "m",
        "sloSeconds": 1.0,
        "stageLatencySeconds": {"1": [0.1]},
        "weightBytesPerGpu": 0,
        "weights": {},
    }
    group = {"name": "g", "gpus": 1, "pp": 1, "tp": 1, "memoryPerGpuBytes": 0, "models": [model]}
    with pytest.raises(ValidationError, match="at least 1 item"):
        PlanGroup.model_validate(group | {"models": []})
    with pytest.raises(ValidationError, match=r"pp\n  Input should be greater than or equal to 1"):
        PlanGroup.model_validate(group | {"pp": 0})
    with pytest.raises(ValidationError, match=r"gpus \(2\) must equal pp \* tp \(1\)"):
        PlanGroup.model_validate(group | {"gpus": 2})
    with pytest.raises(ModelConfigError, match="not a bert preset; allowed: tiny"):
        resolve_config(WeightSource(architecture="bert", preset="llama-7b"))
    with pytest.raises(ModelConfigError, match="'hidden_size' must be int"):
        resolve_config(
            WeightSource(architecture="bert", preset="tiny", config={"hidden_size": "big"})
        )
