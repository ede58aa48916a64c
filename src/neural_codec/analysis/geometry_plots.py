"""Figures of the geometry stage: D_i histograms against the polytope fractions, the polytopes
found (projected to 2-D), and the cyclic families' circles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neural_codec.analysis.geometry import circle_family, family_points, is_circle_family, top2_projection
from neural_codec.config import parse_fraction
from neural_codec.plotting import pyplot, save_png


def plot_dimensionality(
    path,
    results: dict[str, dict[str, Any]],
    fractions: list[str],
    bins: int,
    parts: tuple[str, ...] = ("encoder", "decoder"),
    main: str = "trained",
) -> None:
    """One panel per part: the histogram of `results[f"{main}_{part}"]`'s represented D values,
    every other `results[f"{kind}_{part}"]` (the nulls) as outlines rescaled to the same count,
    and the fractions marked (red, solid and starred where the line test finds a line)."""
    plt = pyplot()
    from matplotlib.transforms import blended_transform_factory

    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=False):
        r = results[f"{main}_{part}"]
        Dr = r["_D"][r["_mask"]]
        ax.hist(Dr, bins=bins, range=(0, 1), color="C0", alpha=0.8, label=f"{main} (n={len(Dr)})")
        nulls = [k for k in results if k.endswith(f"_{part}") and k != f"{main}_{part}"]
        for j, key in enumerate(nulls):
            Do = results[key]["_D"][results[key]["_mask"]]
            w = np.full(len(Do), len(Dr) / max(len(Do), 1))
            ax.hist(
                Do,
                bins=bins,
                range=(0, 1),
                weights=w,
                histtype="step",
                color=f"C{j + 1}",
                label=f"{key.removesuffix('_' + part)} null (n={len(Do)}, rescaled)",
            )
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        for i, f in enumerate(sorted(fractions, key=parse_fraction)):
            x = parse_fraction(f)
            is_line = r["lines"][f]["is_line"]
            ax.axvline(x, color="C3" if is_line else "0.5", ls="-" if is_line else ":", lw=1)
            ax.text(
                x,
                1.005 + 0.045 * (i % 2),
                f + ("*" if is_line else ""),
                transform=tr,
                ha="center",
                va="bottom",
                fontsize=8,
                color="C3" if is_line else "0.3",
            )
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("feature dimensionality D_i (represented features)")
        ax.set_ylabel("features")
        ax.set_title(f"{main} {part}: D*={r['D_star']:.3g}, lines (*) = {r['n_lines']}", fontsize=10, pad=22)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_png(fig, path)


def _project_origin(X: np.ndarray) -> np.ndarray:
    """Top-2 uncentred principal directions (polytopes are centred on the origin)."""
    _, _, Vt = np.linalg.svd(X, full_matrices=False)
    P = X @ Vt[:2].T
    return np.pad(P, ((0, 0), (0, 2 - P.shape[1]))) if P.shape[1] < 2 else P


def plot_polytopes(
    path, results: dict[str, dict[str, Any]], weights: dict[str, np.ndarray], max_plots: int
) -> None:
    """Each detected polytope (then small unmatched components) projected on its top-2 PCs."""
    plt = pyplot()
    items = []
    for name, r in results.items():
        for p in r["_poly"].polytopes:
            if p.kind != "other" or len(p.members) <= 8:
                items.append((p.kind == "other", len(p.members), name, p))
    items.sort(key=lambda t: (t[0], t[1]))
    items = items[:max_plots]
    ncol = min(4, max(len(items), 1))
    nrow = max(1, -(-len(items) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if not items:
        axes[0, 0].text(
            0.5,
            0.5,
            "no polytopes (interference components\nof size >= 2) found",
            ha="center",
            va="center",
            transform=axes[0, 0].transAxes,
        )
    for ax, (_, _, name, p) in zip(axes.ravel(), items, strict=False):
        ax.set_axis_on()
        P = _project_origin(np.asarray(weights[name], dtype=np.float64)[p.members])
        for (x, y), m in zip(P, p.members, strict=False):
            ax.plot([0, x], [0, y], color="C0", lw=1)
            ax.annotate(str(int(m)), (x, y), fontsize=7)
        ax.scatter(P[:, 0], P[:, 1], color="C3", s=15, zorder=3)
        lim = 1.25 * max(np.abs(P).max(), 1e-12)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        label = p.kind if p.kind != "other" else f"other (closest {p.best})" if p.best else "other"
        ax.set_title(f"{name}: {label}\nk={len(p.members)}, err={p.error:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    save_png(fig, path)


def plot_circles(
    path, weights: dict[str, np.ndarray], families: list[dict[str, Any]], results: dict[str, dict[str, Any]]
) -> None:
    """Each cyclic family (columns) for each weight matrix (rows) in its top-2 PCs; points
    labelled by the family's labels (or cyclic position) and joined in the true order; the
    closing segment (last -> first) is drawn only when the circle is closed (`closed`), so an
    open arc does not look closed."""
    plt = pyplot()
    fams = [c for c in map(circle_family, families) if is_circle_family(c)]
    names = list(weights)
    ncol = max(len(fams), 1)
    fig, axes = plt.subplots(len(names), ncol, figsize=(3.6 * ncol, 3.4 * len(names)), squeeze=False)
    if not fams:
        for ax in axes.ravel():
            ax.set_axis_off()
        axes[0, 0].text(
            0.5, 0.5, "no cyclic families", ha="center", va="center", transform=axes[0, 0].transAxes
        )
    for i, wname in enumerate(names):
        for j, fam in enumerate(fams):
            ax = axes[i, j]
            P = top2_projection(family_points(np.asarray(weights[wname]), fam))
            labels = fam.get("labels") or [str(k) for k in range(len(P))]
            st = results[wname]["circles"].get(str(fam.get("name")), {})
            path_pts = np.vstack([P, P[:1]]) if st.get("closed", False) else P
            ax.plot(path_pts[:, 0], path_pts[:, 1], color="0.7", lw=0.8)
            ax.scatter(P[:, 0], P[:, 1], c=np.arange(len(P)), cmap="hsv", s=25, zorder=3)
            for (x, y), lab in zip(P, labels, strict=False):
                ax.annotate(str(lab), (x, y), fontsize=7)
            ax.set_title(
                f"{wname}: {fam.get('name')}\ncorr={st.get('circular_corr', float('nan')):.2f} "
                f"gap={st.get('max_gap_ratio', float('nan')):.2f} p={st.get('p_value', float('nan')):.3g}",
                fontsize=8,
            )
            ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    save_png(fig, path)
