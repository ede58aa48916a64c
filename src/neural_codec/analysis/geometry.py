"""Weight geometry of the codec: feature dimensionality, polytopes and circles.

Why: if the Squeezer stores more features than neurons by superposition, Toy Models of
Superposition (Elhage et al. 2022) predicts that features arrange into tight frames (digons,
triangles, tetrahedra, pentagons, ...) whose feature dimensionalities D_i sit on the fractions
1, 3/4, 2/3, 1/2, 2/5, 3/8; and cyclic feature families (weekdays, months; Engels et al. 2024)
should lie on circles. Every statistic here comes with a test against a null so that "a line at
2/5" or "a circle" is a number with a p-value, not an impression.

All functions take plain numpy weight matrices with **rows = features** (the encoder `W_enc`
as is, the decoder as `W_dec.T`), so they do not depend on the Squeezer module.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.stats
from scipy.sparse.csgraph import connected_components

from neural_codec.analysis.stats import holm
from neural_codec.config import DEFAULT_FRACTIONS, GeometryConfig, parse_fraction

# --------------------------------------------------------------------------------------------
# Feature dimensionality
# --------------------------------------------------------------------------------------------


def feature_dimensionality(W: np.ndarray) -> np.ndarray:
    """D_i = ||W_i||^4 / sum_j (W_i . W_j)^2 (Elhage et al. 2022); 0 for a zero row.

    Uses sum_j (W_i . W_j)^2 = W_i^T (W^T W) W_i, so it costs O(n M^2) and never forms the
    n x n Gram matrix (n can be 32k latents).
    """
    W = np.asarray(W, dtype=np.float64)
    C = W.T @ W
    sq = np.einsum("im,im->i", W @ C, W)
    norm4 = np.einsum("im,im->i", W, W) ** 2
    out = np.zeros(len(W))
    ok = sq > 0
    out[ok] = norm4[ok] / sq[ok]
    return np.clip(out, 0.0, 1.0)


def dimensions_per_feature(W: np.ndarray) -> float:
    """D* = M / ||W||_F^2: how many dimensions each (unit-norm) feature gets on average."""
    W = np.asarray(W, dtype=np.float64)
    fro = float(np.sum(W * W))
    return W.shape[1] / fro if fro > 0 else float("nan")


def represented_mask(W: np.ndarray, min_norm_frac: float) -> np.ndarray:
    """Features whose norm is at least `min_norm_frac` of the largest feature norm (scale-free;
    pass balanced weights for an untied codec, see `neural_codec.squeezer.model.balance_neurons`)."""
    norms = np.linalg.norm(np.asarray(W, dtype=np.float64), axis=1)
    top = norms.max() if len(norms) else 0.0
    return norms >= min_norm_frac * top if top > 0 else np.zeros(len(norms), bool)


def line_test(
    D: np.ndarray,
    fraction: float,
    half_width: float = 0.01,
    flank_width: float = 0.02,
    lo: float = 0.0,
    hi: float = 1.0,
) -> dict[str, float]:
    """Do D values pile up at `fraction` against the local density?

    Counts values in the centre window [f - w, f + w] and in the two flanking windows
    [f - w - flank, f - w) and (f + w, f + w + flank], all clipped to [lo, hi] (D <= 1, so
    the window at 1 has only a left flank). Under a locally uniform density a value that falls
    in centre-or-flanks lands in the centre with probability p0 = centre width / total width;
    the one-sided binomial test of the centre count against p0 is the p-value. Values merely
    near a fraction (a smooth bump) do not make a line; a narrow excess over the flanks does.
    Returns count, expected (under the flanks' density), enrichment and p_value.
    """
    D = np.asarray(D, dtype=np.float64)
    c_lo, c_hi = max(fraction - half_width, lo), min(fraction + half_width, hi)
    f_lo, f_hi = max(c_lo - flank_width, lo), min(c_hi + flank_width, hi)
    in_c = (D >= c_lo) & (D <= c_hi)
    in_f = ((D >= f_lo) & (D < c_lo)) | ((D > c_hi) & (D <= f_hi))
    k, m = int(in_c.sum()), int(in_f.sum())
    w_c, w_f = c_hi - c_lo, (c_lo - f_lo) + (f_hi - c_hi)
    p0 = w_c / (w_c + w_f) if w_c + w_f > 0 else 1.0
    expected = m * w_c / w_f if w_f > 0 else float("nan")
    if k + m == 0 or w_f <= 0:
        p = 1.0
    else:
        p = float(scipy.stats.binomtest(k, k + m, p0, alternative="greater").pvalue)
    enrich = k / expected if expected and expected > 0 else (float("inf") if k else 0.0)
    return {"count": k, "flank_count": m, "expected": expected, "enrichment": enrich, "p_value": p}


def find_lines(
    D: np.ndarray,
    fractions: tuple[str, ...] | list[str] = DEFAULT_FRACTIONS,
    half_width: float = 0.01,
    flank_width: float = 0.02,
    alpha: float = 0.01,
    min_count: int = 5,
) -> dict[str, dict[str, Any]]:
    """`line_test` at each fraction; a line is p < alpha / n_testable and at least
    `min_count` features in the centre window.

    The correction is Tarone's (1990) for discrete tests, not plain Bonferroni over all
    fractions. Each binomial test is conditional on N = centre + flank count; given N its
    smallest attainable p-value is p0^N. A fraction whose p0^N cannot reach alpha / K (or whose
    N < min_count, so it can never be a line) cannot reject and need not be paid for: K is the
    smallest number such that at most K fractions can reach alpha / K. The family-wise error is
    still <= alpha (selection uses only the conditioning counts N), and it is never less powerful
    than Bonferroni. Why: with Bonferroni over 7 fractions a single perfect pentagon (five
    features exactly at 2/5, nothing in the flanks: p = (1/3)^5 = 0.0041 > 0.01 / 7) could never
    register; with Tarone it is the only testable fraction and registers at alpha.
    Adds `n_testable` (K) and `threshold` (alpha / K) to each fraction's result.
    """
    tests = {str(name): line_test(D, parse_fraction(name), half_width, flank_width) for name in fractions}

    def min_p(r: dict[str, float], name: str) -> float:
        N = int(r["count"] + r["flank_count"])
        if N < min_count:
            return 1.0
        f = parse_fraction(name)
        c_lo, c_hi = max(f - half_width, 0.0), min(f + half_width, 1.0)
        f_lo, f_hi = max(c_lo - flank_width, 0.0), min(c_hi + flank_width, 1.0)
        w_c, w_f = c_hi - c_lo, (c_lo - f_lo) + (f_hi - c_hi)
        return (w_c / (w_c + w_f)) ** N if w_f > 0 else 1.0

    mins = [min_p(r, name) for name, r in tests.items()]
    K = 1
    while K < len(mins) and sum(m < alpha / K for m in mins) > K:
        K += 1
    thr = alpha / K
    out: dict[str, dict[str, Any]] = {}
    p_holm = holm([r["p_value"] for r in tests.values()])  # reported beside (Holm ignores discreteness)
    for (name, res), p_adj in zip(tests.items(), p_holm, strict=True):
        res["p_holm"] = float(p_adj)
        res["is_line"] = bool(res["p_value"] < thr and res["count"] >= min_count)
        res["n_testable"] = K
        res["threshold"] = thr
        out[name] = res
    return out


def dimensionality_histogram(D: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of D over `bins` equal bins of [0, 1] (D = 1 falls in the last bin)."""
    return np.histogram(np.asarray(D, dtype=np.float64), bins=bins, range=(0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Polytopes
# --------------------------------------------------------------------------------------------


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(n > 0, n, 1.0)


def _square_antiprism() -> np.ndarray:
    # Two squares at z = +-1/sqrt(3), the lower one turned by 45 degrees: cos^2(polar) = 1/3
    # makes it a tight frame in 3-d, so every vertex has D = 3/8 (the TMS antiprism).
    z = 1 / np.sqrt(3.0)
    r = np.sqrt(1 - z * z)
    top = [(r * np.cos(a), r * np.sin(a), z) for a in np.arange(4) * np.pi / 2]
    bot = [(r * np.cos(a), r * np.sin(a), -z) for a in np.arange(4) * np.pi / 2 + np.pi / 4]
    return np.array(top + bot)


def ideal_polytopes() -> dict[str, np.ndarray]:
    """Unit vertex vectors of the TMS polytopes: name -> (k, dim)."""
    ang5 = 2 * np.pi * np.arange(5) / 5
    ang3 = 2 * np.pi * np.arange(3) / 3
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
    return {
        "digon": np.array([[1.0], [-1.0]]),
        "triangle": np.stack([np.cos(ang3), np.sin(ang3)], 1),
        "tetrahedron": tet,
        "pentagon": np.stack([np.cos(ang5), np.sin(ang5)], 1),
        "square_antiprism": _square_antiprism(),
    }


POLYTOPE_FRACTION = {
    "digon": "1/2",
    "triangle": "2/3",
    "tetrahedron": "3/4",
    "pentagon": "2/5",
    "square_antiprism": "3/8",
}


@functools.lru_cache(maxsize=16)
def _all_orderings(gram_bytes: bytes, k: int) -> np.ndarray:
    """Every vertex ordering of an ideal Gram matrix, (k!, k, k); cached per ideal."""
    G = np.frombuffer(gram_bytes, dtype=np.float64).reshape(k, k)
    perms = np.array(list(itertools.permutations(range(k))))
    return G[perms[:, :, None], perms[:, None, :]]


def gram_error(G: np.ndarray, G_ideal: np.ndarray) -> float:
    """RMS entry difference between two k x k Gram matrices, minimised over vertex orderings.

    Brute force over all k! orderings (k <= 8: 40,320, vectorised); that is exact, unlike a
    sorted-eigenvalue comparison, which cannot tell a pentagon from other 5-point frames of the
    same spectrum.
    """
    k = len(G)
    if G_ideal.shape != (k, k):
        raise ValueError(f"Gram sizes differ: {G.shape} vs {G_ideal.shape}")
    permuted = _all_orderings(G_ideal.tobytes(), k)  # (k!, k, k)
    err = np.sqrt(((permuted - G[None]) ** 2).mean(axis=(1, 2)))
    return float(err.min())


def interference_components(
    W: np.ndarray, threshold: float, mask: np.ndarray, chunk: int = 1024
) -> list[np.ndarray]:
    """Connected components of the graph |cos(W_i, W_j)| > threshold over features in `mask`.

    Built in row chunks into a sparse adjacency so memory is O(chunk * n + edges), not n^2.
    Returns the components as arrays of feature indices, largest first.
    """
    idx = np.flatnonzero(mask)
    U = _unit(np.asarray(W)[idx]).astype(np.float32)
    n = len(idx)
    rows, cols = [], []
    for s in range(0, n, chunk):
        c = np.abs(U[s : s + chunk] @ U.T)
        r, q = np.nonzero(c > threshold)
        keep = (r + s) != q
        rows.append(r[keep] + s)
        cols.append(q[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    q = np.concatenate(cols) if cols else np.zeros(0, int)
    A = sp.csr_matrix((np.ones(len(r), np.int8), (r, q)), shape=(n, n))
    _, labels = connected_components(A, directed=False)
    comps = [idx[labels == c] for c in np.unique(labels)]
    comps.sort(key=lambda a: (-len(a), a[0]))
    return comps


@dataclass
class Polytope:
    members: np.ndarray  # feature indices
    kind: str  # an ideal name, or "other"
    error: float  # RMS Gram error against the best ideal of that size (nan if none)
    best: str | None = None  # the closest ideal of the same size, matched or not


@dataclass
class PolytopeResult:
    polytopes: list[Polytope] = field(default_factory=list)
    n_isolated: int = 0
    component_sizes: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {name: 0 for name in ideal_polytopes()}
        out["other"] = 0
        for p in self.polytopes:
            out[p.kind] += 1
        out["isolated"] = self.n_isolated
        return out


def classify_component(W_comp: np.ndarray, tolerance: float) -> tuple[str, float, str | None]:
    """Compare a component's normalised Gram matrix to every ideal with as many vertices."""
    U = _unit(W_comp)
    G = U @ U.T
    best, best_err = None, float("nan")
    for name, V in ideal_polytopes().items():
        if len(V) != len(U):
            continue
        err = gram_error(G, V @ V.T)
        if best is None or err < best_err:
            best, best_err = name, err
    kind = best if best is not None and best_err <= tolerance else "other"
    return kind, best_err, best


def find_polytopes(
    W: np.ndarray, threshold: float = 0.25, min_norm_frac: float = 0.5, tolerance: float = 0.1
) -> PolytopeResult:
    """Interference-graph components (size >= 2) of the represented features, each classified
    against the ideal polytope of its size; size-1 components count as `isolated`."""
    mask = represented_mask(W, min_norm_frac)
    res = PolytopeResult()
    if not mask.any():
        return res
    for comp in interference_components(W, threshold, mask):
        res.component_sizes.append(len(comp))
        if len(comp) == 1:
            res.n_isolated += 1
            continue
        kind, err, best = classify_component(np.asarray(W)[comp], tolerance)
        res.polytopes.append(Polytope(comp, kind, err, best))
    return res


# --------------------------------------------------------------------------------------------
# Circles
# --------------------------------------------------------------------------------------------


def top2_projection(X: np.ndarray) -> np.ndarray:
    """Centre the rows and project them onto their top-2 principal components -> (K, 2)."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0, keepdims=True)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    P = Xc @ Vt[:2].T
    if P.shape[1] < 2:
        P = np.pad(P, ((0, 0), (0, 2 - P.shape[1])))
    return P


def fisher_lee(theta: np.ndarray, phi: np.ndarray) -> float:
    """Fisher & Lee (1983) circular-circular correlation rho_T in [-1, 1].

    rho = sum_{i<j} sin(t_i - t_j) sin(p_i - p_j) / sqrt(sum sin^2(t_i - t_j) sum sin^2(p_i - p_j));
    invariant to rotating either variable; a reflection flips its sign.
    """
    dt = np.sin(theta[:, None] - theta[None, :])
    dp = np.sin(phi[:, None] - phi[None, :])
    iu = np.triu_indices(len(theta), 1)
    a, b = dt[iu], dp[iu]
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def neighbour_fraction(theta: np.ndarray) -> float:
    """Fraction of the K true cyclic neighbour pairs (k, k+1 mod K) that are adjacent in the
    angular order of `theta` (either direction); 1 for a perfectly ordered circle."""
    K = len(theta)
    rank = np.empty(K, int)
    rank[np.argsort(theta, kind="stable")] = np.arange(K)
    d = np.abs(rank - np.roll(rank, -1)) % K
    return float(np.mean((d == 1) | (d == K - 1)))


def wrap_ratio(P: np.ndarray) -> float:
    """Distance from the last to the first member (in the true cyclic order) over the median
    distance between consecutive members k, k+1 (k = 0..K-2), in the top-2 PC plane.

    About 1 for evenly spaced points on a closed circle and large for points along a line. It
    has little power against an open arc (a 3/4 arc at K = 7 gives about 1.85, inside the
    random-cloud range): use `max_gap_ratio` for closure.
    """
    gaps = np.linalg.norm(np.diff(P, axis=0), axis=1)
    med = float(np.median(gaps))
    return float(np.linalg.norm(P[-1] - P[0]) / med) if med > 0 else float("nan")


def _kasa_angles(P: np.ndarray) -> np.ndarray:
    """Angles about the least-squares (Kasa) circle's centre; the centroid when the points are
    (near) collinear."""
    A = np.column_stack([P, np.ones(len(P))])
    sol, *_ = np.linalg.lstsq(A, (P * P).sum(1), rcond=None)
    c = sol[:2] / 2
    spread = float(np.linalg.norm(P - P.mean(0), axis=1).max())
    if not np.all(np.isfinite(c)) or np.linalg.norm(c - P.mean(0)) > 10 * max(spread, 1e-12):
        c = P.mean(0)
    return np.arctan2(P[:, 1] - c[1], P[:, 0] - c[0])


def conic_angles(P: np.ndarray) -> np.ndarray:
    """Angular positions of 2-d points on the ellipse fitted through them (a least-squares conic
    x^T Q x + d.x + f = 0, mapped onto the unit circle by its centre and shape), so a circle seen
    through a non-orthogonal projection (an ellipse in the PC plane) and any arc of it get their
    true angles. Falls back to the least-squares circle when the conic is no ellipse or K < 5."""
    P = np.asarray(P, dtype=np.float64)
    scale = float(np.abs(P - P.mean(0)).max()) or 1.0
    X = (P - P.mean(0)) / scale
    if len(X) >= 5:
        x, y = X[:, 0], X[:, 1]
        M = np.column_stack([x * x, x * y, y * y, x, y, np.ones(len(x))])
        A, B, C, Dx, Ey, F = np.linalg.svd(M)[2][-1]
        Q = np.array([[A, B / 2], [B / 2, C]])
        if B * B - 4 * A * C < 0:
            c = np.linalg.solve(2 * Q, -np.array([Dx, Ey]))
            r = float(c @ Q @ c - F)
            S = Q / r if r != 0 else -Q
            if np.all(np.linalg.eigvalsh(S) > 0):
                L = np.linalg.cholesky(S)
                U = (X - c) @ L
                return np.arctan2(U[:, 1], U[:, 0])
    return _kasa_angles(X)


def max_gap_ratio(P: np.ndarray, phases: np.ndarray | None = None) -> float:
    """Closure: the largest angular gap between the members (`conic_angles`: positions on the
    fitted ellipse) over the even spacing 2 pi / K.

    1 for K evenly spaced points on a closed circle; an arc covering a fraction a of the circle
    leaves a gap of at least (1 - a) 2 pi, so a 3/4 arc gives >= K/4 (1.75 at K = 7, 3 at K = 12).
    The member order does not enter (ordering is `circular_corr`'s job).
    """
    K = len(P)
    if K < 3:
        return float("nan")
    a = np.sort(conic_angles(P))
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * np.pi]))
    return float(gaps.max() / _largest_gap(phases, K))


def _largest_gap(phases: np.ndarray | None, K: int) -> float:
    """The largest angular gap between the true phases (2 pi / K when evenly spaced), so that a
    family with members left out (an uncased vocabulary's may/march) still scores 1 when closed."""
    if phases is None:
        return 2 * np.pi / K
    t = np.sort(np.mod(np.asarray(phases, dtype=np.float64), 2 * np.pi))
    return float(np.diff(np.concatenate([t, t[:1] + 2 * np.pi])).max())


def is_closed(max_gap: float, limit: float = 1.5) -> bool:
    """A circle counts as closed when no angular gap exceeds `limit` even spacings (a 3/4 arc
    has a gap of >= K/4 spacings, so this separates arcs from circles for K >= 7)."""
    return bool(np.isfinite(max_gap) and max_gap <= limit)


def circular_ranks(theta: np.ndarray) -> np.ndarray:
    """Angles replaced by their circular ranks 2 pi rank / K (the uniform scores of Fisher & Lee
    1982's rank correlation)."""
    K = len(theta)
    rank = np.empty(K, int)
    rank[np.argsort(theta, kind="stable")] = np.arange(K)
    return 2 * np.pi * rank / K


def harmonic_basis(phi: np.ndarray) -> np.ndarray:
    """Orthonormal basis (K, 2) of the centred first circular harmonic (cos phi, sin phi)."""
    F = np.column_stack([np.cos(phi), np.sin(phi)])
    Q, _ = np.linalg.qr(F - F.mean(0))
    return Q


def harmonic_frac(X: np.ndarray, phi: np.ndarray) -> float:
    """Share of the family's centred variance on its first circular harmonic: ||Q^T Xc||^2 / ||Xc||^2
    with Q = `harmonic_basis(phi)`. 1 for members exactly on a circle (any plane, any offset) in
    their true order; 2 / (K - 1) expected under shuffled labels.

    Why, beside the top-2 PC angles: a codec gives every member its own direction too (to decode
    it), so a real circle need not be the family's top-2 PC plane; the top-2 PC test then reads a
    plane of the members' individual directions and misses it (planted circle of radius 1 plus
    3 per-member dims of sd 1: found in 30% of draws, `tests/analysis/test_circle_power.py`).
    This reads the circle's plane off the true phases (the Fourier power of Engels et al. 2024's
    circular features), and the label permutation redoes the fit, so its p-value stays exact.
    """
    Xc = np.asarray(X, dtype=np.float64) - np.asarray(X, dtype=np.float64).mean(0)
    tot = float((Xc * Xc).sum())
    return float(((harmonic_basis(phi).T @ Xc) ** 2).sum() / tot) if tot > 0 else float("nan")


def harmonic_test(X: np.ndarray, phi: np.ndarray, n_permutations: int, seed: int) -> tuple[float, float]:
    """(`harmonic_frac`, its label-permutation p-value (1 + #{null >= observed}) / (1 + n))."""
    Xc = np.asarray(X, dtype=np.float64) - np.asarray(X, dtype=np.float64).mean(0)
    tot = float((Xc * Xc).sum())
    if tot <= 0:
        return float("nan"), 1.0
    Q = harmonic_basis(np.asarray(phi, dtype=np.float64))
    obs = float(((Q.T @ Xc) ** 2).sum() / tot)
    rng = np.random.default_rng(seed)
    G = Xc @ Xc.T  # ||Q[perm]^T Xc||^2 = tr(Q^T G[perm][:, perm] Q): one K x K Gram for all draws
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        perm = rng.permutation(len(Xc))
        null[i] = float(np.einsum("ia,ij,ja->", Q, G[np.ix_(perm, perm)], Q)) / tot
    return obs, (1 + int(np.sum(null >= obs - 1e-12))) / (1 + n_permutations)


def circle_stats(
    X: np.ndarray, n_permutations: int = 1000, seed: int = 0, phases: np.ndarray | None = None
) -> dict[str, float]:
    """Circular structure of one cyclic family; rows of X in the true cyclic order.

    The rows are projected to their top-2 PCs; theta = angle in that plane, true phase
    phi_k = 2 pi k / K (or `phases`, when members of the cycle are missing). `circular_corr` = |Fisher-Lee rho(theta, phi)| (maximised over the
    reflection theta -> -theta, which flips the sign) on the raw angles: the Fisher-Lee
    circular correlation (not a rank correlation). `circular_rank_corr`: the same on circular
    ranks (`circular_ranks`), i.e. a true circular rank correlation. `p_value`: circular_corr with
    the member labels shuffled (`n_permutations` times), (1 + #{null >= observed}) / (1 + n).
    Closure: `max_gap_ratio` and `closed` (see `max_gap_ratio`, `is_closed`); `wrap_ratio` is
    kept for comparison. `harmonic_frac` / `harmonic_p_value`: the variance share on the first
    circular harmonic and its permutation p-value (`harmonic_test`; the circle in whatever plane
    it lies, where the top-2 PC statistics need it to be the family's dominant plane).
    """
    X = np.asarray(X, dtype=np.float64)
    K = len(X)
    P = top2_projection(X)
    theta = np.arctan2(P[:, 1], P[:, 0])
    phi = 2 * np.pi * np.arange(K) / K if phases is None else np.asarray(phases, dtype=np.float64)
    obs = abs(fisher_lee(theta, phi))
    rng = np.random.default_rng(seed)
    null = np.array([abs(fisher_lee(theta[rng.permutation(K)], phi)) for _ in range(n_permutations)])
    p = (1 + int(np.sum(null >= obs - 1e-12))) / (1 + n_permutations)
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    var = s**2
    gap = max_gap_ratio(P, phases)
    h_frac, h_p = harmonic_test(X, phi, n_permutations, seed + 1)
    return {
        "circular_corr": obs,
        "circular_rank_corr": abs(fisher_lee(circular_ranks(theta), phi)),
        "neighbour_frac": neighbour_fraction(theta),
        "wrap_ratio": wrap_ratio(P),
        "max_gap_ratio": gap,
        "closed": is_closed(gap),
        "p_value": float(p),
        "pc2_var_frac": float(var[:2].sum() / var.sum()) if var.sum() > 0 else float("nan"),
        "harmonic_frac": h_frac,
        "harmonic_p_value": float(h_p),
        "n_members": K,
    }


def circle_family(fam: dict[str, Any]) -> dict[str, Any]:
    """The family as its circle is tested: members whose SAE latent is no recovery of them
    (`recovered` false, see `sae.families_in_latent_space`) and all but the best-matched of
    members sharing one latent are left out, the rest keep their true places (`positions` in a
    `cycle` of the full length), so a missing month leaves a gap instead of another feature's
    point (or a duplicate) in the circle. Families without `recovered` are returned as they are."""
    rec = fam.get("recovered")
    if rec is None or fam.get("member_weights") is not None:
        return fam
    members = [int(m) for m in fam["members"]]
    cos = fam.get("cosines") or [1.0] * len(members)
    pos = fam.get("positions") or list(range(len(members)))
    best: dict[int, int] = {}  # latent -> the member index matched best to it
    for i, m in enumerate(members):
        if rec[i] and (m not in best or cos[i] > cos[best[m]]):
            best[m] = i
    keep = sorted(best.values())
    labels = fam.get("labels") or []
    return {**fam, "members": [members[i] for i in keep], "positions": [pos[i] for i in keep],
            "labels": [labels[i] for i in keep] if len(labels) == len(members) else labels,
            "cycle": fam.get("cycle") or len(members), "n_left_out": len(members) - len(keep)}  # fmt: skip


def is_circle_family(fam: dict[str, Any]) -> bool:
    """A cyclic family with at least 3 distinct points: 3 member latents, or (a cluster family,
    `source.lm.clusters`) 3 members placed by their mean activations over the cluster."""
    if fam.get("kind") != "cyclic":
        return False
    if fam.get("member_weights") is not None:
        return len(fam["member_weights"]) >= 3 and len(fam["members"]) >= 1
    return len(set(int(m) for m in fam["members"])) >= 3


def family_points(W: np.ndarray, fam: dict[str, Any]) -> np.ndarray:
    """One point per family member, in cyclic order: the member latent's row of W, or for a
    cluster family the member's mean activations over the cluster latents times their rows
    (`member_weights @ W[members]`, the member's mean reconstruction from the cluster)."""
    members = [int(m) for m in fam["members"]]
    if members and (max(members) >= len(W) or min(members) < 0):
        raise ValueError(f"family {fam.get('name')!r}: member index out of range 0..{len(W) - 1}")
    if fam.get("member_weights") is not None:
        return np.asarray(fam["member_weights"], dtype=np.float64) @ np.asarray(W, dtype=np.float64)[members]
    return np.asarray(W)[members]


def family_phases(fam: dict[str, Any]) -> np.ndarray | None:
    """True phases 2 pi position / cycle when the family gives its members' places in a longer
    cycle (`positions`, `cycle`: members were left out); None: evenly spaced."""
    if fam.get("positions") is None or fam.get("cycle") is None:
        return None
    return 2 * np.pi * np.asarray(fam["positions"], dtype=np.float64) / float(fam["cycle"])


def family_circles(
    W: np.ndarray, families: list[dict[str, Any]], n_permutations: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """`circle_stats` for every family of kind "cyclic" with at least 3 distinct points, on its
    recovered members (`circle_family`)."""
    out: dict[str, dict[str, float]] = {}
    for i, full in enumerate(families):
        fam = circle_family(full)
        if not is_circle_family(fam):
            continue
        out[str(fam.get("name", f"family_{i}"))] = circle_stats(
            family_points(W, fam), n_permutations, seed + i, family_phases(fam)
        )
        if "n_left_out" in fam:  # members without a recovered latent (`circle_family`)
            out[str(fam.get("name", f"family_{i}"))]["n_left_out"] = fam["n_left_out"]
    for res, p_adj in zip(out.values(), holm([r["p_value"] for r in out.values()]), strict=True):
        res["p_holm"] = float(p_adj)  # Holm over the cyclic families tested together
    return out


# --------------------------------------------------------------------------------------------
# Everything for one weight matrix
# --------------------------------------------------------------------------------------------


def analyse_weights(W: np.ndarray, families: list[dict[str, Any]], cfg: GeometryConfig) -> dict[str, Any]:
    """All geometry statistics of one weight matrix (rows = features) as a small dict, plus
    the bulky parts (D, histogram, polytopes, projections) under keys starting with '_'."""
    W = np.asarray(W, dtype=np.float64)
    mask = represented_mask(W, cfg.min_norm_frac)
    D = feature_dimensionality(W)
    Dr = D[mask]
    lines = find_lines(
        Dr, cfg.fractions, cfg.line_half_width, cfg.line_flank_width, cfg.line_alpha, cfg.line_min_count
    )
    poly = find_polytopes(W, cfg.interference_threshold, cfg.min_norm_frac, cfg.polytope_tolerance)
    errs = {}
    for name in ideal_polytopes():
        e = [p.error for p in poly.polytopes if p.kind == name]
        if e:
            errs[name] = float(np.mean(e))
    sizes = np.array(poly.component_sizes or [0])
    circles = family_circles(W, families, cfg.n_permutations, cfg.seed)
    return {
        "n_features": int(len(W)),
        "M": int(W.shape[1]),
        "D_star": dimensions_per_feature(W),
        "D_star_represented": W.shape[1] / max(int(mask.sum()), 1),
        "frac_features_represented": float(mask.mean()) if len(mask) else 0.0,
        "mean_D": float(Dr.mean()) if len(Dr) else float("nan"),
        "median_D": float(np.median(Dr)) if len(Dr) else float("nan"),
        "lines": lines,
        "n_lines": int(sum(v["is_line"] for v in lines.values())),
        "polytopes": poly.counts(),
        "polytope_mean_error": errs,
        "n_components": int((sizes >= 2).sum()),
        "largest_component": int(sizes.max()),
        "circles": circles,
        "_D": D,
        "_mask": mask,
        "_poly": poly,
    }


def public(result: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulky '_' entries of an `analyse` result (what goes into the metrics JSON)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------
# The permuted-features null
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# --------------------------------------------------------------------------------------------


def histogram_table(results: dict[str, dict[str, Any]], bins: int) -> tuple[list[str], list[list[Any]]]:
    """CSV for `dvc plots`: bin centre `D` and, per analysed matrix, the fraction of its
    represented features in each bin (so runs with different n compare)."""
    edges = np.linspace(0, 1, bins + 1)
    header = ["D"] + list(results)
    cols = []
    for r in results.values():
        Dr = r["_D"][r["_mask"]]
        h, _ = dimensionality_histogram(Dr, bins)
        cols.append(h / max(len(Dr), 1))
    rows = [[float((edges[i] + edges[i + 1]) / 2)] + [float(c[i]) for c in cols] for i in range(bins)]
    return header, rows
