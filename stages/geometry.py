"""Stage `geometry`: feature dimensionality, polytopes and circles of the Squeezer's weights.

Reads data/squeeze/squeezer.pt, data/sae/families.json and data/features/train (+
firing_freq.npy when squeezer.importance is "frequency") for the permuted null; params
sections `geometry` and `squeezer`. Analyses the encoder rows (W_enc)
and decoder columns (W_dec^T) separately, and the same for two nulls: the untrained Squeezer
(the same config and seed, i.e. its exact initial weights) and a Squeezer trained on features
whose columns were permuted independently across rows (frequencies kept, co-occurrence gone).
Writes metrics/geometry.json, plots/geometry/dimensionality_hist.{csv,png},
plots/geometry/polytopes.png and plots/geometry/circles.png. See neural_codec.geometry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import geometry as geo
from neural_codec import storage
from neural_codec.config import GeometryConfig, SqueezerConfig
from neural_codec.errors import check
from neural_codec.params import load_section, require_inputs
from neural_codec.squeezer import Squeezer, load_squeezer, resolve_importance, train_squeezer

SQUEEZER = Path("data/squeeze/squeezer.pt")
FAMILIES = Path("data/sae/families.json")
TRAIN = Path("data/features/train")
FIRING_FREQ = Path("data/features/firing_freq.npy")
METRICS = Path("metrics/geometry.json")
PLOT_DIR = Path("plots/geometry")


def weights_of(model: Squeezer) -> dict[str, np.ndarray]:
    """Rows = features: encoder rows W_enc, decoder columns W_dec^T."""
    with torch.no_grad():
        return {
            "encoder": model.W_enc.detach().double().numpy().copy(),
            "decoder": model.W_dec.detach().T.double().numpy().copy(),
        }


def untrained_squeezer(n_features: int, cfg: SqueezerConfig) -> Squeezer:
    """The Squeezer before its first step: `train_squeezer` seeds a generator with cfg.seed
    and draws the init from it first, so this reproduces the trained model's start exactly."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return Squeezer(n_features, cfg.M, cfg.tied, cfg.init, generator=gen)


def first_rows(directory: Path, n_rows: int) -> storage.SparseFeatures:
    """The first `n_rows` rows of a sparse split (streamed, memory ~ n_rows)."""
    parts = []
    got = 0
    for b in storage.iter_sparse(directory, min(n_rows, 65536)):
        parts.append(b[: n_rows - got])
        got += len(parts[-1])
        if got >= n_rows:
            break
    return storage.SparseFeatures(
        np.concatenate([p.idx for p in parts]), np.concatenate([p.val for p in parts]), parts[0].n_features
    )


def check_families(families: Any, n_features: int) -> list[dict[str, Any]]:
    check(isinstance(families, list), str(FAMILIES), type(families).__name__, "a JSON list of families")
    for f in families:
        check(
            isinstance(f, dict) and "members" in f and "kind" in f,
            str(FAMILIES),
            f,
            'objects with "name", "kind" and "members"',
        )
        bad = [m for m in f["members"] if not (isinstance(m, int) and 0 <= m < n_features)]
        check(
            not bad,
            f"{FAMILIES}: family {f.get('name')!r} members",
            bad,
            f"latent indices in [0, {n_features})",
        )
    return families


