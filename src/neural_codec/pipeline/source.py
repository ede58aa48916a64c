"""Stage `source`: build the source (`source.build`), then, for a synthetic source, analyse the
toy model's own weights with the geometry stage's statistics (`model_geometry`) and measure
whether co-occurrence fixes its neurons (`cooccurrence_identity`).

Why here and not in `source/synthetic.py`: the analysis sits above the source in the layer list
(docs/ARCHITECTURE.md), so the step that joins them is a pipeline step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neural_codec import storage
from neural_codec.analysis import compare as cmp
from neural_codec.analysis import geometry as geo
from neural_codec.config import GeometryConfig, SourceConfig
from neural_codec.source.build import build_source
from neural_codec.source.synthetic import ToyModel, build_generator, load_toy_model, train_toy_model
from neural_codec.squeezer.model import balance_neurons

IDENTITY_ROWS = 20000  # fresh rows the identity reference is scored on


@torch.no_grad()
def model_geometry(model: ToyModel, families: list[dict[str, Any]]) -> dict[str, Any]:
    """The geometry stage's statistics (D_i, lines, polytopes, circles; at the `geometry`
    section's code defaults, since this stage reads only `source`) of the model's own weights,
    as the geometry stage analyses a Squeezer: rows = true features, the feature-to-neuron map
    E W_in (n, M) and the read-out W_out^T, each neuron balanced (`balance_neurons`).

    Why: for `model: codec` this is the planted truth for H2 (what the Squeezer, trained on the
    SAE's features, should reproduce; report/controls.py `geometry_planted_model`)."""
    enc = (model.embedding @ model.W_in).double().numpy()
    E, D = balance_neurons(enc, model.W_out.double().numpy())
    cfg = GeometryConfig()
    out = {}
    for part, W in (("encoder", E), ("decoder", D.T)):
        r = geo.analyse_weights(W, families, cfg)
        out[part] = {
            **{k: r[k] for k in ("D_star", "D_star_represented", "frac_features_represented", "n_lines")},
            # a line's enrichment is NaN where its flanks are empty: keep the test's outcome
            "lines": {f: {k: v[k] for k in ("is_line", "count", "p_holm")} for f, v in r["lines"].items()},
            "polytopes": r["polytopes"],
            "polytope_mean_error": r["polytope_mean_error"],
            "circles": {
                n: {"p_value": c.get("p_value"), "harmonic_p_value": c.get("harmonic_p_value")}
                for n, c in r["circles"].items()
            },
        }
    return out


def _match(h: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    a, b = h.double().numpy(), ref.double().numpy()
    C = cmp.correlation_matrix(a, b)
    return {
        "hungarian_mean_r": float(cmp.hungarian_match(C).abs_r.mean()),
        "cka": float(cmp.linear_cka(a, b)),
    }


def cooccurrence_identity(cfg: SourceConfig, model: ToyModel, model2: ToyModel) -> dict[str, Any]:
    """Does co-occurrence fix the model's neurons? The model's own recipe retrained at seed 2's
    seed on seed 2's pool, once as it is (model_seed2.pt) and once with every feature column
    permuted (`train_toy_model(permuted=True)`: same marginals, init and minibatches, no
    co-occurrence), each matched to the model on fresh rows (Hungarian mean |r|, linear CKA).

    Why: compare's floor_permuted (a Squeezer on feature-permuted rows) can only be beaten where
    the data's co-occurrence moves the neurons. The model's second seed against that floor mixes
    co-occurrence with the difference between two training recipes (on the identity codec it
    clears the floor's CKA by 0.10, yet this same-recipe reference shows co-occurrence moves its
    CKA by 0.01), so report/controls.py counts the floor only where `effect` (seed 2 minus
    permuted rows) is large (issue 11)."""
    scfg = cfg.synthetic
    gen, _ = build_generator(scfg, cfg.seed)
    permuted, _ = train_toy_model(scfg, gen, model.embedding, cfg.seed + 1, permuted=True)
    torch.manual_seed(cfg.seed + 54321)
    f = gen.sample(IDENTITY_ROWS)
    with torch.no_grad():
        ref, h2, hp = (m.neurons(m.resid(f)) for m in (model, model2, permuted))
    out: dict[str, Any] = {"seed2_vs_model": _match(h2, ref), "permuted_rows_vs_model": _match(hp, ref)}
    out["effect"] = {k: v - out["permuted_rows_vs_model"][k] for k, v in out["seed2_vs_model"].items()}
    out["n_rows"] = IDENTITY_ROWS
    return out


def run_source(cfg: SourceConfig, out_dir: Path) -> dict[str, Any]:
    """`build_source`'s {"metrics", "curve"}; synthetic metrics gain `model_geometry` (of the
    saved seed-0 model, before `planted`, where source.json has always had it) and, after it,
    `cooccurrence_identity`."""
    result = build_source(cfg, out_dir)
    if cfg.kind != "synthetic":
        return result
    model = load_toy_model(out_dir / "model.pt")
    model2 = load_toy_model(out_dir / "model_seed2.pt")
    families = storage.read_json(out_dir / "truth.json")["families"]
    metrics = dict(result["metrics"])
    planted = metrics.pop("planted")
    result["metrics"] = {
        **metrics,
        "model_geometry": model_geometry(model, families),
        "planted": planted,
        "cooccurrence_identity": cooccurrence_identity(cfg, model, model2),
    }
    return result
