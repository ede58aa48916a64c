"""The Squeezer: sparse features -> M ReLU synthetic neurons -> features.

    h     = ReLU(f @ W_enc + b_enc)          (B, M)   the synthetic neurons (a privileged basis)
    f_hat = ReLU(h @ W_dec + b_dec)          (B, n)   features are non-negative

`hidden="linear"` drops the hidden ReLU (h = f @ W_enc + b_enc); tied and linear it is the
Toy Models of Superposition model x' = ReLU(W^T W x + b) (b_enc then only shifts b_dec).

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
        hidden: str = "relu",
    ):
        super().__init__()
        if hidden not in ("relu", "linear"):
            raise ValueError(f"hidden must be 'relu' or 'linear', got {hidden!r}")
        self.n_features, self.M, self.tied, self.hidden = n_features, M, tied, hidden
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
        z = self.preactivations(idx, val)
        return torch.relu(z) if self.hidden == "relu" else z

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h @ self.W_dec + self.b_dec)

    def forward(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(idx, val))

    def balanced_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W_enc, W_dec) as float64 numpy after `balance_neurons` (see there)."""
        with torch.no_grad():
            return balance_neurons(self.W_enc.double().cpu().numpy(), self.W_dec.double().cpu().numpy())

    def feature_gain(self) -> np.ndarray:
        """sqrt(||W_enc row i|| * ||W_dec column i||) of the **balanced** weights
        (`balance_neurons`), so it is invariant to the per-neuron ReLU rescaling symmetry
        (neuron j's encoder column x c_j, b_enc_j x c_j, decoder row / c_j), which leaves the
        function unchanged. (The raw row/column norms are not: the symmetry scales the entries
        of a feature's encoder row by different c_j.) Equals ||W_i|| when tied."""
        E, D = self.balanced_weights()
        return np.sqrt(np.linalg.norm(E, axis=1) * np.linalg.norm(D, axis=0))


def balance_neurons(W_enc: np.ndarray, W_dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale each neuron j so that ||W_enc[:, j]|| = ||W_dec[j, :]|| (both become the
    geometric mean of the two norms); W_enc (n, M), W_dec (M, n).

    A ReLU (or linear) hidden layer has the symmetry W_enc[:, j] * c_j, b_enc[j] * c_j,
    W_dec[j] / c_j (c_j > 0) that leaves the codec's function unchanged. Balancing picks one
    canonical member of every such orbit (the factor sqrt(||dec_j|| / ||enc_j||) undoes any c_j
    exactly), so anything computed from the balanced weights is invariant to the symmetry; a
    tied codec is already balanced (unchanged). A neuron with a zero encoder column or decoder
    row carries nothing from features to features and is zeroed on both sides.
    """
    E = np.array(W_enc, dtype=np.float64)
    D = np.array(W_dec, dtype=np.float64)
    ne, nd = np.linalg.norm(E, axis=0), np.linalg.norm(D, axis=1)
    ok = (ne > 0) & (nd > 0)
    c = np.zeros(len(ne))
    c[ok] = np.sqrt(nd[ok] / ne[ok])
    return E * c[None, :], D / np.where(ok, c, 1.0)[:, None] * ok[:, None]


def dense_target(idx: torch.Tensor, val: torch.Tensor, n_features: int) -> torch.Tensor:
    """(B, n) dense targets from (B, k) pairs (decoder side only; padding adds 0)."""
    return torch.zeros(idx.shape[0], n_features, dtype=val.dtype, device=val.device).scatter_add_(
        1, idx.long(), val
    )