def main() -> dict[str, Any]:
    cfg = load_section(GeometryConfig, "geometry")
    sq_cfg = load_section(SqueezerConfig, "squeezer")
    require_inputs(SQUEEZER, FAMILIES, TRAIN / "meta.json", FIRING_FREQ)

    model = load_squeezer(SQUEEZER)
    meta = storage.read_meta(TRAIN)
    n = int(meta["n_features"])
    check(
        model.n_features == n,
        f"{SQUEEZER} n_features",
        model.n_features,
        f"n_features = {n} of {TRAIN} (re-run the squeeze stage)",
    )
    check(
        model.M == sq_cfg.M and model.tied == sq_cfg.tied,
        f"{SQUEEZER} (M, tied)",
        (model.M, model.tied),
        f"squeezer.M, squeezer.tied = {(sq_cfg.M, sq_cfg.tied)} (re-run the squeeze stage)",
    )
    families = check_families(storage.read_json(FAMILIES), n)

    # Latents that never fire on train never get a gradient: their rows stay at the random init
    # and would enter every statistic as random directions. Only firing latents are analysed.
    firing_freq = np.load(FIRING_FREQ)
    alive = (firing_freq > 0).astype(np.float64)[:, None]

    def alive_weights(m: Squeezer) -> dict[str, np.ndarray]:
        return {part: W * alive for part, W in weights_of(m).items()}

    weights: dict[str, dict[str, np.ndarray]] = {
        "trained": alive_weights(model),
        "untrained": alive_weights(untrained_squeezer(n, sq_cfg)),
    }
    # The permuted null: same config, column-shuffled features (first null_rows train rows).
    train = first_rows(TRAIN, min(cfg.null_rows, int(meta["n_rows"])))
    permuted = geo.permute_feature_columns(train, cfg.seed)
    steps = cfg.null_steps or sq_cfg.n_steps(int(meta["n_rows"]))
    null_cfg = dataclasses.replace(sq_cfg, steps=steps, epochs=0.0)
    # importance as the squeeze stage resolves it (column permutation keeps the frequencies)
    importance = resolve_importance(sq_cfg, n, firing_freq if sq_cfg.importance == "frequency" else None)
    null_model, curve = train_squeezer(permuted, null_cfg, importance, n)
    weights["permuted"] = alive_weights(null_model)

    results = {
        f"{kind}_{part}": geo.analyse(W, families, cfg)
        for kind, ws in weights.items()
        for part, W in ws.items()
    }
    metrics: dict[str, Any] = {
        "encoder": geo.public(results["trained_encoder"]),
        "decoder": geo.public(results["trained_decoder"]),
        "null_untrained": {p: geo.public(results[f"untrained_{p}"]) for p in ("encoder", "decoder")},
        "null_permuted": {p: geo.public(results[f"permuted_{p}"]) for p in ("encoder", "decoder")},
        "n_firing_latents_analysed": int(alive.sum()),
        "null_permuted_training": {
            "rows": len(permuted),
            "max_row_nnz": permuted.k,
            "steps": steps,
            "final_loss": curve[-1]["loss"] if curve else None,
        },
    }

    bins = cfg.hist_bins
    header, rows = geo.histogram_table(results, bins)
    storage.write_csv(PLOT_DIR / "dimensionality_hist.csv", header, rows)
    geo.plot_dimensionality(PLOT_DIR / "dimensionality_hist.png", results, cfg.fractions, bins)
    trained = {k: v for k, v in results.items() if k.startswith("trained_")}
    flat_w = {f"trained_{p}": W for p, W in weights["trained"].items()}
    geo.plot_polytopes(PLOT_DIR / "polytopes.png", trained, flat_w, cfg.max_plot_polytopes)
    geo.plot_circles(PLOT_DIR / "circles.png", flat_w, families, trained)
    storage.write_json(METRICS, metrics)
    return metrics


def summary(m: dict[str, Any]) -> str:
    def one(r: dict[str, Any]) -> str:
        poly = {k: v for k, v in r["polytopes"].items() if v and k != "isolated"}
        lines = [k for k, v in r["lines"].items() if v["is_line"]]
        circ = {k: round(v["circular_corr"], 2) for k, v in r["circles"].items()}
        return f"D*={r['D_star']:.3g} mean_D={r['mean_D']:.3g} lines={lines} polytopes={poly} circles={circ}"

    return "\n".join(
        [f"geometry encoder: {one(m['encoder'])}", f"geometry decoder: {one(m['decoder'])}"]
        + [f"geometry {k} encoder: {one(m[k]['encoder'])}" for k in ("null_untrained", "null_permuted")]
    )


if __name__ == "__main__":
    from neural_codec.stage import run

    run("geometry", lambda: print(summary(main())))
