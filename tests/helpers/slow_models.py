"""A model that takes a set time to "compute": for queueing, cancellation and drain tests."""

from __future__ import annotations

import time

import torch

from statmux.runtime.engine import ModelInfo, TensorSpec
from statmux.runtime.local_engine import LocalModel


def slow_model(name: str = "slow", seconds: float = 0.25) -> LocalModel:
    """FP32 [-1, 4] -> its input times two, after `seconds` of "compute"; `model.runs` lists
    the batch size of every run, in order."""
    runs: list[int] = []

    def forward(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        runs.append(int(x["INPUT0"].shape[0]))
        time.sleep(seconds)
        return {"OUTPUT0": x["INPUT0"] * 2}

    info = ModelInfo(
        name=name,
        platform="statmux-test-slow",
        inputs=[TensorSpec("INPUT0", "FP32", (-1, 4))],
        outputs=[TensorSpec("OUTPUT0", "FP32", (-1, 4))],
        max_batch_size=1,
    )
    model = LocalModel(info, torch.nn.Identity(), forward)
    model.runs = runs  # type: ignore[attr-defined]
    return model
