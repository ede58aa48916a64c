"""The Squeezer: re-compress sparse SAE features through M ReLU "synthetic neurons".

    h     = ReLU(f @ W_enc + b_enc)          (B, M)   the synthetic neurons (a privileged basis)
    f_hat = ReLU(h @ W_dec + b_dec)          (B, n)   features are non-negative

Why an embedding bag: the input `f` is top-k sparse (`SparseFeatures`, N x k pairs), so the
encoder is a weighted sum of k rows of `W_enc` per sample (`embedding_bag(mode="sum")`), never a
dense (B, n) batch. The decoder side must produce all n outputs for the exact loss; at n ~ 25k
features `loss_sample > 0` replaces the inactive part of the loss by an unbiased sample.

`evaluate_codec` is the one metrics function shared by the Squeezer and every baseline
(`neural_codec.baselines`), so all methods report identical keys computed the same way,
streaming over held-out batches (memory bounded by a batch).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neural_codec.config import SqueezerConfig
from neural_codec.errors import ParamError, check
from neural_codec.sae import load_sae
from neural_codec.storage import SparseFeatures, atomic_path

#: mean ReLU engagement below this flags a run as "linear regime" (Toy Models of Superposition:
#: models whose ReLU almost never clips turn their biases positive and behave like PCA).
LINEAR_REGIME_THRESHOLD = 0.05
#: a feature counts as represented when its reconstruction follows it: the held-out least-squares
#: slope of F_hat_i on F_i exceeds this (1 = carried through, 0 = replaced by a constant).
REPRESENTED_THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def resolve_importance(
    cfg: SqueezerConfig, n_features: int, firing_freq: np.ndarray | None = None
) -> np.ndarray:
    """Per-feature loss weights (n_features,) float32 for `cfg.importance`."""
    if cfg.importance == "none":
        return np.ones(n_features, dtype=np.float32)
    if cfg.importance == "frequency":
        if firing_freq is None:
            raise ValueError("importance='frequency' needs the firing frequencies")
        p = np.asarray(firing_freq, dtype=np.float64)
        check(
            len(p) == n_features, "importance", "frequency", f"{n_features} firing frequencies, got {len(p)}"
        )
        if p.sum() <= 0:
            raise ParamError("params.yaml: squeezer.importance = 'frequency' but no feature ever fires")
        return (p / p.mean()).astype(np.float32)
    w = np.asarray(cfg.importance_given or [], dtype=np.float32)
    check(
        len(w) == n_features,
        "squeezer.importance_given",
        f"<list of length {len(w)}>",
        f"a list of length n_features = {n_features}",
    )
    return w


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class Squeezer(nn.Module):
    """h = ReLU(embedding_bag(idx, W_enc, val) + b_enc); f_hat = ReLU(h @ W_dec + b_dec).

    `W_enc` (n, M): row i is feature i's direction in neuron space (the embedding-bag table).
    `W_dec` (M, n): column i is feature i's decoder direction; when tied it is `W_enc.T`.
    """

    def __init__(
        self,
        n_features: int,
        M: int,
        tied: bool = False,
        init: str = "xavier",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.n_features, self.M, self.tied = n_features, M, tied
        W = torch.empty(n_features, M)
        if init == "xavier":
            nn.init.xavier_normal_(W, generator=generator)
        elif init == "orthogonal":
            nn.init.orthogonal_(W, generator=generator)
        else:
            raise ValueError(f"init must be 'xavier' or 'orthogonal', got {init!r}")
        self.W_enc = nn.Parameter(W)
        self.b_enc = nn.Parameter(torch.zeros(M))
        if not tied:
            # stored transposed (n, M): row i = feature i's decoder direction, so the per-feature
            # gathers of the sampled loss read contiguous rows; `W_dec` is the (M, n) view
            self.W_dec_T = nn.Parameter(W.clone())
        self.b_dec = nn.Parameter(torch.zeros(n_features))

    @property
    def W_dec(self) -> torch.Tensor:
        """(M, n); column i is feature i's decoder direction (a view: writes go through)."""
        return self.W_enc.T if self.tied else self.W_dec_T.T

    @property
    def _W_dec(self) -> torch.Tensor:  # backwards-compatible alias of the (M, n) view
        return self.W_dec

    def preactivations(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        """W_enc f + b_enc for sparse f given as (B, k) index/value pairs (padding: val == 0)."""
        return (
            F.embedding_bag(idx.long(), self.W_enc, per_sample_weights=val.to(self.W_enc.dtype), mode="sum")
            + self.b_enc
        )

    def encode(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.preactivations(idx, val))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h @ self.W_dec + self.b_dec)

    def forward(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(idx, val))

    def feature_gain(self) -> np.ndarray:
        """sqrt(||W_enc row i|| * ||W_dec column i||): invariant to the ReLU rescaling symmetry
        (encoder x c, decoder / c); equals ||W_i|| when tied."""
        with torch.no_grad():
            return torch.sqrt(self.W_enc.norm(dim=1) * self.W_dec.norm(dim=0)).numpy()


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def dense_target(idx: torch.Tensor, val: torch.Tensor, n_features: int) -> torch.Tensor:
    """(B, n) dense targets from (B, k) pairs (decoder side only; padding adds 0)."""
    return torch.zeros(idx.shape[0], n_features, dtype=val.dtype).scatter_add_(1, idx.long(), val)


