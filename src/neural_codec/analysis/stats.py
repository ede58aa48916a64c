"""Intervals and multiple-comparison corrections shared by every analysis.

- `interval(values)`: a headline over seeds as {"mean", "ci_low", "ci_high", "n_seeds"} (Student-t
  95% interval of the mean; with one seed the interval is the point).
- `bootstrap_interval(values)`: the same shape for one seed, over rows (percentile bootstrap).
- `bootstrap_ratio(num, den)`: the same over rows for a ratio of sums (FVU = sum of per-row
  squared errors / sum of per-row squared deviations).
- `complement(iv)`: the interval of 1 - x (explained variance from an FVU-like ratio).
- `holm(p)`: Holm (1979) step-down adjusted p-values, the correction used wherever the report
  tests several things at once (line fractions, cyclic families, the two logic sign groups). It
  controls the family-wise error rate at alpha under any dependence, and is uniformly more
  powerful than Bonferroni. `benjamini_hochberg(p)` (false-discovery rate) is here for
  exploratory scans, not used by any verdict.
- `clears(a, b)`: does interval `a` lie wholly above interval `b` (a measure "holds" against its
  floor only then).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], float)
    return x[np.isfinite(x)]


def interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t interval of the mean over seeds (non-finite values dropped)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n_seeds": 1}
    half = float(scipy.stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n_seeds": n}


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Any = np.mean,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap of `statistic` over rows (where seeds do not apply); n_seeds = 1."""
    x = _finite(values)
    if len(x) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": 1, "n_rows": 0}
    rng = np.random.default_rng(seed)
    boot = np.array([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    lo, hi = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    return {"mean": float(statistic(x)), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": 1,
            "n_rows": int(len(x))}  # fmt: skip


def bootstrap_ratio(
    num: Sequence[float] | np.ndarray,
    den: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap over rows of sum(num) / sum(den) (rows resampled together); the
    mean is the full-sample ratio. For FVU: num = ||F_r - F_hat_r||^2, den = ||F_r - mean F||^2."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)

    def ratio(rows: np.ndarray) -> float:
        r = rows.astype(np.int64)
        d = float(b[r].sum())
        return float(a[r].sum()) / d if d > 0 else float("nan")

    return bootstrap_interval(np.arange(len(a)), ratio, n_boot, level, seed)


def complement(iv: dict[str, Any]) -> dict[str, Any]:
    """The interval of 1 - x from x's (explained variance = 1 - the ratio `bootstrap_ratio` gives)."""
    if iv.get("mean") is None:
        return dict(iv)
    return {**iv, "mean": 1.0 - iv["mean"], "ci_low": 1.0 - iv["ci_high"], "ci_high": 1.0 - iv["ci_low"]}


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as `p`); reject where adjusted < alpha."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values), same order as `p`."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def clears(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """True when interval a lies wholly above interval b; None when either is missing."""
    if not a or not b or a.get("ci_low") is None or b.get("ci_high") is None:
        return None
    return bool(a["ci_low"] > b["ci_high"])
