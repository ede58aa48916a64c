"""Stage `seeds`: the Squeezer over S seeds, every headline as {"mean", "ci_low", "ci_high", "n_seeds"}.

One stage looping over seeds (not a dvc `foreach`: the interval needs every seed at once, and a
loop keeps the memory to one Squeezer and one batch at a time). Seed squeezer.seed + 0 is the main
Squeezer (reloaded from data/squeeze/squeezer.pt, so its numbers are the single-seed stages'),
seeds + 1 .. S-1 are retrained on the same rows with the same schedule. Each seed also gets its
floors: the untrained null (the same initial weights) and the permuted-feature null (a Squeezer
trained at that seed on `nulls.permute_feature_columns(train, seed)`, `seeds.steps` steps; off
with `seeds.floor_permuted: false`, recorded in `floors_not_run` so the verdict says so), both
measured like the Squeezer; and for FVU / features represented / SAE-input explained variance
the baselines: the random encoder refitted at baselines.seed + s (seed + 0 read from
baselines.json), PCA, no superposition and the model's neurons (one deterministic fit or a
reference: baselines.json's `*_interval`, a bootstrap over held-out rows). The logic lifts have
one more floor, their frequency-matched control pairs (measured per seed: the pairs depend on
the Squeezer). `holds` = the trained interval clears EVERY floor's interval: wholly above it
(higher is better), below it (FVU; the logic lift against its control), or disjoint from it
(descriptive measures); `holds_untrained` keeps the comparison with the untrained floor alone.
The model's neurons are a reference, not a floor: shown with their interval, not used by `holds`.

Measures per seed (same functions as the single-seed stages):
- squeeze: FVU, features represented and SAE-input explained variance on the held-out rows
  (`evaluate_codec`);
- geometry (encoder rows): D*, fraction represented, number of lines, polytopes, circular
  correlation, neighbour fraction, wrap ratio and harmonic fraction of each cyclic family; its
  circle p-values per seed (and the decoder's harmonic p-value, `decoder_harmonic_p_value`) go
  to `circles.<condition>.<family>` (no interval: the geometry_circles control counts the seeds
  that find the circle);
- logic (co-occurrence split): median lift of the sharing pairs and of their controls, the
  numbers of sharing and control pairs and Cliff's delta of both sign groups; how many of each
  planted family kind's pairs share a neuron, and the chance rate, per seed, go to
  `family_sharing.<condition>.<kind>` (no interval: logic_exclusive_antipodal pools the counts);
- compare (held-out rows, the model's neurons): Hungarian mean |r|, CKA, SVCCA, interference
  Mantel r on the features the main Squeezer represents (`compare.mantel_features`).
Ceilings (`ceilings` in intervals.json):
- squeezer_vs_seed2: seed s against seed s + 1 (cyclically; S pairs for S >= 3), the compare
  measures over those pairs (neighbouring pairs share a seed: the interval is a little narrow);
- model_vs_model_seed2 (synthetic source): the model's neurons against its second seed's, a
  bootstrap over held-out rows (Hungarian |r|, CKA, SVCCA) and over features (Mantel r);
- sae: the SAE's own explained variance of its input (the SAE-input ceiling), a bootstrap
  over held-out rows; firing: the features that fire on held-out (the ceiling of features
  represented), a Poisson bootstrap over held-out rows.
Where seeds do not apply otherwise (deterministic baselines, the model's neurons, the SAE's
recovery of the true features), the bootstrap over rows (`analysis.stats.bootstrap_ratio` /
`bootstrap_interval`) runs in the stage that has the fit (baselines, sae).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any

import numpy as np
import scipy.sparse as sp

from neural_codec import nulls, paths, storage
from neural_codec.analysis import compare as cmp
from neural_codec.analysis.geometry import analyse_weights, family_circles
from neural_codec.analysis.logic import analyse_sharing
from neural_codec.analysis.stats import bootstrap_ratio, clears, complement, interval
from neural_codec.baselines import fit_random_encoder
from neural_codec.codec import (
    SqueezerCodec,
    eval_batch_size,
    evaluate_codec,
    iter_eval_batches,
    sae_row_errors,
)
from neural_codec.config import (
    BaselinesConfig,
    CompareConfig,
    GeometryConfig,
    LogicConfig,
    SeedsConfig,
    SqueezerConfig,
)
from neural_codec.params import from_dict, require_inputs
from neural_codec.pipeline.compare import (
    READIN,
    mantel_features,
    seed2_readin,
    squeezer_config,
    stream_moments,
)
from neural_codec.pipeline.geometry import weights_of
from neural_codec.pipeline.logic import cooccurrence_split
from neural_codec.sae import load_sae, load_sae_decoder, resid_directions
from neural_codec.squeezer.checkpoint import load_squeezer
from neural_codec.squeezer.model import Squeezer, resolve_importance
from neural_codec.squeezer.stream import open_train, rows_in_memory
from neural_codec.squeezer.train import neuron_activations, train_squeezer

#: measures where lower is better (the trained interval must lie below the floor's)
LOWER_IS_BETTER = ("fvu",)
#: measures where higher is better; every other measure "holds" when the intervals are disjoint
#: (it differs from the floor in either direction: D*, lines, polytopes, logic lift and delta)
HIGHER_IS_BETTER = ("features_represented", "hungarian_mean_r", "cka", "svcca", "mantel_r", "circular_corr",
                    "sae_explained_variance", "neighbour_frac", "harmonic_frac")  # fmt: skip
#: per-seed circle statistics kept out of the intervals: an interval of p-values means nothing,
#: the control counts the seeds whose circle is found (`circle_verdicts`, report/controls.py)
CIRCLE_VERDICT = ("p_value", "harmonic_p_value")
CIRCLE_PREFIX = "circle."
#: per-seed sharing counts of the planted families' pairs, kept out of the intervals: the
#: logic_exclusive_antipodal control pools them over seeds (`sharing_counts`, report/controls.py)
SHARING_PREFIX = "sharing."
SHARING_COUNTS = ("n_sharing", "frac_sharing_chance")
#: the floor a logic lift must lie below (features sharing a neuron co-occur less than controls)
CONTROL = "matched_control"
#: the compare measures of a pair of neuron populations (the ceilings over seed pairs)
PAIR_MEASURES = ("hungarian_mean_r", "cka", "svcca", "mantel_r")


def holds_all(name: str, trained: dict[str, Any], floors: dict[str, dict[str, Any]]) -> bool | None:
    """`holds` against every floor with an interval (None when none has one)."""
    each = [holds(name, trained, f, against) for against, f in floors.items()]
    known = [h for h in each if h is not None]
    return all(known) if known else None


def floor_intervals(out: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """Every floor's interval of measure `key`: the untrained and permuted Squeezers (over seeds),
    for FVU, features represented and SAE-input explained variance the baselines (random encoder
    over seeds; PCA and no superposition, deterministic fits, bootstrapped over held-out rows),
    and for a logic lift its frequency-matched controls (over seeds)."""
    fl = {c: out[c][key] for c in ("untrained", "permuted") if key in out.get(c, {})}
    for b, ivs in out.get("baselines", {}).items():
        if key in ivs and b != "model_neurons":  # the model's own codec is a reference, not a floor
            fl[b] = ivs[key]
    control = out["trained"].get(f"{key}_control") if key.endswith("_median_lift") else None
    if control is not None:
        fl[CONTROL] = control
    return fl


def holds(name: str, trained: dict[str, Any], floor: dict[str, Any] | None, against: str = "") -> bool | None:
    """The trained interval clears the floor's: above it (higher is better), below it (FVU; a
    logic lift against its control), or disjoint from it (descriptive measures); None when
    either interval is missing."""
    if floor is None:
        return None
    above, below = clears(trained, floor), clears(floor, trained)
    if name in LOWER_IS_BETTER or against == CONTROL:
        return below
    if name.startswith(HIGHER_IS_BETTER):
        return above
    return None if above is None else bool(above or below)


def measures(
    model: Squeezer,
    ctx: dict[str, Any],
    geo: GeometryConfig,
    logic: LogicConfig,
    comp: CompareConfig,
    n_perm: int,
) -> tuple[dict[str, float | None], np.ndarray | None]:
    """Every headline of one Squeezer, flat {name: value}, and its held-out neurons (None
    without the model's neurons: nothing to compare them with)."""
    n = model.n_features
    out: dict[str, float | None] = {}
    batches = iter_eval_batches(paths.FEATURES / "heldout", paths.ACTIVATIONS / "heldout", eval_batch_size(n))
    ev = evaluate_codec(SqueezerCodec(model), batches, ctx["sae_decode"])
    out["fvu"], out["features_represented"] = ev["fvu"], ev["features_represented"]
    if ev["sae_explained_variance"] is not None:
        out["sae_explained_variance"] = ev["sae_explained_variance"]
    w_enc = model.W_enc.detach().numpy().astype(np.float64)
    # geometry as the geometry stage computes it: balanced encoder rows of the firing latents
    balanced = weights_of(model)
    w_geo = balanced["encoder"] * ctx["alive"][:, None]
    g = analyse_weights(w_geo, ctx["families"], GeometryConfig(**{**geo.__dict__, "n_permutations": n_perm}))
    # the decoder's circles too: a planted codec's decoder forms circles its encoder need not
    # (report/controls.py circle_control requires them where the codec's own decoder has them)
    dec = family_circles(balanced["decoder"] * ctx["alive"][:, None], ctx["families"], n_perm, geo.seed)
    for fam, c in dec.items():
        out[f"{CIRCLE_PREFIX}decoder_harmonic_p_value.{fam}"] = c["harmonic_p_value"]
    out.update(D_star=g["D_star"], frac_features_represented=g["frac_features_represented"])
    out["n_lines"] = g["n_lines"]
    out["n_polytopes"] = float(sum(v for k, v in g["polytopes"].items() if k not in ("other", "isolated")))
    for fam, c in g["circles"].items():
        for k in ("circular_corr", "neighbour_frac", "wrap_ratio", "harmonic_frac"):
            out[f"{k}_{fam}"] = c[k]
        for k in CIRCLE_VERDICT:  # per-seed circle verdicts: out of the intervals (`circle_verdicts`)
            out[f"{CIRCLE_PREFIX}{k}.{fam}"] = c[k]
    res, _ = analyse_sharing(
        w_enc, lambda: storage.iter_sparse(ctx["cooc_dir"], logic.batch_size), logic, ctx["families"]
    )
    for grp in ("same_sign", "opposite_sign"):
        r = res.metrics[grp]
        out[f"logic_{grp}_median_lift"] = r["median_lift_shared"]
        out[f"logic_{grp}_median_lift_control"] = r["median_lift_control"]
        out[f"logic_{grp}_n_shared"] = r["n_shared"]
        out[f"logic_{grp}_n_control"] = r["n_control"]
        out[f"logic_{grp}_cliffs_delta"] = r["cliffs_delta"]
    for kind, fam in res.metrics["families"].items():  # per-seed sharing counts: out of the intervals
        out[f"{SHARING_PREFIX}{kind}.n_pairs"] = fam["n_pairs"]
        for grp in ("same_sign", "opposite_sign"):
            for k in SHARING_COUNTS:
                out[f"{SHARING_PREFIX}{kind}.{grp}.{k}"] = fam[grp][k]
    h = None
    if ctx["has_neurons"]:
        h = neuron_activations(model, ctx["heldout"], comp.batch_size)
        mom = stream_moments({"x": ("sq", "neurons")}, {"sq": h}, comp.batch_size, ["neurons"])
        c = cmp.compare_populations(mom["x"], comp.svcca_keep).metrics
        out.update(hungarian_mean_r=c["hungarian_mean_r"], cka=c["cka"], svcca=c["svcca"])
        if ctx["model_gram"] is not None:
            gram = cmp.squeezer_feature_gram(w_enc, ctx["feats"])
            out["mantel_r"] = cmp.mantel(gram, ctx["model_gram"], n_perm, comp.seed).r
    return out, h


def context(main: Squeezer, logic: LogicConfig, comp: CompareConfig) -> dict[str, Any]:
    """What every seed reads once: SAE decoder, families, held-out features, the model's Gram."""
    n = main.n_features
    act = paths.ACTIVATIONS / "heldout"
    has_neurons = "neurons" in set(np.load(next(iter(sorted(act.glob("shard_*.npz"))))).files)
    ctx: dict[str, Any] = {
        "sae_decode": load_sae_decoder(paths.SAE),
        "families": storage.read_json(paths.FAMILIES),
        "heldout": storage.load_sparse(paths.FEATURES / "heldout"),
        "cooc_dir": paths.FEATURES / cooccurrence_split(logic.cooccurrence_split, paths.FEATURES),
        "has_neurons": has_neurons,
        "model_gram": None,
        "feats": None,
        "alive": (np.load(paths.FIRING_FREQ) > 0).astype(np.float64),
        "W_sae": None,
    }
    if has_neurons and READIN.exists():
        W_sae = resid_directions(load_sae(paths.SAE)).numpy()  # as the compare stage's
        loadings = cmp.model_feature_loadings(W_sae, np.load(READIN))
        feats, _, _ = mantel_features(main, loadings, comp)  # the compare stage's selection
        if len(feats) >= 3 and W_sae.shape[0] == n:
            ctx["feats"], ctx["model_gram"] = feats, cmp.normalized_gram(loadings[feats])
            ctx["W_sae"] = W_sae
    return ctx


def pair_measures(
    a: np.ndarray, b: np.ndarray, gram_a: np.ndarray | None, gram_b: np.ndarray | None,
    comp: CompareConfig, n_perm: int,
) -> dict[str, float]:  # fmt: skip
    """The compare measures of two row-aligned neuron populations (and their feature Grams)."""
    c = cmp.compare_populations(cmp.moments(a, b, comp.batch_size), comp.svcca_keep).metrics
    out = {k: float(c[k]) for k in ("hungarian_mean_r", "cka", "svcca")}
    if gram_a is not None and gram_b is not None:
        out["mantel_r"] = float(cmp.mantel(gram_a, gram_b, n_perm, comp.seed).r)
    return out


def centred(full: float, boot: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """A percentile interval shifted so the bootstrap median sits on the full-sample value: a
    resample with repeated rows biases some statistics (SVCCA up, a count of firing features
    down), and the plain percentile interval then misses the value it is about."""
    b = np.asarray(boot, dtype=np.float64)
    lo, hi = np.quantile(b, [0.5 - level / 2, 0.5 + level / 2])
    shift = full - float(np.median(b))
    return float(lo + shift), float(hi + shift)


def seed_pairs(n_seeds: int) -> list[tuple[int, int]]:
    """(s, s + 1) cyclically: one pair for 2 seeds, S pairs for S >= 3, none for 1."""
    if n_seeds < 2:
        return []
    return [(0, 1)] if n_seeds == 2 else [(s, (s + 1) % n_seeds) for s in range(n_seeds)]


def squeezer_seed_ceiling(
    hs: list[np.ndarray], grams: list[np.ndarray | None], comp: CompareConfig, n_perm: int
) -> dict[str, dict[str, Any]]:
    """The Squeezer against its next seed (the compare stage's `ceiling_squeezer_vs_seed2`), an
    interval over the seed pairs."""
    per: dict[str, list[Any]] = defaultdict(list)
    for a, b in seed_pairs(len(hs)):
        for k, v in pair_measures(hs[b], hs[a], grams[b], grams[a], comp, n_perm).items():
            per[k].append(v)
    return {k: {**interval(v), "per_seed": v, "n_pairs": len(v)} for k, v in per.items()}


def mantel_feature_bootstrap(g1: np.ndarray, g2: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Mantel r of two (n, n) Grams with a bootstrap over features (a weight-derived number: no
    rows to resample). A resample's pairs of one feature with itself are dropped."""
    n = len(g1)
    iu = np.triu_indices(n, k=1)
    full = float(np.corrcoef(g1[iu], g2[iu])[0, 1])
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a, b = idx[iu[0]], idx[iu[1]]
        keep = a != b
        boot.append(float(np.corrcoef(g1[a[keep], b[keep]], g2[a[keep], b[keep]])[0, 1]))
    lo, hi = centred(full, boot)
    return {"mean": full, "ci_low": lo, "ci_high": hi, "n_seeds": 1, "n_features": n}


def resampled_pair_measures(a: np.ndarray, b: np.ndarray, keep: float) -> dict[str, float]:
    """Hungarian mean |r|, CKA and SVCCA of two in-memory populations straight from their
    covariances (for bootstrap resamples: ~10x faster than streaming CrossMoments; the interval
    is centred on the full-sample value, which `pair_measures` computes as compare does)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64 -= a64.mean(0)
    b64 -= b64.mean(0)
    n = len(a64)
    c_aa, c_bb, c_ab = a64.T @ a64 / n, b64.T @ b64 / n, a64.T @ b64 / n
    sa, sb = np.sqrt(np.diag(c_aa)), np.sqrt(np.diag(c_bb))
    dead_a, dead_b = sa <= 1e-12, sb <= 1e-12
    r = c_ab / np.outer(np.where(dead_a, 1.0, sa), np.where(dead_b, 1.0, sb))
    r[dead_a, :] = 0.0
    r[:, dead_b] = 0.0
    match = cmp.hungarian_match(np.clip(r, -1.0, 1.0))
    return {
        "hungarian_mean_r": float(match.abs_r.mean()) if len(match.r) else 0.0,
        "cka": cmp.cka_from_cov(c_aa, c_bb, c_ab),
        "svcca": cmp.svcca_from_cov(c_aa, c_bb, c_ab, keep),
    }


def model_seed2_ceiling(ctx: dict[str, Any], comp: CompareConfig, n_boot: int) -> dict[str, dict[str, Any]]:
    """The model's neurons against its second seed's (synthetic source): a bootstrap over
    held-out rows (Hungarian |r|, CKA, SVCCA; the mean is the full-sample value, as compare.json)
    and over features (Mantel r). {} when the source has no second seed."""
    act = paths.ACTIVATIONS / "heldout"
    if not ctx["has_neurons"] or "neurons_seed2" not in set(storage.load_shard(storage.shard_paths(act)[0])):
        return {}
    arr = {k: [] for k in ("neurons", "neurons_seed2")}  # type: dict[str, list[np.ndarray]]
    for batch in storage.iter_batches(act, comp.batch_size, list(arr)):
        for k in arr:
            arr[k].append(np.asarray(batch[k], dtype=np.float32))
    a, b = np.concatenate(arr["neurons_seed2"]), np.concatenate(arr["neurons"])
    full = pair_measures(a, b, None, None, comp, 1)
    rng = np.random.default_rng(comp.seed)
    boot: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_boot):
        rows = rng.integers(0, len(a), len(a))
        for k, v in resampled_pair_measures(a[rows], b[rows], comp.svcca_keep).items():
            boot[k].append(v)
    out: dict[str, dict[str, Any]] = {}
    for k, v in full.items():
        lo, hi = centred(v, boot[k])
        out[k] = {"mean": v, "ci_low": lo, "ci_high": hi, "n_seeds": 1, "n_rows": len(a)}
    r2 = seed2_readin(paths.MODEL_SEED2)
    if ctx["model_gram"] is not None and r2 is not None and r2.shape[1] == b.shape[1]:
        g2 = cmp.model_feature_gram(ctx["W_sae"], r2, ctx["feats"])
        out["mantel_r"] = mantel_feature_bootstrap(g2, ctx["model_gram"], n_boot, comp.seed)
    return out


def sae_ceiling(main: Squeezer, ctx: dict[str, Any], n_boot: int) -> dict[str, dict[str, Any]]:
    """The SAE's own explained variance of its input (the SAE-input ceiling of squeeze.json),
    bootstrapped over held-out rows; {} without held-out activations, or for a transcoder (its
    decoder writes the MLP output, not the resid it reads)."""
    if not getattr(ctx["sae_decode"], "writes_resid", True):
        return {}
    batches = iter_eval_batches(
        paths.FEATURES / "heldout", paths.ACTIVATIONS / "heldout", eval_batch_size(main.n_features)
    )
    try:
        _, err_f, dev = sae_row_errors(SqueezerCodec(main), batches, ctx["sae_decode"])
    except ValueError:  # no resid in the held-out activations
        return {}
    return {"sae_explained_variance": complement(bootstrap_ratio(err_f, dev, n_boot))}


def firing_ceiling(heldout: storage.SparseFeatures, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """The number of features that fire on held-out (the ceiling of features represented), with
    a Poisson bootstrap over held-out rows (a rare feature may not fire in a resample)."""
    r, c = np.nonzero(heldout.val > 0)
    fires = sp.csr_matrix((np.ones(len(r)), (r, heldout.idx[r, c])), shape=(len(heldout), heldout.n_features))
    w = np.random.default_rng(seed).poisson(1.0, (n_boot, len(heldout))).astype(np.float64)
    counts = ((fires.T @ w.T).T > 0).sum(1)
    full = int((np.asarray(fires.sum(0)).ravel() > 0).sum())
    lo, hi = centred(full, counts)
    return {"n_features_firing": {"mean": float(full), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": 1,
                                  "n_rows": len(heldout)}}  # fmt: skip


def run(params: dict[str, Any]) -> dict[str, Any]:
    cfg = from_dict(SeedsConfig, params.get("seeds"), "seeds")
    geo = from_dict(GeometryConfig, params.get("geometry"), "geometry")
    logic = from_dict(LogicConfig, params.get("logic"), "logic")
    comp = from_dict(CompareConfig, params.get("compare"), "compare")
    base = from_dict(BaselinesConfig, params.get("baselines"), "baselines")
    require_inputs(
        paths.SQUEEZER, paths.FEATURES / "train", paths.FEATURES / "heldout", paths.FAMILIES, paths.SAE
    )
    main = load_squeezer(paths.SQUEEZER)
    sq_cfg: SqueezerConfig = squeezer_config(main)
    n = main.n_features
    ctx = context(main, logic, comp)
    train = open_train(paths.FEATURES / "train", sq_cfg.buffer_rows)  # in memory if it fits, else shards
    imp = resolve_importance(sq_cfg, n, train.firing_frequency())
    conds = ("trained", "untrained") + (("permuted",) if cfg.floor_permuted else ())
    per_seed: dict[str, dict[str, list[Any]]] = {c: defaultdict(list) for c in conds}
    rand_enc: dict[str, list[Any]] = defaultdict(list)
    with_rand = "random_encoder" in base.methods
    fitted = read_baselines()
    seconds = []
    hs: list[np.ndarray] = []  # the trained seeds' held-out neurons and feature Grams (ceilings)
    grams: list[np.ndarray | None] = []
    for s in range(cfg.n_seeds):
        t0 = time.perf_counter()
        s_cfg = nulls.retrain_config(sq_cfg, seed=sq_cfg.seed + s, steps=cfg.steps if s else None)
        model = main if s == 0 else train_squeezer(train, s_cfg, imp, n)[0]
        models = {"trained": model, "untrained": nulls.untrained_squeezer(n, s_cfg)}
        if cfg.floor_permuted:  # a Squeezer trained on each column shuffled (seeded per seed)
            p_cfg = nulls.retrain_config(sq_cfg, seed=sq_cfg.seed + s, steps=cfg.steps)
            models["permuted"] = train_squeezer(
                nulls.permute_feature_columns(rows_in_memory(train), sq_cfg.seed + s), p_cfg, imp, n
            )[0]
        for cond, m in models.items():
            vals, h = measures(m, ctx, geo, logic, comp, cfg.n_permutations)
            for k, v in vals.items():
                per_seed[cond][k].append(None if v is None else float(v))
            if cond == "trained" and h is not None:
                hs.append(h)
                w = m.W_enc.detach().numpy().astype(np.float64)
                grams.append(None if ctx["feats"] is None else cmp.squeezer_feature_gram(w, ctx["feats"]))
        if with_rand and s == 0 and "random_encoder" in fitted:  # seed + 0: the baselines stage's fit
            for k in ("fvu", "features_represented", "sae_explained_variance"):
                if fitted["random_encoder"].get(k) is not None:
                    rand_enc[k].append(float(fitted["random_encoder"][k]))
        elif with_rand:  # the random-encoder baseline over seeds
            b_cfg = dataclasses.replace(base, seed=base.seed + s)
            codec, _ = fit_random_encoder(train, sq_cfg.M, b_cfg, imp, sq_cfg.init, sq_cfg.bias_init)
            batches = iter_eval_batches(
                paths.FEATURES / "heldout", paths.ACTIVATIONS / "heldout", eval_batch_size(n)
            )
            ev = evaluate_codec(codec, batches, ctx["sae_decode"])
            for k in ("fvu", "features_represented", "sae_explained_variance"):
                if ev[k] is not None:
                    rand_enc[k].append(float(ev[k]))
        seconds.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"n_seeds": cfg.n_seeds, "seeds": [sq_cfg.seed + s for s in range(cfg.n_seeds)]}
    out["circles"] = {c: circle_verdicts(per_seed[c]) for c in conds}
    out["family_sharing"] = {c: sharing_counts(per_seed[c]) for c in conds}
    for cond in ("trained", "untrained", "permuted"):
        out[cond] = {k: {**interval(v), "per_seed": v} for k, v in per_seed.get(cond, {}).items()}
    # floors this run skipped (the verdict names them rather than pass without them)
    out["floors_not_run"] = [] if cfg.floor_permuted else ["permuted"]
    out["baselines"] = baseline_intervals(rand_enc)
    t0 = time.perf_counter()
    out["ceilings"] = {
        name: ivs
        for name, ivs in (
            ("squeezer_vs_seed2", squeezer_seed_ceiling(hs, grams, comp, cfg.n_permutations)),
            ("model_vs_model_seed2", model_seed2_ceiling(ctx, comp, cfg.n_bootstrap_model)),
            ("sae", sae_ceiling(main, ctx, cfg.n_bootstrap)),
            ("firing", firing_ceiling(ctx["heldout"], cfg.n_bootstrap, comp.seed)),
        )
        if ivs
    }
    out["holds_untrained"] = {k: holds(k, iv, out["untrained"].get(k)) for k, iv in out["trained"].items()}
    out["holds"] = {k: holds_all(k, iv, floor_intervals(out, k)) for k, iv in out["trained"].items()}
    # per floor: does the trained interval clear it (the floors a failing "holds" did not clear)
    out["holds_against"] = {
        k: {f: holds(k, iv, fiv, f) for f, fiv in floor_intervals(out, k).items()}
        for k, iv in out["trained"].items()
    }
    out["_seconds"] = {"seconds_per_seed": seconds, "seconds_ceilings": time.perf_counter() - t0}
    return out


def circle_verdicts(per_seed: dict[str, list[Any]]) -> dict[str, dict[str, list[Any]]]:
    """Pop the per-seed circle statistics (`CIRCLE_PREFIX`) out of one condition's measures:
    {family: {statistic: [one value per seed]}}."""
    out: dict[str, dict[str, list[Any]]] = defaultdict(dict)
    for key in [k for k in per_seed if k.startswith(CIRCLE_PREFIX)]:
        stat, fam = key[len(CIRCLE_PREFIX) :].split(".", 1)
        out[fam][stat] = per_seed.pop(key)
    return dict(out)


def sharing_counts(per_seed: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Pop the per-seed family sharing counts (`SHARING_PREFIX`) out of one condition's
    measures: {kind: {"n_pairs": int, group: {"n_sharing": [per seed], "frac_sharing_chance":
    [per seed]}}}. Why per seed: one Squeezer's exclusive pairs are too few for the sharing test
    (24-96 pairs at a chance rate of 1-3%); the seeds together are S times as many draws."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for key in [k for k in per_seed if k.startswith(SHARING_PREFIX)]:
        parts = key[len(SHARING_PREFIX) :].split(".")
        values = per_seed.pop(key)
        if parts[-1] == "n_pairs":
            out[parts[0]]["n_pairs"] = int(values[0])
        else:
            out[parts[0]].setdefault(parts[1], {})[parts[2]] = values
    return dict(out)


def read_baselines() -> dict[str, Any]:
    """metrics/baselines.json ({} before the baselines stage has run)."""
    path = paths.metrics_file("baselines")
    return storage.read_json(path) if path.exists() else {}


def baseline_intervals(rand_enc: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """{method: {measure: interval}}: the random encoder over seeds (`rand_enc`); PCA,
    no superposition and the model's neurons from baselines.json's bootstrap over held-out rows
    (`fvu_interval`, `features_represented_interval`, `sae_explained_variance_interval`), when
    the baselines stage has run."""
    out: dict[str, dict[str, Any]] = {}
    for b, res in read_baselines().items():
        if isinstance(res, dict) and isinstance(res.get("fvu_interval"), dict) and b != "random_encoder":
            out[b] = {"fvu": res["fvu_interval"]}
            for k in ("features_represented", "sae_explained_variance"):
                if isinstance(res.get(f"{k}_interval"), dict):
                    out[b][k] = res[f"{k}_interval"]
    if rand_enc:
        out["random_encoder"] = {k: {**interval(v), "per_seed": v} for k, v in rand_enc.items()}
    return out


def write(out: dict[str, Any]) -> dict[str, Any]:
    """metrics/intervals.json; returns the wall seconds per seed and of the ceilings (timings,
    not metrics)."""
    seconds = out.pop("_seconds", {})
    storage.write_json(paths.INTERVALS, out)
    return seconds


def summary(out: dict[str, Any]) -> str:
    t = out["trained"]
    parts = [f"{k} {fmt(t[k])}" for k in ("fvu", "D_star", "hungarian_mean_r", "mantel_r") if k in t]
    return f"seeds: n={out['n_seeds']}: " + ", ".join(parts)


def fmt(iv: dict[str, Any]) -> str:
    """mean [ci_low, ci_high] with 3 significant digits."""
    if iv.get("mean") is None:
        return "n/a"
    return f"{iv['mean']:.3g} [{iv['ci_low']:.3g}, {iv['ci_high']:.3g}]"
