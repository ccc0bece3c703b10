"""`statmux experiment NAME`: sweeps in the shape of the AlpaServe evaluation (CSV + PNG).

The Azure MAF traces are not redistributable here, so the sweeps use the paper's synthetic
setting: power-law rates over the S3 model mix (BERT + MoE), Gamma arrivals.

- gpus, rate, cv, slo: SLO attainment of sr / clockwork++ / alpaserve / statmux as one knob
  moves (number of GPUs, rate scale, CV scale, SLO scale).
- published: the paper's synthetic-Gamma settings (42 BERT, 60 BERT+MoE) next to the
  published attainment.
- motivation: the seed study's 8 × bert-2.6b sweeps (memory budget, CV, total rate, SLO)
  comparing model parallelism (every model pipelined over all GPUs) with replication.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: write PNG files only
import matplotlib.pyplot as plt

from statmux.placement.plan import Group, Placement
from statmux.placement.planner import build_problem, run_policy
from statmux.placement.policy_registry import COMPARED
from statmux.placement.profile import ParallelConfig
from statmux.placement.scenarios import BERT_MIX, S3_MIX, mixed, modelset
from statmux.placement.spec import ModelSet

POLICIES = COMPARED  # baselines first, then statmux (the CSV column order)


@dataclass
class Sweep:
    knob: str
    values: list[float]
    build: Callable[[float, bool], ModelSet]
    xlabel: str


def _s3(
    gpus: int = 32, rate: float = 40.0, cv: float = 4.0, slo: float = 5.0, quick: bool = False
) -> ModelSet:
    return modelset(
        mixed(S3_MIX, 24 if quick else 36),
        gpus=gpus,
        rate=rate,
        cv=cv,
        slo_scale=slo,
        duration=300.0 if quick else 900.0,
        split="powerLaw",
        exponent=0.5,
    )


SWEEPS: dict[str, Sweep] = {
    "gpus": Sweep("gpus", [16, 24, 32, 40, 48], lambda v, q: _s3(gpus=int(v), quick=q), "GPUs"),
    "rate": Sweep(
        "rate", [20, 30, 40, 60, 80], lambda v, q: _s3(rate=v, quick=q), "total rate (req/s)"
    ),
    "cv": Sweep("cv", [1, 2, 4, 6, 8], lambda v, q: _s3(cv=v, quick=q), "CV scale"),
    "slo": Sweep("slo", [0.75, 1, 2, 5, 10], lambda v, q: _s3(slo=v, quick=q), "SLO scale"),
}


def _motivation(knob: str, v: float, quick: bool) -> ModelSet:
    args: dict[str, Any] = {"rate": 8.0, "cv": 3.0, "slo_scale": 5.0, "memory": "13Gi"}
    if knob == "memory":
        args["memory"] = f"{v}Gi"
    elif knob == "cv":
        args["cv"] = v
    elif knob == "rate":
        args["rate"] = v
    else:
        args["slo_scale"] = v
    return modelset(["bert-2.6b"] * 8, gpus=8, duration=300.0 if quick else 1200.0, **args)


MOTIVATION: dict[str, list[float]] = {
    "memory": [6, 8, 11, 14, 20, 30],
    "cv": [0.5, 1, 2, 3, 4, 6],
    "rate": [4, 8, 16, 24, 32, 40, 48],
    "slo": [1.5, 2.5, 5, 7.5, 10],
}

# The paper's synthetic-Gamma settings with their published attainment (power-law rates,
# CV 4, SLO 5x, 200 s): (label, model mix, count, GPUs, total rate, published SR, published
# AlpaServe with device splitting).
PUBLISHED: list[tuple[str, tuple[str, ...], int, int, float, float, float]] = [
    ("42 BERT / 16 GPUs", BERT_MIX, 42, 16, 64.0, 0.438, 0.701),
    ("42 BERT / 24 GPUs", BERT_MIX, 42, 24, 64.0, 0.607, 0.864),
    ("42 BERT / 32 GPUs", BERT_MIX, 42, 32, 64.0, 0.711, 0.976),
    ("42 BERT / 48 GPUs", BERT_MIX, 42, 48, 64.0, 0.842, 1.0),
    ("60 BERT+MoE / 32 GPUs, 64 req/s", S3_MIX, 60, 32, 64.0, 0.690, 0.960),
    ("60 BERT+MoE / 32 GPUs, 128 req/s", S3_MIX, 60, 32, 128.0, 0.597, 0.821),
]

EXPERIMENTS = (*SWEEPS, "motivation", "published", "all")


def run_experiment(
    name: str, out: Path, quick: bool = False, progress: Callable[[str], None] | None = None
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _m: None)
    if name == "all":
        files: list[Path] = []
        for n in (*SWEEPS, "motivation", "published"):
            files += run_experiment(n, out, quick, progress)
        return files
    if name == "motivation":
        return _run_motivation(out, quick, say)
    if name == "published":
        return _run_published(out, quick, say)
    sweep = SWEEPS[name]
    rows: list[dict[str, Any]] = []
    for v in sweep.values:
        ms = sweep.build(v, quick)
        problem = build_problem(ms.spec)
        row: dict[str, Any] = {sweep.knob: v}
        for policy in POLICIES:
            say(f"{name}={v}: {policy}")
            ev = run_policy(problem, policy)
            row[policy] = round(ev.attainment, 4)
            row[f"{policy}_placement"] = ev.result.placement.describe()
            row[f"{policy}_seconds"] = round(ev.seconds, 3)
        rows.append(row)
    return _write(out, f"attainment_vs_{name}", rows, sweep.knob, POLICIES, sweep.xlabel)


def _run_motivation(out: Path, quick: bool, say: Callable[[str], None]) -> list[Path]:
    files: list[Path] = []
    labels = {
        "memory": "memory budget (GiB)",
        "cv": "CV",
        "rate": "total rate (req/s)",
        "slo": "SLO scale",
    }
    for knob, values in MOTIVATION.items():
        rows: list[dict[str, Any]] = []
        for v in values:
            say(f"motivation {knob}={v}")
            problem = build_problem(_motivation(knob, v, quick).spec)
            replication = run_policy(problem, "sr")
            # Model parallelism: every model pipelined over all 8 GPUs, when it fits.
            mp = Placement([Group(ParallelConfig(8, 1), list(problem.models))])
            if all(problem.fits_alone(m, mp.groups[0].config) for m in problem.models) and (
                sum(problem.bytes_per_gpu(m, mp.groups[0].config) for m in problem.models)
                <= problem.budget
            ):
                mp_att = problem.simulator().attainment(mp)
            else:
                mp_att = float("nan")
            rows.append(
                {
                    knob: v,
                    "replication": round(replication.attainment, 4),
                    "model-parallel": round(mp_att, 4),
                }
            )
        files += _write(
            out, f"motivation_{knob}", rows, knob, ("replication", "model-parallel"), labels[knob]
        )
    return files


def _run_published(out: Path, quick: bool, say: Callable[[str], None]) -> list[Path]:
    """The paper's synthetic settings, ours next to the published numbers."""
    rows: list[dict[str, Any]] = []
    for label, mix, count, gpus, rate, pub_sr, pub_alpa in PUBLISHED:
        ms = modelset(
            mixed(mix, count),
            gpus=gpus,
            rate=rate,
            cv=4.0,
            slo_scale=5.0,
            duration=100.0 if quick else 200.0,
            split="powerLaw",
            exponent=0.5,
        )
        problem = build_problem(ms.spec)
        row: dict[str, Any] = {
            "setting": label,
            "published sr": pub_sr,
            "published alpaserve": pub_alpa,
        }
        for policy in POLICIES:
            say(f"published {label}: {policy}")
            ev = run_policy(problem, policy)
            row[policy] = round(ev.attainment, 4)
            row[f"{policy}_seconds"] = round(ev.seconds, 3)
        rows.append(row)
    csv_path = out / "published_vs_ours.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    series = ("published sr", "sr", "published alpaserve", "alpaserve", "statmux")
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=120)
    width = 0.8 / len(series)
    for k, s in enumerate(series):
        xs = [i + (k - len(series) / 2 + 0.5) * width for i in range(len(rows))]
        ax.bar(xs, [100 * r[s] for r in rows], width, label=s)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["setting"] for r in rows], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=5, loc="lower center")
    ax.set_title("synthetic Gamma settings: published vs reproduced", fontsize=9)
    fig.tight_layout()
    png = out / "published_vs_ours.png"
    fig.savefig(png)
    plt.close(fig)
    return [csv_path, png]


def _write(
    out: Path,
    stem: str,
    rows: list[dict[str, Any]],
    knob: str,
    series: tuple[str, ...],
    xlabel: str,
) -> list[Path]:
    csv_path = out / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    for s in series:
        ax.plot([r[knob] for r in rows], [100 * r[s] for r in rows], marker="o", label=s)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(stem.replace("_", " "), fontsize=9)
    fig.tight_layout()
    png = out / f"{stem}.png"
    fig.savefig(png)
    plt.close(fig)
    return [csv_path, png]
