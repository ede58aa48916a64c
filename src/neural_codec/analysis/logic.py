"""Logic of the codec: do features that share a synthetic neuron co-occur less (or more) than chance?

Two rival hypotheses about how a ReLU neuron packs several features:

* **OR gate / anticorrelated sharing** (Toy Models of Superposition, Elhage et al. 2022): features
  that rarely fire together can share a neuron because they seldom interfere, so neuron-sharing
  pairs should have lift P(i and j) / (P(i) P(j)) below 1.
* **Correlated sharing** (the BOWS result, 2025): features that tend to fire together share a
  neuron, so neuron-sharing pairs should have lift above 1.

The test compares the lift of neuron-sharing pairs against frequency-matched pairs that share no
neuron (a Mann-Whitney U test and Cliff's delta), separately for *same-sign* pairs (both features
have a large encoder weight of one sign on the neuron, positive or negative) and *opposite-sign* pairs (one large positive,
one large negative). Co-occurrence counts come from sparse products restricted to the features in
the needed pairs, streamed batch by batch, so memory never holds an n x n matrix.

Conventions (documented here once):

* A feature is *active* in a row when it is in the row's top-k with a value > 0.
* Neuron j's members: positive members have ``W_enc[i, j] > thr_j``, negative members
  ``W_enc[i, j] < -thr_j``, where ``thr_j = max(weight_threshold_abs,
  weight_threshold_frac * max_i |W_enc[i, j]|)``; at most ``top_per_neuron`` of each sign (the
  largest magnitudes) are kept.
* Lift uses a pseudo-count: ``(C_ij + a) / (E_ij + a)`` with ``E_ij = c_i c_j / N``; pairs with
  ``E_ij < min_expected`` are dropped from the test (too few expected co-occurrences to tell a
  lift of 0 from chance) and counted in the metrics. The rule is one for both groups: controls
  are drawn only for shared pairs that pass it, and a candidate control that fails is redrawn.
* Frequency bins are capped at (pool size) // 5 so small pools do not collapse the controls;
  fewer than ``min_control_pairs`` controls gives the verdict ``too_few_controls`` (no test).
* Verdict: ``anticorrelated_share`` when shared lifts are below the controls with p < alpha
  (the label-permutation p of ``label_permutation_test``, Holm-adjusted over the two sign
  groups: ``p_value_holm``; Mann-Whitney's ``p_value`` alone is anti-conservative) and
  |Cliff's delta| >= min_effect, ``correlated_share`` when above, else ``no_difference``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.stats

from neural_codec.analysis.stats import holm
from neural_codec.config import LogicConfig
from neural_codec.errors import check
from neural_codec.runtime import progress
from neural_codec.storage import SparseFeatures

VERDICTS = ("anticorrelated_share", "correlated_share", "no_difference")


# --------------------------------------------------------------------------------------------
# Which features share a neuron
# --------------------------------------------------------------------------------------------


@dataclass
class NeuronMembers:
    """Per neuron, the features with a large positive / negative encoder weight (strongest first)."""

    positive: list[np.ndarray]
    negative: list[np.ndarray]
    n_features: int

    @property
    def assigned(self) -> np.ndarray:
        """Boolean (n_features,): feature is a member (either sign) of at least one neuron."""
        out = np.zeros(self.n_features, dtype=bool)
        for a in self.positive + self.negative:
            out[a] = True
        return out


def neuron_members(
    w_enc: np.ndarray, frac: float = 0.5, abs_threshold: float = 0.0, top_per_neuron: int = 16
) -> NeuronMembers:
    """Members of each neuron from W_enc (n_features, M); see the module docstring for the rule."""
    w = np.asarray(w_enc, dtype=np.float64)
    n, m = w.shape
    scale = np.abs(w).max(axis=0) if n else np.zeros(m)
    thr = np.maximum(abs_threshold, frac * scale)
    pos: list[np.ndarray] = []
    neg: list[np.ndarray] = []
    for j in range(m):
        col = w[:, j]
        for sign, out in ((1.0, pos), (-1.0, neg)):
            s = sign * col
            cand = np.flatnonzero(s > thr[j])
            cand = cand[np.argsort(-s[cand], kind="stable")][:top_per_neuron]
            out.append(cand.astype(np.int64))
    return NeuronMembers(pos, neg, n)


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo.astype(np.int64) * n + hi.astype(np.int64)


def _unique_pairs(keys: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated (P, 2) pairs (i < j) and how many neurons each pair shares."""
    if not keys or sum(len(k) for k in keys) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    uk, mult = np.unique(np.concatenate(keys), return_counts=True)
    return np.stack([uk // n, uk % n], axis=1), mult


def shared_pairs(members: NeuronMembers) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Feature pairs sharing a neuron: {"same_sign": (pairs, n_neurons), "opposite_sign": ...}.

    Same sign: both features are members of some neuron with the same sign of weight, positive
    *or negative* (signs folded: with a positive b_enc, features encode as negative weights, and a
    negative-negative pair shares the neuron as much as a positive-positive one). Opposite sign:
    one is a positive and the other a negative member of the same neuron. Pairs are (i, j) with
    i < j, unique. Every pair of members of one neuron is in exactly one group.
    """
    n = members.n_features
    same, opp = [], []
    for p, q in zip(members.positive, members.negative, strict=False):
        for side in (p, q):
            if len(side) >= 2:
                a, b = np.triu_indices(len(side), k=1)
                same.append(_pair_keys(side[a], side[b], n))
        if len(p) and len(q):
            a, b = np.meshgrid(p, q, indexing="ij")
            keep = a.ravel() != b.ravel()
            opp.append(_pair_keys(a.ravel()[keep], b.ravel()[keep], n))
    return {"same_sign": _unique_pairs(same, n), "opposite_sign": _unique_pairs(opp, n)}


# --------------------------------------------------------------------------------------------
# Co-occurrence with sparse products
# --------------------------------------------------------------------------------------------


def _binary_csr(feats: SparseFeatures) -> sp.csr_matrix:
    b = feats.to_csr()
    b.data[:] = 1.0
    return b


@dataclass
class Cooccurrence:
    """Pair co-occurrence counts over `n_rows` rows, with every feature's marginal count."""

    pairs: np.ndarray  # (P, 2)
    counts: np.ndarray  # (P,) rows where both are active
    marginals: np.ndarray  # (n_features,) rows where each feature is active
    n_rows: int


def cooccurrence(feats_iter: Iterable[SparseFeatures], pairs: np.ndarray) -> Cooccurrence:
    """Count rows where both features of each pair are active, streaming over batches.

    Per batch: binarize F to CSR, keep only the columns that appear in `pairs` (U of them),
    form the sparse U x U product B_U^T B_U and read the pair entries out of it. Memory is bounded
    by one batch and the (sparse) U x U block, never n x n.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    cols, inv = np.unique(pairs.ravel(), return_inverse=True)
    la, lb = inv.reshape(-1, 2).T
    counts = np.zeros(len(pairs), dtype=np.int64)
    marginals: np.ndarray | None = None
    n_rows = 0
    for feats in feats_iter:
        b = _binary_csr(feats)
        if marginals is None:
            marginals = np.zeros(feats.n_features, dtype=np.int64)
        marginals += np.asarray(b.sum(axis=0)).ravel().astype(np.int64)
        n_rows += b.shape[0]
        if len(pairs):
            bu = b[:, cols].tocsc()
            gram = (bu.T @ bu).tocsr()
            counts += np.rint(np.asarray(gram[la, lb]).ravel()).astype(np.int64)
            del bu, gram  # free before the next batch is built: peak memory is one batch's
        del b
    if marginals is None:
        marginals = np.zeros(int(pairs.max()) + 1 if len(pairs) else 0, dtype=np.int64)
    return Cooccurrence(pairs, counts, marginals, n_rows)


def pair_stats(
    counts: np.ndarray,
    count_i: np.ndarray,
    count_j: np.ndarray,
    n_rows: int,
    pseudo_count: float = 0.5,
) -> dict[str, np.ndarray]:
    """Expected count, lift (with pseudo-count) and phi coefficient for each pair.

    E = c_i c_j / N; lift = (C + a) / (E + a); phi = (N C - c_i c_j) /
    sqrt(c_i (N - c_i) c_j (N - c_j)) (NaN where a feature is always or never active).
    """
    c = np.asarray(counts, dtype=np.float64)
    ci = np.asarray(count_i, dtype=np.float64)
    cj = np.asarray(count_j, dtype=np.float64)
    n = float(n_rows)
    expected = ci * cj / max(n, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = (c + pseudo_count) / (expected + pseudo_count)
        denom = np.sqrt(ci * (n - ci) * cj * (n - cj))
        phi = np.where(denom > 0, (n * c - ci * cj) / denom, np.nan)
    return {"observed": c, "expected": expected, "lift": lift, "phi": phi}


# --------------------------------------------------------------------------------------------
# Frequency-matched controls and the test
# --------------------------------------------------------------------------------------------


MIN_FEATURES_PER_BIN = 5  # a bin of one or two features has (almost) no control pairs to offer


def frequency_bins(
    freq: np.ndarray, pool: np.ndarray, n_bins: int, min_per_bin: int = MIN_FEATURES_PER_BIN
) -> np.ndarray:
    """Bin id per feature by equal-count quantiles of log frequency over `pool`; -1 if outside.

    The number of bins is capped at (pool size) // `min_per_bin`, so a small pool (few assigned
    features) gets coarser bins instead of one feature per bin, where every control of (i, j)
    would be (i, j) itself and the controls collapse to a handful of pairs."""
    freq = np.asarray(freq, dtype=np.float64)
    bins = np.full(len(freq), -1, dtype=np.int64)
    ok = pool & (freq > 0)
    if not ok.any():
        return bins
    n_bins = max(1, min(n_bins, int(ok.sum()) // max(1, min_per_bin)))
    logf = np.log(freq[ok])
    edges = np.unique(np.quantile(logf, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins[ok] = np.searchsorted(edges, logf, side="right")
    return bins


def matched_controls(
    pairs: np.ndarray,
    bins: np.ndarray,
    excluded_keys: np.ndarray,
    n_per_pair: int,
    rng: np.random.Generator,
    max_tries: int = 20,
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """For each pair (i, j), `n_per_pair` pairs (i', j') with bin(i') = bin(i), bin(j') = bin(j).

    A control shares no neuron (its key is not in `excluded_keys`, sorted) and has i' != j'.
    Candidates are drawn uniformly within bins and redrawn up to `max_tries` times; controls
    still invalid after that are dropped. `accept(a, b)` (optional) is a further rule every
    control must pass (the same low-expected-count rule the shared pairs passed). Returns
    (P_control, 2) with i < j.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n = len(bins)
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(bins, kind="stable")
    sorted_bins = bins[order]
    n_bins = int(bins.max()) + 1
    start = np.searchsorted(sorted_bins, np.arange(n_bins), side="left")
    size = np.searchsorted(sorted_bins, np.arange(n_bins), side="right") - start
    targets = np.repeat(pairs, n_per_pair, axis=0)
    bi, bj = bins[targets[:, 0]], bins[targets[:, 1]]
    valid_target = (bi >= 0) & (bj >= 0)
    bi, bj = bi[valid_target], bj[valid_target]
    out = np.full((len(bi), 2), -1, dtype=np.int64)
    todo = np.arange(len(bi))
    excluded_keys = np.sort(np.asarray(excluded_keys, dtype=np.int64))
    for _ in range(max_tries):
        if not len(todo):
            break
        a = order[start[bi[todo]] + rng.integers(0, size[bi[todo]])]
        b = order[start[bj[todo]] + rng.integers(0, size[bj[todo]])]
        keys = _pair_keys(a, b, n)
        good = (a != b) & (_lookup(keys, excluded_keys) < 0)
        if accept is not None:
            good &= accept(a, b)
        out[todo[good]] = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[good]
        todo = todo[~good]
    return out[out[:, 0] >= 0]


def _mean_log2(x: np.ndarray) -> float | None:
    """Mean log2 (the geometric-mean lift, in bits); None if empty or not all positive."""
    return float(np.mean(np.log2(x))) if len(x) and (x > 0).all() else None


def compare_lifts(
    shared: np.ndarray, control: np.ndarray, alpha: float = 0.01, min_effect: float = 0.147
) -> dict[str, Any]:
    """Mann-Whitney U (two-sided) of shared vs control lifts, Cliff's delta and the verdict.

    Cliff's delta = P(shared > control) - P(shared < control) = 2 U / (n1 n2) - 1, which equals
    the rank-biserial correlation; negative means sharing pairs co-occur less than controls.
    """
    shared = np.asarray(shared, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    shared, control = shared[np.isfinite(shared)], control[np.isfinite(control)]
    out: dict[str, Any] = {
        "n_shared": int(len(shared)),
        "n_control": int(len(control)),
        "median_lift_shared": float(np.median(shared)) if len(shared) else None,
        "median_lift_control": float(np.median(control)) if len(control) else None,
        "mean_log2_lift_shared": _mean_log2(shared),
        "mean_log2_lift_control": _mean_log2(control),
        "frac_lift_below_1_shared": float(np.mean(shared < 1)) if len(shared) else None,
        "frac_lift_below_1_control": float(np.mean(control < 1)) if len(control) else None,
        "mannwhitney_u": None,
        "p_value": None,
        "cliffs_delta": None,
        "verdict": "no_difference",
    }
    if len(shared) and len(control):
        res = scipy.stats.mannwhitneyu(shared, control, alternative="two-sided")
        delta = 2.0 * float(res.statistic) / (len(shared) * len(control)) - 1.0
        out.update(mannwhitney_u=float(res.statistic), p_value=float(res.pvalue), cliffs_delta=delta)
        if res.pvalue < alpha and abs(delta) >= min_effect:
            out["verdict"] = "anticorrelated_share" if delta < 0 else "correlated_share"
    return out


#: the label-permutation test holds one dense count matrix over the features that can be
#: relabelled; above this many it is skipped (p_value_perm None) and the verdict reads Mann-Whitney
PERMUTATION_MAX_FEATURES = 4096


def _cliffs_delta(shared: np.ndarray, control: np.ndarray) -> float | None:
    if not len(shared) or not len(control):
        return None
    ranks = scipy.stats.rankdata(np.concatenate([shared, control]))
    u = ranks[: len(shared)].sum() - len(shared) * (len(shared) + 1) / 2
    return float(2.0 * u / (len(shared) * len(control)) - 1.0)


def label_permutation_test(
    feats_iter: Iterable[SparseFeatures],
    n: int,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    bins: np.ndarray,
    cfg: LogicConfig,
    rng: np.random.Generator,
) -> dict[str, float | None]:
    """p-value of each group's Cliff's delta (shared vs control lifts) under relabelling the
    features within their frequency bins (a QAP-style test, like the Mantel test's).

    Mann-Whitney treats every pair's lift as independent, but pairs share features and the
    controls are resampled from a finite pool, so on independent features it rejects far more
    often than alpha once there are thousands of pairs (benchmarks/calibration.py). Relabelling
    keeps the sharing graph's shape (degrees, overlaps) and the frequency matching and breaks
    only the link between sharing and co-occurrence: p = (1 + #{|delta_perm| >= |delta|}) / (1 + n_perm).
    """
    used = np.unique(np.concatenate([np.flatnonzero(bins >= 0)] + [np.concatenate([a.ravel(), b.ravel()])
                                                                   for a, b in pairs.values()]))  # fmt: skip
    if cfg.n_label_permutations == 0 or len(used) > PERMUTATION_MAX_FEATURES or not len(used):
        return {g: None for g in pairs}
    counts = np.zeros((len(used), len(used)))
    marg = np.zeros(n)
    n_rows = 0
    for feats in feats_iter:
        b = _binary_csr(feats)
        marg += np.asarray(b.sum(axis=0)).ravel()
        n_rows += b.shape[0]
        bs = b[:, used].tocsc()
        counts += (bs.T @ bs).toarray()
    pos = np.full(n, -1, dtype=np.int64)
    pos[used] = np.arange(len(used))
    expected = np.outer(marg[used], marg[used]) / max(n_rows, 1)
    lift = (counts + cfg.pseudo_count) / (expected + cfg.pseudo_count)
    lift[expected < cfg.min_expected] = np.nan

    def delta(pi: np.ndarray, shared: np.ndarray, control: np.ndarray) -> float | None:
        ls = lift[pos[pi[shared[:, 0]]], pos[pi[shared[:, 1]]]]
        lc = lift[pos[pi[control[:, 0]]], pos[pi[control[:, 1]]]]
        return _cliffs_delta(ls[np.isfinite(ls)], lc[np.isfinite(lc)])

    ident = np.arange(n)
    observed = {g: delta(ident, a, b) for g, (a, b) in pairs.items()}
    members = [np.flatnonzero(bins == k) for k in range(int(bins.max()) + 1)] if (bins >= 0).any() else []
    exceed = dict.fromkeys(pairs, 0)
    for _ in progress(range(cfg.n_label_permutations), "label permutations", cfg.n_label_permutations):
        pi = ident.copy()
        for mem in members:
            pi[mem] = rng.permutation(mem)
        for g, (a, b) in pairs.items():
            d, o = delta(pi, a, b), observed[g]
            if d is not None and o is not None and abs(d) >= abs(o) - 1e-12:
                exceed[g] += 1
    return {
        g: None if observed[g] is None else (1 + exceed[g]) / (1 + cfg.n_label_permutations) for g in pairs
    }


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> np.ndarray:
    """Index of each key in sorted `table_keys` (-1 if absent)."""
    if not len(table_keys):
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    return np.where(table_keys[pos] == keys, pos, -1)


# --------------------------------------------------------------------------------------------
# Truth tables
# --------------------------------------------------------------------------------------------


CELLS = ("neither", "a_only", "b_only", "both")


def truth_tables(
    feats_iter: Iterable[SparseFeatures],
    neurons: np.ndarray,
    requests: Sequence[tuple[int, int, int]],
    rest: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """For each (neuron, a, b): rows, firings and mean activation in the four cells of (A, B).

    A = feature a active, B = feature b active (other features may be active too). `neurons`
    (N, M) is row-aligned with the stream (a memmap is fine: it is read batch by batch).
    A neuron fires when it is above its resting output `rest` (M,), its activation on an input
    with no feature active (Squeezer: ReLU(b_enc); default 0). With a positive bias a neuron is
    > 0 on almost every row, so "h > 0" would say nothing about A and B.
    """
    reqs = np.asarray(requests, dtype=np.int64).reshape(-1, 3)
    feat_cols, inv = np.unique(reqs[:, 1:].ravel(), return_inverse=True)
    ia, ib = inv.reshape(-1, 2).T
    rows = np.zeros((len(reqs), 4), dtype=np.int64)
    fires = np.zeros((len(reqs), 4), dtype=np.int64)
    h_sum = np.zeros((len(reqs), 4))
    rest_r = np.zeros(len(reqs)) if rest is None else np.asarray(rest, dtype=np.float64)[reqs[:, 0]]
    above = rest_r + 1e-6 * np.maximum(1.0, np.abs(rest_r))  # float32 round-off is not firing
    offset = 0
    for feats in feats_iter:
        nb = len(feats)
        h = np.asarray(neurons[offset : offset + nb])
        if h.shape[0] != nb:
            raise ValueError(f"neurons has {len(neurons)} rows, fewer than the features stream")
        offset += nb
        if not len(reqs):
            continue
        act = _binary_csr(feats)[:, feat_cols].toarray() > 0  # (nb, U): small
        hr = h[:, reqs[:, 0]]  # (nb, R)
        on = hr > above
        cell = act[:, ia].astype(np.int64) + 2 * act[:, ib].astype(np.int64)  # 0..3
        for c in range(4):
            m = cell == c
            rows[:, c] += m.sum(axis=0)
            fires[:, c] += (m & on).sum(axis=0)
            h_sum[:, c] += np.where(m, hr, 0.0).sum(axis=0)
    if offset != len(neurons):
        raise ValueError(f"neurons has {len(neurons)} rows but the features stream had {offset}")
    out = []
    for r, (j, a, b) in enumerate(reqs):
        table: dict[str, Any] = {
            "neuron": int(j),
            "feature_a": int(a),
            "feature_b": int(b),
            "rest": float(rest_r[r]),
        }
        for c, name in enumerate(CELLS):
            table[f"n_{name}"] = int(rows[r, c])
            table[f"fires_{name}"] = int(fires[r, c])
            table[f"p_fire_{name}"] = fires[r, c] / rows[r, c] if rows[r, c] else None
            table[f"mean_h_{name}"] = h_sum[r, c] / rows[r, c] if rows[r, c] else None
        out.append(table)
    return out


def truth_table_requests(
    members: NeuronMembers,
    w_enc: np.ndarray,
    neuron_mass: np.ndarray,
    n_neurons: int,
    n_pairs: int,
) -> list[tuple[int, int, int]]:
    """Top neurons (by activation mass, among those with >= 2 positive members) and, for each,
    the member pairs with the largest product of positive weights."""
    eligible = [j for j, p in enumerate(members.positive) if len(p) >= 2]
    eligible.sort(key=lambda j: (-float(neuron_mass[j]), j))
    reqs = []
    for j in eligible[:n_neurons]:
        p = members.positive[j]
        a, b = np.triu_indices(len(p), k=1)
        prod = w_enc[p[a], j] * w_enc[p[b], j]
        for t in np.argsort(-prod, kind="stable")[:n_pairs]:
            reqs.append((int(j), int(p[a[t]]), int(p[b[t]])))
    return reqs


# --------------------------------------------------------------------------------------------
# The whole analysis
# --------------------------------------------------------------------------------------------


@dataclass
class LogicResult:
    metrics: dict[str, Any]
    lifts: dict[str, np.ndarray]  # group -> lifts kept for the test ("shared_same_sign", ...)


def _summary(x: np.ndarray) -> dict[str, Any]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0, "median": None, "mean": None}
    return {"n": int(len(x)), "median": float(np.median(x)), "mean": float(np.mean(x))}


def analyse_sharing(
    w_enc: np.ndarray,
    cooc_feats: Callable[[], Iterable[SparseFeatures]],
    cfg: LogicConfig,
    families: Sequence[dict[str, Any]] = (),
) -> tuple[LogicResult, NeuronMembers]:
    """Shared vs matched-control lift test for both sign groups, plus family-level ground truth.

    `cooc_feats()` returns a fresh iterator of SparseFeatures batches (it is streamed twice: once
    for marginals, once for the pair counts).
    """
    w_enc = np.asarray(w_enc, dtype=np.float64)
    n, m = w_enc.shape
    rng = np.random.default_rng(cfg.seed)
    members = neuron_members(w_enc, cfg.weight_threshold_frac, cfg.weight_threshold_abs, cfg.top_per_neuron)
    groups = shared_pairs(members)

    # Pass 1: marginals (for frequency matching).
    marg = cooccurrence(cooc_feats(), np.zeros((0, 2), dtype=np.int64))
    check(marg.n_rows > 0, "logic.cooccurrence_split", cfg.cooccurrence_split, "a non-empty split")
    check(
        len(marg.marginals) == n,
        "squeezer W_enc rows",
        n,
        f"the features' n_features = {len(marg.marginals)}",
    )
    freq = marg.marginals / marg.n_rows
    live = marg.marginals > 0  # latents that fire on the co-occurrence split

    all_shared_keys = np.unique(np.concatenate([_pair_keys(p[:, 0], p[:, 1], n) for p, _ in groups.values()]))
    pool = members.assigned if cfg.control_pool == "assigned" else np.ones(n, dtype=bool)
    bins = frequency_bins(freq, pool, cfg.n_freq_bins)

    # One low-expected-count rule for shared and control pairs alike: a pair is tested only if
    # its expected co-occurrence f_i f_j N >= min_expected; controls are drawn only for the shared
    # pairs that pass, and a candidate control that fails the rule is redrawn (so the two groups
    # are filtered by the same rule and stay frequency-matched to each other).
    def expected(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(marg.marginals[a], dtype=np.float64) * marg.marginals[b] / marg.n_rows

    def passes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return expected(a, b) >= cfg.min_expected

    testable = {g: passes(p[:, 0], p[:, 1]) for g, (p, _) in groups.items()}
    controls = {
        g: matched_controls(p[testable[g]], bins, all_shared_keys, cfg.n_control_per_pair, rng, accept=passes)
        for g, (p, _) in groups.items()
    }

    # Family pairs (ground truth, synthetic): every within-family pair of distinct members.
    # Only live members (they fire on the co-occurrence split): a dead latent has no
    # co-occurrence to test, and chance below is taken over live pairs.
    fam_lists: dict[str, list[np.ndarray]] = {}
    fam_dead: dict[str, int] = {}
    for fam in families:
        mem = np.unique(np.asarray(fam.get("members", []), dtype=np.int64))
        mem = mem[(mem >= 0) & (mem < n)]
        fam_dead[fam["kind"]] = fam_dead.get(fam["kind"], 0) + int((~live[mem]).sum())
        mem = mem[live[mem]]
        if len(mem) >= 2:
            a, b = np.triu_indices(len(mem), k=1)
            fam_lists.setdefault(fam["kind"], []).append(np.stack([mem[a], mem[b]], axis=1))
    fam_pairs = {k: np.unique(np.concatenate(v), axis=0) for k, v in fam_lists.items()}

    # Pass 2: counts for every pair we need, in one stream.
    blocks = [p for p, _ in groups.values()] + list(controls.values()) + list(fam_pairs.values())
    needed = (
        np.unique(np.concatenate([b.reshape(-1, 2) for b in blocks]), axis=0)
        if blocks
        else np.zeros((0, 2), dtype=np.int64)
    )
    cooc = cooccurrence(cooc_feats(), needed)
    needed_keys = _pair_keys(needed[:, 0], needed[:, 1], n)
    stats = pair_stats(
        cooc.counts, cooc.marginals[needed[:, 0]], cooc.marginals[needed[:, 1]], cooc.n_rows, cfg.pseudo_count
    )

    def stats_for(pairs: np.ndarray) -> dict[str, np.ndarray]:
        idx = _lookup(_pair_keys(pairs[:, 0], pairs[:, 1], n), needed_keys)
        return {k: v[idx] for k, v in stats.items()}

    metrics: dict[str, Any] = {
        "n_features": n,
        "n_neurons": m,
        "n_rows": cooc.n_rows,
        "split": cfg.cooccurrence_split,
        "n_active_features": int(live.sum()),
        "n_assigned_features": int(members.assigned.sum()),
        "mean_positive_members_per_neuron": float(np.mean([len(p) for p in members.positive])),
        "mean_negative_members_per_neuron": float(np.mean([len(q) for q in members.negative])),
        "n_freq_bins_used": int(bins.max()) + 1 if (bins >= 0).any() else 0,
    }
    lifts: dict[str, np.ndarray] = {}
    for g, (p, mult) in groups.items():
        s, c = stats_for(p), stats_for(controls[g])
        ks, kc = testable[g], c["expected"] >= cfg.min_expected  # kc: all true (drawn under the rule)
        res = compare_lifts(s["lift"][ks], c["lift"][kc], cfg.alpha, cfg.min_effect)
        if res["n_shared"] and res["n_control"] < cfg.min_control_pairs:
            # too few controls to test against: no verdict rather than a spurious one
            res["verdict"] = "too_few_controls"
        phi = compare_lifts(s["phi"][ks], c["phi"][kc], cfg.alpha, cfg.min_effect)
        res.update(
            n_pairs=int(len(p)),
            n_pairs_multi_neuron=int((mult > 1).sum()),
            n_dropped_low_expected=int((~ks).sum()),
            n_control_sampled=int(len(controls[g])),
            n_control_dropped_low_expected=int((~kc).sum()),
            n_control_wanted=int(ks.sum()) * cfg.n_control_per_pair,
            n_same_sign_negative_negative=int(sum(len(q) * (len(q) - 1) // 2 for q in members.negative))
            if g == "same_sign"
            else None,
            median_phi_shared=phi["median_lift_shared"],
            median_phi_control=phi["median_lift_control"],
            phi_p_value=phi["p_value"],
            phi_cliffs_delta=phi["cliffs_delta"],
            frac_never_cooccur_shared=float(np.mean(s["observed"][ks] == 0)) if ks.any() else None,
            frac_never_cooccur_control=float(np.mean(c["observed"][kc] == 0)) if kc.any() else None,
        )
        metrics[g] = res
        lifts[f"shared_{g}"] = s["lift"][ks]
        lifts[f"control_{g}"] = c["lift"][kc]
    # The verdicts read the label-permutation p (Mann-Whitney where it is skipped), Holm-adjusted
    # over the sign groups tested together.
    perm = label_permutation_test(
        cooc_feats(), n, {g: (p, controls[g]) for g, (p, _) in groups.items()}, bins, cfg, rng
    )
    for g in groups:
        metrics[g]["p_value_perm"] = perm[g]
        metrics[g]["p_value_test"] = "label_permutation" if perm[g] is not None else "mann_whitney"
    test_p = {g: metrics[g]["p_value_perm"] if perm[g] is not None else metrics[g]["p_value"] for g in groups}
    group_p = [v for v in test_p.values() if v is not None]
    adjusted = iter(holm(group_p))
    for g in groups:
        res = metrics[g]
        res["p_value_holm"] = float(next(adjusted)) if test_p[g] is not None else None
        if res["verdict"] != "no_difference" and not res["p_value_holm"] < cfg.alpha:
            res["verdict"] = "no_difference"
    metrics["verdict"] = metrics["same_sign"]["verdict"]
    metrics["verdict_opposite_sign"] = metrics["opposite_sign"]["verdict"]

    # Family-level ground truth. Chance is the fraction of *live* pairs (both latents fire on
    # the co-occurrence split) that share a neuron: family members are latents that fire, and a
    # trained Squeezer never makes a dead latent a member, so dividing by all n(n-1)/2 pairs
    # deflated chance by ~(n / n_live)^2 (3.6x on the identity codec, 84 of 160 latents live)
    # and inflated every family enrichment by as much.
    n_live = metrics["n_active_features"]
    live_pairs = n_live * (n_live - 1) / 2
    group_keys = {g: _pair_keys(p[:, 0], p[:, 1], n) for g, (p, _) in groups.items()}
    group_chance = {
        g: int((live[p[:, 0]] & live[p[:, 1]]).sum()) / live_pairs if live_pairs else 0.0
        for g, (p, _) in groups.items()
    }
    fam_metrics: dict[str, Any] = {}
    for kind, fp in fam_pairs.items():
        keys = _pair_keys(fp[:, 0], fp[:, 1], n)
        st = stats_for(fp)
        ok = st["expected"] >= cfg.min_expected
        entry: dict[str, Any] = {
            "n_pairs": int(len(fp)),
            "n_members_dead": fam_dead.get(kind, 0),
            "lift_all_pairs": _summary(st["lift"][ok]),
        }
        for g in groups:
            is_shared = np.isin(keys, group_keys[g])
            chance = group_chance[g]
            frac = float(is_shared.mean())
            entry[g] = {
                "n_sharing": int(is_shared.sum()),
                "frac_sharing": frac,
                "frac_sharing_chance": float(chance),
                "enrichment": frac / chance if chance > 0 else None,
                "lift_sharing_pairs": _summary(st["lift"][is_shared & ok]),
                "frac_lift_below_1_sharing": float(np.mean(st["lift"][is_shared & ok] < 1))
                if (is_shared & ok).any()
                else None,
            }
        fam_metrics[kind] = entry
    metrics["families"] = fam_metrics
    return LogicResult(metrics, lifts), members


LIFT_BIN_EDGES = np.arange(-6.0, 6.0 + 1e-9, 0.25)  # log2 lift; out-of-range values go to the ends


def lift_histogram(lifts: dict[str, np.ndarray]) -> tuple[list[str], list[list[float]]]:
    """Fraction of each group's pairs per log2-lift bin (a wide table for `dvc plots`)."""
    edges = LIFT_BIN_EDGES
    centers = (edges[:-1] + edges[1:]) / 2
    header = ["log2_lift"] + list(lifts)
    cols = []
    for x in lifts.values():
        lx = np.clip(np.log2(np.maximum(x, 1e-300)), edges[0], edges[-1] - 1e-9)
        h = np.histogram(lx, bins=edges)[0].astype(np.float64)
        cols.append(h / max(h.sum(), 1.0))
    rows = [[float(c)] + [float(col[i]) for col in cols] for i, c in enumerate(centers)]
    return header, rows
