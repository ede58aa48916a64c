"""The Squeezer's importance-weighted reconstruction loss.

The decoder must produce all n outputs for the exact loss; at n ~ 25k features `loss_sample > 0`
replaces the inactive part of the loss by an unbiased sample, and a custom autograd function
keeps the (B, n) decoder output out of the autograd graph.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from neural_codec.errors import check
from neural_codec.penalties import decoder_norm_l1, encoder_l1
from neural_codec.runtime import full_precision
from neural_codec.squeezer.model import Squeezer


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
        with full_precision(h.device):
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
    unbiased estimate of the inactive part from `loss_sample` columns per row, drawn without
    replacement (inclusion probability s/n, so each drawn inactive term is weighted n/s; rows in
    different groups of the batch get disjoint draws: `_SampledSquaredError`). Pass W_dec as the
    transpose of a contiguous (n, M) tensor for fast per-feature row gathers.
    """
    n = W_dec.shape[1]
    idx = idx.long()
    val = val.to(h.dtype)
    if loss_sample <= 0 or loss_sample >= n:
        return _DecoderSquaredError.apply(h, W_dec, b_dec, idx, val, weights.to(h.dtype))
    n_blocks = max(1, min(n // loss_sample, idx.shape[0]))
    # drawn by the CPU generator on every device: the same columns wherever it trains
    offset = int(torch.randint(n, (1,), generator=generator))
    with full_precision(h.device):
        return _SampledSquaredError.apply(
            h, W_dec.T, b_dec, idx, val, weights.to(h.dtype), offset, loss_sample, n_blocks
        )


def _block(t: torch.Tensor, start: int, s: int) -> torch.Tensor:
    """Entries start .. start + s - 1 of t's first axis, cyclically (a view unless it wraps)."""
    n = t.shape[0]
    return t[start : start + s] if start + s <= n else torch.cat([t[start:], t[: start + s - n]])


def _add_block(out: torch.Tensor, start: int, x: torch.Tensor) -> None:
    """out[start .. start + len(x) - 1, cyclically] += x."""
    n, s = out.shape[0], x.shape[0]
    if start + s <= n:
        out[start : start + s] += x
    else:
        out[start:] += x[: n - start]
        out[: start + s - n] += x[n - start :]


def _row_groups(B: int, G: int) -> list[int]:
    """Bounds of G contiguous groups of B rows: group g is rows ceil(g B / G) .. ceil((g+1) B / G) - 1."""
    return [(g * B + G - 1) // G for g in range(G + 1)]


def _sparse_kernels(h: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether `_ActivePattern`'s sparse-CSR kernels (sampled_addmm, CSR @ dense) serve here:
    CPU and CUDA, one dtype; elsewhere (mps, mixed dtypes) the gather path runs."""
    return h.device.type in ("cpu", "cuda") and h.dtype == rows.dtype


class _ActivePattern:
    """The (B, n) sparsity pattern of each row's active features as CSR (padding dropped,
    columns ascending), for the active part of the sampled loss.

    Why: the active outputs z_rj = h_r . rows[idx_rj] by a gather of B k decoder rows and a
    batched matvec move B k M floats (100 MB at B 1,024, k 32, M 768) and were a third of the
    sampled step; sampled_addmm (an SDDMM) computes the same B k dot products without the copy
    (11x faster there), and the decoder gradient sum_rj gz_rj h_r into row idx_rj is the sparse
    product S^T h (7x faster than index_add of the B k outer products).
    """

    def __init__(self, idx: torch.Tensor, active: torch.Tensor, n: int) -> None:
        B, k = idx.shape
        dev = idx.device
        key, perm = torch.where(active, idx, n).sort(dim=1)  # padding (key n) sorts last
        keep = key < n
        self.shape, self.k = (B, n), k
        self.crow = torch.zeros(B + 1, dtype=torch.long, device=dev)
        torch.cumsum(keep.sum(1), 0, out=self.crow[1:])
        self.col = key[keep]
        self.slot = (perm + torch.arange(B, device=dev)[:, None] * k)[keep]  # flat slot r k + j

    def dots(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, k): h_r . rows[idx_rj] at the active slots, 0 at padding."""
        B, n = self.shape
        zeros = torch.zeros(len(self.col), dtype=h.dtype, device=h.device)
        vals = torch.sparse.sampled_addmm(_csr(self.crow, self.col, zeros, (B, n)), h, rows.T, beta=0.0)
        z = torch.zeros(B * self.k, dtype=h.dtype, device=h.device)
        z[self.slot] = vals.values()
        return z.view(B, self.k)

    def transposed(self, g: torch.Tensor) -> torch.Tensor:
        """S^T (n, B) as CSR, S holding g (B, k) at the active slots (built here, in the
        backward pass, the only place that needs it)."""
        B, n = self.shape
        order = torch.argsort(self.col, stable=True)  # entries by feature, rows ascending
        crow_t = torch.zeros(n + 1, dtype=torch.long, device=self.col.device)
        torch.cumsum(torch.bincount(self.col, minlength=n), 0, out=crow_t[1:])
        row_t = torch.div(self.slot, self.k, rounding_mode="floor")[order]
        return _csr(crow_t, row_t, g.reshape(-1)[self.slot][order], (n, B))


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the kernels used here are tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _SampledSquaredError(torch.autograd.Function):
    """The sampled loss: exact on each row's active outputs, plus the unbiased estimate
    (n/s) sum_{c in S_r, c inactive in r} w_c f_hat_rc^2 of its inactive part; gradients formed
    in the forward pass, as `_DecoderSquaredError` does, and the decoder gradient written into one
    (n, M) buffer (no per-op zero-filled (n, M) buffers and sums, which cost more than the
    matmuls at n 24,576).

    Stratified draw: the batch's rows are cut into G = min(n // s, B) contiguous groups
    (`_row_groups`); group g's rows use the s columns (offset + g s) .. (offset + (g + 1) s) - 1,
    cyclically, for one offset drawn uniformly in [0, n) per step. Every column is thus in a given
    row's draw with probability s/n (hence the weight n/s), so every row's estimate is unbiased
    (the columns come in contiguous blocks: only the variance depends on how feature indices are
    ordered, and SAE indices are arbitrary labels), at the cost of one (B, s) decoder product, as
    for one shared draw; the blocks are slices of the decoder, not gathered copies. Why not one
    shared draw for the batch: a column then gets its inactive (push-down) gradient in only s/n
    of the steps, n/s times too large, and only its active (push-up) gradient in the others;
    Adam normalises per coordinate, so the undrawn columns take full-size steps up and the codec
    never converged (held-out FVU up to 2.2, then stuck near 1, at n 24,576, s 2,048). With the
    blocks every column is drawn in every step (when G s = n), by about B s / n rows.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, h, rows, b_dec, idx, val, weights, offset, s, G):  # type: ignore[override]
        (B, k), (n, M) = idx.shape, rows.shape
        flat = idx.reshape(-1)
        active = val > 0
        # active outputs: when the batch's B*k slots far outnumber the features (n <= B*k/8), one
        # matmul over the distinct active columns (BLAS); otherwise a per-row gather of k decoder
        # rows (memory B*k*M, no B*n term). Measured crossover: matmul wins while |U| < ~B*k/9.
        pattern = None
        if n * 8 <= idx.numel():
            U, inv = torch.unique(idx, return_inverse=True)
            z = torch.gather(h @ rows.index_select(0, U).T, 1, inv)
        elif _sparse_kernels(h, rows):
            pattern = _ActivePattern(idx, active, n)
            z = pattern.dots(h, rows)
        else:
            z = torch.bmm(rows.index_select(0, flat).view(B, k, M), h.unsqueeze(2)).squeeze(2)
        f_act = (z + b_dec.index_select(0, flat).view(B, k)).relu_()
        wa = weights.index_select(0, flat).view(B, k) * active  # padding (val == 0): nothing
        d = f_act - val
        act_loss = (wa * d * d).sum()
        gz = (2.0 / B) * wa * d * (f_act > 0)  # d loss / d z (zero where the ReLU clips)
        # inactive outputs: group g's rows against block g (columns from offset + g s, cyclically)
        bounds = _row_groups(B, G)
        starts = [(offset + g * s) % n for g in range(G)]
        grp = torch.arange(B, device=h.device) * G // B  # row r's group (r >= bounds[g] iff r G/B >= g)
        p = torch.remainder(idx - offset - grp[:, None] * s, n)  # place in the row's block, if < s
        # an active feature drawn in its own row's block is already in the exact part: skip it
        s_idx = torch.where(active & (p < s), p, s)
        keep = ~torch.zeros(B, s + 1, dtype=torch.bool, device=h.device).scatter_(1, s_idx, True)[:, :s]
        f_s = torch.empty(B, s, dtype=h.dtype, device=h.device)  # row r: its block's outputs
        w_s = torch.empty(G, s, dtype=h.dtype, device=h.device)
        for g in range(G):
            a, e = bounds[g], bounds[g + 1]
            torch.addmm(_block(b_dec, starts[g], s), h[a:e], _block(rows, starts[g], s).T, out=f_s[a:e])
            w_s[g] = _block(weights, starts[g], s)
        f_s.relu_()
        gF = w_s[grp].mul_(keep).mul_(f_s)  # w f_hat on the kept columns
        inact = torch.bmm(gF.unsqueeze(1), f_s.unsqueeze(2)).sum()
        gF.mul_(2.0 * n / (s * B))  # d loss / d pre-activation (f_hat = 0 where clipped)
        ctx.save_for_backward(h, rows, gz, gF, idx)
        ctx.blocks = (s, G, bounds, starts)
        ctx.pattern = pattern
        return (act_loss + inact * (n / s)) / B

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        h, rows, gz, gF, idx = ctx.saved_tensors
        s, G, bounds, starts = ctx.blocks
        (B, k), (n, M) = idx.shape, rows.shape
        flat = idx.reshape(-1)
        gh = gW = gb = None
        if ctx.needs_input_grad[0]:
            # sum_j gz_rj rows[idx_rj]: an embedding bag, without the (B, k, M) gather
            gh = F.embedding_bag(idx, rows.contiguous(), per_sample_weights=gz, mode="sum")
            for g in range(G):
                a, e = bounds[g], bounds[g + 1]
                gh[a:e].addmm_(gF[a:e], _block(rows, starts[g], s))
            gh.mul_(grad_out)
        if ctx.needs_input_grad[1]:
            # the blocks are disjoint: written in place (no zero-fill when they cover every column)
            gW = (torch.empty if G * s == n else torch.zeros)(n, M, dtype=h.dtype, device=h.device)
            for g in range(G):
                a, e, st = bounds[g], bounds[g + 1], starts[g]
                if st + s <= n:
                    torch.mm(gF[a:e].T, h[a:e], out=gW[st : st + s])
                else:
                    gW[st:] = 0.0
                    gW[: st + s - n] = 0.0
                    _add_block(gW, st, gF[a:e].T @ h[a:e])
            if ctx.pattern is not None:  # sum over slots of gz_rj h_r into row idx_rj: S^T h, S sparse
                gW.addmm_(ctx.pattern.transposed(gz), h)
            else:
                gW.index_add_(0, flat, torch.bmm(gz.unsqueeze(2), h.unsqueeze(1)).view(B * k, M))
            gW.mul_(grad_out)
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(n, dtype=h.dtype, device=h.device)
            for g in range(G):
                _add_block(gb, starts[g], gF[bounds[g] : bounds[g + 1]].sum(0))
            gb.index_add_(0, flat, gz.reshape(-1)).mul_(grad_out)
        return gh, gW, gb, None, None, None, None, None, None


def squeezer_loss(
    model: Squeezer,
    idx: torch.Tensor,
    val: torch.Tensor,
    weights: torch.Tensor,
    loss_sample: int = 0,
    generator: torch.Generator | None = None,
    l1: float = 0.0,
    penalty: str = "l1_decnorm",
) -> torch.Tensor:
    """The training loss: `reconstruction_loss` (exact or sampled), plus `l1` times
    `decoder_norm_l1` (penalty "l1_decnorm") or `encoder_l1` (penalty "encoder_l1") when l1 > 0
    (`squeezer.l1`, `squeezer.penalty`; at 0 the loss is the reconstruction alone, bit for bit)."""
    # a direct caller skips SqueezerConfig's check; a typo must not fall back to the default penalty
    check(
        penalty in ("l1_decnorm", "encoder_l1"), "squeezer.penalty", penalty, "'l1_decnorm' or 'encoder_l1'"
    )
    h = model.encode(idx, val)
    loss = reconstruction_loss(h, model.W_dec, model.b_dec, idx, val, weights, loss_sample, generator)
    if l1 > 0:
        if penalty == "encoder_l1":
            loss = loss + l1 * encoder_l1(model.W_enc, model.W_dec)
        else:
            loss = loss + l1 * decoder_norm_l1(h, model.W_dec)
    return loss
