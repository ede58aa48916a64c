"""Figure of the logic stage: log2-lift histograms of neuron-sharing pairs against their
frequency-matched controls, same-sign and opposite-sign side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neural_codec.analysis.logic import LIFT_BIN_EDGES
from neural_codec.plotting import pyplot, save_png


def plot_lifts(path: Path, lifts: dict[str, np.ndarray], metrics: dict[str, Any]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, g in zip(axes, ("same_sign", "opposite_sign"), strict=False):
        for kind, color in (("shared", "C3"), ("control", "C0")):
            x = lifts[f"{kind}_{g}"]
            if len(x):
                lx = np.clip(np.log2(np.maximum(x, 1e-300)), LIFT_BIN_EDGES[0], LIFT_BIN_EDGES[-1] - 1e-9)
                ax.hist(
                    lx,
                    bins=LIFT_BIN_EDGES,
                    density=True,
                    histtype="step",
                    color=color,
                    label=f"{kind} (n={len(x)})",
                )
        ax.axvline(0.0, color="k", lw=0.8, ls=":")
        m = metrics[g]
        d = m["cliffs_delta"]
        ax.set_title(
            f"{g}: {m['verdict']}\nCliff's delta={d:.3f}, p={m['p_value']:.2g}" if d is not None else g,
            fontsize=9,
        )
        ax.set_xlabel("log2 lift = log2 P(i,j)/(P(i)P(j))  (clipped to [-6, 6])")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel("density")
    fig.tight_layout()
    save_png(fig, path)
