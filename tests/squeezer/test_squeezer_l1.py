"""`squeezer.l1`: the decoder-norm-scaled L1 on the Squeezer's neurons. At 0 the loss is the
reconstruction alone (bit for bit); above 0 it adds l1 * mean_rows sum_j h_j ||W_dec[j]|| on the
exact, sampled and autocast paths alike; the penalty does not move under per-neuron rescaling
(a plain L1 on h does); and it makes the trained neurons sparser."""

from __future__ import annotations

import pytest
import torch
from test_squeezer import random_sparse

from neural_codec.config import SqueezerConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict
from neural_codec.penalties import decoder_norm_l1, encoder_l1
from neural_codec.squeezer.loss import reconstruction_loss, squeezer_loss
from neural_codec.squeezer.model import Squeezer
from neural_codec.squeezer.train import neuron_activations, train_squeezer
from neural_codec.storage import SparseFeatures

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(n: int = 30, M: int = 8) -> Squeezer:
    model = Squeezer(n, M, tied=False, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.W_dec_T.mul_(torch.rand(n, M, generator=torch.Generator().manual_seed(4)) + 0.5)
        model.b_enc.fill_(0.1)  # some neurons on in every row
    return model


def _dense_penalty(model: Squeezer, feats: SparseFeatures) -> torch.Tensor:
    """The penalty by dense maths, independent of `decoder_norm_l1`."""
    dense = torch.from_numpy(feats.to_dense())
    h = torch.relu(dense @ model.W_enc + model.b_enc)
    norms = torch.sqrt((model.W_dec**2).sum(1))
    return (h * norms).sum(1).mean()


def test_zero_l1_is_the_reconstruction_loss_bit_for_bit() -> None:
    model, b = _model(), random_sparse(64, 30, 4, seed=0)
    idx, val = torch.from_numpy(b.idx).long(), torch.from_numpy(b.val)
    w = torch.ones(30)
    got = squeezer_loss(model, idx, val, w, l1=0.0)
    got.backward()
    g_enc = model.W_enc.grad.clone()
    model.zero_grad()
    ref = reconstruction_loss(model.encode(idx, val), model.W_dec, model.b_dec, idx, val, w)
    ref.backward()
    assert torch.equal(got, ref) and torch.equal(g_enc, model.W_enc.grad)


@pytest.mark.parametrize("l1", [0.0, 0.25])
def test_an_unknown_penalty_is_refused_not_replaced_by_the_default(l1: float) -> None:
    """A direct caller (no SqueezerConfig in between) with a typo gets an error naming the key."""
    model, b = _model(), random_sparse(64, 30, 4, seed=0)
    idx, val = torch.from_numpy(b.idx).long(), torch.from_numpy(b.val)
    with pytest.raises(ParamError, match=r"squeezer\.penalty.*'encoder_L1'.*'encoder_l1'"):
        squeezer_loss(model, idx, val, torch.ones(30), l1=l1, penalty="encoder_L1")


@pytest.mark.parametrize("loss_sample", [0, 7])
def test_penalty_is_added_on_the_exact_and_sampled_paths(loss_sample: int) -> None:
    model, b = _model(), random_sparse(64, 30, 4, seed=0)
    idx, val = torch.from_numpy(b.idx).long(), torch.from_numpy(b.val)
    w = torch.ones(30)
    with torch.no_grad():
        plain = squeezer_loss(model, idx, val, w, loss_sample, torch.Generator().manual_seed(0))
        pen = squeezer_loss(model, idx, val, w, loss_sample, torch.Generator().manual_seed(0), l1=0.25)
        expected = _dense_penalty(model, b)
    assert float(expected) > 0.1  # the batch has neurons on: the check is not 0 == 0
    torch.testing.assert_close(pen - plain, 0.25 * expected, rtol=1e-5, atol=1e-6)


def test_penalty_is_kept_in_full_precision_under_autocast() -> None:
    model, b = _model(), random_sparse(64, 30, 4, seed=0)
    idx, val = torch.from_numpy(b.idx).long(), torch.from_numpy(b.val)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.encode(idx, val)
        pen = decoder_norm_l1(h, model.W_dec)
    assert pen.dtype == torch.float32
    torch.testing.assert_close(pen, _dense_penalty(model, b), rtol=2e-2, atol=1e-3)


@torch.no_grad()
def test_penalty_is_invariant_to_per_neuron_rescaling_and_plain_l1_is_not() -> None:
    model, b = _model(), random_sparse(64, 30, 4, seed=0)
    idx, val = torch.from_numpy(b.idx).long(), torch.from_numpy(b.val)
    h0 = model.encode(idx, val)
    before, plain_before = decoder_norm_l1(h0, model.W_dec), h0.sum(1).mean()
    out_before = model(idx, val)
    c = torch.linspace(0.2, 5.0, model.M)
    model.W_enc.mul_(c)
    model.b_enc.mul_(c)
    model.W_dec_T.div_(c)
    h1 = model.encode(idx, val)
    torch.testing.assert_close(model(idx, val), out_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoder_norm_l1(h1, model.W_dec), before, rtol=1e-5, atol=1e-6)
    assert abs(float(h1.sum(1).mean() - plain_before)) > 0.1


def test_bad_l1_names_the_key() -> None:
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ParamError, match=r"squeezer\.l1"):
            from_dict(SqueezerConfig, {"l1": bad}, "squeezer")


def _eight_feature_rows(seed: int) -> SparseFeatures:
    """6000 rows of 40 features of which only the first 8 fire (p 0.2 each)."""
    from sae_lens.synthetic import ActivationGenerator

    torch.manual_seed(seed)
    p = torch.zeros(40)
    p[:8] = 0.2
    gen = ActivationGenerator(
        40, firing_probabilities=p, mean_firing_magnitudes=1.0, std_firing_magnitudes=0.3
    )
    return SparseFeatures.from_dense(gen.sample(6000).numpy(), 40)


