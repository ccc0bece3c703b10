"""The PNG of `statmux plan --sweep-gpus`: predicted SLO attainment against GPU count."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: write PNG files only
import matplotlib.pyplot as plt


def plot_sweep(
    title: str, gpus: list[int], series: dict[str, list[float | None]], path: str | Path
) -> None:
    """One line per series (statmux first, then the baselines computed at each count)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for name, values in series.items():
        points = [(g, 100 * v) for g, v in zip(gpus, values, strict=True) if v is not None]
        ax.plot(
            [g for g, _ in points],
            [v for _, v in points],
            marker="o",
            label=name,
            linewidth=2 if name == "statmux" else 1,
        )
    ax.set_xlabel("GPUs")
    ax.set_ylabel("predicted SLO attainment (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
