"""The Squeezer: sparse features -> M ReLU synthetic neurons -> features.

    h     = ReLU(f @ W_enc + b_enc)          (B, M)   the synthetic neurons (a privileged basis)
    f_hat = ReLU(h @ W_dec + b_dec)          (B, n)   features are non-negative

Why an embedding bag: the input `f` is top-k sparse (`SparseFeatures`, N x k pairs), so the
encoder is a weighted sum of k rows of `W_enc` per sample (`embedding_bag(mode="sum")`), never a
dense (B, n) batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neural_codec.config import SqueezerConfig
from neural_codec.errors import ParamError, check


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


class Squeezer(nn.Module):
    """h = ReLU(embedding_bag(idx, W_enc, val) + b_enc); f_hat = ReLU(h @ W_dec + b_dec).

    `W_enc` (n, M): row i is feature i's direction in neuron space (the embedding-bag table).
    `W_dec` (M, n): column i is feature i's decoder direction; when tied it is `W_enc.T`.
    """

    samples_per_s: float = 0.0  # training throughput, set by `train_squeezer`

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


def dense_target(idx: torch.Tensor, val: torch.Tensor, n_features: int) -> torch.Tensor:
    """(B, n) dense targets from (B, k) pairs (decoder side only; padding adds 0)."""
    return torch.zeros(idx.shape[0], n_features, dtype=val.dtype).scatter_add_(1, idx.long(), val)
