"""Figures of the TMS reproduction: D* and the D_i scatter against 1/(1-S) (TMS's Figure of
the uniform sweep), and each model's pentagon-setting features in the plane."""

from __future__ import annotations

from typing import Any

import numpy as np

from neural_codec.config import parse_fraction
from neural_codec.plotting import pyplot, save_png


def plot_dstar(path, sweep: list[dict[str, Any]], fractions: list[str]) -> None:
    """One panel per model: every represented feature's D_i (dots) and D* = m / ||W||_F^2 (line)
    against 1 / (1 - S) (log), the polytope fractions dotted; TMS's sticky plateau is D* = 1/2."""
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in sweep)) or ["(none)"]
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        rows = sorted((r for r in sweep if r["model"] == model), key=lambda r: -r["density"])
        for f in fractions:
            ax.axhline(parse_fraction(f), color="0.85", lw=0.8, ls=":")
        x = [1.0 / r["density"] for r in rows]
        for xi, r in zip(x, rows, strict=True):
            D = np.asarray(r["D"], dtype=float)
            jitter = xi * (1 + 0.04 * np.random.default_rng(0).standard_normal(len(D)))
            ax.scatter(jitter, D, s=6, alpha=0.5, color="C0")
        ax.plot(x, [r["D_star"] for r in rows], color="C3", lw=1.5, marker="o", ms=3, label="D*")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("1 / (1 - S)")
        ax.set_title(model, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("D_i (dots), D* (line)")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_png(fig, path)


def plot_pentagons(path, weights: dict[str, np.ndarray]) -> None:
    """Each model's feature vectors (rows of W, m = 2) in the hidden plane, seed 0."""
    plt = pyplot()
    names = list(weights) or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names), 2.9), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        W = np.asarray(weights.get(name, np.zeros((0, 2))), dtype=float)
        if W.ndim == 2 and W.shape[1] >= 2:
            for i, (x, y) in enumerate(W[:, :2]):
                ax.plot([0, x], [0, y], color=f"C{i % 10}", lw=1.5)
                ax.scatter([x], [y], color=f"C{i % 10}", s=12)
            lim = max(float(np.abs(W[:, :2]).max()), 1e-9) * 1.15
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    save_png(fig, path)
