"""Stage `geometry`: feature dimensionality, polytopes and circles of the Squeezer's weights.

Analyses the encoder rows (W_enc) and decoder columns (W_dec^T) separately, for the trained
Squeezer and two nulls: the untrained Squeezer (the same config and seed, i.e. its exact initial
weights) and a Squeezer trained on permuted features (each column permuted across rows:
frequencies kept, co-occurrence gone). See `neural_codec.analysis.geometry` for the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neural_codec import nulls, paths, storage
from neural_codec.analysis import geometry as geo
from neural_codec.analysis import geometry_plots
from neural_codec.config import GeometryConfig, SqueezerConfig
from neural_codec.errors import check
from neural_codec.params import require_inputs
from neural_codec.runtime import resolve_device
from neural_codec.squeezer.checkpoint import load_squeezer
from neural_codec.squeezer.model import Squeezer, resolve_importance
from neural_codec.squeezer.train import train_squeezer

KINDS = ("trained", "untrained", "permuted")
PARTS = ("encoder", "decoder")


def weights_of(model: Squeezer) -> dict[str, np.ndarray]:
    """Rows = features: encoder rows W_enc, decoder columns W_dec^T, of the **balanced** weights
    (`neural_codec.squeezer.model.balance_neurons`: each neuron rescaled so its encoder column
    and decoder row have equal norm).

    Why balanced: an untied ReLU codec's function is unchanged by neuron j's encoder column x c_j,
    b_enc_j x c_j, decoder row / c_j, but D_i, the norm cut and the interference graph of the raw
    rows are not (rescaling moved D* from 0.30 to 0.10). Balancing maps every rescaled copy to
    the same weights, so every statistic becomes invariant; it keeps the M-dimensional neuron
    space (so D_i, lines and polytopes keep their TMS meaning) and leaves a tied codec (TMS's
    model, W_dec = W_enc^T) exactly as it is. The effective n x n map W_enc diag(s) W_dec would
    also be invariant but has no per-feature vectors in neuron space to take D_i of.
    """
    E, D = model.balanced_weights()
    return {"encoder": E, "decoder": D.T.copy()}


def check_families(families: Any, n_features: int) -> list[dict[str, Any]]:
    where = str(paths.FAMILIES)
    check(isinstance(families, list), where, type(families).__name__, "a JSON list of families")
    for f in families:
        check(
            isinstance(f, dict) and "members" in f and "kind" in f,
            where,
            f,
            'objects with "name", "kind" and "members"',
        )
        bad = [m for m in f["members"] if not (isinstance(m, int) and 0 <= m < n_features)]
        check(
            not bad, f"{where}: family {f.get('name')!r} members", bad, f"latent indices in [0, {n_features})"
        )
        mw = f.get("member_weights")  # a cluster family (source.lm.clusters): members x cluster latents
        check(
            mw is None or all(len(row) == len(f["members"]) for row in mw),
            f"{where}: family {f.get('name')!r} member_weights",
            "rows of other lengths",
            f"one row per member point, {len(f['members'])} weights each (one per cluster latent)",
        )
    return families


@dataclass
class GeometryRun:
    metrics: dict[str, Any]
    results: dict[str, dict[str, Any]]  # "<kind>_<part>" -> analyse_weights result (with plot data)
    weights: dict[str, dict[str, np.ndarray]]  # kind -> part -> rows-are-features weights
    families: list[dict[str, Any]]


def run(cfg: GeometryConfig, sq_cfg: SqueezerConfig) -> GeometryRun:
    resolve_device(cfg.device, "geometry.device")  # a missing GPU fails here, before work
    train_dir = paths.FEATURES / "train"
    require_inputs(paths.SQUEEZER, paths.FAMILIES, train_dir / "meta.json", paths.FIRING_FREQ)
    model = load_squeezer(paths.SQUEEZER)
    meta = storage.read_meta(train_dir)
    n = int(meta["n_features"])
    check(
        model.n_features == n,
        f"{paths.SQUEEZER} n_features",
        model.n_features,
        f"n_features = {n} of {train_dir} (re-run the squeeze stage)",
    )
    check(
        model.M == sq_cfg.M and model.tied == sq_cfg.tied,
        f"{paths.SQUEEZER} (M, tied)",
        (model.M, model.tied),
        f"squeezer.M, squeezer.tied = {(sq_cfg.M, sq_cfg.tied)} (re-run the squeeze stage)",
    )
    families = check_families(storage.read_json(paths.FAMILIES), n)

    # Latents that never fire on train never get a gradient: their rows stay at the random init
    # and would enter every statistic as random directions. Only firing latents are analysed.
    firing_freq = np.load(paths.FIRING_FREQ)
    alive = (firing_freq > 0).astype(np.float64)[:, None]

    def alive_weights(m: Squeezer) -> dict[str, np.ndarray]:
        return {part: W * alive for part, W in weights_of(m).items()}

    weights = {
        "trained": alive_weights(model),
        "untrained": alive_weights(nulls.untrained_squeezer(n, sq_cfg)),
    }
    # The permuted null: same config, permuted features (the first null_rows train rows).
    permuted = nulls.permute_feature_columns(
        storage.read_first_rows(train_dir, min(cfg.null_rows, int(meta["n_rows"]))), cfg.seed
    )
    steps = cfg.null_steps or sq_cfg.n_steps(int(meta["n_rows"]))
    # importance as the squeeze stage resolves it (column permutation keeps the frequencies)
    importance = resolve_importance(sq_cfg, n, firing_freq if sq_cfg.importance == "frequency" else None)
    null_cfg = nulls.retrain_config(sq_cfg, steps=steps, device=cfg.device)
    null_model, curve = train_squeezer(permuted, null_cfg, importance, n, desc="permuted null")
    weights["permuted"] = alive_weights(null_model)

    results = {f"{k}_{p}": geo.analyse_weights(weights[k][p], families, cfg) for k in KINDS for p in PARTS}
    metrics: dict[str, Any] = {k: {p: geo.public(results[f"{k}_{p}"]) for p in PARTS} for k in KINDS}
    metrics["n_firing_latents_analysed"] = int(alive.sum())
    metrics["permuted_training"] = {
        "rows": len(permuted),
        "max_row_nnz": permuted.k,
        "steps": steps,
        "final_loss": curve[-1]["loss"] if curve else None,
    }
    return GeometryRun(metrics, results, weights, families)


def write(r: GeometryRun, cfg: GeometryConfig) -> None:
    plot_dir = paths.plot_dir("geometry")
    header, rows = geo.histogram_table(r.results, cfg.hist_bins)
    storage.write_csv(plot_dir / "dimensionality_hist.csv", header, rows)
    geometry_plots.plot_dimensionality(
        plot_dir / "dimensionality_hist.png", r.results, cfg.fractions, cfg.hist_bins
    )
    trained = {k: v for k, v in r.results.items() if k.startswith("trained_")}
    flat_w = {f"trained_{p}": W for p, W in r.weights["trained"].items()}
    geometry_plots.plot_polytopes(plot_dir / "polytopes.png", trained, flat_w, cfg.max_plot_polytopes)
    geometry_plots.plot_circles(plot_dir / "circles.png", flat_w, r.families, trained)
    # a polytope line whose flanks hold no features has no enrichment ratio: null, said on stderr
    storage.write_json(
        paths.metrics_file("geometry"),
        r.metrics,
        missing_ok="no features in a line's flanks",
        where="*.lines.*",
    )


def summary(m: dict[str, Any]) -> str:
    def one(r: dict[str, Any]) -> str:
        poly = {k: v for k, v in r["polytopes"].items() if v and k != "isolated"}
        lines = [k for k, v in r["lines"].items() if v["is_line"]]
        circ = {k: round(v["circular_corr"], 2) for k, v in r["circles"].items()}
        return f"D*={r['D_star']:.3g} mean_D={r['mean_D']:.3g} lines={lines} polytopes={poly} circles={circ}"

    return "\n".join(
        f"geometry {k} {p}: {one(m[k][p])}" for k in KINDS for p in PARTS if k == "trained" or p == "encoder"
    )
