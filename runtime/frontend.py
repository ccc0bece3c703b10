"""What the REST and gRPC servers share: the scheduler, the engine, statistics and metrics.

Both protocol servers are thin: they decode, call `FrontEnd`, and encode. Everything runs on
one event loop (the servers and the scheduler), so the same queues serve both protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from statmux.runtime.engine import EngineError, GroupEngine, ModelInfo
from statmux.runtime.metrics import (
    ModelStats,
    ServingCollector,
    cuda_memory,
    make_registry,
    triton_model_stats,
)
from statmux.runtime.oip_codec import InferRequest, check_inputs, check_outputs, request_units
from statmux.runtime.scheduler import Clock, Scheduler
from statmux.runtime.server_limits import DEFAULT_MAX_REQUEST_BYTES
from statmux.runtime.serving_errors import (
    Cancelled,
    Draining,
    EngineFailed,
    ModelNotFound,
    ServingError,
    Unavailable,
)

SERVER_NAME = "statmux"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]

OutputTensor = tuple[str, np.ndarray, bool]  # name, array, send as binary


class FrontEnd:
    def __init__(
        self,
        engine: GroupEngine,
        max_in_flight: int = 1,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
        self.engine = engine
        self.max_request_bytes = max_request_bytes
        self.clock = clock
        self.scheduler = Scheduler(engine, max_in_flight, clock)
        # Set by drain(): readiness is false and new requests are refused (503) while the
        # accepted ones finish.
        self.draining = False
        self.unknown_model_requests = 0
        self._active = 0  # inference handlers running (from the request head to the answer)
        self._quiet = asyncio.Event()
        self.registry: CollectorRegistry = make_registry(
            ServingCollector(
                stats=self._scrape_stats,
                models_loaded=lambda: len(self.engine.loaded()),
                stage_seconds=self.engine.stage_seconds,
                gpu_memory=cuda_memory(),
                drift=self.scheduler.drift,
                unknown_model=lambda: self.unknown_model_requests,
            )
        )

    def _scrape_stats(self) -> list[ModelStats]:
        # The engine counts every swap-in, on-demand ones and repository-API loads alike.
        for model, (count, seconds) in self.engine.swap_totals().items():
            stats = self.scheduler.stats.get(model)
            if stats is not None:
                stats.swap_count, stats.swap_seconds = count, seconds
        return list(self.scheduler.stats.values())

    # ----------------------------------------------------------------- health
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and not self.scheduler.closed and self.engine.ready()

    def model_ready(self, model: str, version: str | None = None) -> bool:
        self.info(model, version)
        return self.ready() and model not in self.scheduler.unloaded

    # ----------------------------------------------------------------- metadata
    def info(self, model: str, version: str | None = None) -> ModelInfo:
        info = self.scheduler.info(model)
        if version and version != info.version:
            raise ModelNotFound(
                f"model '{model}' has no version '{version}' (versions: {info.version})"
            )
        return info

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        info = self.info(model, version)
        return {
            "name": info.name,
            "versions": [info.version],
            "platform": info.platform,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in info.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in info.outputs
            ],
        }

    def model_config(self, model: str, version: str | None = None) -> dict[str, Any]:
        """A Triton-shaped model config (what tritonclient's get_model_config reads)."""
        info = self.info(model, version)

        def tensors(specs: Sequence[Any]) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.shape[1:])}
                for s in specs
            ]

        parameters = {"slo_seconds": {"string_value": str(info.slo_seconds or "")}}
        if info.admission_seconds is not None:
            parameters["admission_seconds"] = {"string_value": str(info.admission_seconds)}
        if info.max_sequence_length is not None:
            parameters["max_sequence_length"] = {"string_value": str(info.max_sequence_length)}
        return {
            "name": info.name,
            "platform": info.platform,
            "max_batch_size": info.max_batch_size,
            "input": tensors(info.inputs),
            "output": tensors(info.outputs),
            "parameters": parameters,
        }

    # ----------------------------------------------------------------- inference
    @contextlib.contextmanager
    def refusals(self, model: str, arrival: float) -> Iterator[None]:
        """Count a request that ends before the scheduler takes it, exactly once.

        Wraps everything a protocol handler does with a request before `submit`: reading
        and decoding the body, checking it against the model. From `submit` on, the
        scheduler counts the outcome."""
        try:
            if self.draining:
                raise Draining("the server is draining (shutting down); retry on another replica")
            yield
        except ServingError as e:
            self.refused(model, e, arrival)
            raise
        except asyncio.CancelledError:
            self.refused(model, Cancelled("the client went away"), arrival)
            raise
        except Exception:
            self.refused(model, EngineFailed("internal error"), arrival)
            raise

    def refused(self, model: str, error: ServingError, arrival: float) -> None:
        """Count an inference request refused before it reached the scheduler."""
        stats = self.scheduler.stats.get(model)
        if stats is None:  # an unknown model has no per-model series (no label explosion)
            self.unknown_model_requests += 1
            return
        stats.record_failure(
            error.failure_reason, int((self.clock() - arrival) * 1e9), error.outcome
        )

    async def infer(
        self,
        model: str,
        version: str | None,
        request: InferRequest,
        arrival: float,
        info: ModelInfo | None = None,
    ) -> tuple[ModelInfo, list[OutputTensor]]:
        """`info`: what `self.info(model, version)` returned, if the caller already asked.

        Callers run the decoding before this inside `refusals(model, arrival)` too."""
        with self.refusals(model, arrival):
            if info is None:
                info = self.info(model, version)
            rows = check_inputs(info, request.inputs)
            check_outputs(info, request.outputs)
            units = request_units(info, request.inputs, rows)
            input_ns = int((self.clock() - arrival) * 1e9)
        response = await self.scheduler.submit(
            model, request.inputs, rows, arrival, input_ns, units
        )
        out: list[OutputTensor] = []
        if request.outputs is None:
            binary = request.binary_outputs
            for spec in info.outputs:
                out.append((spec.name, _output(response, model, spec.name), binary))
        else:
            for o in request.outputs:
                out.append((o.name, _output(response, model, o.name), o.binary))
        return info, out

    def record_output(self, model: str, started: float) -> None:
        """Time spent encoding a successful response (Triton's compute_output)."""
        stats = self.scheduler.stats.get(model)
        if stats is not None:
            stats.compute_output_ns += int((self.clock() - started) * 1e9)

    # ----------------------------------------------------------------- drain
    def drain(self) -> None:
        """Stop taking requests (readiness false, new ones 503); accepted ones go on."""
        self.draining = True

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Around a protocol handler's whole inference request, so a drain waits for it."""
        self._active += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._quiet.set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every accepted request has been answered; False if `timeout_s` passed."""

        async def quiet() -> None:
            while self._active:  # _quiet is set exactly when no handler is active
                await self._quiet.wait()
            await self.scheduler.wait_idle()

        try:
            await asyncio.wait_for(quiet(), timeout_s)
        except TimeoutError:
            return False
        return True

    # ----------------------------------------------------------------- repository
    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        out = []
        for name, info in sorted(self.scheduler.infos.items()):
            loaded = name not in self.scheduler.unloaded
            if ready_only and not loaded:
                continue
            entry = {"name": name, "version": info.version}
            entry["state"] = "READY" if loaded else "UNAVAILABLE"
            entry["reason"] = "" if loaded else "unloaded"
            out.append(entry)
        return out

    async def load(self, model: str) -> float:
        self.info(model)
        if not self.ready():
            raise Unavailable("the group is unhealthy; cannot load models")
        loop = asyncio.get_running_loop()
        try:
            seconds = await loop.run_in_executor(None, self.engine.load, model)
        except EngineError as e:
            raise Unavailable(f"failed to load model '{model}': {e}") from None
        self.scheduler.unloaded.discard(model)
        return seconds

    async def unload(self, model: str) -> None:
        self.info(model)
        loop = asyncio.get_running_loop()
        self.scheduler.unloaded.add(model)  # refuse new requests from now on
        try:
            await loop.run_in_executor(None, self.engine.unload, model)
        except EngineError as e:
            raise Unavailable(f"failed to unload model '{model}': {e}") from None
        self.scheduler.fail_model(model, Unavailable(f"model '{model}' was unloaded"))

    # ----------------------------------------------------------------- statistics
    def statistics(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        if model:
            self.info(model, version)
            stats: list[ModelStats] = [self.scheduler.stats[model]]
        else:
            stats = [self.scheduler.stats[m] for m in sorted(self.scheduler.stats)]
        return {"model_stats": [triton_model_stats(s) for s in stats]}

    def close(self, reason: str = "the server is shutting down") -> None:
        self.scheduler.close(reason)


def _output(response: dict[str, np.ndarray], model: str, name: str) -> np.ndarray:
    array = response.get(name)
    if array is None:
        raise EngineFailed(f"model '{model}' returned no output '{name}'")
    return array
