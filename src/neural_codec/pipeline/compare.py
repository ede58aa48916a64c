"""Stage `compare`: do the Squeezer's synthetic neurons fire like the model's neurons?

Compares, on the same held-out inputs, the main Squeezer's neurons with the original model's
neurons (correlation matrix, best |r|, Hungarian matching, CKA, SVCCA) and the Squeezer's
feature-interference Gram with the model's (Mantel test), each beside
  floors:   an untrained Squeezer (the main one's initial weights) and a Squeezer trained on
            permuted features (each feature column permuted across rows: same marginals, no
            co-occurrence structure);
  ceilings: the main Squeezer against a second Squeezer seed and, for the synthetic source,
            the model's own second seed (model neurons vs seed-2 neurons);
  and a second measurement: the seed-2 Squeezer against the model; for the synthetic source,
  a reference: a Squeezer trained on the true features instead of the SAE's
  (`reference_true_features`: the gap to the main Squeezer is what the SAE costs).
The retrained Squeezers use the config stored in squeezer.pt (what produced the main Squeezer),
with `compare.retrain_steps` optionally overriding the number of steps.

Beside Hungarian matching: soft (many-to-one) matching both ways and ridge predictivity (each
model neuron from all candidate neurons, fitted on train rows), per condition; and the direct
test, neuron predictability from F (`neuron_predictability`, see pipeline.predictability).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neural_codec import nulls, paths, storage
from neural_codec.analysis import compare as cmp
from neural_codec.analysis import compare_plots
from neural_codec.codec import SqueezerCodec, eval_batch_size, iter_eval_batches, represented_features
from neural_codec.config import CompareConfig, SqueezerConfig
from neural_codec.errors import ParamError, data_error
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.pipeline import predictability as pd
from neural_codec.runtime import resolve_device
from neural_codec.sae import load_sae, resid_directions
from neural_codec.squeezer.checkpoint import load_squeezer
from neural_codec.squeezer.model import Squeezer, resolve_importance
from neural_codec.squeezer.stream import open_train, rows_in_memory
from neural_codec.squeezer.train import neuron_activations, train_squeezer

READIN = paths.ACTIVATIONS / "neuron_readin.npy"


def squeezer_config(model: Squeezer) -> SqueezerConfig:
    """The config that produced squeezer.pt; the `squeezer` params section if it holds none."""
    stored = getattr(model, "config", None)
    if isinstance(stored, dict) and stored:
        known = {f.name for f in dataclasses.fields(SqueezerConfig)}
        return from_dict(SqueezerConfig, {k: v for k, v in stored.items() if k in known}, "squeezer")
    return from_dict(SqueezerConfig, load_params().get("squeezer"), "squeezer")


def activation_keys(directory: Path) -> set[str]:
    return set(storage.load_shard(storage.shard_paths(directory)[0]))


def seed2_readin(path: Path) -> np.ndarray | None:
    """W_in (d_model, n_neurons) of the synthetic source's second seed, if it exists."""
    if not path.exists():
        return None
    blob = storage.torch_load(path)
    sd = blob.get("state_dict", {}) if isinstance(blob, dict) else {}
    w = sd.get("W_in")
    return None if w is None else w.detach().float().cpu().numpy()


def stream_moments(
    pairs: dict[str, tuple[str, str]], arrays: dict[str, np.ndarray], batch_size: int, act_keys: list[str]
) -> dict[str, cmp.CrossMoments]:
    """One pass over the held-out activations, updating CrossMoments for every (a, b) pair.

    Populations named in `act_keys` are streamed from data/activations/heldout (model neurons);
    the others are in-memory (N, M) arrays of synthetic neurons, sliced to the same rows.
    """
    heldout = paths.ACTIVATIONS / "heldout"
    dims = dict(storage.read_meta(heldout))
    width = {k: a.shape[1] for k, a in arrays.items()}
    first = next(storage.iter_shards(heldout, act_keys))
    width.update({k: first[k].shape[1] for k in act_keys})
    used = sorted({x for pair in pairs.values() for x in pair})
    pop = {k: cmp.Moments(width[k]) for k in used}  # shared: each population's X^T X once
    mom = {name: cmp.CrossMoments(width[a], width[b], ma=pop[a], mb=pop[b]) for name, (a, b) in pairs.items()}
    start = 0
    for batch in storage.iter_batches(heldout, batch_size, act_keys):
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


