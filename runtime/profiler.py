"""`statmux profile`: per-stage latency measured with the real runtime, as a profile file.

    statmux profile --preset bert-small --device cpu --pp 1,2 --tp 1 --batch 1,2,4 \
        -o profiles/bert-small-cpu.yaml

For each (pp, tp) it starts a real group of pp x tp `statmux runtime` processes (the same
launch as `statmux up`), sends requests of `--sequence-length` tokens one at a time (no
queueing), and reads each stage's compute and transfer seconds from the leader's /metrics
around every request (runtime/stage_timing.py: every rank times its own stage). After
`--warmup` requests per batch size, the median of `--repeats` requests gives:

- `stageLatencyS`: each stage's forward (compute, tensor-parallel all-reduces included);
- `overheads.stageSeconds`: the activation transfer per stage boundary (pp > 1 configs: the
  stages' transfer seconds over pp - 1 boundaries), median over configs and batch sizes;
- `overheads.requestSeconds`: what a request costs outside the stages (the router's hop,
  HTTP, scheduling, the result's return): end-to-end at the client minus compute and
  transfer, median. Requests go through the router as `statmux up` serves them (--direct:
  straight to the group leader).

The output is the documented profile file format (docs/profiles.md), so a ModelSet can use it
as `profile: {file: ...}`; the simulator applies the overheads. Descriptive keys (`about`,
`hardware`, `model`) say what was measured. `--emulate-device` runs the ranks as
`statmux up --emulate-device` does (each stage sleeps a 1 ms placeholder): its overheads are
those of the emulated serving path (benchmarks/fidelity.py uses them).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from statmux.commands import unwritable
from statmux.placement.plan import Plan
from statmux.placement.spec import WeightSource
from statmux.runtime.loadgen import DEFAULT_SEQUENCE_LENGTH
from statmux.runtime.local_cluster import ClusterError, ClusterOptions, LocalCluster, free_port
from statmux.runtime.presets import PRESETS, ModelConfigError, resolve_config

MODEL = "profiled"
# the profiled model's stage latencies in its Plan: what --emulate-device ranks sleep
PLACEHOLDER_STAGE_S = 1e-3


class ProfileUsageError(Exception):
    """A user mistake (exit 2)."""


@dataclass
class ConfigMeasurement:
    pp: int
    tp: int
    stage_latency: dict[int, list[float]]  # batch -> per-stage median compute seconds
    transfer: dict[int, float]  # batch -> median transfer seconds, all stages together
    end_to_end: dict[int, float]  # batch -> median client latency
    weight_bytes_per_gpu: list[float]


def weights_for(preset: str, overrides: dict[str, Any], dtype: str) -> WeightSource:
    if preset not in PRESETS:
        raise ProfileUsageError(
            f"--preset {preset!r} is unknown; allowed: {', '.join(sorted(PRESETS))}"
        )
    arch = PRESETS[preset][0]
    weights = WeightSource.model_validate(
        {
            "source": "synthetic",
            "architecture": arch,
            "preset": preset,
            "config": overrides or None,
            "dtype": dtype,
        }
    )
    try:
        resolve_config(weights, "--preset/--config")
    except ModelConfigError as e:
        raise ProfileUsageError(str(e)) from None
    return weights


def stage_weight_bytes(weights: WeightSource, pp: int, tp: int) -> list[float]:
    """Weight bytes on one GPU of each stage (built on the meta device: no memory)."""
    import torch

    from statmux.runtime.checkpoint import build_stage
    from statmux.runtime.tensor_parallel import TPInfo

    cfg = resolve_config(weights)
    size = torch.empty(0, dtype=getattr(torch, weights.dtype)).element_size()
    out = []
    for stage in range(pp):
        module = build_stage(cfg, stage, pp, TPInfo(0, tp, None))
        out.append(float(sum(p.numel() for p in module.parameters()) * size))
    return out


def profile_plan(weights: WeightSource, pp: int, tp: int, batches: list[int]) -> Plan:
    model = {
        "name": MODEL,
        "sloSeconds": 3600.0,  # never rejected: we measure the pipeline, not admission
        "maxBatchSize": max(batches),
        "stageLatencySeconds": {str(b): [PLACEHOLDER_STAGE_S] * pp for b in batches},
        "weightBytesPerGpu": 0.0,
        "weights": weights.model_dump(by_alias=True, exclude_none=True),
    }
    return Plan.from_dict(
        {
            "apiVersion": "statmux.io/v1alpha1",
            "kind": "Plan",
            "modelSet": "profile",
            "policy": "manual",
            "cluster": {"gpus": pp * tp, "gpuMemoryBytes": 2**40, "gpusPerNode": pp * tp},
            "groups": [
                {
                    "name": "g0",
                    "gpus": pp * tp,
                    "pp": pp,
                    "tp": tp,
                    "memoryPerGpuBytes": 0.0,
                    "models": [model],
                }
            ],
            "predicted": {"attainment": 1.0},
        }
    )


def stage_totals(metrics_url: str) -> dict[tuple[str, int], float]:
    """Cumulative (compute|transfer, stage) seconds of the profiled model."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=30) as r:
        text = r.read().decode()
    totals: dict[tuple[str, int], float] = {}
    for family in text_string_to_metric_families(text):
        kind = family.name.removeprefix("statmux_stage_").removesuffix("_seconds")
        if kind not in ("compute", "transfer"):
            continue
        for s in family.samples:
            if s.name.endswith("_sum") and s.labels.get("model") == MODEL:
                totals[(kind, int(s.labels["stage"]))] = float(s.value)
    return totals


