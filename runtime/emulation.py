"""Emulated devices (`statmux runtime --emulate-device`): each stage takes its profiled time.

The rank runs its real shard the first time it sees an input shape (so activations, shapes,
transport, queues, admission and the router are all real), keeps that output for the shape,
and then sleeps until the stage's forward has taken as long as the Plan's
`stageLatencySeconds` says for that model, stage and batch size. Later inputs of the same
shape get a copy of the kept output instead of a second forward: an emulated rank spends its
time asleep, not computing, so that many emulated "GPUs" share a few CPU cores without
slowing each other or the router (a 2-core machine can emulate the paper's 8-GPU cluster).
A sleep rather than a spin, for the same reason. The real shard should be small (a tiny
preset) so that its first forward stays below the profiled time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch

Forward = Callable[[list[torch.Tensor]], list[torch.Tensor]]
# distinct input shapes kept per rank (batch sizes x sequence lengths in use); beyond it the
# least recently used is computed again
KEPT_SHAPES = 256


class EmulationError(ValueError):
    """A model has no profile to emulate; the message names it."""


class StageEmulator:
    """The profiled latency of one pipeline stage, per hosted model and batch size."""

    def __init__(self, stage: int, profiles: Mapping[int, tuple[str, Mapping[int, list[float]]]]):
        """profiles: model index -> (name, batch size -> per-stage seconds)."""
        self._rows: dict[int, list[tuple[int, float]]] = {}
        for index, (name, table) in profiles.items():
            if not table:
                raise EmulationError(
                    f"model {name!r} has no stageLatencySeconds in the plan: --emulate-device "
                    "needs every model's profiled stage latencies"
                )
            rows = []
            for batch, stages in sorted(table.items()):
                if stage >= len(stages):
                    raise EmulationError(
                        f"model {name!r}: stageLatencySeconds[{batch}] has {len(stages)} "
                        f"stages, this rank runs stage {stage}"
                    )
                rows.append((int(batch), float(stages[stage])))
            self._rows[index] = rows
        self._kept: OrderedDict[tuple[object, ...], list[torch.Tensor]] = OrderedDict()
        self.forwards = 0  # real forwards run (the first of each input shape)

    def forward(
        self, model: int, inputs: Sequence[torch.Tensor], module: Forward
    ) -> list[torch.Tensor]:
        """The stage's output for `inputs`: the real shard's, computed once per input shape
        (dtype and shape of every input) and copied after that."""
        key = (model, *((t.dtype, tuple(t.shape)) for t in inputs))
        kept = self._kept.get(key)
        if kept is None:
            kept = [t.detach() for t in module(list(inputs))]
            self.forwards += 1
            self._kept[key] = kept
            if len(self._kept) > KEPT_SHAPES:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        return [t.clone() for t in kept]

    def seconds(self, model: int, rows: int) -> float:
        """The stage's latency for a batch of `rows`: the next profiled batch size up; past
        the largest, linear in rows (as the scheduler's admission assumes)."""
        table = self._rows[model]
        for batch, seconds in table:
            if batch >= rows:
                return seconds
        batch, seconds = table[-1]
        return seconds * rows / batch

    def hold(self, model: int, rows: int, started_ns: int) -> None:
        """Sleep until the forward that began at `started_ns` has taken its profiled time."""
        left = self.seconds(model, rows) - (time.perf_counter_ns() - started_ns) / 1e9
        if left > 0:
            time.sleep(left)
