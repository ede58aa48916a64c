"""Stage `compare`: do the Squeezer's synthetic neurons fire like the model's neurons?

Compares, on the same held-out inputs, the main Squeezer's neurons with the original model's
neurons (correlation matrix, best |r|, Hungarian matching, CKA, SVCCA) and the Squeezer's
feature-interference Gram with the model's (Mantel test), each beside
  floors:   an untrained Squeezer (the main one's initial weights) and a Squeezer trained on
            shuffled features (each feature column permuted across rows: same marginals, no
            co-occurrence structure);
  ceilings: a second Squeezer seed (vs the model, and vs the main Squeezer) and, for the
            synthetic source, the model's own second seed (model neurons vs seed-2 neurons).
The retrained Squeezers use the config stored in squeezer.pt (what produced the main Squeezer),
with `compare.retrain_steps` optionally overriding the number of steps.

Writes metrics/compare.json, plots/compare/matched_r.csv and plots/compare/correlation_matrix.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from neural_codec import compare as cmp
from neural_codec import storage
from neural_codec.config import CompareConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict, load_params, load_section, require_inputs
from neural_codec.sae import load_sae

SQUEEZER = Path("data/squeeze/squeezer.pt")
HELDOUT_NEURONS = Path("data/squeeze/heldout_neurons.npy")
ACTIVATIONS = Path("data/activations")
READIN = ACTIVATIONS / "neuron_readin.npy"
SAE_DIR = Path("data/sae")
FEATURES = Path("data/features")
FIRING_FREQ = FEATURES / "firing_freq.npy"
MODEL_SEED2 = Path("data/source/model_seed2.pt")  # synthetic only; optional
METRICS = Path("metrics/compare.json")
PLOT_DIR = Path("plots/compare")

MODEL = "model"  # the reference population's name


def squeezer_config(model: Any) -> Any:
    """The config that produced squeezer.pt; the `squeezer` params section if it holds none."""
    from neural_codec.config import SqueezerConfig

    stored = getattr(model, "config", None)
    if isinstance(stored, dict) and stored:
        known = {f.name for f in dataclasses.fields(SqueezerConfig)}
        return from_dict(SqueezerConfig, {k: v for k, v in stored.items() if k in known}, "squeezer")
    return from_dict(SqueezerConfig, load_params().get("squeezer"), "squeezer")


def activation_keys(directory: Path) -> set[str]:
    first = storage.shard_paths(directory)[0]
    with np.load(first) as z:
        return set(z.files)


def sae_decoder_weights(path: Path) -> np.ndarray:
    """W_dec (d_sae, d_in) of the SAELens SAE on disk."""
    sae = load_sae(path)
    return sae.W_dec.detach().float().cpu().numpy()


def seed2_readin(path: Path) -> np.ndarray | None:
    """W_in (d_model, n_neurons) of the synthetic source's second seed, if it exists."""
    if not path.exists():
        return None
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=False)
    sd = blob.get("state_dict", {}) if isinstance(blob, dict) else {}
    w = sd.get("W_in")
    return None if w is None else w.detach().float().cpu().numpy()


def stream_moments(
    pairs: dict[str, tuple[str, str]],
    arrays: dict[str, np.ndarray],
    batch_size: int,
    act_keys: list[str],
) -> dict[str, cmp.CrossMoments]:
    """One pass over the held-out activations, updating CrossMoments for every (a, b) pair.

    Populations named in `act_keys` are streamed from data/activations/heldout (model neurons);
    the others are in-memory (N, M) arrays of synthetic neurons, sliced to the same rows.
    """
    dims = dict(storage.read_meta(ACTIVATIONS / "heldout"))
    width = {k: a.shape[1] for k, a in arrays.items()}
    first = next(storage.iter_shards(ACTIVATIONS / "heldout", act_keys))
    width.update({k: first[k].shape[1] for k in act_keys})
    used = sorted({x for pair in pairs.values() for x in pair})
    pop = {k: cmp.Moments(width[k]) for k in used}  # shared: each population's X^T X once
    mom = {name: cmp.CrossMoments(width[a], width[b], ma=pop[a], mb=pop[b]) for name, (a, b) in pairs.items()}
    start = 0
    for batch in storage.iter_batches(ACTIVATIONS / "heldout", batch_size, act_keys):
        n = len(batch[act_keys[0]])
        rows = {k: np.asarray(batch[k], dtype=np.float32) for k in act_keys}
        rows.update({k: a[start : start + n] for k, a in arrays.items()})
        shifted = {k: pop[k].update(rows[k]) for k in used}
        for name, (a, b) in pairs.items():
            mom[name].update_cross(shifted[a], shifted[b])
        start += n
    if start != dims["n_rows"]:
        raise ParamError(f"read {start} held-out activation rows, meta.json says {dims['n_rows']}")
    return mom


