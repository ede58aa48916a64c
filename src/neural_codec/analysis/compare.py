"""Circuit comparison: do the Squeezer's synthetic neurons fire like the model's neurons?

The validation hypothesis of the project. Two neuron populations recorded on the same held-out
inputs (A: candidate, e.g. the Squeezer's M neurons; B: reference, e.g. the model's neurons) are
compared by

- the Pearson correlation matrix between every candidate and every reference neuron, the best
  |r| per candidate neuron, and a one-to-one Hungarian matching on |r| (a privileged basis is
  only "the same" if neurons match individually);
- linear CKA (Kornblith et al. 2019) and SVCCA (Raghu et al. 2017), which ignore the basis and
  ask whether the two populations span the same representation;
- the similarity of the feature-interference structure (Gram matrices of feature directions in
  neuron space) with a Mantel permutation test, which needs no neuron matching at all.

All population statistics are computed from running sums (`CrossMoments`), so held-out sets
stream through in batches: memory is (p + q)^2, not N. Constant ("dead") columns get r = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from neural_codec.runtime import progress

# A column whose variance is below this fraction of its mean square (or below _ABS_VAR_EPS) is
# treated as constant: correlations with it are 0 rather than noise divided by ~0.
_REL_VAR_EPS = 1e-10
_ABS_VAR_EPS = 1e-30


# --------------------------------------------------------------------------------------------
# Streaming second moments
# --------------------------------------------------------------------------------------------


class Moments:
    """Running moments of one population X (N, d): column sums, squares and (optionally) X^T X.

    Sums are kept in float64 around a shift (the first batch's column means), which avoids the
    cancellation of the naive sum-of-squares formula. One `Moments` can be shared by several
    `CrossMoments` (the model's neurons are compared with every candidate population).
    """

    def __init__(self, d: int, full: bool = True):
        self.d, self.full = d, full
        self.n = 0
        self.shift: np.ndarray | None = None
        self.s = np.zeros(d)
        self.sq = np.zeros(d)
        self.S = np.zeros((d, d)) if full else None
        self._cache: dict[Any, Any] = {}  # derived results (covariance, whitener), keyed with n

    @property
    def offset(self) -> np.ndarray:
        """The shift the sums are kept around (zeros before the first batch)."""
        return self.shift if self.shift is not None else np.zeros(self.d)

    def shifted(self, x: np.ndarray) -> np.ndarray:
        """x minus this population's shift (set from the first batch seen)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected (n, {self.d}), got {x.shape}")
        if self.shift is None:
            self.shift = x.mean(0) if len(x) else np.zeros(self.d)
        return x - self.shift

    def update(self, x: np.ndarray) -> np.ndarray:
        """Add a batch; returns it shifted (for cross-moment updates)."""
        x = self.shifted(x)
        self._cache.clear()
        self.n += len(x)
        self.s += x.sum(0)
        self.sq += np.einsum("ij,ij->j", x, x)
        if self.full:
            self.S += x.T @ x
        return x

    def cov(self) -> np.ndarray:
        """(d, d) covariance (population normalisation), cached until the next update."""
        if "cov" not in self._cache:
            if self.S is None:
                raise ValueError("within-population moments were not kept (full=False)")
            if self.n < 2:
                raise ValueError(f"need at least 2 rows, got {self.n}")
            mu = self.s / self.n
            c = self.S / self.n - np.outer(mu, mu)
            self._cache["cov"] = (c + c.T) / 2
        return self._cache["cov"]

    def whitener(self, keep: float) -> np.ndarray:
        """Whitened principal directions holding `keep` of the variance (cached: SVCCA of one
        population against several others needs its eigendecomposition once)."""
        key = ("whitener", keep)
        if key not in self._cache:
            self._cache[key] = _principal_whitener(self.cov(), keep)
        return self._cache[key]


class CrossMoments:
    """Running first and second moments of two row-aligned populations A (N, p) and B (N, q).

    Everything (correlations, CKA, SVCCA) is derived from the covariance blocks, so the data are
    read once. Pass existing `Moments` as `ma` / `mb` to share them between pairs; then feed
    batches with `update_cross` after updating the shared Moments yourself.
    """

    def __init__(
        self, p: int, q: int, with_within: bool = True, ma: Moments | None = None, mb: Moments | None = None
    ):
        self.p, self.q = p, q
        self.ma = ma if ma is not None else Moments(p, with_within)
        self.mb = mb if mb is not None else Moments(q, with_within)
        if self.ma.d != p or self.mb.d != q:
            raise ValueError(f"shared Moments have widths {self.ma.d}, {self.mb.d}; expected {p}, {q}")
        self.sab = np.zeros((p, q))
        self.n_cross = 0

    @property
    def n(self) -> int:
        return self.n_cross

    def update(self, a: np.ndarray, b: np.ndarray) -> CrossMoments:
        """Add a batch to A's, B's and the cross moments."""
        if len(a) != len(b):
            raise ValueError(f"A and B must be row-aligned: {len(a)} vs {len(b)} rows")
        if len(a) == 0:
            return self
        return self.update_cross(self.ma.update(a), self.mb.update(b))

    def update_cross(self, a_shifted: np.ndarray, b_shifted: np.ndarray) -> CrossMoments:
        """Add a batch to the cross moments only (inputs already shifted by ma / mb)."""
        if len(a_shifted) != len(b_shifted):
            raise ValueError(f"A and B must be row-aligned: {len(a_shifted)} vs {len(b_shifted)} rows")
        self.sab += a_shifted.T @ b_shifted
        self.n_cross += len(a_shifted)
        return self

    def _need(self) -> None:
        if self.n < 2:
            raise ValueError(f"need at least 2 rows, got {self.n}")
        if not (self.ma.n == self.mb.n == self.n):
            raise ValueError(f"moments saw different rows: A {self.ma.n}, B {self.mb.n}, cross {self.n}")

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        self._need()
        return self.ma.offset + self.ma.s / self.n, self.mb.offset + self.mb.s / self.n

    def variances(self) -> tuple[np.ndarray, np.ndarray]:
        self._need()
        ma, mb = self.ma.s / self.n, self.mb.s / self.n
        va = np.maximum(self.ma.sq / self.n - ma * ma, 0.0)
        vb = np.maximum(self.mb.sq / self.n - mb * mb, 0.0)
        return va, vb

    def dead(self) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks of constant columns of A and B."""
        va, vb = self.variances()
        mua, mub = self.means()
        return _is_const(va, mua), _is_const(vb, mub)

    def cov_ab(self) -> np.ndarray:
        self._need()
        ma, mb = self.ma.s / self.n, self.mb.s / self.n
        return self.sab / self.n - np.outer(ma, mb)

    def cov_aa(self) -> np.ndarray:
        self._need()
        return self.ma.cov()

    def cov_bb(self) -> np.ndarray:
        self._need()
        return self.mb.cov()

    def correlation(self) -> np.ndarray:
        """(p, q) Pearson r; 0 wherever either column is constant."""
        va, vb = self.variances()
        dead_a, dead_b = self.dead()
        sa = np.where(dead_a, 1.0, np.sqrt(va))
        sb = np.where(dead_b, 1.0, np.sqrt(vb))
        r = self.cov_ab() / np.outer(sa, sb)
        r[dead_a, :] = 0.0
        r[:, dead_b] = 0.0
        return np.clip(r, -1.0, 1.0)

    def cka(self) -> float:
        return cka_from_cov(self.cov_aa(), self.cov_bb(), self.cov_ab())

    def svcca(self, keep: float = 0.99) -> float:
        self._need()
        _check_keep(keep)
        return _svcca_whitened(self.ma.whitener(keep), self.mb.whitener(keep), self.cov_ab())


def _is_const(var: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return (var <= _ABS_VAR_EPS) | (var <= _REL_VAR_EPS * mean * mean)


def moments(A: np.ndarray, B: np.ndarray, batch_size: int = 65536, with_within: bool = True) -> CrossMoments:
    """CrossMoments of two in-memory (or memory-mapped) arrays, read in row batches."""
    if len(A) != len(B):
        raise ValueError(f"A and B must be row-aligned: {len(A)} vs {len(B)} rows")
    m = CrossMoments(A.shape[1], B.shape[1], with_within)
    for s in range(0, len(A), batch_size):
        m.update(A[s : s + batch_size], B[s : s + batch_size])
    return m


# --------------------------------------------------------------------------------------------
# Neuron-level comparison
# --------------------------------------------------------------------------------------------


def correlation_matrix(A: np.ndarray, B: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Pearson r between every column of A (N, p) and of B (N, q): (p, q); constant columns -> 0."""
    return moments(A, B, batch_size, with_within=False).correlation()


def best_abs_r(C: np.ndarray) -> np.ndarray:
    """Per row (candidate neuron) of a (p, q) correlation matrix, the best |r| over all columns."""
    C = np.asarray(C)
    if C.shape[1] == 0:
        return np.zeros(C.shape[0])
    return np.abs(C).max(axis=1)


@dataclass
class Matching:
    """A one-to-one matching of rows to columns of a correlation matrix (min(p, q) pairs)."""

    rows: np.ndarray
    cols: np.ndarray
    r: np.ndarray  # signed r of each matched pair

    @property
    def abs_r(self) -> np.ndarray:
        return np.abs(self.r)


def hungarian_match(C: np.ndarray) -> Matching:
    """Maximum-total-|r| one-to-one matching (rectangular allowed: min(p, q) pairs).

    Pairs are returned sorted by |r|, best first.
    """
    C = np.asarray(C, dtype=np.float64)
    rows, cols = linear_sum_assignment(np.abs(C), maximize=True)
    r = C[rows, cols]
    order = np.argsort(-np.abs(r), kind="stable")
    return Matching(rows[order], cols[order], r[order])


# --------------------------------------------------------------------------------------------
# Basis-free population similarity
# --------------------------------------------------------------------------------------------


def cka_from_cov(c_aa: np.ndarray, c_bb: np.ndarray, c_ab: np.ndarray) -> float:
    """Linear CKA from covariance blocks: ||C_ab||_F^2 / (||C_aa||_F ||C_bb||_F)."""
    den = np.linalg.norm(c_aa) * np.linalg.norm(c_bb)
    if den <= 0:
        return 0.0
    return float(np.linalg.norm(c_ab) ** 2 / den)


def linear_cka(A: np.ndarray, B: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) on column-centred A (N, p), B (N, q).

    ||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F): invariant to orthogonal transforms and isotropic
    scaling of either side, not to arbitrary invertible maps.
    """
    return moments(A, B).cka()


def _principal_whitener(c: np.ndarray, keep: float) -> np.ndarray:
    """Columns: the top principal directions holding a `keep` fraction of variance, whitened."""
    lam, vec = np.linalg.eigh(c)
    lam, vec = lam[::-1], vec[:, ::-1]
    lam = np.clip(lam, 0.0, None)
    total = lam.sum()
    if total <= 0:
        return np.zeros((c.shape[0], 0))
    rank = int((lam > lam[0] * 1e-10).sum())
    cum = np.cumsum(lam) / total
    k = min(int(np.searchsorted(cum, keep - 1e-12) + 1), rank)
    return vec[:, :k] / np.sqrt(lam[:k])


def _check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")


def _svcca_whitened(wa: np.ndarray, wb: np.ndarray, c_ab: np.ndarray) -> float:
    if wa.shape[1] == 0 or wb.shape[1] == 0:
        return 0.0
    s = np.linalg.svd(wa.T @ c_ab @ wb, compute_uv=False)
    return float(np.clip(s, 0.0, 1.0).mean())


def svcca_from_cov(c_aa: np.ndarray, c_bb: np.ndarray, c_ab: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA from covariance blocks: PCA-reduce each side to `keep` of its variance, then CCA.

    In the whitened principal bases the canonical correlations are the singular values of
    W_a^T C_ab W_b; the result is their mean over min(k_a, k_b) directions.
    """
    _check_keep(keep)
    return _svcca_whitened(_principal_whitener(c_aa, keep), _principal_whitener(c_bb, keep), c_ab)


def svcca(A: np.ndarray, B: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation after SVD-reducing A and B."""
    return moments(A, B).svcca(keep)


# --------------------------------------------------------------------------------------------
# Feature-interference structure
# --------------------------------------------------------------------------------------------


def normalized_gram(W: np.ndarray) -> np.ndarray:
    """Cosine Gram matrix of the rows of W (n, d); zero rows give zero rows and columns."""
    W = np.asarray(W, dtype=np.float64)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    Wn = np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)
    return Wn @ Wn.T


def squeezer_feature_gram(W_enc: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    """Interference of features in the Squeezer: cosines of rows of W_enc (n_features, M)."""
    W = np.asarray(W_enc)
    return normalized_gram(W if features is None else W[features])


def model_feature_loadings(
    W_sae_dec: np.ndarray, neuron_readin: np.ndarray, features: np.ndarray | None = None
) -> np.ndarray:
    """L_i = W_sae_dec[i] @ readin: how SAE latent i drives the model's neurons (n, n_neurons)."""
    W = np.asarray(W_sae_dec, dtype=np.float64)
    if features is not None:
        W = W[features]
    R = np.asarray(neuron_readin, dtype=np.float64)
    if W.shape[1] != R.shape[0]:
        raise ValueError(f"SAE W_dec has d_in {W.shape[1]} but neuron_readin has d_model {R.shape[0]}")
    return W @ R


def model_feature_gram(
    W_sae_dec: np.ndarray, neuron_readin: np.ndarray, features: np.ndarray | None = None
) -> np.ndarray:
    """Interference of SAE features in the model's neuron space: cosines of their loadings."""
    return normalized_gram(model_feature_loadings(W_sae_dec, neuron_readin, features))


def select_features(masks: list[np.ndarray], max_features: int, seed: int) -> np.ndarray:
    """Features passing every mask (alive, represented, ...), subsampled (seeded) to max_features."""
    ok = np.logical_and.reduce([np.asarray(m, dtype=bool) for m in masks])
    idx = np.flatnonzero(ok)
    if len(idx) > max_features:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_features, replace=False))
    return idx


