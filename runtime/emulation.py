"""Emulated devices (`statmux runtime --emulate-device`): each stage takes its profiled time.

The rank still runs its real shard (so activations, shapes, transport, queues, admission and
the router are all real), then sleeps until the stage's forward has taken as long as the
Plan's `stageLatencySeconds` says for that model, stage and batch size. A sleep rather than
a spin: many emulated "GPUs" then share a few CPU cores without slowing each other, which is
the point (a 2-core machine can emulate the paper's 8-GPU cluster). The real shard should be
small (a tiny preset) so that its own compute stays below the profiled time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping


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
