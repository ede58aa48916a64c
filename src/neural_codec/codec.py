"""The metric every codec reports: the Squeezer and each baseline are scored by `evaluate_codec`.

A method is a `Codec` (codes and reconstructions per held-out batch), so all methods report
identical keys computed the same way, streaming over held-out batches (memory bounded by a batch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from neural_codec.runtime import progress
from neural_codec.squeezer.model import Squeezer, dense_target
from neural_codec.storage import SparseFeatures, iter_batches, read_meta

#: mean ReLU engagement below this flags a run as "linear regime" (Toy Models of Superposition:
#: models whose ReLU almost never clips turn their biases positive and behave like PCA).
LINEAR_REGIME_THRESHOLD = 0.05


#: a feature counts as represented when its reconstruction follows it: the held-out least-squares
#: slope of F_hat_i on F_i exceeds this (1 = carried through, 0 = replaced by a constant).
REPRESENTED_THRESHOLD = 0.5


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

    def reconstruct(self, batch: EvalBatch) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(pre, h, f_hat) of a batch, on the CPU (where the metrics' accumulators are) whatever
        device the codec computes on."""
        pre, h = self.code(batch)
        f_hat = self.decode(h)
        return None if pre is None else pre.cpu(), h.cpu(), f_hat.cpu()


