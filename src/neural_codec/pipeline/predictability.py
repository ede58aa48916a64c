"""Compare stage, the direct test: is each model neuron its own nonlinearity of a linear function of F?

Fits n_j ~ act(w_j . F + b_j) on train rows of the SAE's sparse features and the model's
neurons, streamed in batches, and scores held-out R^2 per neuron (`analysis.predictability`).
act is the neurons' own (`readout_form`): ReLU for the synthetic source (the Squeezer's encoder
form), a real model's GELU, or its gated product for a SwiGLU MLP. Beside it,
  floors:  F with its rows shuffled against the neurons; a random top-k code of the same input
           with the same per-row L0 (a random dictionary, not the SAE's);
  ceiling: the same readout from the dense input the neurons read (`resid`).
Then compares the fitted readout's feature-sharing structure (which features load on the same
model neuron) with the Squeezer's (and its floors'), and gives the train-row moments the ridge
predictivity score needs (Squeezer neurons -> model neurons, fitted on train rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import paths, storage
from neural_codec.analysis import compare as cmp
from neural_codec.analysis import compare_plots
from neural_codec.analysis import predictability as pr
from neural_codec.config import CompareConfig
from neural_codec.errors import ParamError, data_error
from neural_codec.squeezer.model import Squeezer

READOUTS = ("features", "floor_shuffled", "floor_random_code", "ceiling_dense")


def aligned_batches(
    split: str, batch_size: int, act_keys: list[str], max_rows: int | None = None
) -> Iterator[tuple[storage.SparseFeatures, dict[str, np.ndarray]]]:
    """Row-aligned batches of data/features/<split> and data/activations/<split> (float32)."""
    seen = 0
    feats = storage.iter_sparse(paths.FEATURES / split, batch_size)
    acts = storage.iter_batches(paths.ACTIVATIONS / split, batch_size, act_keys)
    for f, a in zip(feats, acts, strict=True):
        if max_rows is not None and seen >= max_rows:
            return
        n = len(f) if max_rows is None else min(len(f), max_rows - seen)
        yield f[:n], {k: np.asarray(v[:n], dtype=np.float32) for k, v in a.items()}
        seen += n


def capped(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, cap)


def check_split(split: str, keys: list[str]) -> int:
    """Rows of the split; fails naming the file when features and activations disagree."""
    act_dir = paths.ACTIVATIONS / split
    have = set(storage.load_shard(storage.shard_paths(act_dir)[0]))
    missing = [k for k in keys if k not in have]
    if missing:
        raise ParamError(f"{act_dir} holds no {missing}: re-run the activations stage")
    n_act, n_feat = (
        int(storage.read_meta(act_dir)["n_rows"]),
        int(storage.read_meta(paths.FEATURES / split)["n_rows"]),
    )
    if n_act != n_feat:
        raise data_error(act_dir, f"{n_act} activation rows but {n_feat} feature rows", "re-run `dvc repro`")
    return n_act


def _encode(models: dict[str, Squeezer], f: storage.SparseFeatures) -> dict[str, np.ndarray]:
    with torch.no_grad():
        idx, val = torch.from_numpy(f.idx), torch.from_numpy(f.val)
        return {k: m.encode(idx, val).numpy() for k, m in models.items()}


def train_statistics(
    cfg: CompareConfig,
    squeezers: dict[str, Squeezer],
    conditions: dict[str, tuple[str, str]],
    act_keys: list[str],
    encoder: np.ndarray | None,
    n_rows: int,
) -> tuple[dict[str, cmp.CrossMoments], dict[str, Any]]:
    """One pass over the train rows: the CrossMoments of every (candidate, reference) condition
    (for ridge predictivity), and the scales the readouts standardise with."""
    keys = sorted(set(act_keys) | {"neurons", "resid"})
    width: dict[str, int] = {k: m.M for k, m in squeezers.items()}
    used = sorted({x for pair in conditions.values() for x in pair})
    pop: dict[str, cmp.Moments] = {}
    mom: dict[str, cmp.CrossMoments] = {}
    neurons = resid = None
    f_val = [0.0, 0]
    r_val = [0.0, 0]
    mu = None
    for f, acts in aligned_batches("train", cfg.batch_size, keys, n_rows):
        rows = {**acts, **_encode({k: squeezers[k] for k in used if k in squeezers}, f)}
        if not pop:
            width.update({k: acts[k].shape[1] for k in acts})
            pop = {k: cmp.Moments(width[k]) for k in used}
            mom = {
                n: cmp.CrossMoments(width[a], width[b], ma=pop[a], mb=pop[b])
                for n, (a, b) in conditions.items()
            }
            neurons, resid = (
                cmp.Moments(width["neurons"], full=False),
                cmp.Moments(width["resid"], full=False),
            )
            mu = acts["resid"].mean(0)
        shifted = {k: pop[k].update(rows[k]) for k in used}
        for name, (a, b) in conditions.items():
            mom[name].update_cross(shifted[a], shifted[b])
        neurons.update(acts["neurons"])  # type: ignore[union-attr]
        resid.update(acts["resid"])  # type: ignore[union-attr]
        nz = f.val[f.val > 0]
        f_val[0] += float(nz.sum())
        f_val[1] += nz.size
        if encoder is not None and mu is not None:
            _, rv = pr.random_topk_code(acts["resid"], f.val, encoder, mu)
            rz = rv[rv > 0]
            r_val[0] += float(rz.sum())
            r_val[1] += rz.size
    if neurons is None or resid is None or mu is None:
        raise ParamError(f"{paths.ACTIVATIONS / 'train'} holds no rows")
    vn, vr = (
        (neurons.sq / neurons.n - (neurons.s / neurons.n) ** 2),
        (resid.sq / resid.n - (resid.s / resid.n) ** 2),
    )
    stats = {
        "neuron_mean": neurons.offset + neurons.s / neurons.n,
        "neuron_sd": np.sqrt(np.maximum(vn, 0.0))
        * ~cmp._is_const(np.maximum(vn, 0.0), neurons.offset + neurons.s / neurons.n),
        "resid_mean": resid.offset + resid.s / resid.n,
        "resid_sd": np.sqrt(np.maximum(vr, 0.0)),
        "resid_shift": mu,
        "feature_value_mean": f_val[0] / max(f_val[1], 1),
        "random_value_mean": r_val[0] / max(r_val[1], 1),
        "n_rows": neurons.n,
    }
    return mom, stats


def predictivity(
    train: dict[str, cmp.CrossMoments], heldout: dict[str, cmp.CrossMoments], ridge: float
) -> dict[str, dict[str, Any]]:
    """Per condition: held-out R^2 of each reference neuron from all candidate neurons (ridge on
    train rows), its mean and median over non-constant reference neurons."""
    out = {}
    for name, m in train.items():
        r2 = pr.ridge_heldout_r2(heldout[name], pr.ridge_fit(m, ridge))
        x = r2[np.isfinite(r2)]
        out[name] = {
            "predictivity_r2": float(x.mean()) if len(x) else None,
            "predictivity_r2_median": float(np.median(x)) if len(x) else None,
        }
    return out


def _readout_inputs(
    f: storage.SparseFeatures,
    acts: dict[str, np.ndarray],
    rng: np.random.Generator,
    encoder: np.ndarray,
    shift: np.ndarray,
) -> dict[str, tuple[pr.Inputs, np.ndarray]]:
    y, x = acts["neurons"], (f.idx, f.val)
    return {
        "features": (x, y),
        "floor_shuffled": (pr.shuffle_rows(x, rng), y),
        "floor_random_code": (pr.random_topk_code(acts["resid"], f.val, encoder, shift), y),
        "ceiling_dense": (acts["resid"], y),
    }


def readout_form(cfg: CompareConfig) -> pr.NeuronForm:
    """`compare.readout`, or (auto) the neurons' own form from the activations' meta: a real
    model's extraction records its act_fn and whether its MLP is gated; the synthetic source's
    neurons are ReLU. An act_fn no readout implements (e.g. solu_ln) falls back to ReLU, said
    in one line and in the metrics (`readout_form`)."""
    if cfg.readout != "auto":
        return pr.NeuronForm.parse(cfg.readout)
    meta = storage.read_meta(paths.ACTIVATIONS / "train")
    act = str(meta.get("neuron_act_fn", "relu"))
    if act not in pr.ACTIVATIONS:
        print(f"warning: neurons' act_fn {act!r} has no readout form; fitting ReLU (compare.readout)")
        act = "relu"
    return pr.NeuronForm(act, bool(meta.get("neuron_gated", False)))


def build_readouts(
    n_features: int, stats: dict[str, Any], form: pr.NeuronForm | None = None
) -> dict[str, pr.NeuronReadout]:
    """The four readouts, one form: F, its two floors (sparse inputs) and the dense ceiling."""
    n_out, d = len(stats["neuron_mean"]), len(stats["resid_mean"])
    tm, ts = stats["neuron_mean"], stats["neuron_sd"]

    def sparse(scale: float) -> pr.NeuronReadout:
        return pr.NeuronReadout(n_features, n_out, True, tm, ts, in_scale=scale, form=form)

    return {
        "features": sparse(stats["feature_value_mean"]),
        "floor_shuffled": sparse(stats["feature_value_mean"]),
        "floor_random_code": sparse(stats["random_value_mean"]),
        "ceiling_dense": pr.NeuronReadout(
            d, n_out, False, tm, ts, stats["resid_mean"], stats["resid_sd"], form=form
        ),
    }


def readout_epochs(cfg: CompareConfig, n_train: int) -> int:
    """`predict_epochs`, or more on a small train set so the fit takes `predict_min_steps`."""
    steps = -(-n_train // cfg.predict_batch_size)
    return max(cfg.predict_epochs, -(-cfg.predict_min_steps // steps))


def fit_and_score(
    cfg: CompareConfig,
    n_features: int,
    stats: dict[str, Any],
    encoder: np.ndarray,
    n_heldout: int,
    n_train: int,
    form: pr.NeuronForm | None = None,
) -> tuple[dict[str, pr.NeuronReadout], dict[str, pr.R2Accumulator], dict[str, float]]:
    """Fit the four readouts on train rows (`compare.predict_epochs` passes), score on held-out."""
    readouts = build_readouts(n_features, stats, form)
    keys = ["neurons", "resid"]
    shift = stats["resid_shift"]

    def train_batches(epoch: int) -> Iterator[dict[str, tuple[pr.Inputs, np.ndarray]]]:
        rng = np.random.default_rng([cfg.seed, epoch])
        for f, acts in aligned_batches("train", cfg.predict_batch_size, keys, n_train):
            yield _readout_inputs(f, acts, rng, encoder, shift)

    torch.manual_seed(cfg.seed)
    steps = -(-n_train // cfg.predict_batch_size)
    # a dense standardised input moves every weight each step (a sparse one k rows): a smaller rate
    lrs = {k: cfg.predict_lr if m.sparse else cfg.predict_dense_lr for k, m in readouts.items()}
    loss = pr.fit_readouts(readouts, readout_epochs(cfg, n_train), train_batches, steps, lrs)
    rng = np.random.default_rng([cfg.seed, 1_000_003])
    held = (
        _readout_inputs(f, a, rng, encoder, shift)
        for f, a in aligned_batches("heldout", cfg.batch_size, keys)
    )
    return readouts, pr.evaluate(readouts, n_heldout, held, cfg.predict_blocks), loss


def sharing(
    cfg: CompareConfig,
    W_fit: np.ndarray,
    feats: np.ndarray,
    weights: dict[str, np.ndarray],
    loadings: np.ndarray,
) -> dict[str, Any]:
    """Does the fitted readout group features onto model neurons as each Squeezer groups them
    onto its own? Mantel r of the features' co-loading cosine Grams, and the Jaccard overlap of
    the pairs that share a unit, each with a feature-permutation p."""
    out: dict[str, Any] = {"n_features": int(len(feats)), "weight_threshold_frac": cfg.sharing_threshold_frac}
    if len(feats) < 3:
        return out
    G_fit, S_fit = (
        cmp.normalized_gram(W_fit[feats]),
        pr.share_matrix(W_fit[feats], cfg.sharing_threshold_frac),
    )
    names = {"squeezer": "squeezer", "untrained": "floor_untrained", "permuted": "floor_permuted",
             "squeezer_seed2": "squeezer_seed2"}  # fmt: skip
    others = {names[k]: w for k, w in weights.items() if k in names}
    others["model_loadings"] = loadings  # the model's own read-in (W_sae_dec @ W_in): a check of the fit
    for name, W in others.items():
        res = cmp.mantel(G_fit, cmp.normalized_gram(W[feats]), cfg.n_mantel_permutations, cfg.seed)
        ov = pr.overlap_test(
            S_fit, pr.share_matrix(W[feats], cfg.sharing_threshold_frac), cfg.n_mantel_permutations, cfg.seed
        )
        out[name] = {"mantel_r": res.r, "mantel_p": res.p, **ov}
    return out


def neuron_predictability(
    cfg: CompareConfig,
    n_features: int,
    stats: dict[str, Any],
    encoder: np.ndarray,
    feats: np.ndarray,
    weights: dict[str, np.ndarray],
    loadings: np.ndarray,
    n_heldout: int,
    n_train: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """metrics/compare.json `neuron_predictability`, and the per-neuron R^2 the plot shows."""
    form = readout_form(cfg)
    readouts, acc, loss = fit_and_score(cfg, n_features, stats, encoder, n_heldout, n_train, form)
    out: dict[str, Any] = {
        name: {**acc[name].summary(cfg.n_bootstrap, cfg.seed), "train_loss": loss[name]} for name in READOUTS
    }
    out["readout_form"] = form.name
    out["readout"] = form.describe()
    out["n_train_rows"] = int(n_train)
    out["epochs"] = readout_epochs(cfg, n_train)
    out["sharing"] = sharing(cfg, readouts["features"].raw_weights(), feats, weights, loadings)
    return out, {name: acc[name].per_neuron() for name in READOUTS}


def random_code_encoder(cfg: CompareConfig, d_model: int, n_features: int) -> np.ndarray:
    """The random dictionary of the random-code floor: as many latents as the SAE has."""
    return pr.random_encoder(d_model, n_features, cfg.seed + 7919)


def write_plot(path_dir: Path, per_neuron: dict[str, np.ndarray]) -> None:
    """plots/compare/predictability.csv (R^2 per model neuron and readout) and its histogram."""
    names = list(per_neuron)
    n = len(next(iter(per_neuron.values())))
    rows = [
        [j] + [("" if not np.isfinite(per_neuron[k][j]) else float(per_neuron[k][j])) for k in names]
        for j in range(n)
    ]
    storage.write_csv(path_dir / "predictability.csv", ["neuron"] + names, rows)
    compare_plots.plot_predictability(path_dir / "predictability.png", per_neuron)
