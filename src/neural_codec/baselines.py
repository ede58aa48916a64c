"""Baselines for the Squeezer: same data, same M, same metrics (`squeezer.evaluate_codec`).

Each baseline answers "what does superposition buy?" from a different side:

- `pca`: the linear optimum. The best rank-M affine reconstruction of F in squared error:
  f_hat = (f - mu) V V^T + mu with V the top-M eigenvectors of the centred covariance of F,
  computed streaming (sparse F^T F per batch via scipy.sparse). Purely linear (no ReLU, no
  clipping), so it is the bound every *linear* M-dimensional code obeys, and in particular
  it beats `no_superposition` (also linear, rank M) on the data it is fitted to.
  For n > `dense_limit` the n x n matrix is never formed: `scipy.sparse.linalg.eigsh` runs on a
  LinearOperator x -> F^T (F x) / N - mu (mu . x) over the (small, N x k) training CSR; for
  M > `exact_max_k` (eigsh's Lanczos restarts grow with k: at n 24,576 and M 3,072 it ran for
  over 35 min) a randomized subspace iteration on the same operator (Halko, Martinsson & Tropp
  2011, Alg. 4.4 with a Rayleigh-Ritz step: a few block products, memory n x (M + p)).
- `no_superposition`: the M features with the largest w_i Var(F_i) each get one neuron (an
  exact copy, h = f_i >= 0, so the ReLU never clips); every other feature is predicted by its
  training mean (the best constant, = ReLU(b_dec)). That choice of M features is the exact
  loss optimum among codes that give each neuron one feature (ranking by Var rather than
  E[F^2]: the dropped features still get their mean).
- `random_encoder`: a Squeezer whose encoder is the Squeezer's own random init (same init
  scheme and scale, seeded) and frozen, b_enc fixed at 0; only the decoder (W_dec, b_dec) is
  trained, with the Squeezer's loss. Measures how much of the Squeezer is the learned encoding.
- `model_neurons`: the model's own neurons as the bottleneck: f_hat = ReLU(W n / s + b) trained
  from the original neurons n (scaled by s, their mean row L2 norm) to F, with the Squeezer's loss,
  starting from the ridge least-squares linear readout fitted on the first batch. How
  good is the model's own codec at carrying the SAE features?

Every method is scored by the same `squeezer.evaluate_codec` (features_represented included:
it is measured on held-out data, not read off weights, so it means the same for every method).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import nn

from neural_codec.analysis.stats import bootstrap_ratio, complement
from neural_codec.codec import (
    Codec,
    EvalBatch,
    SqueezerCodec,
    evaluate_codec,
    represented_bootstrap,
    row_errors,
    sae_row_errors,
)
from neural_codec.config import BaselinesConfig, BiasInit, Init
from neural_codec.runtime import resolve_device
from neural_codec.squeezer.loss import reconstruction_loss
from neural_codec.squeezer.stream import SparseShards, TrainRows, row_batches
from neural_codec.squeezer.train import CurveLogger, log_step, make_optimizer, step_bar, train_squeezer
from neural_codec.storage import SparseFeatures, iter_batches, read_meta

Method = Literal["pca", "no_superposition", "random_encoder", "model_neurons"]

#: the baselines with a training loop, hence a loss curve (pca and no_superposition are closed form)
TRAINED_METHODS = ("random_encoder", "model_neurons")


def feature_moments(feats: TrainRows, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance over rows (float64), streaming."""
    s1 = np.zeros(feats.n_features)
    s2 = np.zeros(feats.n_features)
    for b in row_batches(feats, batch_size):
        a = b.val > 0
        np.add.at(s1, b.idx[a], b.val[a].astype(np.float64))
        np.add.at(s2, b.idx[a], b.val[a].astype(np.float64) ** 2)
    N = max(len(feats), 1)
    mu = s1 / N
    return mu, np.maximum(s2 / N - mu**2, 0.0)


# --------------------------------------------------------------------------------------------
# (a) PCA
# --------------------------------------------------------------------------------------------