@dataclass
class MantelResult:
    r: float
    p: float
    n_perm: int
    n: int
    null: np.ndarray = field(repr=False)


def mantel(G1: np.ndarray, G2: np.ndarray, n_perm: int = 999, seed: int = 0) -> MantelResult:
    """Mantel test: Pearson r between the upper triangles of two (n, n) symmetric matrices.

    The one-sided p-value (is r larger than chance?) permutes rows and columns of G2 jointly,
    which keeps its internal structure but breaks the feature correspondence:
    p = (1 + #{r_perm >= r}) / (1 + n_perm).
    """
    G1 = np.asarray(G1, dtype=np.float64)
    G2 = np.asarray(G2, dtype=np.float64)
    n = G1.shape[0]
    if G1.shape != (n, n) or G2.shape != (n, n):
        raise ValueError(f"need two square matrices of one size, got {G1.shape} and {G2.shape}")
    if n < 3:
        raise ValueError(f"need at least 3 items for a Mantel test, got {n}")
    iu = np.triu_indices(n, k=1)
    n_pairs = len(iu[0])

    def standardized(G: np.ndarray) -> np.ndarray | None:
        v = G[iu]
        sd = v.std()
        if sd <= 0:
            return None
        Z = np.zeros((n, n), dtype=np.float32)
        Z[iu] = (v - v.mean()) / sd
        return Z + Z.T  # zero diagonal; each pair counted twice

    Z1, Z2 = standardized(G1), standardized(G2)
    if Z1 is None or Z2 is None:
        return MantelResult(0.0, 1.0, n_perm, n, np.zeros(0))
    # Mean and sd of the off-diagonal entries are unchanged by a joint permutation, so each
    # permuted r is one dot product with the standardized matrices.
    r = float(np.vdot(Z1, Z2)) / (2 * n_pairs)
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for t in progress(range(n_perm), "Mantel permutations", n_perm):
        perm = rng.permutation(n)
        null[t] = float(np.vdot(Z1, Z2.take(perm, 0).take(perm, 1))) / (2 * n_pairs)
    p = (1 + int((null >= r - 1e-6).sum())) / (1 + n_perm)
    return MantelResult(r, p, n_perm, n, null)


