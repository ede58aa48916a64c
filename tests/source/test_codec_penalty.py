"""The planted codec's decoder-norm-scaled L1 (`source.synthetic.codec_penalty: l1_decnorm`):
per-neuron rescaling (input weights and bias x c, read-out row / c) leaves the codec's output and
this penalty unchanged, while the plain L1 shrinks, which is why plain L1 fixes no neuron identity;
and, in miniature, the H4 controls it makes possible: `squeezer.l1` recovers such a codec's neurons,
and where co-occurrence fixes them (correlated pairs sharing a neuron), beats the feature-permuted floor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from neural_codec.analysis.compare import correlation_matrix, hungarian_match
from neural_codec.config import SqueezerConfig, SyntheticConfig
from neural_codec.source.synthetic import (
    ToyModel,
    build_generator,
    codec_penalty,
    make_embedding,
    train_toy_model,
)
from neural_codec.storage import SparseFeatures


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


Match = Callable[[np.ndarray], float]


def _planted_codec(cfg: SyntheticConfig) -> tuple[SparseFeatures, SparseFeatures, np.ndarray, Match]:
    """Train the codec at source seeds 0 and 1; return (train rows, held-out rows, the seed-1
    codec's held-out neurons, a Hungarian mean |r| against the seed-0 codec's held-out neurons)."""
    gen, _ = build_generator(cfg, 0)
    emb = make_embedding(cfg, 0)
    codec, _ = train_toy_model(cfg, gen, emb, 0)
    codec2, _ = train_toy_model(cfg, gen, emb, 1)
    torch.manual_seed(3)
    train, held = gen.sample(20000), gen.sample(5000)
    with torch.no_grad():
        ref = codec.neurons(codec.resid(held)).double().numpy()
        ref2 = codec2.neurons(codec2.resid(held)).double().numpy()
    k = int((train > 0).sum(1).max())

    def match(h: np.ndarray) -> float:
        return float(hungarian_match(correlation_matrix(h.astype(np.float64), ref)).abs_r.mean())

    return (
        SparseFeatures.from_dense(train.numpy(), k),
        SparseFeatures.from_dense(held.numpy(), k),
        ref2,
        match,
    )


@pytest.mark.usefixtures("one_thread")
def test_squeezer_l1_recovers_the_decnorm_codecs_neurons_and_no_penalty_does_not() -> None:
    """The H4 positive control in miniature (configs/planted-codec-identity.yaml): a codec trained
    with the decoder-norm L1 has neurons its own second seed finds again, and a Squeezer with
    squeezer.l1 (another seed, so not the codec's xavier start) matches them far above its
    untrained start; without the penalty it does not beat that start. So does the connectivity
    penalty (squeezer.penalty encoder_l1), which leaves the neurons on at rest."""
    from neural_codec.nulls import untrained_squeezer
    from neural_codec.squeezer.train import neuron_activations, train_squeezer

    n, m = 24, 16
    cfg = SyntheticConfig(
        model="codec", n_features=n, d_model=n, n_neurons=m, codec_l1=0.1, codec_penalty="l1_decnorm",
        train_steps=3000, lr=0.003, exclusive_families=2, cyclic_families=[], correlated_pairs=2,
        train_pool=20000, max_prob=0.15, min_prob=0.02,
    )  # fmt: skip
    T, H, ref2, match = _planted_codec(cfg)
    scores, on_at_rest = {}, {}
    for penalty, l1 in (("l1_decnorm", 0.1), ("l1_decnorm", 0.0), ("encoder_l1", 0.01)):
        sq_cfg = SqueezerConfig(M=m, l1=l1, penalty=penalty, steps=1500, batch_size=512, lr=0.01, seed=5)  # type: ignore[arg-type]
        sq, _ = train_squeezer(T, sq_cfg, n_features=n)
        scores[penalty, l1] = match(neuron_activations(sq, H))
        on_at_rest[penalty, l1] = float((sq.b_enc > 0).float().mean())
    untrained = match(neuron_activations(untrained_squeezer(n, sq_cfg), H))
    # measured: the codec's seed 2 at 0.60 (it has an identity); the Squeezer 0.67 with the
    # penalty, 0.44 without; 0.47 untrained. The connectivity penalty (encoder_l1 0.01) matches
    # at 0.68 with every neuron on at rest (b_enc > 0), where the activation penalty's are all off
    act, none, enc = ("l1_decnorm", 0.1), ("l1_decnorm", 0.0), ("encoder_l1", 0.01)
    assert match(ref2) > untrained + 0.05, (match(ref2), untrained)
    assert scores[act] > untrained + 0.1 and scores[act] > scores[none] + 0.1, (scores, untrained)
    assert scores[enc] > untrained + 0.1 and scores[enc] > scores[none] + 0.1, (scores, untrained)
    assert on_at_rest[enc] > 0.5 > on_at_rest[act], on_at_rest


@pytest.mark.usefixtures("one_thread")
def test_cooccurrence_fixes_a_paired_codecs_neurons_and_the_permuted_floor_misses_them() -> None:
    """What compare's floor_permuted can see, in miniature: 10 pairs that fire together (copula
    correlation 0.99) and one exclusive family of 4 in 16 neurons, fewer than the 24 features, so
    the codec spends a neuron on each pair. A Squeezer trained on the rows finds those neurons;
    one trained on the same rows with each feature column permuted (the marginals without the
    co-occurrence) cannot tell which features pair up, and falls far below it. A no-op
    permutation, or a Squeezer blind to co-occurrence, fails this. (At this correlation an SAE
    merges each pair into one latent: on SAE features the permuted floor keeps the pairing.)"""
    from neural_codec.nulls import permute_feature_columns, untrained_squeezer
    from neural_codec.squeezer.train import neuron_activations, train_squeezer

    n, m = 24, 16
    cfg = SyntheticConfig(
        model="codec", n_features=n, d_model=n, n_neurons=m, codec_l1=0.1, codec_penalty="l1_decnorm",
        train_steps=3000, lr=0.003, exclusive_families=1, cyclic_families=[], correlated_pairs=10,
        pair_correlation=0.99, train_pool=20000, max_prob=0.15, min_prob=0.02,
    )  # fmt: skip
    T, H, ref2, match = _planted_codec(cfg)
    sq_cfg = SqueezerConfig(M=m, l1=0.1, steps=1500, batch_size=512, lr=0.01, seed=5)
    squeezer = match(neuron_activations(train_squeezer(T, sq_cfg, n_features=n)[0], H))
    permuted = match(
        neuron_activations(train_squeezer(permute_feature_columns(T, 5), sq_cfg, n_features=n)[0], H)
    )
    untrained = match(neuron_activations(untrained_squeezer(n, sq_cfg), H))
    # measured: the codec's seed 2 at 0.96, the Squeezer 0.96, the permuted floor 0.67, untrained 0.54
    assert match(ref2) > permuted + 0.15, (match(ref2), permuted)
    assert squeezer > permuted + 0.15 and permuted > untrained, (squeezer, permuted, untrained)


@pytest.mark.usefixtures("one_thread")
def test_cooccurrence_identity_sees_paired_neurons_and_nothing_in_independent_features() -> None:
    """The source stage's reference for compare's floor_permuted (`cooccurrence_identity`): the
    model's recipe retrained on column-permuted rows loses the paired codec's neurons (a large
    effect, so the floor counts) and matches a codec of independent features as well as its
    second seed does (permuting independent columns changes nothing: no effect, no floor)."""
    from neural_codec.config import SourceConfig
    from neural_codec.pipeline.source import cooccurrence_identity

    common = dict(
        model="codec", n_features=24, d_model=24, n_neurons=16, codec_l1=0.1, codec_penalty="l1_decnorm",
        train_steps=3000, lr=0.003, cyclic_families=[], pair_correlation=0.99, train_pool=20000,
        max_prob=0.15, min_prob=0.02,
    )  # fmt: skip
    effect = {}
    for name, planted in (("pairs", dict(exclusive_families=1, correlated_pairs=10)),
                          ("independent", dict(exclusive_families=0, correlated_pairs=0))):  # fmt: skip
        cfg = SourceConfig(seed=0, synthetic=SyntheticConfig(**common, **planted))  # type: ignore[arg-type]
        gen, _ = build_generator(cfg.synthetic, 0)
        emb = make_embedding(cfg.synthetic, 0)
        model, model2 = (train_toy_model(cfg.synthetic, gen, emb, s)[0] for s in (0, 1))
        effect[name] = cooccurrence_identity(cfg, model, model2)["effect"]
    # measured: pairs 0.30 Hungarian |r|, independent 0.00
    assert effect["pairs"]["hungarian_mean_r"] > 0.15, effect
    assert (
        abs(effect["independent"]["hungarian_mean_r"]) < 0.05 and abs(effect["independent"]["cka"]) < 0.05
    ), effect


def test_permute_columns_keeps_each_marginal_and_breaks_co_firing() -> None:
    from neural_codec.source.synthetic import permute_columns

    x = torch.zeros(4000, 3)
    x[:1000, 0] = x[:1000, 1] = 1.0  # features 0 and 1 always fire together
    x[:, 2] = torch.arange(4000.0)
    p = permute_columns(x, torch.Generator().manual_seed(0))
    assert torch.equal(p.sort(0).values, x.sort(0).values)  # every column keeps its values
    both = float(((p[:, 0] > 0) & (p[:, 1] > 0)).float().mean())
    assert abs(both - 0.25 * 0.25) < 0.02, both  # co-firing falls to chance


@torch.no_grad()
def test_codec_encoder_l1_reads_the_feature_space_encoder_and_is_rescaling_invariant() -> None:
    """codec_penalty "encoder_l1" weighs E W_in (what the Squeezer's W_enc is), not W_in in the
    residual basis, ignores the activations, and cannot be dodged by per-neuron rescaling."""
    torch.manual_seed(0)
    n, d, m = 12, 16, 6
    emb = torch.linalg.qr(torch.randn(d, n)).Q.T * torch.linspace(0.5, 2.0, n)[:, None]  # rows: features
    model = ToyModel(emb, m, seed=0)
    f = torch.rand(64, n)
    h = model.neurons(model.resid(f))
    A = emb @ model.W_in
    want = sum(A[:, j].abs().sum() * model.W_out[j].norm() for j in range(m))
    got = codec_penalty(model, h, "encoder_l1")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (
        abs(float(got) - float(sum(model.W_in[:, j].abs().sum() * model.W_out[j].norm() for j in range(m))))
        > 0.01
    )
    torch.testing.assert_close(codec_penalty(model, torch.zeros_like(h), "encoder_l1"), got)
    other = _rescaled(model, torch.linspace(0.2, 5.0, m))
    torch.testing.assert_close(codec_penalty(other, h, "encoder_l1"), got, rtol=1e-5, atol=1e-6)
