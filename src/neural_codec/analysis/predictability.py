"""Neuron predictability and soft matching: is each model neuron a function the features give?

The direct test of "SAE features are the atoms the model's neurons compute from" (issue 13):
fit each model neuron j as n_j ~ act(w_j . x + b_j) with the neuron's own nonlinearity (ReLU:
the Squeezer's encoder form; a real model's GELU, or its SwiGLU product, see `NeuronForm`) on
train rows, and score it by its held-out R^2. x is a top-k sparse code given as (idx, val) pairs (read
through an embedding bag, as the Squeezer reads F) or a dense array (the input the neurons read:
a ceiling no feature set can beat). Floors are the same fit on inputs that carry nothing about
the neurons (`shuffle_rows`) or a sparse code of equal L0 that is no learned dictionary
(`random_topk_code`). Every fit is a torch fit over streamed batches, never the whole set.

Also here, on plain arrays: the held-out R^2 of one neuron population from another by ridge
regression (predictivity, beside the soft matching `compare.compare_populations` gives) (`ridge_fit`, `ridge_heldout_r2`, from `compare.CrossMoments` of train and held-out
rows), and the comparison of two feature x unit weight matrices' co-loading ("which features
load on the same unit": `share_matrix`, `overlap_test`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neural_codec.analysis.compare import CrossMoments

#: a batch of readout inputs: (idx, val) top-k pairs (val == 0 is padding) or a dense (B, d) array
Inputs = tuple[np.ndarray, np.ndarray] | np.ndarray

# A neuron whose held-out variance is below this fraction of its mean square is constant: its
# R^2 is undefined and it is counted in n_constant, not in the mean.
_REL_VAR_EPS = 1e-10


#: the neuron nonlinearities a readout can take (TransformerLens `cfg.act_fn` names)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_new": lambda z: F.gelu(z, approximate="tanh"),
    "gelu_fast": lambda z: F.gelu(z, approximate="tanh"),
    "gelu_pytorch_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}


@dataclass(frozen=True)
class NeuronForm:
    """The function a readout fits to each neuron: act(w . x + b), or, for a gated MLP
    (SwiGLU/GeGLU: TransformerLens' `hook_post` = act(x W_gate) * (x W_in)), the product
    act(w_g . x + b_g) * (w_u . x + b_u).

    Why the neuron's own form: a ReLU readout cannot fit a GELU neuron's negative lobe or a
    gated neuron's signed product, so a ReLU-form R^2 mixes "F does not carry what the neuron
    reads" with "the readout cannot express the neuron" (glassllm's dense ceiling was 0.23)."""

    act_fn: str = "relu"
    gated: bool = False

    def __post_init__(self) -> None:
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"neuron act_fn {self.act_fn!r}: allowed {sorted(ACTIVATIONS)}")

    @classmethod
    def parse(cls, name: str) -> NeuronForm:
        """'gelu' -> GELU(w.x + b); 'gated_silu' -> SiLU(w_g.x + b_g) (w_u.x + b_u)."""
        gated = name.startswith("gated_")
        return cls(name.removeprefix("gated_"), gated)

    @property
    def name(self) -> str:
        return ("gated_" if self.gated else "") + self.act_fn

    def describe(self, x: str = "x") -> str:
        act = {"relu": "ReLU", "silu": "SiLU"}.get(self.act_fn, "GELU")
        if self.gated:
            return f"{act}(w_g·{x} + b_g)·(w_u·{x} + b_u)"
        return f"{act}(w·{x} + b)"


