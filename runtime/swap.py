"""Model swapping (Computron, done better): pinned host weights, async copies, LRU by bytes.

Every rank keeps its shard of every hosted model in CPU memory (pinned when CUDA exists, so
host-to-device copies are truly asynchronous). Making a model resident copies the shard to
the device on a side stream and waits on an event, never sleep-polling; all ranks of the
group do this concurrently. The leader decides what is resident with an LRU policy under a
per-device byte budget (the largest shard of a model over the ranks counts), and every
rank follows the leader's explicit load/unload messages, so their states never diverge.
On CPU, host and device are the same memory: the resident module uses the host tensors
themselves (one copy per shard), and swapping out only drops the module's references.
"""

from __future__ import annotations

import torch

from statmux.runtime.checkpoint import state_bytes
from statmux.runtime.model_base import StageModel


class SwappableShard:
    """One rank's stage of one model: host weights plus, when resident, a device copy."""

    def __init__(self, module: StageModel, host: dict[str, torch.Tensor], device: torch.device):
        self.module = module  # on meta while not resident
        self.device = device
        if torch.cuda.is_available():
            host = {k: v.pin_memory() for k, v in host.items()}
        self.host = host
        self.nbytes = state_bytes(host)
        self.resident = False
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def swap_in(self) -> None:
        if self.resident:
            return
        if self._stream is not None:
            done = torch.cuda.Event()
            with torch.cuda.stream(self._stream):
                state = {k: v.to(self.device, non_blocking=True) for k, v in self.host.items()}
                done.record(self._stream)
            done.synchronize()  # an event wait, not a poll
            torch.cuda.current_stream(self.device).wait_event(done)
        elif self.device.type == "cpu":
            state = dict(self.host)  # the same memory: share it, never a second copy
        else:
            state = {k: v.to(self.device) for k, v in self.host.items()}
        self.module.load_state_dict(state, strict=True, assign=True)
        self.resident = True

    def swap_out(self) -> None:
        if not self.resident:
            return
        self.module.to("meta")  # frees the device copy; the host copy stays
        self.resident = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class Residency:
    """The leader's LRU bookkeeping of which models are resident, in bytes per device."""

    def __init__(self, sizes: dict[str, int], budget: int | None) -> None:
        self.sizes = sizes
        self.budget = budget
        self.resident: dict[str, None] = {}  # insertion order = least recently used first

    @property
    def used(self) -> int:
        return sum(self.sizes[m] for m in self.resident)

    def touch(self, model: str) -> None:
        if model in self.resident:
            self.resident.pop(model)
            self.resident[model] = None

    def plan_load(self, model: str) -> list[str]:
        """The models to evict (LRU first) so that `model` fits; raises if it never can."""
        if model in self.resident:
            return []
        need = self.sizes[model]
        if self.budget is not None and need > self.budget:
            raise ValueError(
                f"model {model!r} needs {need} bytes per device, more than the memory budget "
                f"of {self.budget} bytes"
            )
        victims: list[str] = []
        free = None if self.budget is None else self.budget - self.used
        for other in self.resident:
            if free is None or free >= need:
                break
            victims.append(other)
            free += self.sizes[other]
        return victims

    def mark_loaded(self, model: str) -> None:
        self.resident[model] = None

    def mark_unloaded(self, model: str) -> None:
        self.resident.pop(model, None)