class _DecoderSquaredError(torch.autograd.Function):
    """Exact loss mean_b sum_i w_i (f_i - ReLU(h W_dec + b_dec)_i)^2 with the (B, n) gradient
    2 w (f_hat - f) / B (zero where the ReLU clips) formed during the forward pass.

    Why: autograd through the plain expression makes ~15 passes over (B, n) buffers (dense target,
    difference, square, weights, their backward); this makes ~4 and keeps one (B, n) buffer, so
    the step is bound by its three matmuls. Uses the expansion sum w (f - f_hat)^2 =
    sum w f_hat^2 - 2 sum_active w f f_hat + sum_active w f^2 (a feature appears once per row).
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, h, W_dec, b_dec, idx, val, weights):  # type: ignore[override]
        B = h.shape[0]
        f_hat = torch.addmm(b_dec, h, W_dec).relu_()
        g = f_hat * weights  # w f_hat, becomes the gradient buffer
        sq = torch.bmm(g.unsqueeze(1), f_hat.unsqueeze(2)).view(B)  # sum_i w_i f_hat_i^2 per row
        f_act = f_hat.gather(1, idx)
        del f_hat
        wv = weights[idx] * val  # padding (val == 0) contributes nothing
        per_row = sq - 2.0 * (wv * f_act).sum(1) + (wv * val).sum(1)
        g.mul_(2.0 / B)
        g.scatter_add_(1, idx, (-2.0 / B) * wv * (f_act > 0))  # f_hat = 0 (clipped): no gradient
        ctx.save_for_backward(h, W_dec, g)
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        h, W_dec, g = ctx.saved_tensors
        gh = torch.mm(g, W_dec.T).mul_(grad_out) if ctx.needs_input_grad[0] else None
        # (n, M) product returned as its (M, n) view: W_dec is usually the transpose of the (n, M)
        # parameter, so the gradient lands in its layout without a transposing copy
        gW = torch.mm(g.T, h).mul_(grad_out).T if ctx.needs_input_grad[1] else None
        gb = g.sum(0).mul_(grad_out) if ctx.needs_input_grad[2] else None
        return gh, gW, gb, None, None, None


def reconstruction_loss(
    h: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    idx: torch.Tensor,
    val: torch.Tensor,
    weights: torch.Tensor,
    loss_sample: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over rows of sum_i w_i (f_i - ReLU(h W_dec + b_dec)_i)^2, W_dec (M, n).

    loss_sample == 0: exact. loss_sample > 0: exact on each row's active outputs, plus an
    unbiased estimate of the inactive part from `loss_sample` columns drawn without replacement
    (inclusion probability s/n, so each drawn inactive term is weighted n/s). Pass W_dec as the
    transpose of a contiguous (n, M) tensor for fast per-feature row gathers.
    """
    n = W_dec.shape[1]
    idx = idx.long()
    val = val.to(h.dtype)
    if loss_sample <= 0 or loss_sample >= n:
        return _DecoderSquaredError.apply(h, W_dec, b_dec, idx, val, weights.to(h.dtype))
    rows = W_dec.T  # (n, M)
    active = val > 0
    B, k = idx.shape
    flat = idx.reshape(-1)
    # active outputs: when the batch's B*k slots far outnumber the features (n <= B*k/8), one
    # matmul over the distinct active columns (BLAS); otherwise a per-row gather of k decoder
    # rows (memory B*k*M, no B*n term). Measured crossover: matmul wins while |U| < ~B*k/9.
    # index_select, not advanced indexing: its backward is an index_add, not a sorted index_put.
    if n * 8 <= idx.numel():
        U, inv = torch.unique(idx, return_inverse=True)
        z = torch.gather(h @ rows.index_select(0, U).T, 1, inv)
    else:
        z = torch.bmm(rows.index_select(0, flat).view(B, k, -1), h.unsqueeze(2)).squeeze(2)
    f_act = torch.relu(z + b_dec.index_select(0, flat).view(B, k))
    act_loss = (active * weights[idx] * (val - f_act) ** 2).sum(1)
    # inactive outputs: a shared uniform sample of columns, minus those active in the row
    cols = torch.randperm(n, generator=generator)[:loss_sample]
    f_s = torch.relu(torch.addmm(b_dec.index_select(0, cols), h, rows.index_select(0, cols).T))  # (B, s)
    slot = torch.full((n,), loss_sample, dtype=torch.long)  # feature -> its sample slot (s: not drawn)
    slot[cols] = torch.arange(loss_sample)
    s_idx = torch.where(active, slot[idx], loss_sample)
    hit = torch.zeros(B, loss_sample + 1, dtype=torch.bool).scatter_(1, s_idx, True)[:, :loss_sample]
    inact = ((~hit) * weights[cols] * f_s**2).sum(1) * (n / loss_sample)
    return (act_loss + inact).mean()


