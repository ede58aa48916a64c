"""scaling: Squeezer step time against n (epoch time = steps x median step time) and measured
time per epoch against N; `write_scaling` writes the CSVs and the plot."""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import Sizes, interleaved, make_batch, med, topk_features, train_step
from neural_codec import storage
from neural_codec.config import SqueezerConfig
from neural_codec.plotting import pyplot, save_png
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer
from neural_codec.squeezer.train import make_optimizer, train_squeezer


def bench_scaling(sz: Sizes) -> dict[str, Any]:
    rows_n = []
    for n in sz.scale_n:
        s = min(sz.loss_sample, n // 2)
        szn = dataclasses.replace(sz, n=n, loss_sample=s)
        idx, val = make_batch(szn)
        w = torch.ones(n)
        m_e = Squeezer(n, sz.M, generator=torch.Generator().manual_seed(0))
        m_s = Squeezer(n, sz.M, generator=torch.Generator().manual_seed(0))
        o_e, o_s = (
            make_optimizer(list(m_e.parameters()), 1e-4, 0.0),
            make_optimizer(list(m_s.parameters()), 1e-4, 0.0),
        )
        g = torch.Generator().manual_seed(0)
        t = interleaved(
            {
                "exact": partial(train_step, partial(squeezer_loss, m_e, idx, val, w), o_e),
                "sampled": partial(train_step, partial(squeezer_loss, m_s, idx, val, w, s, g), o_s),
            },
            sz.scale_reps,
        )
        steps = math.ceil(sz.epoch_rows / sz.batch)
        rows_n.append(
            [n, s, med(t["exact"]), med(t["sampled"]), steps * med(t["exact"]), steps * med(t["sampled"])]
        )
        del m_e, m_s, o_e, o_s
    rows_N = []
    big = topk_features(max(sz.scale_N), sz.n, sz.k, seed=5)
    for N in sz.scale_N:
        cfg = SqueezerConfig(
            M=sz.M, batch_size=sz.batch, epochs=1.0, loss_sample=sz.loss_sample, lr=1e-4, seed=0
        )
        t0 = time.perf_counter()
        train_squeezer(big[:N], cfg)
        rows_N.append([N, cfg.n_steps(N), time.perf_counter() - t0])
    head_n = [
        "n_features",
        "loss_sample",
        "step_s_exact",
        "step_s_sampled",
        f"epoch_s_exact_N{sz.epoch_rows}",
        f"epoch_s_sampled_N{sz.epoch_rows}",
    ]
    head_N = ["n_samples", "steps", "epoch_s_sampled"]
    return {
        "vs_features": {"header": head_n, "rows": rows_n},
        "vs_samples": {
            "header": head_N,
            "rows": rows_N,
            "config": {"n": sz.n, "M": sz.M, "batch": sz.batch, "loss_sample": sz.loss_sample},
        },
        "method": f"vs n: median step time ({sz.scale_reps} reps after a warm-up), epoch = "
        f"ceil({sz.epoch_rows}/batch) steps; vs N: wall time of train_squeezer(epochs=1) "
        "including setup, sampled loss",
    }


def write_scaling(sc: dict[str, Any], out_dir: Path, suffix: str = "") -> None:
    """`scaling_features<suffix>.csv`, `scaling_samples<suffix>.csv` and `scaling<suffix>.png`."""
    plt = pyplot()
    vf, vs = sc["vs_features"], sc["vs_samples"]
    storage.write_csv(out_dir / f"scaling_features{suffix}.csv", vf["header"], vf["rows"])
    storage.write_csv(out_dir / f"scaling_samples{suffix}.csv", vs["header"], vs["rows"])
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    nf = [r[0] for r in vf["rows"]]
    ax[0].loglog(nf, [r[4] for r in vf["rows"]], "o-", label="exact loss")
    ax[0].loglog(nf, [r[5] for r in vf["rows"]], "s-", label="sampled loss")
    ax[0].set_xlabel("number of features n")
    ax[0].set_ylabel(f"seconds per epoch ({vf['header'][4].split('_N')[1]} samples)")
    ax[0].set_title("Squeezer epoch time vs features")
    ax[0].legend()
    ns = [r[0] for r in vs["rows"]]
    ax[1].loglog(ns, [r[2] for r in vs["rows"]], "o-", label="sampled loss (measured)")
    ax[1].set_xlabel("number of samples N")
    ax[1].set_ylabel("seconds per epoch")
    c = vs["config"]
    ax[1].set_title(f"Squeezer epoch time vs samples (n={c['n']}, M={c['M']})")
    ax[1].legend()
    for a in ax:
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_png(fig, out_dir / f"scaling{suffix}.png")
