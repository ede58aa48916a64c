"""convergence: held-out FVU against training wall-clock for ours (exact loss), ours (sampled
loss) and the naive dense Squeezer, and the time each takes to reach a target FVU.

Why not samples/s alone: the sampled loss is cheaper per step but noisier, so only the time to
the same held-out FVU says whether it is faster. The data is a planted code, so the FVU has a
floor well below 1: each row is the top-k of `z @ D` (z: `conv_hidden_k` active of
`conv_hidden` latent units, D random), shifted by the row's (k+1)-th value so the kept values are
positive. The three runs start from the same init and see the same minibatches, and they step in
lockstep (exact, naive, sampled, then the order reversed), each with its own clock of its steps
only, so load from other jobs hits all three alike; held-out evaluation is off every clock.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import Sizes
from benchmarks.naive import NaiveSqueezer, naive_loss
from neural_codec import storage
from neural_codec.codec import SqueezerCodec, batches_from_arrays, evaluate_codec
from neural_codec.plotting import pyplot, save_png
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer, dense_target
from neural_codec.squeezer.train import make_optimizer, minibatches
from neural_codec.storage import SparseFeatures

Recon = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def planted_features(
    N: int, n: int, k: int, hidden: int, hidden_k: int, seed: int = 0, rows_seed: int = 1, chunk: int = 4096
) -> SparseFeatures:
    """N rows of exactly k features from a hidden sparse code: the top-k of z @ D minus the row's
    (k+1)-th largest value (so values are > 0 and vanish at the cut), z with `hidden_k` active
    units of `hidden` (gamma values), D (hidden, n) Gaussian. `seed` draws D (train and held-out
    share it: one code), `rows_seed` the rows."""
    D = torch.randn(hidden, n, generator=torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(rows_seed)
    D /= D.norm(dim=1, keepdim=True)
    D *= math.sqrt(n / hidden_k)  # a row's sum has unit-order entries
    idx = np.empty((N, k), np.int32)
    val = np.empty((N, k), np.float32)
    for s in range(0, N, chunk):
        B = min(chunk, N - s)
        units = torch.from_numpy(rng.random((B, hidden)).argpartition(hidden_k, axis=1)[:, :hidden_k])
        z = torch.from_numpy(rng.gamma(2.0, 0.5, (B, hidden_k)).astype(np.float32))
        a = F.embedding_bag(units, D, per_sample_weights=z, mode="sum")  # (B, n) = z @ D
        top, ti = a.topk(k + 1, dim=1)
        v = (top[:, :k] - top[:, k:]).clamp_min_(1e-6)
        order = ti[:, :k].argsort(1)
        idx[s : s + B] = ti[:, :k].gather(1, order).numpy()
        val[s : s + B] = v.gather(1, order).numpy()
    return SparseFeatures(idx, val, n)


@torch.no_grad()
def heldout_fvu(recon: Recon, idx: torch.Tensor, val: torch.Tensor, n: int, sst: float, batch: int) -> float:
    """sum (F - F_hat)^2 / sum (F - mean F)^2 over held-out rows (`evaluate_codec`'s fvu, without
    its other metrics)."""
    sse = 0.0
    for s in range(0, len(idx), batch):
        i, v = idx[s : s + batch], val[s : s + batch]
        sse += float(((dense_target(i, v, n) - recon(i, v)).double() ** 2).sum())
    return sse / sst


def _sst(f: SparseFeatures) -> float:
    s1 = np.zeros(f.n_features)
    s2 = np.zeros(f.n_features)
    a = f.val > 0
    np.add.at(s1, f.idx[a], f.val[a].astype(np.float64))
    np.add.at(s2, f.idx[a], f.val[a].astype(np.float64) ** 2)
    return float((s2 - s1**2 / len(f)).sum())


def time_to_target(curve: list[list[float]], target: float) -> float | None:
    """Training seconds at which the held-out FVU first reaches `target`, interpolated linearly
    between the two evaluations around the crossing (None: never reached)."""
    prev = None
    for step, secs, fvu in curve:
        if fvu <= target:
            if prev is None or prev[2] == fvu:
                return secs
            frac = (prev[2] - target) / (prev[2] - fvu)
            return prev[1] + frac * (secs - prev[1])
        prev = (step, secs, fvu)
    return None


def bench_convergence(sz: Sizes) -> dict[str, Any]:
    n, M, k, B = sz.n, sz.M, sz.k, sz.batch
    t_gen = time.perf_counter()
    train = planted_features(sz.conv_train_rows, n, k, sz.conv_hidden, sz.conv_hidden_k, rows_seed=1)
    held = planted_features(sz.conv_heldout_rows, n, k, sz.conv_hidden, sz.conv_hidden_k, rows_seed=2)
    gen_s = time.perf_counter() - t_gen
    sst = _sst(held)
    h_idx = torch.from_numpy(held.idx.astype(np.int64))
    h_val = torch.from_numpy(held.val)
    t_idx = torch.from_numpy(train.idx.astype(np.int64))
    t_val = torch.from_numpy(train.val)
    w = torch.ones(n)
    lr = sz.conv_lr

    ours = Squeezer(n, M, generator=torch.Generator().manual_seed(0))
    naive = NaiveSqueezer.like(ours)
    samp = Squeezer(n, M, generator=torch.Generator().manual_seed(0))
    opts = {
        "ours_exact": make_optimizer(list(ours.parameters()), lr, 0.0),
        "naive_dense": torch.optim.AdamW(naive.parameters(), lr=lr, weight_decay=0.0),
        "ours_sampled": make_optimizer(list(samp.parameters()), lr, 0.0),
    }
    sgen = torch.Generator().manual_seed(1)
    loss_fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "ours_exact": lambda i, v: squeezer_loss(ours, i, v, w),
        "naive_dense": lambda i, v: naive_loss(naive, i, v, w),
        "ours_sampled": lambda i, v: squeezer_loss(samp, i, v, w, sz.loss_sample, sgen),
    }

    def naive_recon(i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return naive(dense_target(i, v, n))

    recons: dict[str, Recon] = {"ours_exact": ours, "naive_dense": naive_recon, "ours_sampled": samp}
    names = list(opts)
    # every method sees the same minibatch sequence (one seeded stream, replayed per method)
    stream = minibatches(len(train), B, torch.Generator().manual_seed(0))
    order = list(itertools.islice(stream, sz.conv_steps + sz.conv_extra_steps))
    clock = dict.fromkeys(names, 0.0)
    done = dict.fromkeys(names, 0)
    curves: dict[str, list[list[float]]] = {m: [] for m in names}

    def evaluate(m: str) -> float:
        fvu = heldout_fvu(recons[m], h_idx, h_val, n, sst, B)
        curves[m].append([done[m], clock[m], fvu])
        return fvu

    def step(m: str) -> None:
        rows = order[done[m]]
        i, v = t_idx[rows], t_val[rows]
        t0 = time.perf_counter()
        loss = loss_fns[m](i, v)
        opts[m].zero_grad(set_to_none=True)
        loss.backward()
        opts[m].step()
        clock[m] += time.perf_counter() - t0
        done[m] += 1

    t_all = time.perf_counter()
    for m in names:
        evaluate(m)
    # phase 1: all three in lockstep for conv_steps (the exact run's length: it sets the target)
    for r in range(sz.conv_steps):
        for m in names if r % 2 == 0 else names[::-1]:
            step(m)
            if done[m] % sz.conv_eval_every == 0 or done[m] == sz.conv_steps:
                evaluate(m)
    target = curves["ours_exact"][-1][2] * (1.0 + sz.conv_target_margin)
    # phase 2: a run that has not reached the target yet goes on (up to conv_extra_steps more)
    for m in names:
        while time_to_target(curves[m], target) is None and done[m] < sz.conv_steps + sz.conv_extra_steps:
            step(m)
            if done[m] % sz.conv_eval_every == 0:
                evaluate(m)
    wall_s = time.perf_counter() - t_all

    # the fast held-out FVU is evaluate_codec's (checked on the exact run's final model)
    check = evaluate_codec(SqueezerCodec(ours), batches_from_arrays(held, batch_size=B))["fvu"]
    ttt = {m: time_to_target(curves[m], target) for m in names}
    out: dict[str, Any] = {
        "sizes": {
            "n": n,
            "k": k,
            "M": M,
            "batch": B,
            "loss_sample": sz.loss_sample,
            "lr": lr,
            "train_rows": sz.conv_train_rows,
            "heldout_rows": sz.conv_heldout_rows,
            "steps": sz.conv_steps,
            "extra_steps_max": sz.conv_extra_steps,
            "eval_every": sz.conv_eval_every,
            "hidden": sz.conv_hidden,
            "hidden_k": sz.conv_hidden_k,
        },
        "target_fvu": target,
        "target_rule": f"exact-loss run's final held-out FVU x (1 + {sz.conv_target_margin})",
        "data_generation_s": gen_s,
        "lockstep_wall_s": wall_s,
        "fvu_check_vs_evaluate_codec": {"fast": curves["ours_exact"][-1][2], "evaluate_codec": check},
    }
    for m in names:
        c = curves[m]
        out[m] = {
            "curve": c,
            "curve_header": ["step", "train_s", "heldout_fvu"],
            "final_fvu": c[-1][2],
            "steps": done[m],
            "train_s": clock[m],
            "step_s_mean": clock[m] / max(done[m], 1),
            "time_to_target_s": ttt[m],
            "steps_to_target": next((s for s, _, f in c if f <= target), None),
        }

    def ratio(a: str, b: str) -> float | None:
        ta, tb = ttt[a], ttt[b]
        return None if ta is None or tb is None or ta <= 0 else tb / ta

    out["ratio_time_to_target_exact_vs_naive"] = ratio("ours_exact", "naive_dense")
    out["ratio_time_to_target_sampled_vs_naive"] = ratio("ours_sampled", "naive_dense")
    out["ratio_time_to_target_sampled_vs_exact"] = ratio("ours_sampled", "ours_exact")
    out["method"] = (
        "same init and minibatch order; steps interleaved in lockstep (order reversed every round), "
        "each method's clock counts only its own forward+backward+optimizer steps; held-out FVU "
        f"every {sz.conv_eval_every} steps, off the clock; time to target interpolated linearly "
        "between the evaluations around the crossing; ratios = naive (or exact) time / ours"
    )
    return out


def write_convergence(cv: dict[str, Any], out_dir: Path, suffix: str = "") -> None:
    """`convergence<suffix>.csv` (method, step, train_s, heldout_fvu) and `convergence<suffix>.png`."""
    names = ["ours_exact", "ours_sampled", "naive_dense"]
    rows = [[m, *row] for m in names for row in cv[m]["curve"]]
    storage.write_csv(
        out_dir / f"convergence{suffix}.csv", ["method", "step", "train_s", "heldout_fvu"], rows
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {
        "ours_exact": "ours, exact loss",
        "ours_sampled": "ours, sampled loss",
        "naive_dense": "naive dense",
    }
    for m in names:
        c = np.asarray(cv[m]["curve"])
        ax.plot(c[:, 1], c[:, 2], "-", label=labels[m])
    ax.axhline(cv["target_fvu"], color="grey", ls="--", lw=1, label="target")
    s = cv["sizes"]
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("held-out FVU")
    ax.set_yscale("log")
    ax.set_title(f"Squeezer convergence, n={s['n']:,}, M={s['M']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, out_dir / f"convergence{suffix}.png")
