"""Figure of the compare stage: candidate-vs-model correlation matrices in matched order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neural_codec.analysis.compare import NeuronComparison, matched_order
from neural_codec.plotting import pyplot, save_png


def plot_matrices(path: Path, panels: list[tuple[str, NeuronComparison]], max_n: int) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (name, comp) in zip(axes[0], panels, strict=False):
        ro, co = matched_order(comp.corr, comp.matching)
        k = min(max_n, len(comp.matching.rows))
        im = ax.imshow(
            comp.corr[np.ix_(ro[:k], co[:k])],
            cmap="RdBu_r",
            vmin=-1,
            vmax=1,
            interpolation="nearest",
            aspect="auto",
        )
        m = comp.metrics
        ax.set_title(
            f"{name}\nHungarian mean |r| = {m['hungarian_mean_r']:.3f}, CKA = {m['cka']:.3f}", fontsize=9
        )
        ax.set_xlabel(f"model neuron (matched order, first {k})")
        ax.set_ylabel(f"synthetic neuron (by matched |r|, first {k})")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="Pearson r")
    save_png(fig, path)


def plot_predictability(path: Path, per_neuron: dict[str, np.ndarray]) -> None:
    """Histogram of held-out R^2 per model neuron for each readout (features, floors, ceiling)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = {k: v[np.isfinite(v)] for k, v in per_neuron.items()}
    lo = min([0.0] + [float(v.min()) for v in finite.values() if len(v)])
    bins = np.linspace(max(lo, -1.0), 1.0, 41)
    for name, v in finite.items():
        if len(v):
            ax.hist(np.clip(v, bins[0], 1.0), bins=bins, histtype="step", lw=1.6,
                    label=f"{name} (mean {v.mean():.3f})")  # fmt: skip
    ax.set_xlabel("held-out R² of ReLU(w·x + b) per model neuron")
    ax.set_ylabel("model neurons")
    ax.set_title("Neuron predictability: from SAE features F, floors and the dense ceiling", fontsize=9)
    ax.legend(fontsize=8)
    save_png(fig, path)
