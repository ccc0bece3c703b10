"""Simulator fidelity: predicted vs measured SLO attainment on the same Plan and arrivals.

    python benchmarks/fidelity.py [--mode cpu|emulated|both] [--duration 60] [--json]

Two modes, reported separately:

- cpu (real compute): the models of examples/local.yaml are profiled on this machine with
  `statmux profile` (real runtime, real gloo pipeline), the ModelSet is planned with those
  profiles, served with `statmux up` (every rank a CPU process, the router in front) and
  loaded with `statmux load` at the ModelSet's own rate, which the cores can carry.
- emulated (the paper's load): benchmarks/fidelity_emulated.yaml is examples/demo.yaml's
  setting (8 BERT-1.3B/2.6B models, 8 GPUs, 24 req/s total, CV 4, SLO 5x), served with
  `statmux up --emulate-device`: every stage takes its profiled V100 time (a sleep) while the
  real pipeline, router, queues, admission and transport run unchanged. The serving path's
  own costs (router hop, HTTP, scheduling, activation transfer) are not in the V100 profiles;
  as AlpaServe calibrated its simulator, they are measured here first with
  `statmux profile --emulate-device` (the same emulated serving path, one request at a
  time) and written into the profiles as `overheads`, which the Plan carries to the router's
  and the groups' admission (`--no-calibrate` skips this and uses the bare built-in profiles).

Each mode prints per-model measured and predicted attainment and the gap in percentage
points (measured - predicted); the goal is |overall gap| <= 1.5 points.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def statmux(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [PY, "-m", "statmux", *args], cwd=ROOT, env=env, text=True, check=True, **kw
    )


def profile_models(modelset: Path, outdir: Path) -> Path:
    """Profile every distinct model of the ModelSet on this machine; a ModelSet copy that
    uses the new profile files."""
    doc = yaml.safe_load(modelset.read_text())
    groups = doc["spec"]["placement"].get("groups") or []
    configs = {(g["pipelineStages"], g["tensorParallel"]) for g in groups} or {(1, 1)}
    pps = ",".join(str(pp) for pp in sorted({pp for pp, _ in configs} | {1}))
    tps = ",".join(str(tp) for tp in sorted({tp for _, tp in configs}))
    done: dict[str, str] = {}
    for model in doc["spec"]["models"]:
        w = model["weights"]
        key = json.dumps(w, sort_keys=True)
        if key not in done:
            out = outdir / f"profile-{len(done)}.yaml"
            overrides = [f"--config={k}={v}" for k, v in (w.get("config") or {}).items()]
            print(f"profiling {model['name']} ({w['preset']}) pp {pps} tp {tps}", flush=True)
            statmux(
                "profile", "--preset", w["preset"], *overrides,
                "--dtype", w.get("dtype", "float32"), "--pp", pps, "--tp", tps,
                "--batch", "1,2,4", "--repeats", "10", "-o", str(out),
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            done[key] = str(out)
        model["profile"] = {"file": done[key]}
    copy = outdir / "modelset.yaml"
    copy.write_text(yaml.safe_dump(doc))
    return copy


def calibrated_modelset(modelset: Path, outdir: Path) -> tuple[Path, dict[str, float]]:
    """The ModelSet with each built-in profile written out as a file, plus the emulated
    serving path's overheads measured here (pp 1 and 2, one request at a time)."""
    from statmux.placement.profiles import builtin_profile

    doc = yaml.safe_load(modelset.read_text())
    w = doc["spec"]["models"][0]["weights"]
    overrides = [f"--config={k}={v}" for k, v in (w.get("config") or {}).items()]
    measured = outdir / "overheads.yaml"
    print("calibrating: the emulated serving path's overheads", flush=True)
    statmux(
        "profile", "--preset", f"{w.get('architecture', 'bert')}-{w['preset']}", *overrides,
        "--pp", "1,2", "--batch", "1", "--repeats", "15", "--emulate-device",
        "-o", str(measured), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    overheads = yaml.safe_load(measured.read_text())["overheads"]
    files: dict[str, str] = {}
    for model in doc["spec"]["models"]:
        name = model["profile"]["builtin"]
        if name not in files:
            p = builtin_profile(name)
            configs = [
                {
                    "pipelineStages": c.config.pp,
                    "tensorParallel": c.config.tp,
                    "stageLatencyS": {
                        str(b): [float(x) for x in c.stage_latency[i]]
                        for i, b in enumerate(c.batch_sizes)
                    },
                    "weightBytesPerGpu": [c.weight_bytes_per_gpu] * c.config.pp,
                }
                for c in p.configs.values()
            ]
            out = outdir / f"{name}.yaml"
            out.write_text(
                yaml.safe_dump(
                    {"weightBytes": p.weight_bytes, "configs": configs, "overheads": overheads}
                )
            )
            files[name] = str(out)
        model["profile"] = {"file": files[name]}
    copy = outdir / "modelset.yaml"
    copy.write_text(yaml.safe_dump(doc))
    return copy, overheads


def serve_and_load(modelset: Path, duration: float, workdir: Path, emulate: bool) -> dict:
    """`statmux plan`, `statmux up` (background), `statmux load --json`; stops `up`."""
    plan = workdir / "plan.json"
    quiet = {"stdout": subprocess.DEVNULL}
    statmux("plan", str(modelset), "-o", str(plan), "-q", "--no-baselines", **quiet)
    port, grpc = 18000 + os.getpid() % 1000, 19000 + os.getpid() % 1000
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    up = subprocess.Popen(
        [PY, "-m", "statmux", "up", str(modelset), "--plan", str(plan), "--device", "cpu",
         "--http-port", str(port), "--grpc-port", str(grpc), "--workdir", str(workdir / "up"),
         "-q", *(["--emulate-device"] if emulate else [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        start = time.monotonic()
        assert up.stdout is not None
        for line in up.stdout:
            if line.startswith("ready in"):
                break
        else:
            raise RuntimeError(f"statmux up exited with {up.wait()} before it was ready")
        ready_s = time.monotonic() - start
        print(f"  statmux up ready in {ready_s:.1f} s; loading {duration:g} s", flush=True)
        result = statmux(
            "load", f"127.0.0.1:{port}", "--modelset", str(modelset), "--plan", str(plan),
            "--duration", str(duration), "--json", "-q", capture_output=True,
        )  # fmt: skip
        doc: dict = json.loads(result.stdout)
        doc["readySeconds"] = ready_s
        return doc
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=120)


def print_mode(title: str, doc: dict) -> None:
    print(f"\n{title}")
    print(f"{'model':<10}{'requests':>9}{'measured':>11}{'predicted':>11}{'gap':>9}")
    for name, m in doc["perModel"].items():
        gap = 100 * (m["attainment"] - m["predictedAttainment"])
        print(
            f"{name:<10}{m['sent']:>9}{100 * m['attainment']:>10.2f}%"
            f"{100 * m['predictedAttainment']:>10.2f}%{gap:>+9.2f}"
        )
    o, p = doc["overall"], doc["predicted"]
    print(
        f"{'overall':<10}{o['sent']:>9}{100 * o['attainment']:>10.2f}%"
        f"{100 * p['attainment']:>10.2f}%{doc['gapPoints']:>+9.2f}"
    )
    print(
        f"rejected {o['rejected']} errors {o['errors']}; latency p50 "
        f"{1000 * o['latency']['p50']:.1f} ms (predicted {1000 * p['latency']['p50']:.1f}), "
        f"p99 {1000 * o['latency']['p99']:.1f} ms (predicted {1000 * p['latency']['p99']:.1f}); "
        f"generator lag max {1000 * doc['maxSendLagSeconds']:.1f} ms; up ready in "
        f"{doc['readySeconds']:.1f} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("cpu", "emulated", "both"), default="both")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    ap.add_argument("--json", action="store_true", help="also print the raw reports as JSON")
    ap.add_argument(
        "--no-calibrate",
        action="store_true",
        help="emulated mode: the bare built-in profiles, without the measured overheads",
    )
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="statmux-fidelity-") as tmp:
        base = Path(tmp)
        if args.mode in ("cpu", "both"):
            print("== real CPU compute: examples/local.yaml, profiled here", flush=True)
            (base / "cpu").mkdir()
            ms = profile_models(ROOT / "examples/local.yaml", base / "cpu")
            results["cpu"] = serve_and_load(ms, args.duration, base / "cpu", emulate=False)
            print_mode("real CPU compute (examples/local.yaml, its own rates)", results["cpu"])
        if args.mode in ("emulated", "both"):
            print("== emulated devices: benchmarks/fidelity_emulated.yaml", flush=True)
            (base / "emulated").mkdir()
            ms = ROOT / "benchmarks/fidelity_emulated.yaml"
            note = "uncalibrated"
            if not args.no_calibrate:
                ms, overheads = calibrated_modelset(ms, base / "emulated")
                note = (
                    f"overheads measured here: request {1000 * overheads['requestSeconds']:.1f}"
                    f" ms, per stage boundary {1000 * overheads['stageSeconds']:.1f} ms"
                )
            results["emulated"] = serve_and_load(ms, args.duration, base / "emulated", True)
            print_mode(
                f"emulated devices (V100 profiles, the paper's load: 24 req/s, CV 4; {note})",
                results["emulated"],
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