class NeuronReadout(nn.Module):
    """n ~ act(x W + b) (or the gated product, see `NeuronForm`) for all neurons at once.

    Targets are divided by their train standard deviation (`target_sd`), so every neuron weighs
    alike in the loss (its R^2 is what is reported); dense inputs are standardised per column
    (`in_shift`, `in_scale`), sparse ones divided by one scalar (centring would densify them).
    ReLU commutes with that scaling, so a ReLU readout works in standardised units throughout;
    any other activation is applied to the pre-activation in the neuron's own units (x W + b
    times `target_sd`), where the model applies it. A gated readout's linear factor carries the
    scale instead. `raw_weights()` folds the scalings back: the (gate's) weights in the neurons'
    and inputs' own units.
    """

    inv_sd: torch.Tensor
    target_sd: torch.Tensor
    in_shift: torch.Tensor
    in_scale: torch.Tensor

    def __init__(
        self,
        n_in: int,
        n_out: int,
        sparse: bool,
        target_mean: np.ndarray,
        target_sd: np.ndarray,
        in_shift: np.ndarray | None = None,
        in_scale: np.ndarray | float = 1.0,
        form: NeuronForm | None = None,
    ):
        super().__init__()
        self.sparse, self.n_in, self.n_out = sparse, n_in, n_out
        self.form = form or NeuronForm()
        self.act = ACTIVATIONS[self.form.act_fn]
        sd = np.asarray(target_sd, dtype=np.float64)
        live = sd > 0
        inv = np.where(live, 1.0 / np.where(live, sd, 1.0), 0.0)
        self.register_buffer("inv_sd", torch.tensor(inv, dtype=torch.float32))
        self.register_buffer("target_sd", torch.tensor(sd, dtype=torch.float32))
        shift = np.zeros(n_in) if in_shift is None else np.asarray(in_shift, dtype=np.float64)
        scale = np.broadcast_to(np.asarray(in_scale, dtype=np.float64), (n_in,)).copy()
        scale[scale <= 0] = 1.0
        self.register_buffer("in_shift", torch.tensor(shift, dtype=torch.float32))
        self.register_buffer("in_scale", torch.tensor(scale, dtype=torch.float32))
        mean_std = np.asarray(target_mean) * inv
        # W = 0 and b = the mean (standardised): every unit starts on, so gradients reach every w_j
        self.W = nn.Parameter(torch.zeros(n_in, n_out))
        if self.form.gated:
            # gate at b_g = 1 (act'(1) > 0 for every listed act), the linear factor at the mean
            gate0 = float(self.act(torch.tensor(1.0)))
            self.b = nn.Parameter(torch.ones(n_out))
            self.W_lin = nn.Parameter(torch.zeros(n_in, n_out))
            self.b_lin = nn.Parameter(torch.tensor(mean_std / gate0, dtype=torch.float32))
        else:
            self.b = nn.Parameter(torch.tensor(mean_std, dtype=torch.float32))

    def _linear(self, x: Inputs, W: torch.Tensor) -> torch.Tensor:
        if self.sparse:
            idx, val = x  # type: ignore[misc]
            v = torch.as_tensor(np.asarray(val, dtype=np.float32)) / self.in_scale[0]
            return F.embedding_bag(
                torch.as_tensor(np.asarray(idx)).long(), W, per_sample_weights=v, mode="sum"
            )
        d = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return ((d - self.in_shift) / self.in_scale) @ W

    def standardized(self, x: Inputs) -> torch.Tensor:
        """The fitted neurons in standardised target units (B, n_out)."""
        z = self._linear(x, self.W) + self.b
        if self.form.gated:
            return self.act(z) * (self._linear(x, self.W_lin) + self.b_lin)
        if self.form.act_fn == "relu":
            return torch.relu(z)
        return self.act(z * self.target_sd) * self.inv_sd

    def predict(self, x: Inputs) -> np.ndarray:
        """The fitted neurons in their own units (B, n_out)."""
        with torch.no_grad():
            return (self.standardized(x) * self.target_sd).numpy()

    def loss(self, x: Inputs, y: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(y, dtype=np.float32)) * self.inv_sd
        live = self.inv_sd > 0  # mean over rows and non-constant neurons: ~ 1 - R^2 per neuron
        return ((self.standardized(x) - t) ** 2 * live).sum(1).mean() / live.sum().clamp(min=1)

    def raw_weights(self) -> np.ndarray:
        """(n_in, n_out) W in raw units: n_j ~ act(sum_i x_i W[i, j] + const_j); for a gated
        readout, the gate's weights (the factor that switches the neuron on)."""
        W = self.W.detach().double().numpy() / self.in_scale.double().numpy()[:, None]
        return W if self.form.gated else W * self.target_sd.double().numpy()[None, :]


