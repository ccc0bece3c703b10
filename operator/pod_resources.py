"""CPU and memory for the pods the operator creates (the chart's groupPods/router values).

A group pod asks for its GPUs and, when set, CPU and host memory per GPU: host memory holds
the weights while they load and the tokenizer/batching buffers; without a request a busy
node can evict a serving pod before a batch job. CPU is requested, never limited: CFS
throttling of the front end or the NCCL progress thread shows up as latency spikes on every
request of the group. Memory is requested and limited alike, so that the pod cannot starve
its neighbours and its own OOM names the pod.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def _quantity(text: str) -> Decimal:
    # kubernetes' own parser (the client is the operator's dependency; imported here, when a
    # setting is given, because it takes a quarter of a second)
    from kubernetes.utils.quantity import parse_quantity

    try:
        value = Decimal(parse_quantity(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)") from None
    if value <= 0:
        raise ValueError(f"{text!r} must be more than 0")
    return value


def parse_cpu(text: str) -> int:
    """Millicores of a Kubernetes CPU quantity ("500m", "2", "1.5"); ValueError if not one."""
    millis = _quantity(text) * 1000
    if millis != millis.to_integral_value():
        raise ValueError(f"{text!r} is finer than a millicore")
    return int(millis)


def parse_memory(text: str) -> int:
    """Bytes of a Kubernetes memory quantity ("16Gi", "16G"); ValueError if not one."""
    nbytes = _quantity(text)
    if nbytes != nbytes.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(nbytes)


def cpu_quantity(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(nbytes: int) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return str(nbytes)


def scaled_resources(
    base: dict[str, dict[str, str]], cpu_millis: int | None, memory_bytes: int | None, n: int
) -> dict[str, Any]:
    """`base` (requests/limits) plus `n` times the CPU request and the memory request and
    limit, for those that are set."""
    out: dict[str, Any] = {k: dict(v) for k, v in base.items()}
    if cpu_millis is not None:
        out.setdefault("requests", {})["cpu"] = cpu_quantity(cpu_millis * n)
    if memory_bytes is not None:
        memory = memory_quantity(memory_bytes * n)
        out.setdefault("requests", {})["memory"] = memory
        out.setdefault("limits", {})["memory"] = memory
    return out
