"""A single-process GroupEngine (pp1×tp1): real torch modules run on one worker thread.

The serving path for a group of one device, and the engine the front-end tests and
benchmarks run against. Batches from the scheduler are concatenated along the batch
dimension, run under `torch.inference_mode()` and split back into one response per request.
Requests whose non-batch dimensions differ (different sequence lengths) run as separate
forwards rather than being padded, so results never depend on what they were batched with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from statmux.runtime.engine import (
    EngineError,
    GroupEngine,
    ModelInfo,
    Request,
    Response,
    TensorSpec,
)
from statmux.runtime.metrics import StageSeconds

Forward = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class LocalModel:
    info: ModelInfo
    module: torch.nn.Module
    forward: Forward  # named input tensors -> named output tensors, batch first


class LocalEngine(GroupEngine):
    """Runs every batch on one worker thread: one batch in flight, like a pp1 pipeline.

    Batches of a model whose recent runs took less than `inline_below_s` run directly in
    `submit` (on the caller's thread) when the worker is idle: for such small models the two
    thread hand-offs and the GIL contention with the event loop cost more than the forward.
    """

    def __init__(
        self,
        models: Iterable[LocalModel],
        device: str = "cpu",
        load_all: bool = True,
        inline_below_s: float = 0.001,
    ) -> None:
        self._models = {m.info.name: m for m in models}
        self._inline_below_s = inline_below_s
        # (model, rows) -> fastest run seen: the minimum ignores slow runs caused by waiting
        # for the GIL, which would otherwise keep a small model off the inline path for good.
        self._fastest_s: dict[tuple[str, int], float] = {}
        self._busy = 0  # batches submitted to the worker and not finished
        self._device = torch.device(device)
        self._pin = self._device.type == "cuda"
        self._on_cpu = self._device.type == "cpu"
        self._loaded: set[str] = set()
        self._lock = threading.Lock()
        self._unhealthy: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-engine")
        self._stage: dict[str, list[float]] = {}  # model -> [compute s, transfer s, count]
        self._swaps: dict[str, tuple[int, float]] = {}  # model -> swap-ins, seconds
        for m in self._models.values():
            m.module.eval()
            # Frozen weights: a forward records no autograd graph even outside
            # inference_mode, which the single-request path then skips (its enter/exit
            # costs more than a tiny model's forward saves from it).
            m.module.requires_grad_(False)
            if self._pin:
                # A pinned CPU copy makes swap-in copies asynchronous.
                for p in m.module.parameters():
                    p.data = p.data.pin_memory()
        if load_all:
            for name in self._models:
                self.load(name)

    # ----------------------------------------------------------------- GroupEngine
    def model_infos(self) -> dict[str, ModelInfo]:
        return {name: m.info for name, m in self._models.items()}

    def submit(self, model: str, batch: list[Request]) -> Future[list[Response]]:
        if self._unhealthy is not None:
            failed: Future[list[Response]] = Future()
            failed.set_exception(EngineError(self._unhealthy))
            return failed
        try:
            results = self.try_inline(model, batch)
        except Exception as e:
            failed = Future()
            failed.set_exception(e)
            return failed
        if results is not None:
            done: Future[list[Response]] = Future()
            done.set_result(results)
            return done
        with self._lock:
            self._busy += 1
        fut = self._executor.submit(self._run, model, batch)
        fut.add_done_callback(self._worker_done)
        return fut

    def try_inline(self, model: str, batch: list[Request]) -> list[Response] | None:
        """Run the batch now on the caller's thread if it is small and the worker is idle.

        None: it was not run (submit it instead). Raises what the batch raised. Callers on
        an event loop use this to skip the Future round trip of `submit` for tiny models.
        """
        if self._busy or self._unhealthy is not None:
            return None
        one = len(batch) == 1
        rows = len(next(iter(batch[0].values()))) if one and batch[0] else _rows(batch)
        fastest = self._fastest_s.get((model, rows))
        if fastest is None or fastest >= self._inline_below_s:
            return None
        if one and self._on_cpu and model in self._loaded:
            return [self._run_one(model, self._models[model], batch[0])]
        return self._run(model, batch)

    def _worker_done(self, _: Future[list[Response]]) -> None:
        with self._lock:
            self._busy -= 1

    def load(self, model: str) -> float:
        m = self._get(model)
        start = time.perf_counter()
        with self._lock:
            if model not in self._loaded:
                if self._device.type != "cpu":
                    m.module.to(self._device, non_blocking=True)
                    torch.cuda.synchronize(self._device)
                self._loaded.add(model)
                count, total = self._swaps.get(model, (0, 0.0))
                self._swaps[model] = (count + 1, total + time.perf_counter() - start)
        return time.perf_counter() - start

    def unload(self, model: str) -> None:
        m = self._get(model)
        with self._lock:
            if model in self._loaded:
                if self._device.type != "cpu":
                    m.module.to("cpu")
                    if self._pin:
                        for p in m.module.parameters():
                            p.data = p.data.pin_memory()
                self._loaded.discard(model)

    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    def healthy(self) -> bool:
        return self._unhealthy is None

    def shutdown(self) -> None:
        self._unhealthy = self._unhealthy or "the engine is shut down"
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ----------------------------------------------------------------- extras
    def mark_unhealthy(self, reason: str) -> None:
        """What a watchdog calls when the device is lost; every later batch fails."""
        self._unhealthy = reason

    def swap_totals(self) -> dict[str, tuple[int, float]]:
        """Per model: swap-ins so far (the first load included) and their seconds."""
        with self._lock:
            return dict(self._swaps)

    def stage_seconds(self) -> list[StageSeconds]:
        """Cumulative per-stage timings (one stage here; no transfers in one process)."""
        with self._lock:
            return [
                StageSeconds(model, 0, c, t, int(n)) for model, (c, t, n) in self._stage.items()
            ]

    # ----------------------------------------------------------------- internals
    def _get(self, model: str) -> LocalModel:
        m = self._models.get(model)
        if m is None:
            raise EngineError(f"model {model!r} is not hosted by this group")
        return m

    def _run(self, model: str, batch: list[Request]) -> list[Response]:
        if self._unhealthy is not None:
            raise EngineError(self._unhealthy)
        m = self._get(model)
        if model not in self._loaded:  # swap in on demand, as the group engine does
            self.load(model)
        if len(batch) == 1 and self._device.type == "cpu":
            return [self._run_one(model, m, batch[0])]
        # Requests that agree on every non-batch dimension share one forward.
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        if len(batch) == 1:
            groups[()] = [0]
        else:
            for i, req in enumerate(batch):
                key = tuple(req[s.name].shape[1:] for s in m.info.inputs if s.name in req)
                groups.setdefault(key, []).append(i)
        responses: list[Response] = [{} for _ in batch]
        on_cpu = self._device.type == "cpu"
        t0 = time.perf_counter()
        transfer = 0.0
        with torch.inference_mode():
            for members in groups.values():
                names = [s.name for s in m.info.inputs if s.name in batch[members[0]]]
                tensors = {}
                for name in names:
                    arrays = [batch[i][name] for i in members]
                    joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
                    if not joined.flags.writeable:  # decoded straight from the request bytes
                        joined = joined.copy()
                    t = torch.from_numpy(joined)
                    tensors[name] = t if on_cpu else t.to(self._device, non_blocking=True)
                out = m.forward(tensors)
                t1 = time.perf_counter()
                host = {k: (v if on_cpu else v.detach().to("cpu")).numpy() for k, v in out.items()}
                transfer += time.perf_counter() - t1
                if len(members) == 1:
                    responses[members[0]] = host
                    continue
                start = 0
                for i in members:
                    rows = batch[i][names[0]].shape[0]
                    responses[i] = {k: v[start : start + rows] for k, v in host.items()}
                    start += rows
        self._account(model, _rows(batch), time.perf_counter() - t0, transfer)
        return responses

    def _run_one(self, model: str, m: LocalModel, request: Request) -> Response:
        """One request on CPU: the serving hot path for small models, kept short."""
        tensors = {}
        rows = 0
        for spec in m.info.inputs:
            array = request.get(spec.name)
            if array is not None:
                rows = len(array)
                # decoded straight from the request bytes: torch wants a writeable buffer
                tensors[spec.name] = torch.from_numpy(
                    array if array.flags.writeable else array.copy()
                )
        t0 = time.perf_counter()
        out = m.forward(tensors)
        host = {k: (v.detach() if v.requires_grad else v).numpy() for k, v in out.items()}
        self._account(model, rows, time.perf_counter() - t0, 0.0)
        return host

    def _account(self, model: str, rows: int, elapsed: float, transfer: float) -> None:
        size = (model, rows)
        fastest = self._fastest_s.get(size)
        if fastest is None or elapsed < fastest:
            self._fastest_s[size] = elapsed
        with self._lock:
            acc = self._stage.get(model)
            if acc is None:
                acc = self._stage[model] = [0.0, 0.0, 0]
            acc[0] += elapsed - transfer
            acc[1] += transfer
            acc[2] += 1


def _rows(batch: list[Request]) -> int:
    return sum(next(iter(r.values())).shape[0] for r in batch if r)


# --------------------------------------------------------------------------- demo models
def tiny_mlp(
    name: str = "tiny-mlp",
    features: int = 16,
    hidden: int = 32,
    classes: int = 4,
    max_batch_size: int = 8,
    slo_seconds: float | None = None,
    seed: int = 0,
) -> LocalModel:
    """FP32 features [-1, features] -> FP32 logits [-1, classes]."""
    torch.manual_seed(seed)
    module = torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
    )

    def forward(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"OUTPUT0": module(x["INPUT0"])}

    info = ModelInfo(
        name=name,
        platform="statmux-torch-mlp",
        inputs=[TensorSpec("INPUT0", "FP32", (-1, features))],
        outputs=[TensorSpec("OUTPUT0", "FP32", (-1, classes))],
        max_batch_size=max_batch_size,
        slo_seconds=slo_seconds,
    )
    return LocalModel(info, module, forward)


class _EmbedPool(torch.nn.Module):
    def __init__(self, vocab: int, dim: int, out: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.proj = torch.nn.Linear(dim, out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.embed(ids).mean(dim=1)))


def tiny_embedder(
    name: str = "tiny-embed",
    vocab: int = 1000,
    dim: int = 32,
    out: int = 8,
    max_batch_size: int = 8,
    slo_seconds: float | None = None,
    seed: int = 1,
) -> LocalModel:
    """INT64 input_ids [-1, -1] -> FP32 sentence embedding [-1, out] (mean-pooled)."""
    torch.manual_seed(seed)
    module = _EmbedPool(vocab, dim, out)

    def forward(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = x["input_ids"]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise EngineError(f"input_ids must be in [0, {vocab}) for model {name!r}")
        return {"embedding": module(ids)}

    info = ModelInfo(
        name=name,
        platform="statmux-torch-embedding",
        inputs=[TensorSpec("input_ids", "INT64", (-1, -1))],
        outputs=[TensorSpec("embedding", "FP32", (-1, out))],
        max_batch_size=max_batch_size,
        slo_seconds=slo_seconds,
    )
    return LocalModel(info, module, forward)
