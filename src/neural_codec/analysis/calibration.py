"""Calibration of every test the report uses: false-positive rate on null inputs, power on planted ones.

Each `*_trial(seed, planted, size)` draws one input (independent features / unrelated matrices /
structureless points when `planted` is False; the structure the test looks for when True), runs
the project's own test on it and returns its p-value (the smallest Holm-adjusted p where the test
combines several). `calibrate` runs a trial over seeds and reports the rejection rate at alpha:
the false-positive rate on null inputs, the power on planted ones. The tests suite runs the
tiny sizes; `benchmarks/calibration.py` the larger ones.

- logic: `analyse_sharing` on a Squeezer trained on one split and tested on rows it never saw
  (the default `cooccurrence_split: cooc`), or on its own training rows (`split="train"`, the
  biased option); planted: exclusive families placed on shared neurons.
- mantel: `compare.mantel` between the Gram matrices of two independent random weight matrices;
  planted: the second is the first plus noise.
- circle: `geometry.circle_stats` on random member vectors; planted: a noisy circle.
- line: `geometry.find_lines` on D values drawn from a smooth density; planted: a spike at 1/2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from neural_codec.analysis.compare import mantel, normalized_gram
from neural_codec.analysis.geometry import circle_stats, find_lines
from neural_codec.analysis.logic import analyse_sharing
from neural_codec.config import LogicConfig, SqueezerConfig
from neural_codec.squeezer.train import train_squeezer
from neural_codec.storage import SparseFeatures


@dataclass(frozen=True)
class Size:
    """How big one trial is (tiny for the tests, larger for the benchmark)."""

    n_features: int = 48
    n_rows: int = 20_000  # rows of each split (Squeezer training, co-occurrence)
    M: int = 12
    steps: int = 100
    n_points: int = 40  # Mantel items / line-test D values (x10)
    n_permutations: int = 199


TINY = Size()
LARGE = Size(n_features=96, n_rows=100_000, M=24, steps=300, n_points=200, n_permutations=999)


def sparse_source(
    n_rows: int, n_features: int, rng: np.random.Generator, families: list[np.ndarray] | None = None
) -> SparseFeatures:
    """Independent Bernoulli features (log-uniform firing probabilities 0.02..0.12, magnitudes
    ~ N(1, 0.15)); each family in `families` is made mutually exclusive (at most one member)."""
    p = np.exp(rng.uniform(np.log(0.02), np.log(0.12), n_features))
    on = rng.random((n_rows, n_features)) < p
    for fam in families or []:
        # one categorical draw per row: member i with its own probability, else none
        cum = np.cumsum(p[fam] / max(1.0, p[fam].sum()))
        u = rng.random(n_rows)
        pick = np.searchsorted(cum, u)
        on[:, fam] = False
        rows = pick < len(fam)
        on[rows, fam[pick[rows]]] = True
    dense = on * np.maximum(rng.normal(1.0, 0.15, (n_rows, n_features)), 0.05)
    k = int(max(1, on.sum(1).max()))
    return SparseFeatures.from_dense(dense.astype(np.float32), k)


def logic_trial(
    seed: int, planted: bool, size: Size = TINY, split: str = "cooc", alpha: float = 0.01
) -> float:
    rng = np.random.default_rng(seed)
    n = size.n_features
    cfg = LogicConfig(alpha=alpha, seed=seed, min_expected=5.0)
    if not planted:
        train = sparse_source(size.n_rows, n, rng)
        test = train if split == "train" else sparse_source(size.n_rows, n, rng)
        sq = SqueezerConfig(M=size.M, steps=size.steps, batch_size=512, seed=seed)
        w_enc = train_squeezer(train, sq)[0].W_enc.detach().numpy()
    else:
        # exclusive families of 4, each family's members sharing one neuron; the other neurons
        # hold random non-family features (no structure)
        perm = rng.permutation(n)
        n_fam = max(2, size.M // 2)
        fams = [perm[4 * i : 4 * i + 4] for i in range(n_fam)]
        test = sparse_source(size.n_rows, n, rng, fams)
        w_enc = np.zeros((n, size.M))
        for j, fam in enumerate(fams):
            w_enc[fam, j] = 1.0
        rest = perm[4 * n_fam :]
        for j in range(n_fam, size.M):
            w_enc[rng.choice(rest, 4, replace=False), j] = 1.0
        w_enc += 0.01 * rng.standard_normal(w_enc.shape)
    res, _ = analyse_sharing(w_enc, lambda: iter([test]), cfg)
    ps = [res.metrics[g]["p_value_holm"] for g in ("same_sign", "opposite_sign")]
    ps = [p for p in ps if p is not None]
    return float(min(ps)) if ps else 1.0


def mantel_trial(seed: int, planted: bool, size: Size = TINY) -> float:
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((size.n_points, 8))
    W2 = W1 + 1.5 * rng.standard_normal(W1.shape) if planted else rng.standard_normal(W1.shape)
    return mantel(normalized_gram(W1), normalized_gram(W2), size.n_permutations, seed).p


def circle_trial(seed: int, planted: bool, size: Size = TINY, K: int = 12, d: int = 8) -> float:
    rng = np.random.default_rng(seed)
    if planted:
        phase = 2 * np.pi * np.arange(K) / K
        plane = np.linalg.qr(rng.standard_normal((d, 2)))[0]
        X = np.stack([np.cos(phase), np.sin(phase)], 1) @ plane.T + 0.4 * rng.standard_normal((K, d))
    else:
        X = rng.standard_normal((K, d))
    return circle_stats(X, size.n_permutations, seed)["p_value"]


def line_trial(seed: int, planted: bool, size: Size = TINY) -> float:
    """Smallest Holm-adjusted p over the default fractions (min_count 0: the p-value alone)."""
    rng = np.random.default_rng(seed)
    n = 10 * size.n_points
    D = rng.beta(2.0, 2.5, n)  # a smooth bump over [0, 1], no lines
    if planted:
        k = n // 10
        D[:k] = 0.5 + 0.002 * rng.standard_normal(k)
    lines = find_lines(np.clip(D, 0, 1), min_count=0)
    return float(min(v["p_holm"] for v in lines.values()))


TRIALS: dict[str, Callable[..., float]] = {
    "logic (held-out rows)": logic_trial,
    "mantel": mantel_trial,
    "circle permutation": circle_trial,
    "line test (Holm over fractions)": line_trial,
}


def calibrate(
    trial: Callable[..., float], n_seeds: int, alpha: float, size: Size = TINY, **kw: Any
) -> dict[str, Any]:
    """Rejection rates at alpha over seeds 0..n_seeds-1: null (false positives) and planted (power)."""
    null = np.array([trial(s, False, size, **kw) for s in range(n_seeds)])
    power = np.array([trial(s, True, size, **kw) for s in range(n_seeds)])
    return {
        "alpha": alpha,
        "n_seeds": n_seeds,
        "false_positive_rate": float(np.mean(null < alpha)),
        "n_false_positives": int(np.sum(null < alpha)),
        "power": float(np.mean(power < alpha)),
        "null_p": null.tolist(),
        "planted_p": power.tolist(),
    }


def with_size(size: Size, **changes: Any) -> Size:
    return replace(size, **changes)