def fit_readouts(
    models: dict[str, NeuronReadout],
    epochs: int,
    batches: Callable[[int], Iterable[dict[str, tuple[Inputs, np.ndarray]]]],
    steps_per_epoch: int,
    lr: float | dict[str, float],
) -> dict[str, float]:
    """Adam on every readout at once over `epochs` passes of `batches(epoch)` (each batch: name
    -> (inputs, targets), so the caller reads the data once per epoch for all of them), the
    learning rate (one, or one per readout) decaying linearly to 0. Returns each readout's mean
    loss over its last epoch."""
    rates = lr if isinstance(lr, dict) else dict.fromkeys(models, lr)
    opts = {k: torch.optim.Adam(m.parameters(), lr=rates[k]) for k, m in models.items()}
    total = max(1, epochs * steps_per_epoch)
    scheds = {
        k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: max(0.0, 1.0 - s / total)) for k, o in opts.items()
    }
    last: dict[str, float] = {}
    for epoch in range(epochs):
        sums = dict.fromkeys(models, 0.0)
        n = 0
        for batch in batches(epoch):
            for k, (x, y) in batch.items():
                opts[k].zero_grad(set_to_none=True)
                loss = models[k].loss(x, y)
                loss.backward()
                opts[k].step()
                scheds[k].step()
                sums[k] += float(loss.detach())
            n += 1
        last = {k: s / max(n, 1) for k, s in sums.items()}
    return last


