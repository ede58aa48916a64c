"""The naive reference implementations the benchmark cases compare the Neural Codec against:
what one would write first. Each computes the same thing as ours (tests/test_fast_paths.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from neural_codec.squeezer.model import Squeezer
from neural_codec.storage import SparseFeatures


class NaiveSqueezer(nn.Module):
    """Naive `Squeezer`: dense (B, n) input, nn.Linear encoder and decoder."""

    def __init__(self, n: int, M: int):
        super().__init__()
        self.enc = nn.Linear(n, M)
        self.dec = nn.Linear(M, n)

    @classmethod
    def like(cls, model: Squeezer) -> NaiveSqueezer:
        """The same function as an (untied) `Squeezer`, for like-for-like comparisons."""
        out = cls(model.n_features, model.M)
        with torch.no_grad():
            out.enc.weight.copy_(model.W_enc.T)
            out.enc.bias.copy_(model.b_enc)
            out.dec.weight.copy_(model.W_dec.T)
            out.dec.bias.copy_(model.b_dec)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dec(torch.relu(self.enc(x))))


def naive_loss(
    model: NaiveSqueezer, idx: torch.Tensor, val: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Naive `squeezer_loss` (exact): densify the (B, k) pairs, weighted squared error over all n outputs."""
    x = torch.zeros(idx.shape[0], model.enc.in_features).scatter_add_(
        1, idx.long(), val
    )  # densify (padding adds 0)
    return (weights * (x - model(x)) ** 2).sum(1).mean()


def naive_pair_counts(dense_cols: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Naive `logic.cooccurrence`: a per-pair loop over dense boolean columns (Fortran order: a
    column is contiguous)."""
    out = np.empty(len(pairs), np.int64)
    for p, (a, b) in enumerate(pairs):
        out[p] = np.count_nonzero(dense_cols[:, a] & dense_cols[:, b])
    return out


def naive_gram_step(acc: np.ndarray, feats: SparseFeatures) -> None:
    """Naive `logic.cooccurrence`, one batch of the dense Gram: acc += B^T B (float32 BLAS) of the
    binarized batch."""
    dense = (feats.to_dense() > 0).astype(np.float32)
    acc += dense.T @ dense


def naive_extract(model: Any, toks: Iterable[torch.Tensor], hooks: list[str]) -> None:
    """Naive `lm.extract_activations` forward: `run_with_cache()` of every hook over the whole
    model, then the wanted hooks copied to numpy."""
    for t in toks:
        with torch.no_grad():
            _, cache = model.run_with_cache(t)
        [cache[h].float().cpu().numpy() for h in hooks]
        del cache