class PCACodec(Codec):
    """h = (f - mu) V (a linear code, no ReLU); f_hat = h V^T + mu."""

    relu = False

    def __init__(self, mu: np.ndarray, V: np.ndarray, eigenvalues: np.ndarray):
        self.mu = torch.from_numpy(mu.astype(np.float32))
        self.V = torch.from_numpy(np.ascontiguousarray(V, dtype=np.float32))
        self.eigenvalues = eigenvalues

    def code(self, batch: EvalBatch) -> tuple[None, torch.Tensor]:
        f = batch.feats
        fV = torch.nn.functional.embedding_bag(
            torch.from_numpy(f.idx.astype(np.int64)),
            self.V,
            per_sample_weights=torch.from_numpy(f.val),
            mode="sum",
        )
        return None, fV - self.mu @ self.V

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.V.T + self.mu


def fit_pca(
    train: TrainRows, M: int, dense_limit: int = 4096, batch_size: int = 65536, exact_max_k: int = 512
) -> PCACodec:
    """Top-M principal directions of F (centred), streaming over row batches. `train` in memory
    or as `SparseShards`: the moments and the dense n x n product are summed over the same row
    batches either way; above `dense_limit` the eigsh operator holds the CSR in memory, or on
    shards re-reads them a batch at a time for every product (memory: a batch)."""
    n, N = train.n_features, len(train)
    mu, _ = feature_moments(train, batch_size)
    k = min(M, n)
    if n <= dense_limit or k >= n - 1:
        S = np.zeros((n, n))
        for b in row_batches(train, batch_size):
            csr = b.to_csr().astype(np.float64)
            S += (csr.T @ csr).toarray()
        C = S / N - np.outer(mu, mu)
        evals, evecs = np.linalg.eigh(C)
        order = np.argsort(evals)[::-1][:k]
        return PCACodec(mu, evecs[:, order], evals[order])
    if isinstance(train, SparseShards):

        def product(x: np.ndarray) -> np.ndarray:
            out = np.zeros_like(x)
            for b in row_batches(train, batch_size):
                c = b.to_csr().astype(np.float64)
                out += c.T @ (c @ x)
            return out

    else:
        csr = train.to_csr().astype(np.float64)

        def product(x: np.ndarray) -> np.ndarray:
            return csr.T @ (csr @ x)

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).reshape(n, -1)
        return product(x) / N - np.outer(mu, mu @ x)

    if k > exact_max_k:
        evals, evecs = randomized_top_eigh(matvec, n, k)
        return PCACodec(mu, evecs, evals)
    op = spla.LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
    evals, evecs = spla.eigsh(op, k=k, which="LA", v0=np.random.default_rng(0).standard_normal(n))
    order = np.argsort(evals)[::-1]
    return PCACodec(mu, evecs[:, order], evals[order])