def mantel_features(
    main_sq: Squeezer, loadings: np.ndarray, cfg: CompareConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features the Mantel test compares (the compare and seeds stages share them): alive,
    represented by the main Squeezer and loaded by the model, at most
    `cfg.max_features_for_mantel` (a seeded subset). Returns (features, alive, represented).

    Represented is the held-out self-gain criterion of `features_represented` (squeeze.json),
    not a weight norm (which counts barely-trained features whose xavier rows already have
    norm ~0.6)."""
    alive = storage.load_npy(paths.FIRING_FREQ) > 0
    heldout = iter_eval_batches(paths.FEATURES / "heldout", None, eval_batch_size(main_sq.n_features))
    represented = represented_features(SqueezerCodec(main_sq), heldout)
    loaded = np.linalg.norm(loadings, axis=1) > 0
    feats = cmp.select_features([alive, represented, loaded], cfg.max_features_for_mantel, cfg.seed)
    return feats, alive, represented


@dataclass
class CompareRun:
    metrics: dict[str, Any]
    comparisons: dict[str, cmp.NeuronComparison]
    per_neuron_r2: dict[str, np.ndarray] | None = None  # neuron predictability, for the plot


def candidate_populations(
    cfg: CompareConfig, main_sq: Squeezer, sq_cfg: SqueezerConfig, heldout: storage.SparseFeatures
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Squeezer]]:
    """Synthetic neurons on the held-out features (and encoder weights, and the models) of the
    main Squeezer, its untrained and permuted-feature floors and its second seed."""
    n_features = main_sq.n_features
    arrays = {"squeezer": np.asarray(storage.load_npy(paths.HELDOUT_NEURONS, mmap=True), dtype=np.float32)}
    weights = {"squeezer": main_sq.W_enc.detach().numpy()}
    models = {"squeezer": main_sq}
    if cfg.floor_untrained:
        un = nulls.untrained_squeezer(n_features, sq_cfg)
        arrays["untrained"] = neuron_activations(un, heldout, cfg.batch_size)
        weights["untrained"] = un.W_enc.detach().numpy()
        models["untrained"] = un
    if cfg.floor_permuted or cfg.ceiling_squeezer_seed2:
        # in memory if it fits squeezer.buffer_rows, else streamed shard by shard
        train = open_train(paths.FEATURES / "train", sq_cfg.buffer_rows)
        imp = resolve_importance(sq_cfg, n_features, train.firing_frequency())
        if cfg.floor_permuted:
            permuted = nulls.permute_feature_columns(rows_in_memory(train), cfg.seed)
            pm_cfg = nulls.retrain_config(sq_cfg, steps=cfg.retrain_steps, device=cfg.device)
            pm, _ = train_squeezer(permuted, pm_cfg, imp, n_features, desc="permuted floor")
            arrays["permuted"] = neuron_activations(pm, heldout, cfg.batch_size)
            weights["permuted"] = pm.W_enc.detach().numpy()
            models["permuted"] = pm
            del permuted
        if cfg.ceiling_squeezer_seed2:
            s2_cfg = nulls.retrain_config(
                sq_cfg, seed=sq_cfg.seed + 1, steps=cfg.retrain_steps, device=cfg.device
            )
            s2, _ = train_squeezer(train, s2_cfg, imp, n_features, desc="squeezer seed 2")
            arrays["squeezer_seed2"] = neuron_activations(s2, heldout, cfg.batch_size)
            weights["squeezer_seed2"] = s2.W_enc.detach().numpy()
            models["squeezer_seed2"] = s2
        del train
    return arrays, weights, models


def true_features(directory: Path, n_true: int) -> storage.SparseFeatures:
    """The synthetic source's true feature activations of one activations split, in memory."""
    parts = list(storage.iter_shards(directory, ["true_idx", "true_val"]))
    idx = np.concatenate([p["true_idx"] for p in parts]).astype(np.int32)
    val = np.concatenate([p["true_val"] for p in parts]).astype(np.float32)
    return storage.SparseFeatures(idx, val, n_true)


def true_feature_reference(cfg: CompareConfig, sq_cfg: SqueezerConfig) -> np.ndarray | None:
    """Synthetic source: the held-out neurons of a Squeezer with the main one's settings trained
    on the train rows' true features instead of the SAE's (None on an lm source, or when off).

    Why: its match to the model is what the pipeline would reach with a perfect SAE, so the gap
    to the main Squeezer is the SAE's cost (a codec whose correlated pairs share neurons is
    matched on the true features, but the SAE merges each pair into one latent:
    docs/RESULTS-planted-codec.md)."""
    train_dir, held_dir = paths.ACTIVATIONS / "train", paths.ACTIVATIONS / "heldout"
    if not cfg.reference_true_features or "true_idx" not in activation_keys(train_dir):
        return None
    n_true = int(storage.read_meta(train_dir)["n_true"])
    # not the planted codec's own start: `codec_init` draws the xavier matrix a Squeezer with the
    # same (n, M, seed) draws, and a shared start inflates the match (0.70 against 0.45 on the
    # tiny codec); the codec and its second seed start from source.seed and source.seed + 1,
    # read from the model's checkpoint (a dep of this stage; `source` is not one of its params)
    src_seed = int(storage.torch_load(paths.SOURCE / "model.pt")["seed"])
    seed = sq_cfg.seed if sq_cfg.seed not in (src_seed, src_seed + 1) else src_seed + 2
    r_cfg = nulls.retrain_config(sq_cfg, seed=seed, steps=cfg.retrain_steps, device=cfg.device)
    model, _ = train_squeezer(
        true_features(train_dir, n_true), r_cfg, None, n_true, desc="true-feature reference"
    )
    return neuron_activations(model, true_features(held_dir, n_true), cfg.batch_size)


def run(cfg: CompareConfig) -> CompareRun:
    resolve_device(cfg.device, "compare.device")  # a missing GPU fails here, before work
    act_dir, features = paths.ACTIVATIONS / "heldout", paths.FEATURES
    require_inputs(
        paths.SQUEEZER,
        paths.HELDOUT_NEURONS,
        act_dir,
        READIN,
        paths.SAE,
        features / "train",
        features / "heldout",
        paths.FIRING_FREQ,
    )
    main_sq = load_squeezer(paths.SQUEEZER)
    sq_cfg = squeezer_config(main_sq)
    n_features = main_sq.n_features
    heldout = storage.load_sparse(features / "heldout")
    n_main = len(storage.load_npy(paths.HELDOUT_NEURONS, mmap=True))
    n_act = int(storage.read_meta(act_dir)["n_rows"])
    storage.check_shards(act_dir)  # readable and finite before minutes of work (not in scipy later)
    if not (len(heldout) == n_main == n_act):
        raise data_error(
            paths.HELDOUT_NEURONS,
            f"held-out rows differ: features {len(heldout)}, squeezer neurons {n_main}, activations {n_act}",
            "re-run `dvc repro`",
        )
    if heldout.n_features != n_features:
        raise ParamError(f"features have {heldout.n_features} latents, the Squeezer {n_features}")
    keys = activation_keys(act_dir)
    if "neurons" not in keys:
        raise ParamError(f"{act_dir} holds no `neurons`: re-run the activations stage")
    has_seed2 = cfg.ceiling_model_seed2 and "neurons_seed2" in keys
    n_train = pd.check_split("train", ["neurons", "resid"] + (["neurons_seed2"] if has_seed2 else []))
    arrays, weights, models = candidate_populations(cfg, main_sq, sq_cfg, heldout)

    # --- neuron-level comparisons (one streaming pass) ----------------------------------------
    conditions: dict[str, tuple[str, str]] = {"squeezer_vs_model": ("squeezer", "neurons")}
    if "untrained" in arrays:
        conditions["floor_untrained"] = ("untrained", "neurons")
    if "permuted" in arrays:
        conditions["floor_permuted"] = ("permuted", "neurons")
    if "squeezer_seed2" in arrays:
        conditions["squeezer_seed2_vs_model"] = ("squeezer_seed2", "neurons")
        conditions["ceiling_squeezer_vs_seed2"] = ("squeezer_seed2", "squeezer")
    if has_seed2:
        conditions["ceiling_model_vs_model_seed2"] = ("neurons_seed2", "neurons")
    act_keys = ["neurons"] + (["neurons_seed2"] if has_seed2 else [])
    mom = stream_moments(conditions, arrays, cfg.batch_size, act_keys)
    comps = {name: cmp.compare_populations(m, cfg.svcca_keep) for name, m in mom.items()}

    # --- ridge predictivity (fitted on train rows; one pass also gives the readouts' scales) ---
    readin = storage.load_npy(READIN)
    encoder = pd.random_code_encoder(cfg, readin.shape[0], n_features)
    n_ridge = pd.capped(n_train, cfg.predictivity_train_rows)
    train_mom, stats = pd.train_statistics(cfg, models, conditions, act_keys, encoder, n_ridge)
    for name, scores in pd.predictivity(train_mom, mom, cfg.predictivity_ridge).items():
        comps[name].metrics.update(scores)

    # --- feature-interference structure ---------------------------------------------------------
    W_sae = resid_directions(load_sae(paths.SAE)).numpy()  # a transcoder's: its encoder
    if W_sae.shape[0] != n_features:
        raise ParamError(f"SAE has {W_sae.shape[0]} latents, the Squeezer {n_features}")
    loadings = cmp.model_feature_loadings(W_sae, readin)
    feats, alive, represented = mantel_features(main_sq, loadings, cfg)
    grams = {name: cmp.squeezer_feature_gram(w, feats) for name, w in weights.items()}
    grams["neurons"] = cmp.normalized_gram(loadings[feats])
    if has_seed2:
        r2 = seed2_readin(paths.MODEL_SEED2)
        if r2 is not None and r2.shape == readin.shape:
            grams["neurons_seed2"] = cmp.model_feature_gram(W_sae, r2, feats)
    for name, (a, b) in conditions.items():
        if len(feats) >= 3 and a in grams and b in grams:
            comps[name].metrics.update(
                cmp.interference(grams[a], grams[b], cfg.n_mantel_permutations, cfg.seed)
            )
        else:
            comps[name].metrics.update({"interference_mantel_r": None, "interference_mantel_p": None})

    reference = true_feature_reference(cfg, sq_cfg)
    if reference is not None:  # not a ridge or Mantel condition: its inputs are not F
        ref = stream_moments({"reference_true_features": ("true", "neurons")}, {"true": reference},
                             cfg.batch_size, ["neurons"])["reference_true_features"]  # fmt: skip
        comps["reference_true_features"] = cmp.compare_populations(ref, cfg.svcca_keep)
        comps["reference_true_features"].metrics.update(
            interference_mantel_r=None, interference_mantel_p=None
        )
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
    metrics["predictivity_train_rows"] = n_ridge
    per_neuron = None
    if cfg.predictability:
        metrics["neuron_predictability"], per_neuron = pd.neuron_predictability(
            cfg,
            n_features,
            stats,
            encoder,
            feats,
            weights,
            loadings,
            n_act,
            pd.capped(n_train, cfg.predict_max_train_rows),
        )
    return CompareRun(metrics, comps, per_neuron)


def write(r: CompareRun, cfg: CompareConfig) -> None:
    plot_dir = paths.plot_dir("compare")
    names = list(r.comparisons)
    sorted_r = {n: np.sort(r.comparisons[n].matching.abs_r)[::-1] for n in names}
    n_rows = max(len(v) for v in sorted_r.values())
    rows = [
        [i] + [float(sorted_r[n][i]) if i < len(sorted_r[n]) else "" for n in names] for i in range(n_rows)
    ]
    storage.write_csv(plot_dir / "matched_r.csv", ["rank"] + names, rows)
    panels: list[tuple[str, cmp.NeuronComparison]] = [
        (n, r.comparisons[n]) for n in ("squeezer_vs_model", "floor_untrained") if n in r.comparisons
    ]
    compare_plots.plot_matrices(plot_dir / "correlation_matrix.png", panels, cfg.plot_max_neurons)
    if r.per_neuron_r2 is not None:
        pd.write_plot(plot_dir, r.per_neuron_r2)
    storage.write_json(paths.metrics_file("compare"), r.metrics)


def summary(r: CompareRun) -> str:
    out = []
    for name in r.comparisons:
        m = r.metrics[name]
        mantel = m["interference_mantel_r"]
        out.append(
            f"{name:34s} hungarian |r| {m['hungarian_mean_r']:.3f}  best |r| "
            f"{m['mean_best_abs_r']:.3f}  CKA {m['cka']:.3f}  SVCCA {m['svcca']:.3f}  "
            f"Mantel r {mantel if mantel is None else round(mantel, 3)}  model best |r| "
            f"{m['mean_best_abs_r_b']:.3f}  predictivity R2 {_fmt(m.get('predictivity_r2'))}"
        )
    p = r.metrics.get("neuron_predictability")
    if p:
        out.append("neuron predictability (held-out R2 of ReLU(w.x+b), mean [95% CI]):")
        for name in pd.READOUTS:
            q = p[name]
            out.append(f"  {name:20s} {_fmt(q['mean_r2'])} [{_fmt(q['ci_low'])}, {_fmt(q['ci_high'])}]")
        sh = p["sharing"].get("squeezer")
        if sh:
            out.append(f"  sharing vs Squeezer: Mantel r {sh['mantel_r']:.3f} (p {sh['mantel_p']:.3g}), "
                       f"overlap {sh['overlap_jaccard']:.3f} vs null {sh['overlap_null_mean']:.3f}")  # fmt: skip
    return "\n".join(out)


def _fmt(v: Any) -> str:
    return "None" if v is None else f"{v:.3f}"