# --------------------------------------------------------------------------------------------
# Floors
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


@dataclass
class NeuronComparison:
    """All neuron-level figures for one (candidate, reference) pair, plus what the plots need."""

    metrics: dict[str, Any]
    corr: np.ndarray
    matching: Matching


def compare_populations(
    m: CrossMoments, svcca_keep: float = 0.99, r_threshold: float = 0.5
) -> NeuronComparison:
    """Best |r| (soft matching, both ways), Hungarian matching, CKA and SVCCA from one CrossMoments.

    `hungarian_mean_r` and `frac_matched_above_0_5` use |r| of the matched pairs (the matching
    maximizes total |r|); `hungarian_mean_signed_r` keeps the sign. Dead candidate neurons count
    with r = 0 (a dead neuron matches nothing).
    """
    C = m.correlation()
    match = hungarian_match(C)
    dead_a, dead_b = m.dead()
    metrics = {
        "mean_best_abs_r": float(best_abs_r(C).mean()) if C.shape[0] else 0.0,
        # soft (many-to-one) matching the other way: each reference (model) neuron's best |r|
        # over the candidate's neurons; two model neurons may match one synthetic neuron
        "mean_best_abs_r_b": float(best_abs_r(C.T).mean()) if C.shape[1] else 0.0,
        "hungarian_mean_r": float(match.abs_r.mean()) if len(match.r) else 0.0,
        "hungarian_mean_signed_r": float(match.r.mean()) if len(match.r) else 0.0,
        "frac_matched_above_0_5": float((match.abs_r > r_threshold).mean()) if len(match.r) else 0.0,
        "cka": m.cka(),
        "svcca": m.svcca(svcca_keep),
        "n_neurons_a": int(m.p),
        "n_neurons_b": int(m.q),
        "n_dead_a": int(dead_a.sum()),
        "n_dead_b": int(dead_b.sum()),
        **spectrum_summary(m.cov_aa(), "a"),
        **spectrum_summary(m.cov_bb(), "b"),
    }
    return NeuronComparison(metrics, C, match)