def plot_matrices(path: Path, panels: list[tuple[str, cmp.NeuronComparison]], max_n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (name, comp) in zip(axes[0], panels, strict=False):
        ro, co = cmp.matched_order(comp.corr, comp.matching)
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
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> int:

    from neural_codec.squeezer import (
        load_squeezer,
        neuron_activations,
        resolve_importance,
        train_squeezer,
    )

    cfg = load_section(CompareConfig, "compare")
    require_inputs(
        SQUEEZER,
        HELDOUT_NEURONS,
        ACTIVATIONS / "heldout",
        READIN,
        SAE_DIR,
        FEATURES / "train",
        FEATURES / "heldout",
        FIRING_FREQ,
    )

    main_sq = load_squeezer(SQUEEZER)
    sq_cfg = squeezer_config(main_sq)
    n_features = main_sq.n_features
    heldout = storage.load_sparse(FEATURES / "heldout")
    h_main = np.load(HELDOUT_NEURONS, mmap_mode="r")
    n_act = int(storage.read_meta(ACTIVATIONS / "heldout")["n_rows"])
    if not (len(heldout) == len(h_main) == n_act):
        raise ParamError(
            f"held-out rows differ: features {len(heldout)}, squeezer neurons "
            f"{len(h_main)}, activations {n_act}; re-run `dvc repro`"
        )
    if heldout.n_features != n_features:
        raise ParamError(f"features have {heldout.n_features} latents, the Squeezer {n_features}")
    keys = activation_keys(ACTIVATIONS / "heldout")
    if "neurons" not in keys:
        raise ParamError(f"{ACTIVATIONS / 'heldout'} holds no `neurons`: re-run the activations stage")
    has_seed2 = cfg.ceiling_model_seed2 and "neurons_seed2" in keys

    # --- candidate populations (synthetic neurons on the held-out features) -----------------
    arrays: dict[str, np.ndarray] = {"squeezer": np.asarray(h_main, dtype=np.float32)}
    weights: dict[str, np.ndarray] = {"squeezer": main_sq.W_enc.detach().numpy()}
    if cfg.floor_untrained:
        un = cmp.untrained_squeezer(n_features, sq_cfg)
        arrays["untrained"] = neuron_activations(un, heldout, cfg.batch_size)
        weights["untrained"] = un.W_enc.detach().numpy()
    if cfg.floor_shuffled or cfg.ceiling_squeezer_seed2:
        train = storage.load_sparse(FEATURES / "train")
        imp = resolve_importance(sq_cfg, n_features, train.firing_frequency())
        if cfg.floor_shuffled:
            shuffled = cmp.shuffle_feature_columns(train, cfg.seed)
            sh, _ = train_squeezer(
                shuffled, cmp.retrain_config(sq_cfg, steps=cfg.retrain_steps), imp, n_features
            )
            arrays["shuffled"] = neuron_activations(sh, heldout, cfg.batch_size)
            weights["shuffled"] = sh.W_enc.detach().numpy()
            del shuffled
        if cfg.ceiling_squeezer_seed2:
            s2_cfg = cmp.retrain_config(sq_cfg, seed=sq_cfg.seed + 1, steps=cfg.retrain_steps)
            s2, _ = train_squeezer(train, s2_cfg, imp, n_features)
            arrays["squeezer_seed2"] = neuron_activations(s2, heldout, cfg.batch_size)
            weights["squeezer_seed2"] = s2.W_enc.detach().numpy()
        del train

    # --- neuron-level comparisons (one streaming pass) ----------------------------------------
    conditions: dict[str, tuple[str, str]] = {"squeezer_vs_model": ("squeezer", "neurons")}
    if "untrained" in arrays:
        conditions["floor_untrained"] = ("untrained", "neurons")
    if "shuffled" in arrays:
        conditions["floor_shuffled"] = ("shuffled", "neurons")
    if "squeezer_seed2" in arrays:
        conditions["ceiling_squeezer_seed2_vs_model"] = ("squeezer_seed2", "neurons")
        conditions["ceiling_squeezer_vs_seed2"] = ("squeezer_seed2", "squeezer")
    if has_seed2:
        conditions["ceiling_model_vs_model_seed2"] = ("neurons_seed2", "neurons")
    act_keys = ["neurons"] + (["neurons_seed2"] if has_seed2 else [])
    mom = stream_moments(conditions, arrays, cfg.batch_size, act_keys)
    comps = {name: cmp.compare_populations(m, cfg.svcca_keep) for name, m in mom.items()}

    # --- feature-interference structure ---------------------------------------------------------
    readin = np.load(READIN)
    W_sae = sae_decoder_weights(SAE_DIR)
    if W_sae.shape[0] != n_features:
        raise ParamError(f"SAE has {W_sae.shape[0]} latents, the Squeezer {n_features}")
    loadings = cmp.model_feature_loadings(W_sae, readin)
    alive = np.load(FIRING_FREQ) > 0
    # a weight criterion (no held-out gains here): the Squeezer's rows for the feature have
    # sqrt(||enc_i|| ||dec_i||) > 0.5; not `features_represented` of metrics/squeeze.json
    represented = main_sq.feature_gain() > 0.5
    loaded = np.linalg.norm(loadings, axis=1) > 0
    feats = cmp.select_features([alive, represented, loaded], cfg.max_features_for_mantel, cfg.seed)
    grams = {name: cmp.squeezer_feature_gram(w, feats) for name, w in weights.items()}
    grams["neurons"] = cmp.normalized_gram(loadings[feats])
    if has_seed2:
        r2 = seed2_readin(MODEL_SEED2)
        if r2 is not None and r2.shape == readin.shape:
            grams["neurons_seed2"] = cmp.model_feature_gram(W_sae, r2, feats)
    for name, (a, b) in conditions.items():
        if len(feats) >= 3 and a in grams and b in grams:
            comps[name].metrics.update(
                cmp.interference(grams[a], grams[b], cfg.n_mantel_permutations, cfg.seed)
            )
        else:
            comps[name].metrics.update({"interference_mantel_r": None, "interference_mantel_p": None})

    # --- outputs -----------------------------------------------------------------------------
    metrics: dict[str, Any] = {name: c.metrics for name, c in comps.items()}
    metrics["interference_features"] = {
        "n_alive": int(alive.sum()),
        "n_represented": int((alive & represented).sum()),
        "n_used": int(len(feats)),
        "n_permutations": cfg.n_mantel_permutations,
    }
    if len(feats) >= 3:
        # How much of the model's interference is simply the residual-stream geometry of the
        # SAE's decoder directions (which any model reading that stream inherits, and the
        # Squeezer, reading features directly, does not): a context figure for the Mantel rows.
        res = cmp.mantel(
            cmp.normalized_gram(W_sae[feats]), grams["neurons"], cfg.n_mantel_permutations, cfg.seed
        )
        metrics["interference_features"]["model_vs_sae_decoder_geometry_r"] = res.r
        metrics["interference_features"]["model_vs_sae_decoder_geometry_p"] = res.p
    metrics["n_heldout_rows"] = n_act
    storage.write_json(METRICS, metrics)

    names = list(comps)
    sorted_r = {n: np.sort(comps[n].matching.abs_r)[::-1] for n in names}
    n_rows = max(len(v) for v in sorted_r.values())
    rows = [
        [i] + [float(sorted_r[n][i]) if i < len(sorted_r[n]) else "" for n in names] for i in range(n_rows)
    ]
    storage.write_csv(PLOT_DIR / "matched_r.csv", ["rank"] + names, rows)
    panels = [(n, comps[n]) for n in ("squeezer_vs_model", "floor_untrained") if n in comps]
    plot_matrices(PLOT_DIR / "correlation_matrix.png", panels, cfg.plot_max_neurons)

    for name in names:
        m = metrics[name]
        print(
            f"{name:34s} hungarian |r| {m['hungarian_mean_r']:.3f}  best |r| "
            f"{m['mean_best_abs_r']:.3f}  CKA {m['cka']:.3f}  SVCCA {m['svcca']:.3f}  "
            f"Mantel r {m['interference_mantel_r'] if m['interference_mantel_r'] is None else round(m['interference_mantel_r'], 3)}"
        )
    return 0


if __name__ == "__main__":
    from neural_codec.stage import run

    run("compare", main)
