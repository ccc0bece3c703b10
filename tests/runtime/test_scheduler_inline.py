"""The inline fast path: small batches run in `Scheduler._dispatch` through the real
LocalEngine's `try_inline`, with the same results, statistics and errors as the worker path."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from statmux.runtime.local_engine import LocalEngine, tiny_embedder, tiny_mlp
from statmux.runtime.scheduler import Scheduler
from statmux.runtime.serving_errors import InvalidRequest


def test_try_inline_declines_until_the_model_is_known_to_be_fast() -> None:
    model = tiny_mlp()
    engine = LocalEngine([model], inline_below_s=1.0)
    x = np.random.default_rng(0).random((2, 16), dtype=np.float32)
    try:
        # Nothing measured yet for this size: the batch must go to the worker.
        assert engine.try_inline("tiny-mlp", [{"INPUT0": x}]) is None
        via_worker = engine.submit("tiny-mlp", [{"INPUT0": x}]).result(30)
        inline = engine.try_inline("tiny-mlp", [{"INPUT0": x}])
        assert inline is not None
        np.testing.assert_allclose(inline[0]["OUTPUT0"], via_worker[0]["OUTPUT0"])
        with torch.inference_mode():
            expected = model.module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(inline[0]["OUTPUT0"], expected, rtol=1e-6)
        engine.mark_unhealthy("device lost")
        assert engine.try_inline("tiny-mlp", [{"INPUT0": x}]) is None
    finally:
        engine.shutdown()


def test_scheduler_inline_path_keeps_statistics_and_backend_errors() -> None:
    engine = LocalEngine([tiny_embedder(vocab=10)], inline_below_s=1.0)
    good = {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)}
    bad = {"input_ids": np.array([[1, 2, 99]], dtype=np.int64)}  # out of the vocabulary

    async def run() -> Scheduler:
        sched = Scheduler(engine)
        first = await sched.submit("tiny-embed", good, 1)  # worker thread: measures the size
        fut = sched.submit("tiny-embed", good, 1)
        assert fut.done()  # ran inline: resolved before anyone awaited it
        np.testing.assert_allclose((await fut)["embedding"], first["embedding"])
        with pytest.raises(InvalidRequest, match="input_ids must be in"):
            await sched.submit("tiny-embed", bad, 1)
        assert sched._running == []
        return sched

    try:
        sched = asyncio.run(run())
    finally:
        engine.shutdown()
    stats = sched.stats["tiny-embed"]
    assert stats.success_count == 2
    assert stats.execution_count == 2
    assert stats.inference_count == 2
    assert stats.fail_count == 1
    assert stats.failures["BACKEND"] == 1
    assert stats.pending == 0
