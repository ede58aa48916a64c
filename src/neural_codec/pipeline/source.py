"""Stage `source`: build the source (`source.build`), then, for a synthetic source, analyse the
toy model's own weights with the geometry stage's statistics (`model_geometry`).

Why here and not in `source/synthetic.py`: the analysis sits above the source in the layer list
(docs/ARCHITECTURE.md), so the step that joins them is a pipeline step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neural_codec import storage
from neural_codec.analysis import geometry as geo
from neural_codec.config import GeometryConfig, SourceConfig
from neural_codec.source.build import build_source
from neural_codec.source.synthetic import ToyModel, load_toy_model
from neural_codec.squeezer.model import balance_neurons


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
            "circles": {n: {"p_value": c.get("p_value")} for n, c in r["circles"].items()},
        }
    return out


def run_source(cfg: SourceConfig, out_dir: Path) -> dict[str, Any]:
    """`build_source`'s {"metrics", "curve"}; synthetic metrics gain `model_geometry` (of the
    saved seed-0 model, before `planted`, where source.json has always had it)."""
    result = build_source(cfg, out_dir)
    if cfg.kind != "synthetic":
        return result
    model = load_toy_model(out_dir / "model.pt")
    families = storage.read_json(out_dir / "truth.json")["families"]
    metrics = dict(result["metrics"])
    planted = metrics.pop("planted")
    result["metrics"] = {**metrics, "model_geometry": model_geometry(model, families), "planted": planted}
    return result