def squeezer_loss(
    model: Squeezer,
    idx: torch.Tensor,
    val: torch.Tensor,
    weights: torch.Tensor,
    loss_sample: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    h = model.encode(idx, val)
    return reconstruction_loss(h, model.W_dec, model.b_dec, idx, val, weights, loss_sample, generator)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def minibatches(n_rows: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless row-index minibatches from seeded permutations (one permutation per epoch)."""
    batch_size = min(batch_size, n_rows)
    while True:
        perm = torch.randperm(n_rows, generator=generator)
        for s in range(0, n_rows - batch_size + 1, batch_size):
            yield perm[s : s + batch_size]


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on the weight matrices only (biases are not decayed). The fused
    kernel (~6x faster on CPU at n x M = 24,576 x 768) where this torch has it."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


@dataclass
class CurveLogger:
    """Mean loss over each logging interval, ~`points` points over training."""

    n_steps: int
    points: int = 50
    curve: list[dict[str, float]] = field(default_factory=list)
    _sum: float = 0.0
    _count: int = 0

    def add(self, step: int, loss: float) -> None:
        self._sum += loss
        self._count += 1
        every = max(1, self.n_steps // self.points)
        if (step + 1) % every == 0 or step + 1 == self.n_steps:
            self.curve.append({"step": step + 1, "loss": self._sum / self._count})
            self._sum, self._count = 0.0, 0


def check_features(feats: SparseFeatures, what: str = "features") -> None:
    """Non-finite, negative or out-of-range features fail before any training."""
    val = feats.val
    if not np.all(np.isfinite(val)):
        bad = int((~np.isfinite(val)).sum())
        raise ParamError(f"{what}: {bad} non-finite (NaN/inf) feature values; fix the features stage output")
    if np.any(val < 0):
        raise ParamError(f"{what}: negative feature values (min {val.min():g}); SAE features must be >= 0")
    used = feats.idx[val > 0]
    if used.size and (used.min() < 0 or used.max() >= feats.n_features):
        raise ParamError(f"{what}: feature index outside [0, {feats.n_features})")


def train_squeezer(
    train: SparseFeatures,
    cfg: SqueezerConfig,
    importance: np.ndarray | None = None,
    n_features: int | None = None,
    freeze_encoder: bool = False,
) -> tuple[Squeezer, list[dict[str, float]]]:
    """Train a Squeezer on sparse features; returns (model, curve of {"step", "loss"}).

    `importance`: per-feature loss weights; None resolves `cfg.importance` (firing frequencies
    from `train`). Deterministic for `cfg.seed`. Training throughput is stored on the model as
    `model.samples_per_s`. `freeze_encoder=True` keeps the random initial encoder (W_enc, and
    b_enc = 0) fixed and trains only the decoder (the random-encoder baseline; needs untied).
    """
    n = int(n_features or train.n_features)
    check(len(train) >= 1, "squeezer", "0 training rows", "at least one training row")
    check_features(train, "train features")
    w = (
        resolve_importance(cfg, n, train.firing_frequency())
        if importance is None
        else np.asarray(importance, np.float32)
    )
    if len(w) != n:
        raise ParamError(f"importance weights have length {len(w)}, expected n_features = {n}")
    weights = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))

    gen = torch.Generator().manual_seed(cfg.seed)
    model = Squeezer(n, cfg.M, cfg.tied, cfg.init, generator=gen)
    if freeze_encoder:
        if cfg.tied:
            raise ValueError("freeze_encoder needs an untied decoder")
        model.W_enc.requires_grad_(False)
        model.b_enc.requires_grad_(False)
    if cfg.bias_init == "mean":
        mu = torch.zeros(n, dtype=torch.float64).index_add_(
            0,
            torch.from_numpy(train.idx.ravel().astype(np.int64)),
            torch.from_numpy(train.val.ravel().astype(np.float64)),
        ) / len(train)
        with torch.no_grad():
            model.b_dec.copy_(mu.float())
            if not freeze_encoder:
                model.b_enc.copy_(-(mu.float() @ model.W_enc))
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    idx_all = torch.from_numpy(train.idx.astype(np.int64))
    val_all = torch.from_numpy(train.val.astype(np.float32))
    n_steps = cfg.n_steps(len(train))
    log = CurveLogger(n_steps)
    batches = minibatches(len(train), cfg.batch_size, gen)
    t0 = time.perf_counter()
    seen = 0
    for step in range(n_steps):
        rows = next(batches)
        loss = squeezer_loss(model, idx_all[rows], val_all[rows], weights, cfg.loss_sample, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(rows)
        log.add(step, loss.item())
    model.samples_per_s = seen / max(time.perf_counter() - t0, 1e-9)
    model.eval()
    return model, log.curve


@torch.no_grad()
def neuron_activations(model: Squeezer, feats: SparseFeatures, batch_size: int = 4096) -> np.ndarray:
    """The synthetic neurons h (N, M) on `feats`."""
    out = np.empty((len(feats), model.M), dtype=np.float32)
    for s in range(0, len(feats), batch_size):
        b = feats[s : s + batch_size]
        out[s : s + len(b)] = model.encode(torch.from_numpy(b.idx), torch.from_numpy(b.val)).numpy()
    return out


def save_squeezer(path: str | Path, model: Squeezer, cfg: SqueezerConfig, extra: dict | None = None) -> None:
    """torch.save a dict: W_enc (n, M), b_enc (M,), W_dec (M, n), b_dec (n,), config, extra."""
    state = {
        "W_enc": model.W_enc.detach().clone(),
        "b_enc": model.b_enc.detach().clone(),
        "W_dec": model.W_dec.detach().clone().contiguous(),
        "b_dec": model.b_dec.detach().clone(),
        "config": dataclasses.asdict(cfg),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_squeezer(path: str | Path) -> Squeezer:
    state = torch.load(path, map_location="cpu", weights_only=False)
    n, M = state["W_enc"].shape
    tied = bool(state["config"].get("tied", False))
    model = Squeezer(n, M, tied)
    with torch.no_grad():
        model.W_enc.copy_(state["W_enc"])
        model.b_enc.copy_(state["b_enc"])
        model.b_dec.copy_(state["b_dec"])
        if not tied:
            model.W_dec_T.copy_(state["W_dec"].T)
    model.config = state["config"]
    model.extra = state.get("extra", {})
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# Shared metrics
# --------------------------------------------------------------------------------------------


@dataclass
class EvalBatch:
    """One held-out batch: the features, and (when available) the row-aligned original
    activations `resid` (what the SAE reads) and the model's `neurons`."""

    feats: SparseFeatures
    resid: np.ndarray | None = None
    neurons: np.ndarray | None = None


class Codec:
    """What `evaluate_codec` needs from a method: codes and reconstructions per batch.

    `code(batch) -> (pre, h)`: pre-activations (None when the method has no ReLU) and neurons;
    `decode(h) -> f_hat` (B, n).
    """

    relu: bool = True

    def code(self, batch: EvalBatch) -> tuple[torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SqueezerCodec(Codec):
    def __init__(self, model: Squeezer):
        self.model = model

    def code(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.model.preactivations(torch.from_numpy(batch.feats.idx), torch.from_numpy(batch.feats.val))
        return pre, torch.relu(pre)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.decode(h)


def iter_eval_batches(
    features_dir: str | Path,
    activations_dir: str | Path | None = None,
    batch_size: int = 1024,
    keys: tuple[str, ...] = ("resid",),
) -> Iterator[EvalBatch]:
    """Stream row-aligned held-out batches of features and (optionally) activations."""
    from neural_codec.storage import iter_batches, read_meta

    n_features = int(read_meta(features_dir)["n_features"])
    fb = iter_batches(features_dir, batch_size, ["idx", "val"])
    ab = iter_batches(activations_dir, batch_size, list(keys)) if activations_dir is not None else None
    for f in fb:
        a = next(ab) if ab is not None else {}
        feats = SparseFeatures(f["idx"], f["val"], n_features)
        for arr in a.values():
            if len(arr) != len(feats):
                raise ValueError(
                    f"activations and features are not row-aligned ({len(arr)} vs {len(feats)} rows)"
                )
        yield EvalBatch(feats, a.get("resid"), a.get("neurons"))


def batches_from_arrays(
    feats: SparseFeatures,
    resid: np.ndarray | None = None,
    neurons: np.ndarray | None = None,
    batch_size: int = 1024,
) -> Iterator[EvalBatch]:
    """In-memory version of `iter_eval_batches` (tests, small data)."""
    for s in range(0, len(feats), batch_size):
        sl = slice(s, s + batch_size)
        yield EvalBatch(
            feats[sl], None if resid is None else resid[sl], None if neurons is None else neurons[sl]
        )


@torch.no_grad()
def evaluate_codec(
    codec: Codec,
    batches: Iterable[EvalBatch],
    sae_decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The metrics every method reports (streaming; float64 accumulators):

    - fvu: sum (F - F_hat)^2 / sum (F - mean F)^2 over all held-out entries.
    - recovery_mean, recovery_frac_above_0_5: R_i = 1 - E[(F_i - F_hat_i)^2 | F_i > 0] /
      E[F_i^2 | F_i > 0] over features that fire on held-out (`n_features_firing`).
    - features_represented: features that fire on held-out and whose held-out self-gain
      g_i = Cov(F_i, F_hat_i) / Var(F_i) (the least-squares slope of F_hat_i on F_i over all rows)
      exceeds 0.5; median_self_gain over firing features. Measured on data, so it is the same
      for every method and does not depend on the init scale: a weight-norm criterion (TMS's
      ||W_i|| > 0.5) counts rarely-firing, barely-trained features whose xavier rows already
      have norm ~sqrt(2M/(n+M)) = 0.63 at n=512, M=128; a dropped feature predicted by its
      mean has g_i = 0, a perfect copy g_i = 1.
    - dead_neurons: fraction of neurons never > 0 on held-out (linear codes: never != 0).
    - relu_engagement: mean over live neurons of the fraction of pre-activations < 0 (dead
      neurons, always clipped, would otherwise mask a live code that never clips);
      linear_regime: engagement < LINEAR_REGIME_THRESHOLD (always true without a ReLU);
      linear_neurons: fraction of live neurons whose own engagement is below that threshold.
    - sae_explained_variance: F_hat decoded by the SAE (`sae_decode`, x_hat = F_hat W_dec + b_dec)
      against the original activations `resid`: 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2;
      sae_explained_variance_ceiling: the same for the SAE's own top-k features F (what an exact
      re-compression, F_hat = F, scores; a method whose errors lean toward x, e.g. a readout
      from the model's neurons, which see all of x, can exceed it).
    """
    n_rows = 0
    sse = 0.0
    s1 = s2 = None  # per-feature sums of F and F^2
    s_hat = s_cross = None  # per-feature sums of F_hat (all rows) and F * F_hat
    err_act = sq_act = cnt_act = None  # per-feature sums on rows where F_i > 0
    ever_active = neg_pre = None
    x_sse = x_sse_ceiling = 0.0
    x_s1 = None
    x_s2 = 0.0
    x_rows = 0
    for batch in batches:
        feats = batch.feats
        n = feats.n_features
        if s1 is None:
            s1, s2 = np.zeros(n), np.zeros(n)
            err_act, sq_act, cnt_act = np.zeros(n), np.zeros(n), np.zeros(n)
            s_hat, s_cross = np.zeros(n), np.zeros(n)
        idx = torch.from_numpy(feats.idx.astype(np.int64))
        val = torch.from_numpy(feats.val.astype(np.float32))
        pre, h = codec.code(batch)
        f_hat = codec.decode(h)
        target = dense_target(idx, val, n)
        sse += float(((target - f_hat).double() ** 2).sum())
        n_rows += len(feats)
        active = feats.val > 0
        a_idx = feats.idx[active]
        a_val = feats.val[active].astype(np.float64)
        np.add.at(s1, a_idx, a_val)
        np.add.at(s2, a_idx, a_val**2)
        fh_act = torch.gather(f_hat, 1, idx).numpy()[active].astype(np.float64)
        np.add.at(err_act, a_idx, (a_val - fh_act) ** 2)
        np.add.at(sq_act, a_idx, a_val**2)
        np.add.at(cnt_act, a_idx, 1.0)
        np.add.at(s_cross, a_idx, a_val * fh_act)
        s_hat += f_hat.double().sum(0).numpy()
        hn = h.numpy()
        if ever_active is None:
            ever_active = np.zeros(hn.shape[1], dtype=bool)
            neg_pre = np.zeros(hn.shape[1])
        ever_active |= ((hn > 0) if codec.relu else (hn != 0)).any(0)
        if pre is not None:
            neg_pre += (pre.numpy() < 0).sum(0)
        if sae_decode is not None and batch.resid is not None:
            x = torch.from_numpy(np.asarray(batch.resid, dtype=np.float32)).double()
            x_hat = sae_decode(f_hat.float()).double()
            x_f = sae_decode(target).double()
            x_sse += float(((x - x_hat) ** 2).sum())
            x_sse_ceiling += float(((x - x_f) ** 2).sum())
            x_s1 = x.sum(0) if x_s1 is None else x_s1 + x.sum(0)
            x_s2 += float((x**2).sum())
            x_rows += len(x)
    if n_rows == 0:
        raise ValueError("no held-out rows to evaluate")
    sst = float((s2 - s1**2 / n_rows).sum())
    fired = cnt_act > 0
    R = 1.0 - err_act[fired] / np.maximum(sq_act[fired], 1e-30)
    var = s2 - s1**2 / n_rows
    gain = np.where(var > 0, (s_cross - s1 * s_hat / n_rows) / np.maximum(var, 1e-300), 0.0)
    live = ever_active if ever_active.any() else np.ones_like(ever_active)
    per_neuron = neg_pre[live] / n_rows if codec.relu else np.zeros(int(live.sum()))
    engagement = float(per_neuron.mean())
    out: dict[str, Any] = {
        "fvu": sse / sst if sst > 0 else float("nan"),
        "recovery_mean": float(R.mean()) if R.size else float("nan"),
        "recovery_frac_above_0_5": float((R > 0.5).mean()) if R.size else float("nan"),
        "features_represented": int(((gain > REPRESENTED_THRESHOLD) & fired).sum()),
        "median_self_gain": float(np.median(gain[fired])) if fired.any() else float("nan"),
        "dead_neurons": float(1.0 - ever_active.mean()),
        "relu_engagement": engagement,
        "linear_regime": bool(engagement < LINEAR_REGIME_THRESHOLD),
        "linear_neurons": float((per_neuron < LINEAR_REGIME_THRESHOLD).mean()),
        "sae_explained_variance": None,
        "sae_explained_variance_ceiling": None,
        "n_features_firing": int(fired.sum()),
        "n_heldout_rows": n_rows,
    }
    if x_rows:
        x_sst = x_s2 - float((x_s1**2).sum()) / x_rows
        out["sae_explained_variance"] = 1.0 - x_sse / x_sst
        out["sae_explained_variance_ceiling"] = 1.0 - x_sse_ceiling / x_sst
    return out


def load_sae_decoder(sae_dir: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The SAE's decoder (SAELens `SAE.load_from_disk(...).decode`: F W_dec + b_dec)."""
    sae = load_sae(sae_dir)
    sae.eval()

    def decode(f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sae.decode(f.to(sae.W_dec.dtype))

    decode.n_features = int(sae.W_dec.shape[0])  # type: ignore[attr-defined]
    decode.W_dec = sae.W_dec.detach()  # type: ignore[attr-defined]
    return decode


# --------------------------------------------------------------------------------------------
# Stage input checks (shared by stages/squeeze.py and stages/baselines.py)
# --------------------------------------------------------------------------------------------


def eval_batch_size(n_features: int, budget_floats: int = 1 << 24) -> int:
    """Held-out batch size keeping a dense (B, n) reconstruction within ~64 MB."""
    return int(max(64, min(4096, budget_floats // max(n_features, 1))))


def check_upstream(
    params: dict[str, Any],
    cfg: SqueezerConfig,
    features_dir: str | Path,
    activations_dir: str | Path,
    sae_dir: str | Path,
    need_train_activations: bool = False,
) -> dict[str, Any]:
    """Everything that can be wrong with the inputs, checked before any training:
    upstream outputs exist, features.top_k <= n_features, importance_given has length
    n_features, features are finite / non-negative / in range (every shard scanned),
    held-out activations are row-aligned with held-out features.
    Returns {"n_features", "k", "firing_freq", "n_train", "n_heldout"}."""
    from neural_codec.params import require_inputs
    from neural_codec.storage import iter_sparse, read_meta

    features_dir, activations_dir, sae_dir = Path(features_dir), Path(activations_dir), Path(sae_dir)
    needed = [
        features_dir / "train" / "meta.json",
        features_dir / "heldout" / "meta.json",
        features_dir / "firing_freq.npy",
        sae_dir / "cfg.json",
        activations_dir / "heldout" / "meta.json",
    ]
    if need_train_activations:
        needed.append(activations_dir / "train" / "meta.json")
    require_inputs(*needed)
    meta = read_meta(features_dir / "train")
    n, k = int(meta["n_features"]), int(meta["k"])
    top_k = (params.get("features") or {}).get("top_k")
    if top_k is not None:
        check(
            isinstance(top_k, int) and 1 <= top_k <= n,
            "features.top_k",
            top_k,
            f"an integer in [1, n_features = {n}] (the SAE has {n} latents)",
        )
    check(k <= n, f"{features_dir / 'train' / 'meta.json'}: k", k, f"at most n_features = {n}")
    if cfg.importance_given is not None:
        check(
            len(cfg.importance_given) == n,
            "squeezer.importance_given",
            f"<list of length {len(cfg.importance_given)}>",
            f"a list of length n_features = {n}",
        )
    freq = np.load(features_dir / "firing_freq.npy")
    check(freq.shape == (n,), str(features_dir / "firing_freq.npy"), freq.shape, f"shape ({n},)")
    counts = {}
    for split in ("train", "heldout"):
        rows = 0
        for b in iter_sparse(features_dir / split, 65536):
            check_features(b, f"{features_dir / split}")
            rows += len(b)
        counts[split] = rows
    act_rows = int(read_meta(activations_dir / "heldout")["n_rows"])
    check(
        act_rows == counts["heldout"],
        f"{activations_dir / 'heldout'}: n_rows",
        act_rows,
        f"{counts['heldout']} rows, row-aligned with {features_dir / 'heldout'} (re-run features)",
    )
    if need_train_activations:
        tr_rows = int(read_meta(activations_dir / "train")["n_rows"])
        check(
            tr_rows == counts["train"],
            f"{activations_dir / 'train'}: n_rows",
            tr_rows,
            f"{counts['train']} rows, row-aligned with {features_dir / 'train'} (re-run features)",
        )
    return {
        "n_features": n,
        "k": k,
        "firing_freq": freq,
        "n_train": counts["train"],
        "n_heldout": counts["heldout"],
    }