def spectrum_summary(cov: np.ndarray, side: str) -> dict[str, float]:
    """How concentrated a population's variance is: the top principal component's share and the
    participation ratio (sum lambda)^2 / sum lambda^2 (its effective number of dimensions).

    Why: linear CKA weighs directions by variance, so one shared component (e.g. every neuron
    rising with the number of active features) dominates it; read CKA beside these."""
    lam = np.clip(np.linalg.eigvalsh(np.asarray(cov, dtype=np.float64)), 0.0, None)
    total = float(lam.sum())
    if total <= 0:
        return {f"top_pc_share_{side}": float("nan"), f"effective_rank_{side}": 0.0}
    return {
        f"top_pc_share_{side}": float(lam.max() / total),
        f"effective_rank_{side}": float(total**2 / float((lam**2).sum())),
    }


def matched_order(C: np.ndarray, match: Matching) -> tuple[np.ndarray, np.ndarray]:
    """Row and column orders that put matched pairs on the diagonal (best first), rest after."""
    rest_r = np.setdiff1d(np.arange(C.shape[0]), match.rows)
    rest_c = np.setdiff1d(np.arange(C.shape[1]), match.cols)
    return np.concatenate([match.rows, rest_r]), np.concatenate([match.cols, rest_c])


# --------------------------------------------------------------------------------------------
# Stage configuration and the floor / ceiling Squeezers
# --------------------------------------------------------------------------------------------


def interference(G_a: np.ndarray, G_b: np.ndarray, n_perm: int, seed: int) -> dict[str, Any]:
    """Mantel r and p between two feature Grams, as metrics keys."""
    res = mantel(G_a, G_b, n_perm, seed)
    return {"interference_mantel_r": res.r, "interference_mantel_p": res.p}
