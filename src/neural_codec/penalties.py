"""Sparsity penalties shared by the planted codec (source) and the Squeezer.

Its own module so that the source stage depends on this function, not on the Squeezer's loss:
a change to the Squeezer's hot path then re-runs nothing upstream of `squeeze`.
"""

from __future__ import annotations

import torch

from neural_codec.runtime import full_precision


def decoder_norm_l1(h: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """mean over rows of sum_j |h_j| ||W_dec[j]||, W_dec (M, n) (row j: neuron j's read-out),
    in full precision.

    SAELens's decoder-norm-scaled L1 (scale_sparsity_penalty_by_decoder_norm): scaling neuron j's
    input weights and bias by c and its read-out row by 1/c leaves it unchanged, so a codec
    cannot shrink the penalty by rescaling, as it can a plain L1 on h. |h| = h for ReLU neurons;
    the absolute value keeps the penalty a penalty for `hidden = "linear"`.
    """
    with full_precision(h.device):
        return (h.float().abs() * W_dec.float().norm(dim=1)).sum(1).mean()


def encoder_l1(W_enc: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j ||W_enc[:, j]||_1 ||W_dec[j]||, W_enc (n, M) in feature space, W_dec (M, n), in full
    precision: an L1 on each neuron's input weights (its connectivity), not on its activity.

    Why: an L1 on activations taxes a neuron that is on by default (positive bias) on every row,
    and such a neuron is how a ReLU codec holds an exclusive pair at opposite signs (TMS's
    antipodal placement: one member raises it, the other lowers it, the output ReLU clips the
    interference). This penalty fixes neuron identity by sparse connectivity and costs nothing
    at rest. Scaled by the read-out norm like `decoder_norm_l1`, so per-neuron rescaling
    (W_enc[:, j] * c, W_dec[j] / c) cannot shrink it. Per step, not per row.
    """
    with full_precision(W_enc.device):
        return (W_enc.float().abs().sum(0) * W_dec.float().norm(dim=1)).sum()