class R2Accumulator:
    """Held-out R^2 per neuron from running sums kept per contiguous block of rows, so a block
    bootstrap over rows needs no per-row storage (and respects within-block dependence, e.g.
    tokens of one context)."""

    def __init__(self, n_out: int, n_rows: int, n_blocks: int):
        if n_rows < 1:
            raise ValueError(f"need at least 1 row, got {n_rows}")
        self.n_rows, self.n_blocks = n_rows, max(1, min(n_blocks, n_rows))
        self.stats = np.zeros((4, self.n_blocks, n_out))  # count, sum y, sum y^2, sum (y - yhat)^2
        self.seen = 0

    def update(self, y: np.ndarray, yhat: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float64)
        e = y - np.asarray(yhat, dtype=np.float64)
        rows = np.arange(self.seen, self.seen + len(y))
        if len(rows) and rows[-1] >= self.n_rows:
            raise ValueError(f"more than the {self.n_rows} rows announced")
        block = rows * self.n_blocks // self.n_rows
        for b in np.unique(block):
            sel = block == b
            self.stats[0, b] += sel.sum()
            self.stats[1, b] += y[sel].sum(0)
            self.stats[2, b] += (y[sel] ** 2).sum(0)
            self.stats[3, b] += (e[sel] ** 2).sum(0)
        self.seen += len(y)

    @staticmethod
    def _r2(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """R^2 per neuron from summed stats (4, ..., n_out), and the non-constant mask."""
        n, sy, syy, sse = s
        sst = syy - sy * sy / np.maximum(n, 1)
        live = sst > _REL_VAR_EPS * np.maximum(syy, 1e-300)
        r2 = 1.0 - sse / np.where(live, sst, 1.0)
        return np.where(live, r2, np.nan), live

    def per_neuron(self) -> np.ndarray:
        """Held-out R^2 per neuron (NaN: constant on the held-out rows)."""
        return self._r2(self.stats.sum(1))[0]

    def summary(self, n_boot: int, seed: int, level: float = 0.95) -> dict[str, Any]:
        """Mean R^2 over non-constant neurons with its block-bootstrap interval over held-out
        rows, the distribution's quantiles, and counts."""
        if self.seen != self.n_rows:
            raise ValueError(f"saw {self.seen} rows, expected {self.n_rows}")
        r2, live = self._r2(self.stats.sum(1))
        x = r2[live]
        out: dict[str, Any] = {"n_neurons": int(len(r2)), "n_constant": int((~live).sum()),
                               "n_rows": int(self.n_rows), "n_blocks": int(self.n_blocks)}  # fmt: skip
        if not len(x):
            return {**out, "mean_r2": None, "ci_low": None, "ci_high": None, "median_r2": None}
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(self.n_blocks, np.full(self.n_blocks, 1.0 / self.n_blocks), size=n_boot)
        boot = np.einsum("rb,sbn->srn", counts.astype(np.float64), self.stats)  # (4, n_boot, n_out)
        br2, _ = self._r2(boot)
        means = np.nanmean(np.where(live[None, :], br2, np.nan), axis=1)
        lo, hi = np.quantile(means[np.isfinite(means)], [0.5 - level / 2, 0.5 + level / 2])
        q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
        return {
            **out,
            "mean_r2": float(x.mean()),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "median_r2": float(q[2]),
            "quantiles": {
                "q05": float(q[0]),
                "q25": float(q[1]),
                "q50": float(q[2]),
                "q75": float(q[3]),
                "q95": float(q[4]),
            },  # fmt: skip
            "min_r2": float(x.min()),
            "frac_r2_above_0_5": float((x > 0.5).mean()),
            "frac_r2_above_0_9": float((x > 0.9).mean()),
            "n_bootstrap": int(n_boot),
        }


def evaluate(
    models: dict[str, NeuronReadout],
    n_rows: int,
    batches: Iterable[dict[str, tuple[Inputs, np.ndarray]]],
    n_blocks: int,
) -> dict[str, R2Accumulator]:
    """Held-out R^2 accumulators of every readout over one pass of `batches`."""
    acc = {k: R2Accumulator(m.n_out, n_rows, n_blocks) for k, m in models.items()}
    for batch in batches:
        for k, (x, y) in batch.items():
            acc[k].update(y, models[k].predict(x))
    return acc


# --------------------------------------------------------------------------------------------
# Floors: inputs that carry nothing about the neurons, or no learned dictionary
# --------------------------------------------------------------------------------------------


def shuffle_rows(x: Inputs, rng: np.random.Generator) -> Inputs:
    """The rows of x in a random order (against unshuffled targets: no correspondence left)."""
    if isinstance(x, tuple):
        perm = rng.permutation(len(x[0]))
        return x[0][perm], x[1][perm]
    return np.asarray(x)[rng.permutation(len(x))]


def random_encoder(d_in: int, n_latents: int, seed: int) -> np.ndarray:
    """(d_in, n_latents) Gaussian directions of unit norm: the dictionary of a random SAE."""
    R = np.random.default_rng(seed).standard_normal((d_in, n_latents))
    return (R / np.linalg.norm(R, axis=0, keepdims=True)).astype(np.float32)


def random_topk_code(
    dense: np.ndarray, val: np.ndarray, encoder: np.ndarray, shift: np.ndarray, value_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A sparse code of the same input with the same top-k shape and per-row L0 as `val`, from a
    random dictionary: top-L0 of ReLU((dense - shift) @ encoder) per row, values x value_scale.

    Why: it asks whether F predicts the neurons because it is *this* learned dictionary, or
    because any sparse code of L0 nonzeros of the same input would."""
    k = val.shape[1]
    z = np.maximum((np.asarray(dense, dtype=np.float32) - shift) @ encoder, 0.0)
    top = (
        np.argpartition(-z, k - 1, axis=1)[:, :k]
        if k < z.shape[1]
        else np.tile(np.arange(z.shape[1]), (len(z), 1))
    )
    v = np.take_along_axis(z, top, axis=1)
    order = np.argsort(-v, axis=1)
    top, v = np.take_along_axis(top, order, axis=1), np.take_along_axis(v, order, axis=1)
    l0 = (np.asarray(val) > 0).sum(1)
    v = np.where(np.arange(k)[None, :] < l0[:, None], v * value_scale, 0.0)
    return np.where(v > 0, top, 0).astype(np.int32), v.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Ridge predictivity between two neuron populations
# --------------------------------------------------------------------------------------------


@dataclass
class RidgeFit:
    beta: np.ndarray  # (p, q): B ~ A beta + intercept
    intercept: np.ndarray  # (q,)


def ridge_fit(train: CrossMoments, ridge: float) -> RidgeFit:
    """Ridge regression of every B column on all of A from train moments; the penalty is
    `ridge` x the mean variance of A's columns (scale-free)."""
    c_aa, c_ab = train.cov_aa(), train.cov_ab()
    lam = ridge * max(float(np.trace(c_aa)) / max(train.p, 1), 1e-12)
    beta = np.linalg.solve(c_aa + lam * np.eye(train.p), c_ab)
    mu_a, mu_b = train.means()
    return RidgeFit(beta, mu_b - mu_a @ beta)


def ridge_heldout_r2(held: CrossMoments, fit: RidgeFit) -> np.ndarray:
    """Held-out R^2 of each B column under `fit`, from held-out moments (NaN: constant column).

    SSE_j / n = Var(b_j) + beta_j' C_aa beta_j - 2 C_ab[:, j]' beta_j + (mean residual)^2."""
    c_aa, c_ab = held.cov_aa(), held.cov_ab()
    _, var_b = held.variances()
    mu_a, mu_b = held.means()
    B = fit.beta
    resid_mean = mu_b - mu_a @ B - fit.intercept
    mse = var_b + np.einsum("ij,ij->j", B, c_aa @ B) - 2 * np.einsum("ij,ij->j", c_ab, B) + resid_mean**2
    _, dead_b = held.dead()
    return np.where(dead_b, np.nan, 1.0 - np.maximum(mse, 0.0) / np.where(dead_b, 1.0, var_b))


# --------------------------------------------------------------------------------------------
# Feature sharing: do the features that load on one model neuron share a Squeezer neuron?
# --------------------------------------------------------------------------------------------


def share_matrix(W: np.ndarray, frac: float) -> np.ndarray:
    """(n, n) bool: features i, k both load on some unit j, where feature i loads on j if
    W[i, j] > frac * max_i |W[i, j]| (logic's neuron-sharing rule); the diagonal is False."""
    W = np.asarray(W, dtype=np.float64)
    top = np.abs(W).max(0, keepdims=True)
    L = (W > frac * top) & (top > 0)
    S = (L.astype(np.float64) @ L.T.astype(np.float64)) > 0
    np.fill_diagonal(S, False)
    return S


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 0.0


def overlap_test(S1: np.ndarray, S2: np.ndarray, n_perm: int, seed: int) -> dict[str, Any]:
    """Jaccard overlap of two sharing matrices' pair sets, against S2 with its features jointly
    permuted (its internal structure kept, the feature correspondence broken): one-sided p."""
    n = S1.shape[0]
    if S1.shape != (n, n) or S2.shape != (n, n):
        raise ValueError(f"need two square matrices of one size, got {S1.shape} and {S2.shape}")
    iu = np.triu_indices(n, k=1)
    a = S1[iu]
    obs = _jaccard(a, S2[iu])
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for t in range(n_perm):
        p = rng.permutation(n)
        null[t] = _jaccard(a, S2[p][:, p][iu])
    return {
        "overlap_jaccard": obs,
        "overlap_null_mean": float(null.mean()) if n_perm else 0.0,
        "overlap_p": (1 + int((null >= obs - 1e-12).sum())) / (1 + n_perm),
        "pairs_sharing_a": int(a.sum()),
        "pairs_sharing_b": int(S2[iu].sum()),
    }