def orthonormalize(Y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of Y's columns by Cholesky-QR2 (R = chol(Y^T Y), Q = Y R^-1, twice),
    falling back to Householder QR when Y^T Y is not numerically positive definite.

    Why: at n 24,576 and k + p 3,088 numpy's QR (geqrf + orgqr) was the whole cost of the PCA
    baseline (py-spy on the full-width dry run); Cholesky-QR2 does a Gram (syrk) and a triangular
    solve instead, 2.5x faster there (53.5 s vs 21.7 s, same span to 5e-14, orthogonality 1e-15),
    and the second pass restores orthogonality lost to the Gram's squared condition number
    (Fukaya et al. 2014). A rank-deficient block (fewer live directions than columns) makes
    the Cholesky fail: QR handles it."""
    import scipy.linalg as sla

    Q = np.asarray(Y, dtype=np.float64)
    try:
        for _ in range(2):
            R = sla.cholesky(Q.T @ Q, lower=False)
            Q = sla.solve_triangular(R, Q.T, trans="T", lower=False).T
    except np.linalg.LinAlgError:
        return np.linalg.qr(np.asarray(Y, dtype=np.float64))[0]
    # a near-singular Gram can factor yet leave columns off the unit sphere: check (O(n k))
    if not np.isfinite(Q).all() or np.abs(np.linalg.norm(Q, axis=0) - 1.0).max() > 1e-6:
        return np.linalg.qr(np.asarray(Y, dtype=np.float64))[0]
    return Q


def randomized_top_eigh(
    matmat: Callable[[np.ndarray], np.ndarray],
    n: int,
    k: int,
    oversample: int = 16,
    power_iters: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs (descending) of a symmetric PSD n x n operator given by block products:
    randomized subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4), re-orthonormalised
    after every product, then Rayleigh-Ritz on the (k + p)-dim subspace. Why: k block products of
    width k + p cost far less than Lanczos at k in the thousands, and the operator is streamed."""
    width = min(n, k + oversample)
    q = orthonormalize(matmat(np.random.default_rng(seed).standard_normal((n, width))))
    for _ in range(power_iters):
        q = orthonormalize(matmat(q))
    t = q.T @ matmat(q)
    evals, u = np.linalg.eigh((t + t.T) / 2)
    order = np.argsort(evals)[::-1][:k]
    return evals[order], q @ u[:, order]


# --------------------------------------------------------------------------------------------
# (b) No superposition
# --------------------------------------------------------------------------------------------


class NoSuperpositionCodec(Codec):
    """Neuron j = feature keep[j] (exact copy); other features predicted by their train mean."""

    def __init__(self, keep: np.ndarray, mu: np.ndarray, M: int):
        self.keep, self.M = keep, M
        self.n = len(mu)
        self.slot = torch.full((self.n,), -1, dtype=torch.long)
        self.slot[torch.from_numpy(keep)] = torch.arange(len(keep))
        self.mu = torch.from_numpy(mu.astype(np.float32))

    def code(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        f = batch.feats
        slot = self.slot[torch.from_numpy(f.idx.astype(np.int64))]
        val = torch.from_numpy(f.val) * (slot >= 0)
        h = torch.zeros(len(f), self.M).scatter_add_(1, slot.clamp(min=0), val)
        return h, h  # the pre-activation is f_i >= 0: the ReLU never clips

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        f_hat = self.mu.expand(h.shape[0], -1).clone()
        f_hat[:, torch.from_numpy(self.keep)] = h[:, : len(self.keep)]
        return f_hat


def fit_no_superposition(train: TrainRows, M: int, weights: np.ndarray | None = None) -> NoSuperpositionCodec:
    mu, var = feature_moments(train)
    w = np.ones(train.n_features) if weights is None else np.asarray(weights, dtype=np.float64)
    score = w * var
    keep = np.argsort(-score, kind="stable")[: min(M, train.n_features)]
    keep = keep[score[keep] > 0] if np.any(score[keep] > 0) else keep
    return NoSuperpositionCodec(np.sort(keep), mu, M)


# --------------------------------------------------------------------------------------------
# (c) Random encoder, trained decoder
# --------------------------------------------------------------------------------------------


def fit_random_encoder(
    train: TrainRows,
    M: int,
    cfg: BaselinesConfig,
    weights: np.ndarray | None = None,
    init: Init = "xavier",
    bias_init: BiasInit = "zero",
) -> tuple[SqueezerCodec, list[dict[str, float]]]:
    scfg = cfg.decoder_config(M)
    scfg.init, scfg.bias_init = init, bias_init  # as the Squeezer's (b_enc stays 0: frozen)
    w = np.ones(train.n_features, np.float32) if weights is None else weights
    model, curve = train_squeezer(train, scfg, importance=w, freeze_encoder=True, desc="random_encoder")
    return SqueezerCodec(model, resolve_device(cfg.device, "baselines.device")), curve


# --------------------------------------------------------------------------------------------
# (d) The model's own neurons
# --------------------------------------------------------------------------------------------


class NeuronReadoutCodec(Codec):
    """h = the model's neurons (given in the batch); f_hat = ReLU(h / s @ W + b).

    The model's pre-activations are not stored, so a neuron counts as clipped (pre-activation
    < 0) when its activation is <= 0 (exact for ReLU neurons; for GELU, act < 0 iff pre < 0).
    Computes on the device W is on."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, scale: float):
        self.W, self.b, self.scale = W, b, scale

    def code(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.neurons is None:
            raise ValueError("model_neurons needs the model's neurons in each held-out batch")
        h = torch.from_numpy(np.asarray(batch.neurons, dtype=np.float32)).to(self.W.device)
        return torch.where(h > 0, h, torch.full_like(h, -1.0)), h

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu((h / self.scale) @ self.W + self.b)


def array_batches(
    neurons: np.ndarray, feats: SparseFeatures, batch_size: int, seed: int
) -> Iterator[tuple[np.ndarray, SparseFeatures]]:
    """Endless seeded-permutation minibatches from in-memory, row-aligned arrays."""
    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(feats))
    while True:
        perm = rng.permutation(len(feats))
        for s in range(0, len(feats) - bs + 1, bs):
            r = perm[s : s + bs]
            yield neurons[r], feats[r]


def disk_batches(
    activations_dir: str, features_dir: str, batch_size: int, seed: int, shuffle_batches: int = 16
) -> Iterator[tuple[np.ndarray, SparseFeatures]]:
    """Endless row-aligned (neurons, features) minibatches streamed from shards, shuffled
    within chunks of `shuffle_batches` batches (memory bounded by the chunk)."""

    n_features = int(read_meta(features_dir)["n_features"])
    rng = np.random.default_rng(seed)
    chunk = batch_size * shuffle_batches
    while True:
        acts = iter_batches(activations_dir, chunk, ["neurons"])
        yielded = False
        for f in iter_batches(features_dir, chunk, ["idx", "val"]):
            a = next(acts)["neurons"]
            if len(a) != len(f["idx"]):
                raise ValueError("activations and features train splits are not row-aligned")
            perm = rng.permutation(len(a))
            for s in range(0, len(a) - batch_size + 1, batch_size):
                r = perm[s : s + batch_size]
                yielded = True
                yield a[r], SparseFeatures(f["idx"][r], f["val"][r], n_features)
        if not yielded:
            raise ValueError(f"fewer train rows than batch_size = {batch_size}")


def ridge_readout(X: np.ndarray, feats: SparseFeatures, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Linear least-squares readout F ~ X W + b (ridge-regularised), the readout's starting
    point: a random init leaves many output ReLUs dead from the start (a feature whose own
    readout is negative never gets a gradient). F^T X is computed sparsely."""
    Xa = np.hstack([X, np.ones((len(X), 1))])
    G = Xa.T @ Xa
    G += ridge * (np.trace(G) / len(G)) * np.eye(len(G))
    XtY = np.asarray((feats.to_csr().astype(np.float64).T @ Xa).T)  # (d + 1, n)
    sol = np.linalg.solve(G, XtY)
    return sol[:-1], sol[-1]


def fit_model_neurons(
    batches: Iterator[tuple[np.ndarray, SparseFeatures]],
    n_features: int,
    cfg: BaselinesConfig,
    weights: np.ndarray | None = None,
) -> tuple[NeuronReadoutCodec, list[dict[str, float]], float]:
    """Train the readout ReLU(W n / s + b) -> F on `cfg.device`; returns (codec, curve, samples/s).
    The ridge start is fitted on the CPU (float64) and the loss samples drawn by a CPU generator."""
    device = resolve_device(cfg.device, "baselines.device")
    gen = torch.Generator().manual_seed(cfg.seed)
    first_n, first_f = next(batches)  # also fixes the input scale and the ridge start
    # scale rows to unit mean L2 norm: Adam moves every weight by ~lr, and dense neurons add
    # those moves up coherently, so a per-neuron (RMS) scale makes steps sqrt(d) times too big
    scale = float(np.sqrt(np.mean(np.sum(np.asarray(first_n, dtype=np.float64) ** 2, axis=1)))) or 1.0
    W0, b0 = ridge_readout(np.asarray(first_n, dtype=np.float64) / scale, first_f)
    W_T = nn.Parameter(torch.from_numpy(np.ascontiguousarray(W0.T, dtype=np.float32)).to(device))  # (n, d)
    b = nn.Parameter(torch.from_numpy(b0.astype(np.float32)).to(device))
    opt = make_optimizer([W_T, b], cfg.lr, cfg.weight_decay)
    w = torch.from_numpy(
        np.ones(n_features, np.float32) if weights is None else np.asarray(weights, np.float32)
    ).to(device)
    log = CurveLogger(cfg.steps)
    t0, seen = time.perf_counter(), 0
    stream = itertools.chain([(first_n, first_f)], batches)
    bar = step_bar(cfg.steps, "model_neurons")
    for step in bar:
        neur, f = next(stream)
        h = torch.from_numpy(np.asarray(neur, dtype=np.float32)).to(device) / scale
        idx, val = torch.from_numpy(f.idx).to(device), torch.from_numpy(f.val).to(device)
        loss = reconstruction_loss(h, W_T.T, b, idx, val, w, cfg.loss_sample, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(f)
        log_step(bar, log, log.add(step, loss))
    sps = seen / max(time.perf_counter() - t0, 1e-9)
    return NeuronReadoutCodec(W_T.detach().T, b.detach(), scale), log.curve, sps


def run_baselines(
    methods: Iterable[str],
    train: TrainRows,
    M: int,
    cfg: BaselinesConfig,
    eval_batches: Callable[[bool], Iterable[EvalBatch]],
    weights: np.ndarray | None = None,
    neuron_batches: Callable[[], Iterator[tuple[np.ndarray, SparseFeatures]]] | None = None,
    sae_decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    init: Init = "xavier",
    bias_init: BiasInit = "zero",
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]], dict[str, list[dict[str, float]]]]:
    """Fit and evaluate each method; `eval_batches(with_neurons)` makes a fresh held-out stream.

    Returns ({method: metrics}, {method: timings}, {method: training curve}); timings (fit
    seconds, samples/s) and curves (the trained decoders' loss, `TRAINED_METHODS` only) are kept
    apart so the metrics hold results only."""
    out: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, float]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    for m in methods:
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        speed: dict[str, float] = {}
        if m == "pca":
            codec: Codec = fit_pca(train, M, cfg.pca_dense_limit, exact_max_k=cfg.pca_exact_max_k)
        elif m == "no_superposition":
            codec = fit_no_superposition(train, M, weights)
        elif m == "random_encoder":
            codec, curves[m] = fit_random_encoder(train, M, cfg, weights, init, bias_init)
            speed["samples_per_s"] = codec.model.samples_per_s
        elif m == "model_neurons":
            if neuron_batches is None:
                raise ValueError("model_neurons needs the model's neurons on the train split")
            codec, curves[m], sps = fit_model_neurons(neuron_batches(), train.n_features, cfg, weights)
            speed["samples_per_s"] = sps
            extra["M"] = int(codec.W.shape[0])  # the model's width, not squeezer.M
        else:
            raise ValueError(f"unknown baseline {m!r}")
        metrics = evaluate_codec(codec, eval_batches(m == "model_neurons"), sae_decode)
        # one seed (the fit is deterministic or a single reference): a bootstrap over held-out rows
        metrics["fvu_interval"] = bootstrap_ratio(*row_errors(codec, eval_batches(m == "model_neurons")))
        metrics["features_represented_interval"] = represented_bootstrap(
            codec, eval_batches(m == "model_neurons")
        )
        if sae_decode is not None and metrics["sae_explained_variance"] is not None:
            err, _, dev = sae_row_errors(codec, eval_batches(m == "model_neurons"), sae_decode)
            metrics["sae_explained_variance_interval"] = complement(bootstrap_ratio(err, dev))
        out[m] = {
            **metrics,
            "M": M,
            "n_features": train.n_features,
            **extra,
        }
        timings[m] = {**speed, "fit_seconds": time.perf_counter() - t0}
    return out, timings, curves