def _fit_sixteen_neurons(
    train: SparseFeatures, held: SparseFeatures, l1: float, penalty: str = "l1_decnorm"
) -> tuple[Squeezer, float, float]:
    """A 16-neuron Squeezer trained on `train`: (model, fraction of held-out neuron-rows on, FVU)."""
    cfg = SqueezerConfig(M=16, lr=1e-2, batch_size=256, steps=500, seed=0, l1=l1, penalty=penalty)  # type: ignore[arg-type]
    model, _ = train_squeezer(train, cfg)
    h = neuron_activations(model, held)
    with torch.no_grad():
        f_hat = model(torch.from_numpy(held.idx).long(), torch.from_numpy(held.val)).numpy()
    f = held.to_dense()
    fvu = float(((f - f_hat) ** 2).sum() / ((f - f.mean(0)) ** 2).sum())
    return model, float((h > 1e-6).mean()), fvu


def test_l1_makes_the_neurons_sparser() -> None:
    """16 neurons for 8 planted features: without a penalty every neuron is on in most rows
    (a dense code spread over all 16); the penalty switches most of them off and keeps the
    reconstruction."""
    train, held = _eight_feature_rows(0), _eight_feature_rows(1)

    _, dense_on, dense_fvu = _fit_sixteen_neurons(train, held, 0.0)
    _, sparse_on, sparse_fvu = _fit_sixteen_neurons(train, held, 0.05)
    assert sparse_on < 0.6 * dense_on, (sparse_on, dense_on)
    assert dense_fvu < 0.05 and sparse_fvu < 0.15, (dense_fvu, sparse_fvu)


def _dense_encoder_penalty(model: Squeezer) -> torch.Tensor:
    """sum_j ||W_enc[:, j]||_1 ||W_dec[j]|| by explicit loops, independent of `encoder_l1`."""
    total = torch.zeros(())
    for j in range(model.M):
        total = total + model.W_enc[:, j].abs().sum() * torch.sqrt((model.W_dec[j] ** 2).sum())
    return total


def test_encoder_penalty_is_added_once_per_step_and_ignores_the_activations() -> None:
    """penalty "encoder_l1": the loss gains l1 * sum_j ||W_enc[:, j]||_1 ||W_dec[j]|| whatever the
    batch (a neuron on by default pays nothing at rest), and its gradient reaches the weights."""
    model, w = _model(), torch.ones(30)
    pens = []
    for seed in (0, 1):
        b = random_sparse(64, 30, 4, seed=seed)
        idx, val = torch.from_numpy(b.idx).long(), torch.from_numpy(b.val)
        with torch.no_grad():
            plain = squeezer_loss(model, idx, val, w)
            pens.append(squeezer_loss(model, idx, val, w, l1=0.25, penalty="encoder_l1") - plain)
    with torch.no_grad():
        expected = 0.25 * _dense_encoder_penalty(model)
        on_default = squeezer_loss(model, idx, val, w, l1=0.25)  # the activation penalty differs
    assert float(expected) > 1.0
    torch.testing.assert_close(pens[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pens[1], expected, rtol=1e-5, atol=1e-6)
    assert abs(float(on_default - plain - expected)) > 0.1
    model.zero_grad()
    encoder_l1(model.W_enc, model.W_dec).backward()
    torch.testing.assert_close(model.W_enc.grad, torch.sign(model.W_enc) * model.W_dec.norm(dim=1))


@torch.no_grad()
def test_encoder_penalty_is_invariant_to_per_neuron_rescaling_and_plain_weight_l1_is_not() -> None:
    model = _model()
    before, plain_before = encoder_l1(model.W_enc, model.W_dec), model.W_enc.abs().sum()
    c = torch.linspace(0.2, 5.0, model.M)
    model.W_enc.mul_(c)
    model.b_enc.mul_(c)
    model.W_dec_T.div_(c)
    torch.testing.assert_close(encoder_l1(model.W_enc, model.W_dec), before, rtol=1e-5, atol=1e-6)
    assert abs(float(model.W_enc.abs().sum() - plain_before)) > 0.1


def test_bad_penalty_names_the_key_and_the_choices() -> None:
    with pytest.raises(ParamError, match=r"squeezer\.penalty = 'l2'.*'l1_decnorm', 'encoder_l1'"):
        from_dict(SqueezerConfig, {"penalty": "l2"}, "squeezer")


def test_encoder_penalty_sparsifies_connectivity_and_keeps_neurons_on_by_default() -> None:
    """The same 8 planted features in 16 neurons: the encoder penalty cuts each neuron's inputs
    to a few features while the reconstruction holds, and unlike the activation penalty it does
    not switch the neurons off (the code it leaves is on at rest)."""
    train, held = _eight_feature_rows(0), _eight_feature_rows(1)

    def fit(l1: float, penalty: str) -> tuple[float, float, float]:
        model, on, fvu = _fit_sixteen_neurons(train, held, l1, penalty)
        w = model.W_enc.detach()[:8].abs()  # the live features' weights (8, M)
        members = float((w > 0.5 * w.max(0).values).sum(0).float().mean())
        return members, on, fvu

    dense_members, _, _ = fit(0.0, "l1_decnorm")
    members, on, fvu = fit(0.003, "encoder_l1")
    _, act_on, _ = fit(0.05, "l1_decnorm")
    assert members < 0.6 * dense_members, (members, dense_members)
    assert fvu < 0.15, fvu
    assert on > act_on + 0.2, (on, act_on)
