"""Open-loop replay of a ModelSet's workload against any Open Inference Protocol endpoint.

The arrivals are the simulator's: `workload_from_spec` with the ModelSet's seed, cut to the
first `duration` seconds. Each request is sent at its arrival time on tritonclient's asyncio
client, whatever happened to the earlier ones (open loop: a slow response never delays the
next arrival). A request's latency runs from its scheduled arrival, so a late send counts
against the server rather than hiding.

Every request ends in exactly one of: ok (and within its SLO or not), rejected (429 /
RESOURCE_EXHAUSTED from SLO admission), or error (anything else, timeouts included), so
sent = ok + rejected + errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from statmux.placement.workload import Workload

# Tokens per request; `statmux profile` measures at the same length by default.
DEFAULT_SEQUENCE_LENGTH = 16
Progress = Callable[[int, int], None]  # (done, total)


class EndpointError(RuntimeError):
    """The endpoint cannot be reached or does not serve a model of the workload."""


@dataclass
class ModelOutcome:
    name: str
    slo_seconds: float
    sent: int = 0
    ok: int = 0
    good: int = 0  # ok and within the SLO
    rejected: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # of ok requests, seconds
    first_error: str = ""
    first_rejection: str = ""

    @property
    def attainment(self) -> float:
        return self.good / self.sent if self.sent else 1.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


@dataclass
class LoadResult:
    duration: float
    models: dict[str, ModelOutcome]
    wall_seconds: float = 0.0
    max_send_lag: float = 0.0  # how late the generator sent its most delayed request

    @property
    def sent(self) -> int:
        return sum(m.sent for m in self.models.values())

    @property
    def good(self) -> int:
        return sum(m.good for m in self.models.values())

    @property
    def attainment(self) -> float:
        return self.good / self.sent if self.sent else 1.0

    @property
    def goodput(self) -> float:
        return self.good / self.duration if self.duration > 0 else 0.0

    def latencies(self) -> list[float]:
        return [x for m in self.models.values() for x in m.latencies]


class _Client:
    """The tritonclient asyncio client of one protocol, with one call: infer."""

    def __init__(self, endpoint: str, protocol: str, concurrency: int) -> None:
        self.protocol = protocol
        if protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            self.mod: Any = grpcclient
            self.client: Any = grpcclient.InferenceServerClient(endpoint)
        else:
            import tritonclient.http.aio as httpclient

            self.mod = httpclient
            self.client = httpclient.InferenceServerClient(endpoint, conn_limit=concurrency)

    async def metadata(self, model: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            md = await self.client.get_model_metadata(model, as_json=True)
        else:
            md = await self.client.get_model_metadata(model)
        return dict(md)

    def inputs(self, metadata: dict[str, Any], seq_len: int) -> list[Any]:
        """One row of `seq_len` tokens: input_ids when the model takes it (the
        transformer families), else every declared input filled with zeros."""
        declared = metadata.get("inputs", [])
        chosen = [i for i in declared if i["name"] == "input_ids"] or declared
        out = []
        for spec in chosen:
            shape = [int(d) for d in spec.get("shape", [])]
            shape = [
                1 if i == 0 and d < 0 else (seq_len if d < 0 else d) for i, d in enumerate(shape)
            ]
            dtype = spec["datatype"]
            np_dtype = _NUMPY.get(dtype)
            if np_dtype is None:
                raise ValueError(f"input {spec['name']!r}: datatype {dtype} is not supported")
            tokens = np.arange(int(np.prod(shape))) % 97 + 1
            data: np.ndarray = tokens.reshape(shape).astype(np_dtype)
            inp = self.mod.InferInput(spec["name"], shape, dtype)
            inp.set_data_from_numpy(data)
            out.append(inp)
        return out

    async def infer(self, model: str, inputs: list[Any], timeout_s: float) -> None:
        if self.protocol == "grpc":
            await self.client.infer(model, inputs, client_timeout=timeout_s)
        else:
            await self.client.infer(model, inputs, timeout=timeout_s)

    async def close(self) -> None:
        await self.client.close()


_NUMPY = {
    "INT64": np.int64,
    "INT32": np.int32,
    "FP32": np.float32,
    "FP16": np.float16,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def classify(err: Exception) -> str:
    """'rejected' for SLO admission (429 / RESOURCE_EXHAUSTED ... rejected), else 'error'."""
    status = ""
    status_fn = getattr(err, "status", None)
    if callable(status_fn):
        status = str(status_fn() or "")
    text = str(err).lower()
    if status == "429" or (status.endswith("RESOURCE_EXHAUSTED") and "reject" in text):
        return "rejected"
    return "error"


async def replay(
    endpoint: str,
    workload: Workload,
    slo_seconds: dict[str, float],
    protocol: str = "http",
    seq_len: int = DEFAULT_SEQUENCE_LENGTH,
    progress: Progress | None = None,
    concurrency: int = 512,
) -> LoadResult:
    """Send every request of `workload` at its arrival time; measure each one."""
    names = list(workload.model_names)
    outcomes = {n: ModelOutcome(n, slo_seconds[n]) for n in names}
    client = _Client(endpoint, protocol, concurrency)
    try:
        used = sorted({names[i] for i in np.unique(workload.model_ids)})
        inputs = {}
        for name in used:
            try:
                metadata = await client.metadata(name)
            except Exception as err:
                raise EndpointError(
                    f"{endpoint} ({protocol}): cannot read the metadata of model {name!r}: "
                    f"{type(err).__name__}: {err}"
                ) from None
            inputs[name] = client.inputs(metadata, seq_len)
        total = len(workload)
        done = 0
        lag = 0.0
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        offset = float(workload.start)

        async def one(name: str, scheduled: float) -> None:
            nonlocal done
            out = outcomes[name]
            timeout = max(30.0, 10 * out.slo_seconds)
            try:
                await client.infer(name, inputs[name], timeout)
            except Exception as err:  # every failure is counted, never lost
                if classify(err) == "rejected":
                    out.rejected += 1
                    out.first_rejection = out.first_rejection or str(err)
                else:
                    out.errors += 1
                    out.first_error = out.first_error or f"{type(err).__name__}: {err}"
            else:
                latency = loop.time() - scheduled
                out.ok += 1
                out.latencies.append(latency)
                if latency <= out.slo_seconds:
                    out.good += 1
            done += 1
            if progress is not None:
                progress(done, total)

        tasks = []
        start_wall = time.perf_counter()
        for at, mid in zip(workload.arrivals.tolist(), workload.model_ids.tolist(), strict=True):
            scheduled = t0 + at - offset
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, loop.time() - scheduled)
            name = names[mid]
            outcomes[name].sent += 1
            tasks.append(asyncio.create_task(one(name, scheduled)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start_wall
    finally:
        await client.close()
    return LoadResult(workload.duration, outcomes, wall, lag)
