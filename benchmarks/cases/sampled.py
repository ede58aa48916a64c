"""sampled: the sampled-output loss (`SqueezerConfig.loss_sample`) against the exact loss on the
same batch: loss and gradient errors per draw and of the mean of the draws."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import Sizes, make_batch, med
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer


def _grads(model: Squeezer, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def bench_sampled_accuracy(sz: Sizes) -> dict[str, Any]:
    """Sampled vs exact loss and gradient on one batch, at initialisation (b_dec = 0, so about
    half the inactive outputs are > 0 and carry most of the loss: the hard case for sampling)."""
    idx, val = make_batch(sz, seed=1)
    w = torch.ones(sz.n)
    model = Squeezer(sz.n, sz.M, generator=torch.Generator().manual_seed(0))
    exact = squeezer_loss(model, idx, val, w)
    g_exact = _grads(model, exact)
    sgen = torch.Generator().manual_seed(2)
    losses, rel_g, cos = [], [], []
    g_sum = torch.zeros_like(g_exact)
    for _ in range(sz.sample_draws):
        ls = squeezer_loss(model, idx, val, w, sz.loss_sample, sgen)
        g = _grads(model, ls)
        ls = ls.detach()
        g_sum += g
        losses.append(ls.item())
        rel_g.append(float((g - g_exact).norm() / g_exact.norm()))
        cos.append(float(F.cosine_similarity(g, g_exact, dim=0)))
    L = exact.item()
    g_mean = g_sum / sz.sample_draws
    rel_l = [abs(x - L) / L for x in losses]
    return {
        "exact_loss": L,
        "sampled_loss_mean": float(np.mean(losses)),
        "draws": sz.sample_draws,
        "loss_rel_error_single_draw_median": med(rel_l),
        "loss_rel_error_of_mean": abs(float(np.mean(losses)) - L) / L,
        "loss_rel_std_single_draw": float(np.std(losses)) / L,
        "grad_rel_error_single_draw_median": med(rel_g),
        "grad_cosine_single_draw_median": med(cos),
        "grad_rel_error_of_mean": float((g_mean - g_exact).norm() / g_exact.norm()),
        "method": "same model and batch; relative errors |L_s - L| / L and ||g_s - g|| / ||g|| over all "
        "parameters; 'of_mean' averages the draws (shrinks like 1/sqrt(draws) if unbiased)",
    }