def measure_group(
    url: str,
    leader: str,
    pp: int,
    batches: list[int],
    seq_len: int,
    warmup: int,
    repeats: int,
) -> tuple[dict[int, list[float]], dict[int, float], dict[int, float]]:
    """Per batch size: median compute per stage, median transfer (all stages), median
    end-to-end latency of requests sent to `url`, one at a time; stage times come from the
    group leader's /metrics."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=600)
    compute: dict[int, list[float]] = {}
    transfer: dict[int, float] = {}
    e2e: dict[int, float] = {}
    for batch in batches:
        ids = (np.arange(batch * seq_len) % 97 + 1).reshape(batch, seq_len).astype(np.int64)
        inp = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        for _ in range(warmup):
            client.infer(MODEL, [inp])
        samples: list[list[float]] = []
        moved: list[float] = []
        ends: list[float] = []
        for _ in range(repeats):
            before = stage_totals(leader + "/metrics")
            start = time.perf_counter()
            client.infer(MODEL, [inp])
            ends.append(time.perf_counter() - start)
            after = stage_totals(leader + "/metrics")
            delta = {k: after[k] - before.get(k, 0.0) for k in after}
            samples.append([delta.get(("compute", s), 0.0) for s in range(pp)])
            moved.append(sum(delta.get(("transfer", s), 0.0) for s in range(pp)))
        compute[batch] = [max(1e-6, statistics.median(x[s] for x in samples)) for s in range(pp)]
        transfer[batch] = statistics.median(moved)
        e2e[batch] = statistics.median(ends)
    client.close()
    return compute, transfer, e2e


def profile_config(
    weights: WeightSource,
    pp: int,
    tp: int,
    batches: list[int],
    device: str,
    seq_len: int,
    warmup: int,
    repeats: int,
    workdir: Path,
    via_router: bool = True,
    emulate: bool = False,
) -> ConfigMeasurement:
    plan = profile_plan(weights, pp, tp, batches)
    cfg_dir = workdir / f"pp{pp}-tp{tp}"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    plan_path = cfg_dir / "plan.json"
    plan.write(plan_path)
    options = ClusterOptions(
        device=device,
        with_router=via_router,
        http_port=free_port(),
        grpc_port=free_port(),
        emulate_device=emulate,
    )
    with LocalCluster(plan, plan_path, cfg_dir, options) as cluster:
        cluster.start()
        cluster.wait_ready(600)
        target = f"http://{cluster.endpoint}" if via_router else cluster.groups[0].url
        stages, transfer, e2e = measure_group(
            target, cluster.groups[0].url, pp, batches, seq_len, warmup, repeats
        )
    return ConfigMeasurement(pp, tp, stages, transfer, e2e, stage_weight_bytes(weights, pp, tp))


def profile_document(
    preset: str,
    weights: WeightSource,
    device: str,
    seq_len: int,
    rows: list[ConfigMeasurement],
    emulated: bool = False,
) -> dict[str, Any]:
    total = sum(stage_weight_bytes(weights, 1, 1))
    cfg = resolve_config(weights)
    boundaries = [m.transfer[b] / (m.pp - 1) for m in rows if m.pp > 1 for b in m.transfer]
    stage_s = statistics.median(boundaries) if boundaries else 0.0
    outside = [
        max(0.0, m.end_to_end[b] - sum(m.stage_latency[b]) - m.transfer[b])
        for m in rows
        for b in m.stage_latency
    ]
    request_s = statistics.median(outside)
    return {
        "about": (
            f"measured by `statmux profile` on {time.strftime('%Y-%m-%d')}: medians of "
            f"each stage's compute, the transfers and the end-to-end latency at the client, "
            f"{seq_len} tokens per row, one request at a time"
        ),
        "hardware": (
            f"emulated devices ({1000 * PLACEHOLDER_STAGE_S:g} ms per stage) on "
            if emulated
            else ""
        )
        + f"{device}: {platform.processor() or platform.machine()}",
        "model": {
            "preset": preset,
            "architecture": weights.architecture,
            "config": weights.config or {},
            "dtype": weights.dtype,
            "sequenceLength": seq_len,
        },
        "weightBytes": total,
        "numLayers": cfg.num_layers,
        "configs": [
            {
                "pipelineStages": m.pp,
                "tensorParallel": m.tp,
                "stageLatencyS": {
                    str(b): [round(x, 7) for x in lat] for b, lat in sorted(m.stage_latency.items())
                },
                "weightBytesPerGpu": m.weight_bytes_per_gpu,
            }
            for m in rows
        ],
        "overheads": {"requestSeconds": round(request_s, 7), "stageSeconds": round(stage_s, 7)},
    }


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4")
    return sorted(set(values))


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. hidden_size=256")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statmux profile",
        description="Measure per-stage latency of a model with the real runtime and write a "
        "profile file a ModelSet can reference (profile: {file: ...}).",
    )
    p.add_argument("--preset", required=True, help="a runtime preset, e.g. bert-small")
    p.add_argument(
        "--config",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an HF config field over the preset (as weights.config in a ModelSet)",
    )
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--pp", type=_int_list, default=[1], help="pipeline stages, e.g. 1,2")
    p.add_argument("--tp", type=_int_list, default=[1], help="tensor-parallel degrees, e.g. 1,2")
    p.add_argument("--batch", type=_int_list, default=[1, 2, 4], help="batch sizes, e.g. 1,2,4")
    p.add_argument("--sequence-length", type=int, default=DEFAULT_SEQUENCE_LENGTH)
    p.add_argument("--warmup", type=int, default=3, help="requests before measuring")
    p.add_argument("--repeats", type=int, default=15, help="measured requests per batch size")
    p.add_argument(
        "--direct",
        action="store_true",
        help="send to the group leader, not through the router (request overhead without "
        "the router's hop)",
    )
    p.add_argument(
        "--emulate-device",
        action="store_true",
        help="run the ranks as `statmux up --emulate-device` does, every stage taking "
        f"{1000 * PLACEHOLDER_STAGE_S:g} ms: measures the overheads of the emulated serving path "
        "(its stage latencies are that placeholder, not the model's)",
    )
    p.add_argument("-o", "--output", required=True, help="the profile file (.yaml or .json)")
    return p


def profile_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        if args.repeats < 1 or args.warmup < 0 or args.sequence_length < 1:
            raise ProfileUsageError("--repeats and --sequence-length must be >= 1, --warmup >= 0")
        if why := unwritable(args.output, "-o", make_parents=True):
            raise ProfileUsageError(why)  # before measuring: no measurement lost to it
        if args.device == "cuda":
            from statmux.runtime.local_cluster import visible_gpus

            need = max(pp * tp for pp in args.pp for tp in args.tp)
            if visible_gpus() < need:
                raise ProfileUsageError(
                    f"--device cuda: the largest config needs {need} GPUs, {visible_gpus()} visible"
                )
        weights = weights_for(args.preset, dict(args.config), args.dtype)
        rows = []
        with tempfile.TemporaryDirectory(prefix="statmux-profile-") as tmp:
            for pp in args.pp:
                for tp in args.tp:
                    print(f"profiling {args.preset} pp{pp}×tp{tp} …", file=sys.stderr)
                    try:
                        rows.append(
                            profile_config(
                                weights,
                                pp,
                                tp,
                                args.batch,
                                args.device,
                                args.sequence_length,
                                args.warmup,
                                args.repeats,
                                Path(tmp),
                                not args.direct,
                                args.emulate_device,
                            )
                        )
                    except ClusterError as e:
                        raise ProfileUsageError(f"pp{pp}×tp{tp}: {e}") from None
        doc = profile_document(
            args.preset, weights, args.device, args.sequence_length, rows, args.emulate_device
        )
    except ProfileUsageError as e:
        print(f"statmux profile: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(
        f"overheads: request {1000 * doc['overheads']['requestSeconds']:.2f} ms, "
        f"per stage boundary {1000 * doc['overheads']['stageSeconds']:.2f} ms"
    )
    for m in rows:
        lat = ", ".join(
            f"b{b}: " + "+".join(f"{1000 * x:.2f}" for x in s) + " ms"
            for b, s in sorted(m.stage_latency.items())
        )
        print(f"pp{m.pp}×tp{m.tp}: {lat}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(profile_main(sys.argv[1:]))
