"""Analytic latency model: predicts any (pp, tp) config from the single-GPU latency curve.

The model (documented with its fitted constants and error figures in docs/profiles.md):

* Pipeline split. With pp stages, stage i runs a share of the single-GPU latency L1(b):
  the transformer body, 1 - e(b) - h(b), is split by layers (evenly, or by an integer layer
  split when the layer count is known); the first stage also runs the embedding share e(b)
  and the last the head share h(b). e and h are linear in log2(batch).
* Tensor parallelism. A stage's compute is divided by tp, and tp > 1 adds a
  synchronisation cost per request, tp_sync · L1(1), plus a per-extra-batch-item
  communication cost tp_per_item · (b - 1) · L1(1) · (2 / tp)^tp_item_exponent. Both are
  spread over the stages like the compute (all-reduces happen in every layer) and scaled by
  comm_scale (1 for dense models, larger for MoE all-to-all).
* Pipeline overhead. With pp > 1 every stage pays pp_overhead · L1(b) · tp^pp_overhead_tp_exp
  (activation send/receive and per-stage launch, which grows with the tensor-parallel degree
  because every rank of the stage takes part).
* Batch. When L1 is known only at some batch sizes, the others follow the measured bert-1.3b
  single-GPU batch curve, corrected to pass through the known points.

The constants were fitted (offline, Nelder-Mead on the mean relative error of end-to-end and
max-stage latency) to the measured bert-1.3b V100 grid; `analytic_error_report` re-derives
the error of predicting every measured config from the (1,1) row alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from statmux.placement.profile import ParallelConfig

STANDARD_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16)

# The measured bert-1.3b single-GPU latency at batch b divided by its batch-1 latency
# (V100, profile_data/bert-1.3b-v100.json). Kept here so the batch curve needs no file read.
REFERENCE_BATCH_RATIO: dict[int, float] = {
    1: 1.0,
    2: 0.114632 / 0.098944,
    4: 0.22033 / 0.098944,
    8: 0.426037 / 0.098944,
    16: 0.835449 / 0.098944,
}

REFERENCE_PROFILE_FILE = "bert-1.3b-v100.json"
# Shipped next to this module (package data); a plain path works for editable and wheel
# installs alike, where importlib.resources cannot read namespace packages on Python 3.11.
PROFILE_DATA = Path(__file__).resolve().parent / "profile_data"


@dataclass(frozen=True)
class AnalyticConstants:
    """The few constants of the model; fractions are of the single-GPU latency L1."""

    embed_share: float  # e(1): first-stage extra share at batch 1
    embed_share_per_doubling: float  # d e / d log2(b)
    head_share: float  # h(1): last-stage extra share at batch 1
    head_share_per_doubling: float
    tp_sync: float  # per-request tensor-parallel cost, fraction of L1(1)
    tp_per_item: float  # per extra batch item at tp 2, fraction of L1(1)
    tp_item_exponent: float  # per-item cost scales as (2/tp)^exponent
    pp_overhead: float  # per-stage pipeline cost, fraction of L1(b)
    pp_overhead_tp_exp: float  # per-stage pipeline cost grows as tp^exponent
    comm_scale: float = 1.0  # multiplies the tensor-parallel costs (MoE all-to-all)

    def embed(self, batch: int) -> float:
        return max(0.0, self.embed_share + self.embed_share_per_doubling * math.log2(batch))

    def head(self, batch: int) -> float:
        return max(0.0, self.head_share + self.head_share_per_doubling * math.log2(batch))

    def scaled_comm(self, factor: float) -> AnalyticConstants:
        return AnalyticConstants(
            self.embed_share,
            self.embed_share_per_doubling,
            self.head_share,
            self.head_share_per_doubling,
            self.tp_sync,
            self.tp_per_item,
            self.tp_item_exponent,
            self.pp_overhead,
            self.pp_overhead_tp_exp,
            self.comm_scale * factor,
        )


# Fitted to the measured bert-1.3b V100 grid (see docs/profiles.md).
BERT_V100 = AnalyticConstants(
    embed_share=0.0228,
    embed_share_per_doubling=0.0,
    head_share=0.0387,
    head_share_per_doubling=0.0041,
    tp_sync=0.1765,
    tp_per_item=0.0784,
    tp_item_exponent=0.4587,
    pp_overhead=0.0035,
    pp_overhead_tp_exp=0.975,
)


# --------------------------------------------------------------------------- batch curve
def reference_batch_ratio(batch: int) -> float:
    """L1(b) / L1(1) of the reference model: log-log interpolation, linear beyond 16."""
    if batch < 1:
        raise ValueError(f"batch sizes start at 1, got {batch}")
    known = sorted(REFERENCE_BATCH_RATIO)
    if batch in REFERENCE_BATCH_RATIO:
        return REFERENCE_BATCH_RATIO[batch]
    if batch > known[-1]:
        # Beyond the profiled range the GPU is saturated: latency grows linearly with batch.
        return REFERENCE_BATCH_RATIO[known[-1]] * batch / known[-1]
    logs = np.log2(np.array(known, dtype=float))
    vals = np.log(np.array([REFERENCE_BATCH_RATIO[b] for b in known]))
    return float(np.exp(np.interp(math.log2(batch), logs, vals)))


def fill_batch_curve(known: Mapping[int, float], batch_sizes: Sequence[int]) -> np.ndarray:
    """The single-GPU latency at every batch size, passing through the known points.

    Between and beyond the known points the curve follows the reference batch ratio,
    scaled by a correction that is interpolated in log2(batch) (constant outside).
    """
    if not known:
        raise ValueError("need at least one known batch latency")
    pts = sorted(known)
    logs = np.log2(np.array(pts, dtype=float))
    corr = np.log(np.array([known[b] / reference_batch_ratio(b) for b in pts]))
    out = np.empty(len(batch_sizes))
    for i, b in enumerate(batch_sizes):
        if b in known:
            out[i] = known[b]
        else:
            out[i] = reference_batch_ratio(b) * math.exp(float(np.interp(math.log2(b), logs, corr)))
    return out


# --------------------------------------------------------------------------- the model
def stage_layers(pp: int, num_layers: int) -> list[int]:
    """An even integer split of the layers; the remainder goes to interior stages first
    (the first and last stages already carry the embedding and the head)."""
    if pp > num_layers:
        raise ValueError(f"{pp} pipeline stages exceed the model's {num_layers} layers")
    layers = [num_layers // pp] * pp
    order = [*range(1, pp - 1), 0, pp - 1] if pp > 2 else list(range(pp))
    for i in order[: num_layers % pp]:
        layers[i] += 1
    return layers


def stage_shares(
    pp: int, batch: int, constants: AnalyticConstants, num_layers: int | None = None
) -> np.ndarray:
    """Each stage's share of the single-GPU latency at this batch size (sums to 1)."""
    if pp == 1:
        return np.ones(1)
    e, h = constants.embed(batch), constants.head(batch)
    if num_layers is None:
        body = np.full(pp, 1.0 / pp)
    else:
        body = np.array(stage_layers(pp, num_layers), dtype=float) / num_layers
    shares = body * (1.0 - e - h)
    shares[0] += e
    shares[-1] += h
    return shares