class SqueezerCodec(Codec):
    """A Squeezer scored on `device` (None: where the model is). Another device scores a copy,
    so the caller's model stays where it was."""

    def __init__(self, model: Squeezer, device: torch.device | str | None = None):
        if device is not None and torch.device(device) != model.W_enc.device:
            model = copy.deepcopy(model).to(device)
        self.model = model

    def code(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.model.W_enc.device
        idx, val = torch.from_numpy(batch.feats.idx).to(dev), torch.from_numpy(batch.feats.val).to(dev)
        pre = self.model.preactivations(idx, val)
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


def _self_gain(
    s1: np.ndarray, s2: np.ndarray, s_hat: np.ndarray, s_cross: np.ndarray, n_rows: int | np.ndarray
) -> np.ndarray:
    """g_i = Cov(F_i, F_hat_i) / Var(F_i) from running sums (0 for a constant feature)."""
    var = s2 - s1**2 / n_rows
    return np.where(var > 0, (s_cross - s1 * s_hat / n_rows) / np.maximum(var, 1e-300), 0.0)


@torch.no_grad()
def represented_features(codec: Codec, batches: Iterable[EvalBatch]) -> np.ndarray:
    """Boolean (n,): the `features_represented` criterion of `evaluate_codec` per feature (fires
    on held-out and its held-out self-gain exceeds REPRESENTED_THRESHOLD), for callers that
    need the set rather than the count (compare's Mantel feature filter)."""
    n_rows = 0
    s1: Any = None
    for batch in batches:
        feats = batch.feats
        n = feats.n_features
        if s1 is None:
            s1, s2, s_hat, s_cross, cnt = (np.zeros(n) for _ in range(5))
        idx = torch.from_numpy(feats.idx.astype(np.int64))
        _, h, f_hat = codec.reconstruct(batch)
        active = feats.val > 0
        a_idx, a_val = feats.idx[active], feats.val[active].astype(np.float64)
        fh_act = torch.gather(f_hat, 1, idx).numpy()[active].astype(np.float64)
        np.add.at(s1, a_idx, a_val)
        np.add.at(s2, a_idx, a_val**2)
        np.add.at(s_cross, a_idx, a_val * fh_act)
        np.add.at(cnt, a_idx, 1.0)
        s_hat += f_hat.double().sum(0).numpy()
        n_rows += len(feats)
    if s1 is None:
        raise ValueError("no held-out rows to evaluate")
    return (_self_gain(s1, s2, s_hat, s_cross, n_rows) > REPRESENTED_THRESHOLD) & (cnt > 0)


@torch.no_grad()
def row_errors(codec: Codec, batches: Iterable[EvalBatch]) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out row: ||F_r - F_hat_r||^2 and ||F_r - mean F||^2 (the mean over all rows), the
    two sums whose ratio is `evaluate_codec`'s fvu (for a bootstrap over rows)."""
    err: list[np.ndarray] = []
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    s1: Any = None
    for batch in batches:
        feats = batch.feats
        n = feats.n_features
        s1 = np.zeros(n) if s1 is None else s1
        idx = torch.from_numpy(feats.idx.astype(np.int64))
        target = dense_target(idx, torch.from_numpy(feats.val.astype(np.float32)), n)
        f_hat = codec.reconstruct(batch)[2]
        err.append(((target - f_hat).double() ** 2).sum(1).numpy())
        val = np.where(feats.val > 0, feats.val, 0).astype(np.float64)
        np.add.at(s1, feats.idx[feats.val > 0], val[feats.val > 0])
        rows.append((feats.idx, val))
    if s1 is None:
        raise ValueError("no held-out rows to evaluate")
    e = np.concatenate(err)
    mu = s1 / len(e)
    # ||F_r - mu||^2 = ||mu||^2 + sum over r's non-zeros of (v - mu_i)^2 - mu_i^2
    dev = np.concatenate(
        [float(mu @ mu) + np.where(v > 0, (v - mu[i]) ** 2 - mu[i] ** 2, 0.0).sum(1) for i, v in rows]
    )
    return e, dev


@torch.no_grad()
def sae_row_errors(
    codec: Codec, batches: Iterable[EvalBatch], sae_decode: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per held-out row: ||x - dec(F_hat)||^2, ||x - dec(F)||^2 (the SAE's own top-k features)
    and ||x - mean x||^2, whose sums give `evaluate_codec`'s sae_explained_variance and its
    ceiling (for a bootstrap over rows: EV = 1 - bootstrap_ratio(err, dev))."""
    err: list[np.ndarray] = []
    err_f: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    for batch in batches:
        if batch.resid is None:
            raise ValueError("sae_row_errors needs the held-out activations (resid)")
        feats = batch.feats
        idx = torch.from_numpy(feats.idx.astype(np.int64))
        target = dense_target(idx, torch.from_numpy(feats.val.astype(np.float32)), feats.n_features)
        x = torch.from_numpy(np.asarray(batch.resid, dtype=np.float32)).double()
        f_hat = codec.decode(codec.code(batch)[1])
        err.append(((x - sae_decode(f_hat.float()).double()) ** 2).sum(1).numpy())
        err_f.append(((x - sae_decode(target).double()) ** 2).sum(1).numpy())
        xs.append(x.numpy())
    if not xs:
        raise ValueError("no held-out rows to evaluate")
    x_all = np.concatenate(xs)
    dev = ((x_all - x_all.mean(0)) ** 2).sum(1)
    return np.concatenate(err), np.concatenate(err_f), dev


@torch.no_grad()
def represented_bootstrap(
    codec: Codec, batches: Iterable[EvalBatch], n_boot: int = 200, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """`features_represented` with a Poisson bootstrap over held-out rows (streamed: each row
    weighted Poisson(1) in each resample), as {"mean" (the full sample's count, = evaluate_codec's),
    "ci_low", "ci_high", "n_seeds": 1, "n_rows"} (percentile interval)."""
    rng = np.random.default_rng(seed)
    acc: Any = None
    for batch in batches:
        feats = batch.feats
        n, B = feats.n_features, len(feats)
        if acc is None:  # s1, s2, s_cross, cnt, s_hat per resample (row 0: the full sample)
            acc = [np.zeros((n_boot + 1, n)) for _ in range(5)]
            rows = np.zeros((n_boot + 1, 1))
        w = np.vstack([np.ones(B), rng.poisson(1.0, (n_boot, B))]).astype(np.float64)
        f_hat = codec.reconstruct(batch)[2].double().numpy()
        r, c = np.nonzero(feats.val > 0)
        i = feats.idx[r, c].astype(np.int64)
        v = feats.val[r, c].astype(np.float64)
        for a, data in zip(acc[:4], (v, v**2, v * f_hat[r, i], np.ones_like(v)), strict=True):
            a += np.asarray((sp.csr_matrix((data, (r, i)), shape=(B, n)).T @ w.T).T)
        acc[4] += w @ f_hat
        rows += w.sum(1, keepdims=True)
    if acc is None:
        raise ValueError("no held-out rows to evaluate")
    s1, s2, s_cross, cnt, s_hat = acc
    counts = ((_self_gain(s1, s2, s_hat, s_cross, rows) > REPRESENTED_THRESHOLD) & (cnt > 0)).sum(1)
    lo, hi = np.quantile(counts[1:], [0.5 - level / 2, 0.5 + level / 2])
    return {"mean": float(counts[0]), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": 1,
            "n_rows": int(rows[0, 0])}  # fmt: skip


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
    # per-feature float64 accumulators, allocated on the first batch (when n is known)
    s1: Any = None  # sums of F
    s2: Any = None  # sums of F^2
    s_hat: Any = None  # sums of F_hat (all rows)
    s_cross: Any = None  # sums of F * F_hat
    err_act: Any = None  # sums of (F - F_hat)^2 on rows where F_i > 0
    sq_act: Any = None  # sums of F^2 on rows where F_i > 0
    cnt_act: Any = None  # rows where F_i > 0
    ever_active: Any = None  # per neuron: ever > 0 (or != 0 for a linear code)
    neg_pre: Any = None  # per neuron: count of negative pre-activations
    x_sse = x_sse_ceiling = 0.0
    x_s1: Any = None
    x_s2 = 0.0
    x_rows = 0
    for batch in progress(batches, "evaluate", unit="batch"):
        feats = batch.feats
        n = feats.n_features
        if s1 is None:
            s1, s2 = np.zeros(n), np.zeros(n)
            err_act, sq_act, cnt_act = np.zeros(n), np.zeros(n), np.zeros(n)
            s_hat, s_cross = np.zeros(n), np.zeros(n)
        idx = torch.from_numpy(feats.idx.astype(np.int64))
        val = torch.from_numpy(feats.val.astype(np.float32))
        pre, h, f_hat = codec.reconstruct(batch)
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
        # a transcoder's decoder writes the MLP output, not resid: no activation-space score
        if sae_decode is not None and batch.resid is not None and getattr(sae_decode, "writes_resid", True):
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
    gain = _self_gain(s1, s2, s_hat, s_cross, n_rows)
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


def eval_batch_size(n_features: int, budget_floats: int = 1 << 24) -> int:
    """Held-out batch size keeping a dense (B, n) reconstruction within ~64 MB."""
    return int(max(64, min(4096, budget_floats // max(n_features, 1))))
