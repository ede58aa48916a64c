"""Training the Squeezer: minibatches, the optimiser, the loss curve, and the neurons it gives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from neural_codec.config import SqueezerConfig
from neural_codec.errors import ParamError, check
from neural_codec.squeezer.inputs import check_features
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer, resolve_importance
from neural_codec.storage import SparseFeatures


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
    model = Squeezer(n, cfg.M, cfg.tied, cfg.init, generator=gen, hidden=cfg.hidden)
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
    model.samples_per_s = seen / max(time.perf_counter() - t0, 1e-9)  # training throughput
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
