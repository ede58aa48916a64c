"""The nulls every analysis is read against, in one place (one name per null):

- `permute_feature_columns`: each feature's column permuted independently across rows
  (frequencies and values kept, co-occurrence destroyed): the *permuted* null;
- `untrained_squeezer`: the main Squeezer at its exact initial weights: the *untrained* null;
- `retrain_config`: the main Squeezer's config with another seed, step count and/or device (the
  seed-2 ceiling and the retrained nulls, trained on their own section's `device`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from neural_codec.config import SqueezerConfig
from neural_codec.squeezer.model import Squeezer
from neural_codec.storage import SparseFeatures


def permute_feature_columns(feats: SparseFeatures, seed: int = 0) -> SparseFeatures:
    """Shuffle each feature's column independently across rows.

    Every feature keeps its firing frequency and its value distribution, but which features
    fire together is destroyed: a Squeezer trained on this learns only what frequencies alone
    explain. Implemented as: each feature's non-zeros move to rows drawn without replacement
    (= applying an independent random row permutation to each column). Rows then hold a
    variable number of non-zeros, so the result is as wide as the fullest row (val 0 = padding).
    """
    rng = np.random.default_rng(seed)
    csc = feats.to_csr().tocsc()
    N = len(feats)
    new_rows = np.empty(csc.nnz, dtype=np.int64)
    counts = np.diff(csc.indptr)
    for j in np.flatnonzero(counts):
        a, b = csc.indptr[j], csc.indptr[j + 1]
        new_rows[a:b] = rng.choice(N, size=b - a, replace=False)
    cols = np.repeat(np.arange(feats.n_features), counts)
    out = sp.csr_matrix((csc.data, (new_rows, cols)), shape=(N, feats.n_features))
    out.sort_indices()
    per_row = np.diff(out.indptr)
    width = max(int(per_row.max()) if N else 0, 1)
    idx = np.zeros((N, width), dtype=np.int32)
    val = np.zeros((N, width), dtype=np.float32)
    slot = np.arange(out.nnz) - np.repeat(out.indptr[:-1], per_row)
    r = np.repeat(np.arange(N), per_row)
    idx[r, slot] = out.indices
    val[r, slot] = out.data
    return SparseFeatures(idx, val, feats.n_features)


def untrained_squeezer(n_features: int, cfg: SqueezerConfig) -> Squeezer:
    """The main Squeezer at initialisation: same config and seed, so the same initial weights
    `train_squeezer` starts from (it seeds a generator with cfg.seed and draws the init first)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return Squeezer(n_features, cfg.M, cfg.tied, cfg.init, generator=gen, hidden=cfg.hidden).eval()


def retrain_config(
    cfg: SqueezerConfig, seed: int | None = None, steps: int | None = None, device: str | None = None
) -> SqueezerConfig:
    """The main Squeezer's config with another seed, a fixed number of steps and/or a device
    (the device changes where it trains, not what it learns: the same seeded draws)."""
    changes: dict[str, Any] = {}
    if device is not None:
        changes["device"] = device
    if seed is not None:
        changes["seed"] = seed
    if steps is not None:
        changes["steps"] = steps
        changes["epochs"] = 0.0
    return dataclasses.replace(cfg, **changes)
