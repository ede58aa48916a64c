"""The Squeezer's importance-weighted reconstruction loss.

The decoder must produce all n outputs for the exact loss; at n ~ 25k features `loss_sample > 0`
replaces the inactive part of the loss by an unbiased sample, and a custom autograd function
keeps the (B, n) decoder output out of the autograd graph.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from neural_codec.squeezer.model import Squeezer


def _full_precision(device: torch.device) -> Any:
    """Autocast off for the block when it is on (else nothing: the plain fp32 path is untouched)."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _DecoderSquaredError(torch.autograd.Function):
    """Exact loss mean_b sum_i w_i (f_i - ReLU(h W_dec + b_dec)_i)^2 with the (B, n) gradient
    2 w (f_hat - f) / B (zero where the ReLU clips) formed during the forward pass.

    Why: autograd through the plain expression makes ~15 passes over (B, n) buffers (dense target,
    difference, square, weights, their backward); this makes ~4 and keeps one (B, n) buffer, so
    the step is bound by its three matmuls. Uses the expansion sum w (f - f_hat)^2 =
    sum w f_hat^2 - 2 sum_active w f f_hat + sum_active w f^2 (a feature appears once per row).
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, h, W_dec, b_dec, idx, val, weights):  # type: ignore[override]
        B = h.shape[0]
        # under autocast (squeezer.autocast) the decoder matmul runs in bf16/fp16; the sums of n
        # squares and the gradient buffer stay in the weights' dtype (fp16 sums of ~25k overflow)
        f_hat = torch.addmm(b_dec, h, W_dec).to(W_dec.dtype).relu_()
        with _full_precision(h.device):
            g = f_hat * weights  # w f_hat, becomes the gradient buffer
            sq = torch.bmm(g.unsqueeze(1), f_hat.unsqueeze(2)).view(B)  # sum_i w_i f_hat_i^2 per row
            f_act = f_hat.gather(1, idx)
            del f_hat
            wv = weights[idx] * val  # padding (val == 0) contributes nothing
            per_row = sq - 2.0 * (wv * f_act).sum(1) + (wv * val).sum(1)
            g.mul_(2.0 / B)
            g.scatter_add_(1, idx, (-2.0 / B) * wv * (f_act > 0))  # f_hat = 0 (clipped): no gradient
        ctx.save_for_backward(h, W_dec, g)
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        h, W_dec, g = ctx.saved_tensors
        gh = torch.mm(g, W_dec.T).mul_(grad_out) if ctx.needs_input_grad[0] else None
        # (n, M) product returned as its (M, n) view: W_dec is usually the transpose of the (n, M)
        # parameter, so the gradient lands in its layout without a transposing copy
        gW = torch.mm(g.T, h).mul_(grad_out).T if ctx.needs_input_grad[1] else None
        gb = g.sum(0).mul_(grad_out) if ctx.needs_input_grad[2] else None
        return gh, gW, gb, None, None, None


def reconstruction_loss(
    h: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    idx: torch.Tensor,
    val: torch.Tensor,
    weights: torch.Tensor,
    loss_sample: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over rows of sum_i w_i (f_i - ReLU(h W_dec + b_dec)_i)^2, W_dec (M, n).

    loss_sample == 0: exact. loss_sample > 0: exact on each row's active outputs, plus an
    unbiased estimate of the inactive part from `loss_sample` columns drawn without replacement
    (inclusion probability s/n, so each drawn inactive term is weighted n/s). Pass W_dec as the
    transpose of a contiguous (n, M) tensor for fast per-feature row gathers.
    """
    n = W_dec.shape[1]
    idx = idx.long()
    val = val.to(h.dtype)
    if loss_sample <= 0 or loss_sample >= n:
        return _DecoderSquaredError.apply(h, W_dec, b_dec, idx, val, weights.to(h.dtype))
    rows = W_dec.T  # (n, M)
    active = val > 0
    B, k = idx.shape
    flat = idx.reshape(-1)
    # active outputs: when the batch's B*k slots far outnumber the features (n <= B*k/8), one
    # matmul over the distinct active columns (BLAS); otherwise a per-row gather of k decoder
    # rows (memory B*k*M, no B*n term). Measured crossover: matmul wins while |U| < ~B*k/9.
    # index_select, not advanced indexing: its backward is an index_add, not a sorted index_put.
    if n * 8 <= idx.numel():
        U, inv = torch.unique(idx, return_inverse=True)
        z = torch.gather(h @ rows.index_select(0, U).T, 1, inv)
    else:
        z = torch.bmm(rows.index_select(0, flat).view(B, k, -1), h.unsqueeze(2)).squeeze(2)
    f_act = torch.relu(z + b_dec.index_select(0, flat).view(B, k))
    act_loss = (active * weights[idx] * (val - f_act) ** 2).sum(1)
    # inactive outputs: a shared uniform sample of columns, minus those active in the row (drawn
    # by the CPU generator on every device, then moved: the same columns wherever it trains)
    dev = h.device
    cols = torch.randperm(n, generator=generator)[:loss_sample].to(dev)
    f_s = torch.relu(torch.addmm(b_dec.index_select(0, cols), h, rows.index_select(0, cols).T))  # (B, s)
    slot = torch.full((n,), loss_sample, dtype=torch.long, device=dev)  # feature -> its sample slot
    slot[cols] = torch.arange(loss_sample, device=dev)  # (slot s: not drawn)
    s_idx = torch.where(active, slot[idx], loss_sample)
    hit = torch.zeros(B, loss_sample + 1, dtype=torch.bool, device=dev).scatter_(1, s_idx, True)[
        :, :loss_sample
    ]
    inact = ((~hit) * weights[cols] * f_s**2).sum(1) * (n / loss_sample)
    return (act_loss + inact).mean()


def squeezer_loss(
    model: Squeezer,
    idx: torch.Tensor,
    val: torch.Tensor,
    weights: torch.Tensor,
    loss_sample: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    h = model.encode(idx, val)
    return reconstruction_loss(h, model.W_dec, model.b_dec, idx, val, weights, loss_sample, generator)
