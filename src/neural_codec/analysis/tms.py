"""A Toy Models of Superposition (Elhage et al. 2022) reproduction through the project's code.

Why: the default run's geometry is negative (no lines, no polytopes beyond the nulls). A negative
only means something if the same Squeezer, the same geometry analysis and the same report find
TMS's superposition where TMS says it is. So the codecs here are trained on TMS's synthetic data
(the TRUE features, no SAE): each of n features is on with probability 1 - S (the density p),
its value U[0, 1], loss weight (importance) I_i; and analysed by `analysis.geometry`:

- "tms": the TMS model x' = ReLU(W^T W x + b) = the Squeezer with `tied`, `hidden = linear`;
- "tied": the tied Squeezer with a ReLU hidden layer (a privileged basis);
- "untied": the project's default Squeezer (untied, ReLU hidden), analysed on its balanced
  weights (`squeezer.model.balance_neurons`), encoder and decoder;
- "untrained": the TMS model at its initialisation (a control: no pentagon, no lines).

TMS predicts: n = 5, m = 2, p = 0.05: the five features form a pentagon (D_i = 2/5);
n = 20, m = 5, I_i = 0.7^i: as p falls, D_i leave 1 for 1/2 (digons) and 2/5 (pentagons);
uniform importance: D* = m / ||W||_F^2 against 1 / p rises in steps and sticks at 1/2
(digons), then 2/5 (pentagons) and 3/8 (square antiprisms). With n = 80, m = 20 and this
stage's training the TMS model is on 1/2 at p = 0.3, on 2/5 at 0.24, on 3/8 at 0.22 and on no
line at 0.1: the 2/5 plateau is narrow in p, so the sweep samples it at 0.24.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neural_codec.analysis import geometry as geo
from neural_codec.config import GeometryConfig
from neural_codec.storage import SparseFeatures


def tms_features(n: int, density: float, n_rows: int, seed: int) -> SparseFeatures:
    """TMS's synthetic data: each feature on with probability `density` (= 1 - S), value
    U[0, 1] when on; as `SparseFeatures` (k = the most features on in any row)."""
    rng = np.random.default_rng(seed)
    on = rng.random((n_rows, n)) < density
    dense = np.where(on, rng.random((n_rows, n)), 0.0).astype(np.float32)
    k = max(1, int(on.sum(1).max()))
    return SparseFeatures.from_dense(dense, k)


def importance(n: int, decay: float) -> np.ndarray:
    """I_i = decay^i (decay = 1: uniform)."""
    return (decay ** np.arange(n)).astype(np.float32)


def parts_of(W_enc: np.ndarray, W_dec: np.ndarray, tied: bool) -> dict[str, np.ndarray]:
    """Rows = features, from balanced weights (`squeezer.model.balance_neurons`): a tied codec
    has one matrix (its encoder), an untied one two (encoder rows, decoder columns)."""
    if tied:
        return {"encoder": np.asarray(W_enc)}
    return {"encoder": np.asarray(W_enc), "decoder": np.asarray(W_dec).T.copy()}


def summarise(W: np.ndarray, gcfg: GeometryConfig) -> dict[str, Any]:
    """The geometry statistics TMS talks about, for one weight matrix (rows = features)."""
    r = geo.analyse_weights(W, [], gcfg)
    D = r["_D"][r["_mask"]]
    comps = [p for p in r["_poly"].polytopes]
    return {
        "D_star": r["D_star"],
        "D_star_represented": r["D_star_represented"],
        "n_represented": int(r["_mask"].sum()),
        "mean_D": r["mean_D"],
        "lines_found": [k for k, v in r["lines"].items() if v["is_line"]],
        "polytopes_found": {k: v for k, v in r["polytopes"].items() if v and k != "isolated"},
        "pentagon_found": bool(r["polytopes"]["pentagon"] > 0),
        "best_gram_error_5": min((p.error for p in comps if len(p.members) == 5), default=float("nan")),
        "_D": D,
    }


def sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def mean_finite(xs: list[float]) -> float:
    ys = [x for x in xs if np.isfinite(x)]
    return float(np.mean(ys)) if ys else float("nan")


def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`summarise` results of one model over seeds -> the pentagon setting's summary."""
    found = sorted({f for r in runs for f in r["lines_found"]})
    return {
        "pentagon_found_frac": float(np.mean([r["pentagon_found"] for r in runs])),
        "D_star": mean_finite([r["D_star"] for r in runs]),
        "mean_D": mean_finite([r["mean_D"] for r in runs]),
        "mean_gram_error_5": mean_finite([r["best_gram_error_5"] for r in runs]),
        "lines_found": found,
        "lines_found_frac": {f: float(np.mean([f in r["lines_found"] for r in runs])) for f in found},
        "polytopes_found": sum_counts([r["polytopes_found"] for r in runs]),
        "n_seeds": len(runs),
    }


def sweep_table(sweep: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """CSV for `dvc plots`: 1 / (1 - S) and D* per model (the uniform sweep)."""
    models = list(dict.fromkeys(r["model"] for r in sweep))
    dens = sorted({r["density"] for r in sweep}, reverse=True)
    by = {(r["density"], r["model"]): r["D_star"] for r in sweep}
    rows = [[1.0 / p] + [by.get((p, mname), float("nan")) for mname in models] for p in dens]
    return ["inv_density"] + models, rows
