"""The planted codec's decoder-norm-scaled L1 (`source.synthetic.codec_penalty: l1_decnorm`):
per-neuron rescaling (input weights and bias x c, read-out row / c) leaves the codec's output and
this penalty unchanged, while the plain L1 shrinks, which is why plain L1 fixes no neuron identity."""

from __future__ import annotations

import pytest
import torch

from neural_codec.config import SyntheticConfig
from neural_codec.source.synthetic import ToyModel, codec_penalty


def _rescaled(model: ToyModel, c: torch.Tensor) -> ToyModel:
    other = ToyModel(model.embedding, model.W_in.shape[1], seed=1)
    with torch.no_grad():
        other.W_in.copy_(model.W_in * c)
        other.b_in.copy_(model.b_in * c)
        other.W_out.copy_(model.W_out / c[:, None])
        other.b_out.copy_(model.b_out)
    return other


@torch.no_grad()
def test_decnorm_penalty_is_rescaling_invariant_and_plain_l1_is_not() -> None:
    torch.manual_seed(0)
    n, d, m = 12, 12, 6
    model = ToyModel(torch.eye(n, d), m, seed=0)
    with torch.no_grad():
        model.b_in.uniform_(0.0, 0.5)
    c = torch.linspace(0.2, 5.0, m)
    other = _rescaled(model, c)
    f = torch.rand(64, n)
    h, h2 = model.neurons(model.resid(f)), other.neurons(other.resid(f))
    torch.testing.assert_close(other(f), model(f), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        codec_penalty(other, h2, "l1_decnorm"), codec_penalty(model, h, "l1_decnorm"), rtol=1e-5, atol=1e-7
    )
    assert abs(float(codec_penalty(other, h2, "l1")) - float(codec_penalty(model, h, "l1"))) > 0.1
    with pytest.raises(ValueError, match="codec_penalty"):
        codec_penalty(model, h, "l2")


def test_codec_penalty_key_is_validated() -> None:
    with pytest.raises(ValueError, match="codec_penalty"):
        SyntheticConfig(codec_penalty="l2")  # type: ignore[arg-type]
