"""Stage `seeds`: the Squeezer over S seeds, every headline as {"mean", "ci_low", "ci_high", "n_seeds"}.

One stage looping over seeds (not a dvc `foreach`: the interval needs every seed at once, and a
loop keeps the memory to one Squeezer and one batch at a time). Seed squeezer.seed + 0 is the main
Squeezer (reloaded from data/squeeze/squeezer.pt, so its numbers are the single-seed stages'),
seeds + 1 .. S-1 are retrained on the same rows with the same schedule. Each seed also gets its
floors: the untrained null (the same initial weights) and the permuted-feature null (a Squeezer
trained at that seed on `nulls.permute_feature_columns(train, seed)`, `seeds.steps` steps), both
measured like the Squeezer; and for FVU / features represented the baselines: the random encoder
refitted at baselines.seed + s (seed + 0 read from baselines.json), PCA, no superposition and the
model's neurons (one deterministic fit or a reference: baselines.json's `fvu_interval`, a
bootstrap over held-out rows). `holds` = the trained interval clears EVERY floor's interval:
wholly above it (higher is better), below it (FVU), or disjoint from it (descriptive measures);
`holds_untrained` keeps the comparison with the untrained floor alone. The model's neurons are a
reference, not a floor: shown with their interval, not used by `holds`.

Measures per seed (same functions as the single-seed stages):
- squeeze: FVU and features represented on the held-out rows (`evaluate_codec`);
- geometry (encoder rows): D*, fraction represented, number of lines, polytopes, circular
  correlation of each cyclic family;
- logic (co-occurrence split): median lift and Cliff's delta of both sign groups;
- compare (held-out rows, the model's neurons): Hungarian mean |r|, CKA, SVCCA, interference
  Mantel r on the features the main Squeezer represents.
Where seeds do not apply (deterministic baselines, the model's neurons, the SAE's recovery of the
true features), the bootstrap over rows (`analysis.stats.bootstrap_ratio` / `bootstrap_interval`)
runs in the stage that has the fit (baselines, sae).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any

import numpy as np

from neural_codec import nulls, paths, storage
from neural_codec.analysis import compare as cmp
from neural_codec.analysis.geometry import analyse_weights
from neural_codec.analysis.logic import analyse_sharing
from neural_codec.analysis.stats import clears, interval
from neural_codec.baselines import fit_random_encoder
from neural_codec.codec import (
    SqueezerCodec,
    eval_batch_size,
    evaluate_codec,
    iter_eval_batches,
    represented_features,
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
from neural_codec.pipeline.compare import READIN, squeezer_config, stream_moments
from neural_codec.pipeline.geometry import weights_of
from neural_codec.pipeline.logic import cooccurrence_split
from neural_codec.sae import load_sae, load_sae_decoder
from neural_codec.squeezer.checkpoint import load_squeezer
from neural_codec.squeezer.model import Squeezer, resolve_importance
from neural_codec.squeezer.train import neuron_activations, train_squeezer

#: measures where lower is better (the trained interval must lie below the floor's)
LOWER_IS_BETTER = ("fvu",)
#: measures where higher is better; every other measure "holds" when the intervals are disjoint
#: (it differs from the floor in either direction: D*, lines, polytopes, logic lift and delta)
HIGHER_IS_BETTER = ("features_represented", "hungarian_mean_r", "cka", "svcca", "mantel_r", "circular_corr")


def holds_all(name: str, trained: dict[str, Any], floors: list[dict[str, Any] | None]) -> bool | None:
    """`holds` against every floor with an interval (None when none has one)."""
    each = [holds(name, trained, f) for f in floors]
    known = [h for h in each if h is not None]
    return all(known) if known else None


def floor_intervals(out: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """Every floor's interval of measure `key`: the untrained and permuted Squeezers (over seeds)
    and, for FVU and features represented, the baselines (random encoder over seeds; PCA and
    no superposition, deterministic fits, bootstrapped over held-out rows)."""
    fl = {c: out[c][key] for c in ("untrained", "permuted") if key in out.get(c, {})}
    for b, ivs in out.get("baselines", {}).items():
        if key in ivs and b != "model_neurons":  # the model's own codec is a reference, not a floor
            fl[b] = ivs[key]
    return fl


def holds(name: str, trained: dict[str, Any], floor: dict[str, Any] | None) -> bool | None:
    """The trained interval clears the floor's: above it (higher is better), below it (FVU), or
    disjoint from it (descriptive measures); None when either interval is missing."""
    if floor is None:
        return None
    above, below = clears(trained, floor), clears(floor, trained)
    if name in LOWER_IS_BETTER:
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
) -> dict[str, float | None]:
    """Every headline of one Squeezer, flat {name: value}."""
    n = model.n_features
    out: dict[str, float | None] = {}
    batches = iter_eval_batches(paths.FEATURES / "heldout", paths.ACTIVATIONS / "heldout", eval_batch_size(n))
    ev = evaluate_codec(SqueezerCodec(model), batches, ctx["sae_decode"])
    out["fvu"], out["features_represented"] = ev["fvu"], ev["features_represented"]
    w_enc = model.W_enc.detach().numpy().astype(np.float64)
    # geometry as the geometry stage computes it: balanced encoder rows of the firing latents
    w_geo = weights_of(model)["encoder"] * ctx["alive"][:, None]
    g = analyse_weights(w_geo, ctx["families"], GeometryConfig(**{**geo.__dict__, "n_permutations": n_perm}))
    out.update(D_star=g["D_star"], frac_features_represented=g["frac_features_represented"])
    out["n_lines"] = g["n_lines"]
    out["n_polytopes"] = float(sum(v for k, v in g["polytopes"].items() if k not in ("other", "isolated")))
    for fam, c in g["circles"].items():
        out[f"circular_corr_{fam}"] = c["circular_corr"]
    res, _ = analyse_sharing(
        w_enc, lambda: storage.iter_sparse(ctx["cooc_dir"], logic.batch_size), logic, ctx["families"]
    )
    for grp in ("same_sign", "opposite_sign"):
        out[f"logic_{grp}_median_lift"] = res.metrics[grp]["median_lift_shared"]
        out[f"logic_{grp}_cliffs_delta"] = res.metrics[grp]["cliffs_delta"]
    if ctx["has_neurons"]:
        h = neuron_activations(model, ctx["heldout"], comp.batch_size)
        mom = stream_moments({"x": ("sq", "neurons")}, {"sq": h}, comp.batch_size, ["neurons"])
        c = cmp.compare_populations(mom["x"], comp.svcca_keep).metrics
        out.update(hungarian_mean_r=c["hungarian_mean_r"], cka=c["cka"], svcca=c["svcca"])
        if ctx["model_gram"] is not None:
            gram = cmp.squeezer_feature_gram(w_enc, ctx["feats"])
            out["mantel_r"] = cmp.mantel(gram, ctx["model_gram"], n_perm, comp.seed).r
    return out


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
    }
    if has_neurons and READIN.exists():
        W_sae = load_sae(paths.SAE).W_dec.detach().float().cpu().numpy()
        loadings = cmp.model_feature_loadings(W_sae, np.load(READIN))
        alive = np.load(paths.FIRING_FREQ) > 0
        loaded = np.linalg.norm(loadings, axis=1) > 0
        # the compare stage's filter: represented by the held-out self-gain of the main Squeezer
        represented = represented_features(
            SqueezerCodec(main), iter_eval_batches(paths.FEATURES / "heldout", None, eval_batch_size(n))
        )
        feats = cmp.select_features([alive, represented, loaded], comp.max_features_for_mantel, comp.seed)
        if len(feats) >= 3 and W_sae.shape[0] == n:
            ctx["feats"], ctx["model_gram"] = feats, cmp.normalized_gram(loadings[feats])
    return ctx


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
    train = storage.load_sparse(paths.FEATURES / "train")
    imp = resolve_importance(sq_cfg, n, train.firing_frequency())
    conds = ("trained", "untrained", "permuted")
    per_seed: dict[str, dict[str, list[Any]]] = {c: defaultdict(list) for c in conds}
    rand_enc: dict[str, list[Any]] = defaultdict(list)
    with_rand = "random_encoder" in base.methods
    fitted = read_baselines()
    seconds = []
    for s in range(cfg.n_seeds):
        t0 = time.perf_counter()
        s_cfg = nulls.retrain_config(sq_cfg, seed=sq_cfg.seed + s, steps=cfg.steps if s else None)
        model = main if s == 0 else train_squeezer(train, s_cfg, imp, n)[0]
        # the permuted-feature floor: a Squeezer trained on each column shuffled (seeded per seed)
        p_cfg = nulls.retrain_config(sq_cfg, seed=sq_cfg.seed + s, steps=cfg.steps)
        permuted = train_squeezer(nulls.permute_feature_columns(train, sq_cfg.seed + s), p_cfg, imp, n)[0]
        for cond, m in (("trained", model), ("untrained", nulls.untrained_squeezer(n, s_cfg)),
                        ("permuted", permuted)):  # fmt: skip
            for k, v in measures(m, ctx, geo, logic, comp, cfg.n_permutations).items():
                per_seed[cond][k].append(None if v is None else float(v))
        if with_rand and s == 0 and "random_encoder" in fitted:  # seed + 0: the baselines stage's fit
            for k in ("fvu", "features_represented"):
                rand_enc[k].append(float(fitted["random_encoder"][k]))
        elif with_rand:  # the random-encoder baseline over seeds
            b_cfg = dataclasses.replace(base, seed=base.seed + s)
            codec, _ = fit_random_encoder(train, sq_cfg.M, b_cfg, imp, sq_cfg.init, sq_cfg.bias_init)
            batches = iter_eval_batches(
                paths.FEATURES / "heldout", paths.ACTIVATIONS / "heldout", eval_batch_size(n)
            )
            ev = evaluate_codec(codec, batches)
            for k in ("fvu", "features_represented"):
                rand_enc[k].append(float(ev[k]))
        seconds.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"n_seeds": cfg.n_seeds, "seeds": [sq_cfg.seed + s for s in range(cfg.n_seeds)]}
    for cond, d in per_seed.items():
        out[cond] = {k: {**interval(v), "per_seed": v} for k, v in d.items()}
    out["baselines"] = baseline_intervals(rand_enc)
    out["holds_untrained"] = {k: holds(k, iv, out["untrained"].get(k)) for k, iv in out["trained"].items()}
    out["holds"] = {
        k: holds_all(k, iv, list(floor_intervals(out, k).values())) for k, iv in out["trained"].items()
    }
    # per floor: does the trained interval clear it (the floors a failing "holds" did not clear)
    out["holds_against"] = {
        k: {f: holds(k, iv, fiv) for f, fiv in floor_intervals(out, k).items()}
        for k, iv in out["trained"].items()
    }
    out["_seconds_per_seed"] = seconds
    return out


def read_baselines() -> dict[str, Any]:
    """metrics/baselines.json ({} before the baselines stage has run)."""
    path = paths.metrics_file("baselines")
    return storage.read_json(path) if path.exists() else {}


def baseline_intervals(rand_enc: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """{method: {measure: interval}}: the random encoder over seeds (`rand_enc`); PCA,
    no superposition and the model's neurons from baselines.json's bootstrap over held-out rows
    (`fvu_interval`), when the baselines stage has run."""
    out: dict[str, dict[str, Any]] = {}
    for b, res in read_baselines().items():
        if isinstance(res, dict) and isinstance(res.get("fvu_interval"), dict) and b != "random_encoder":
            out[b] = {"fvu": res["fvu_interval"]}
            if isinstance(res.get("features_represented_interval"), dict):
                out[b]["features_represented"] = res["features_represented_interval"]
    if rand_enc:
        out["random_encoder"] = {k: {**interval(v), "per_seed": v} for k, v in rand_enc.items()}
    return out


def write(out: dict[str, Any]) -> list[float]:
    """metrics/intervals.json; returns the wall seconds per seed (a timing, not a metric)."""
    seconds = out.pop("_seconds_per_seed", [])
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