def _stage_latency_parts(
    config: ParallelConfig,
    batch: int,
    constants: AnalyticConstants,
    num_layers: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-stage coefficients (a, d) with stage latency = a · L1(batch) + d · L1(1)."""
    shares = stage_shares(config.pp, batch, constants, num_layers)
    a = shares / config.tp
    d = np.zeros(config.pp)
    if config.tp > 1:
        per_item = constants.tp_per_item * (2.0 / config.tp) ** constants.tp_item_exponent
        d = shares * constants.comm_scale * (constants.tp_sync + per_item * (batch - 1))
    if config.pp > 1:
        a = a + constants.pp_overhead * config.tp**constants.pp_overhead_tp_exp
    return a, d


def predict_stage_latency(
    single_device: Sequence[float] | np.ndarray,
    batch_sizes: Sequence[int],
    config: ParallelConfig,
    constants: AnalyticConstants = BERT_V100,
    num_layers: int | None = None,
) -> np.ndarray:
    """Per-stage latency, shape (len(batch_sizes), pp), from the single-GPU curve L1.

    `single_device[i]` is L1 at `batch_sizes[i]`; batch_sizes must start at 1.
    """
    if batch_sizes[0] != 1:
        raise ValueError("batch_sizes must start at 1")
    l1 = np.asarray(single_device, dtype=float)
    out = np.empty((len(batch_sizes), config.pp))
    for i, b in enumerate(batch_sizes):
        a, d = _stage_latency_parts(config, b, constants, num_layers)
        out[i] = a * l1[i] + d * l1[0]
    return out


def infer_single_device(
    measured: Mapping[ParallelConfig, Mapping[int, np.ndarray]],
    constants: AnalyticConstants = BERT_V100,
    num_layers: int | None = None,
) -> dict[int, float]:
    """Invert the model: the single-GPU latency at each measured batch size, estimated from
    configs other than (1, 1) (geometric mean over the configs)."""
    # L1(1) first: the per-request costs of every config depend on it.
    estimates: list[float] = []
    has_batch_one = any(1 in rows for rows in measured.values())
    for config, rows in measured.items():
        for b, stages in rows.items():
            a, d = _stage_latency_parts(config, b, constants, num_layers)
            # with L1(b) ≈ ratio(b) · L1(1), the total is linear in L1(1)
            unit = a.sum() * reference_batch_ratio(b) + d.sum()
            if b == 1 or not has_batch_one:
                estimates.append(float(np.sum(stages)) / unit)
    if not estimates:
        raise ValueError("no measured latencies to derive the single-GPU latency from")
    l1_one = float(np.exp(np.mean(np.log(estimates))))
    per_batch: dict[int, list[float]] = {}
    for config, rows in measured.items():
        for b, stages in rows.items():
            a, d = _stage_latency_parts(config, b, constants, num_layers)
            value = (float(np.sum(stages)) - d.sum() * l1_one) / a.sum()
            per_batch.setdefault(b, []).append(value)
    result: dict[int, float] = {}
    for b, values in per_batch.items():
        if min(values) <= 0:
            raise ValueError(f"the measured latencies at batch {b} are too small for the model")
        result[b] = float(np.exp(np.mean(np.log(values))))
    if 1 not in result:
        result[1] = l1_one
    return result


# --------------------------------------------------------------------------- error report
@dataclass(frozen=True)
class ErrorRow:
    pp: int
    tp: int
    batch: int
    measured_s: float  # end-to-end latency
    predicted_s: float
    rel_error: float  # (predicted - measured) / measured
    measured_max_stage_s: float
    predicted_max_stage_s: float
    max_stage_rel_error: float


@dataclass(frozen=True)
class ErrorSummary:
    configs: int
    rows: int
    mean_abs_rel_error: float  # end-to-end latency
    max_abs_rel_error: float
    mean_abs_rel_error_max_stage: float  # the pipeline bottleneck stage
    max_abs_rel_error_max_stage: float


def load_reference_grid() -> dict[str, Any]:
    """The measured bert-1.3b V100 grid shipped in profile_data/."""
    text = (PROFILE_DATA / REFERENCE_PROFILE_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def analytic_error_report(
    constants: AnalyticConstants = BERT_V100,
) -> tuple[list[ErrorRow], ErrorSummary]:
    """Predict every measured bert-1.3b config from the (1, 1) row alone and compare."""
    grid = load_reference_grid()
    configs = {
        ParallelConfig(c["pipeline_stages"], c["tensor_parallel"]): c["stage_latency_s"]
        for c in grid["configs"]
    }
    base = configs[ParallelConfig(1, 1)]
    batch_sizes = sorted(int(b) for b in base)
    l1 = [base[str(b)][0] for b in batch_sizes]
    rows: list[ErrorRow] = []
    for config in sorted(configs):
        if config == ParallelConfig(1, 1):
            continue
        predicted = predict_stage_latency(l1, batch_sizes, config, constants)
        for i, b in enumerate(batch_sizes):
            stages = np.array(configs[config][str(b)], dtype=float)
            total, peak = float(stages.sum()), float(stages.max())
            p_total, p_peak = float(predicted[i].sum()), float(predicted[i].max())
            rows.append(
                ErrorRow(
                    config.pp,
                    config.tp,
                    b,
                    total,
                    p_total,
                    (p_total - total) / total,
                    peak,
                    p_peak,
                    (p_peak - peak) / peak,
                )
            )
    total_err = np.abs([r.rel_error for r in rows])
    peak_err = np.abs([r.max_stage_rel_error for r in rows])
    summary = ErrorSummary(
        configs=len(configs) - 1,
        rows=len(rows),
        mean_abs_rel_error=float(total_err.mean()),
        max_abs_rel_error=float(total_err.max()),
        mean_abs_rel_error_max_stage=float(peak_err.mean()),
        max_abs_rel_error_max_stage=float(peak_err.max()),
    )
    return rows, summary
