"""The Squeezer: sparse encoder == dense maths, exact and sampled losses, reconstruction when
M covers the active features, the superposition phase change, determinism, the shared metrics,
and the `squeeze` stage (outputs, and bad inputs failing before any output)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neural_codec import storage
from neural_codec.codec import Codec, SqueezerCodec, batches_from_arrays, evaluate_codec
from neural_codec.config import SqueezerConfig
from neural_codec.errors import DataError, ParamError
from neural_codec.params import from_dict
from neural_codec.squeezer.checkpoint import load_squeezer, save_squeezer
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer
from neural_codec.squeezer.train import neuron_activations, train_squeezer
from neural_codec.storage import SparseFeatures

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_features(n, p, N, seed, mean=0.5, std=0.29, k=None) -> SparseFeatures:
    """Sparse features from SAELens's generator (independent, firing probability p)."""
    from sae_lens.synthetic import ActivationGenerator

    torch.manual_seed(seed)
    gen = ActivationGenerator(
        n, firing_probabilities=p, mean_firing_magnitudes=mean, std_firing_magnitudes=std
    )
    return SparseFeatures.from_dense(gen.sample(N).numpy(), k or n)


def random_sparse(N, n, k, seed) -> SparseFeatures:
    """Random rows with 0..k distinct active features (padding included)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((N, n), np.float32)
    for r in range(N):
        m = rng.integers(0, k + 1)
        dense[r, rng.choice(n, m, replace=False)] = rng.uniform(0.1, 2.0, m)
    return SparseFeatures.from_dense(dense, k)


def dense_reference_loss(model: Squeezer, dense: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    h = torch.relu(dense @ model.W_enc + model.b_enc)
    f_hat = torch.relu(h @ model.W_dec + model.b_dec)
    return ((dense - f_hat) ** 2 * w).sum(1).mean()


# --------------------------------------------------------------------------------------------
# Sparse path == dense maths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_embedding_bag_encode_and_exact_loss_match_dense(tied):
    n, M, k = 30, 7, 5
    f = random_sparse(64, n, k, seed=1)
    assert (f.val == 0).any()  # padding slots exercised
    g = torch.Generator().manual_seed(0)
    model = Squeezer(n, M, tied=tied, generator=g)
    with torch.no_grad():
        model.b_enc.uniform_(-0.3, 0.3, generator=g)
        model.b_dec.uniform_(-0.1, 0.3, generator=g)
    dense = torch.from_numpy(f.to_dense())
    idx, val = torch.from_numpy(f.idx), torch.from_numpy(f.val)
    torch.testing.assert_close(model.encode(idx, val), torch.relu(dense @ model.W_enc + model.b_enc))
    torch.testing.assert_close(
        model(idx, val), torch.relu(torch.relu(dense @ model.W_enc + model.b_enc) @ model.W_dec + model.b_dec)
    )

    w = torch.rand(n, generator=g) + 0.5
    sparse_loss = squeezer_loss(model, idx, val, w)
    sparse_grads = torch.autograd.grad(sparse_loss, list(model.parameters()))
    ref_loss = dense_reference_loss(model, dense, w)
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    torch.testing.assert_close(sparse_loss, ref_loss)
    for a, b in zip(sparse_grads, ref_grads, strict=False):
        torch.testing.assert_close(a, b)
    # a non-trivial check: the gradients are not all zero
    assert sum(float(gr.abs().sum()) for gr in ref_grads) > 1e-3


@pytest.mark.parametrize("rows", [32, 256])  # per-row gather / one matmul over active columns
def test_sampled_loss_and_gradient_are_unbiased(rows):
    n, M, k, s = 40, 6, 4, 8
    f = random_sparse(rows, n, k, seed=2)
    g = torch.Generator().manual_seed(3)
    model = Squeezer(n, M, generator=g)
    with torch.no_grad():
        model.b_dec.uniform_(0.05, 0.4, generator=g)  # inactive outputs are non-zero: the sample matters
    idx, val = torch.from_numpy(f.idx), torch.from_numpy(f.val)
    w = torch.rand(n, generator=g) + 0.5
    params = list(model.parameters())
    exact = squeezer_loss(model, idx, val, w)
    exact_grads = torch.autograd.grad(exact, params)
    draws = 3000
    losses = []
    grad_sum = [torch.zeros_like(p) for p in params]
    sg = torch.Generator().manual_seed(4)
    for _ in range(draws):
        loss = squeezer_loss(model, idx, val, w, loss_sample=s, generator=sg)
        for acc, gr in zip(grad_sum, torch.autograd.grad(loss, params), strict=False):
            acc += gr
        losses.append(loss.item())
    losses = np.array(losses)
    se = losses.std() / np.sqrt(draws)
    assert losses.std() > 0  # it really is sampled
    assert abs(losses.mean() - exact.item()) < 4 * se
    # the inactive part is ~90% of the loss here: weighting by n_inactive/s instead of n/s (or
    # forgetting to skip active columns) would shift the mean by several percent
    assert abs(losses.mean() - exact.item()) < 0.02 * exact.item()
    for acc, gr in zip(grad_sum, exact_grads, strict=False):
        rel = float((acc / draws - gr).norm() / gr.norm())
        assert rel < 0.06, rel


# --------------------------------------------------------------------------------------------
# Training behaviour
# --------------------------------------------------------------------------------------------


def planted_active(n=40, n_active=8, p=0.3, N=8000, seed=0) -> SparseFeatures:
    """n features of which only the first n_active ever fire."""
    probs = torch.zeros(n)
    probs[:n_active] = p
    return synthetic_features(n, probs, N, seed, mean=1.0, std=0.3)


def test_reconstructs_when_M_covers_the_active_features():
    train, held = planted_active(seed=0), planted_active(seed=1)
    cfg = SqueezerConfig(M=8, lr=1e-2, batch_size=256, steps=600, seed=0)
    model, curve = train_squeezer(train, cfg)
    m = evaluate_codec(SqueezerCodec(model), batches_from_arrays(held, batch_size=1000))
    assert m["fvu"] < 0.02, m
    assert m["recovery_mean"] > 0.95 and m["recovery_frac_above_0_5"] == 1.0
    assert m["n_features_firing"] == 8
    # the 32 silent features are not counted (they never fire, so they have no held-out gain)
    assert m["features_represented"] == 8 and m["median_self_gain"] > 0.9
    assert curve[-1]["loss"] < 0.1 * curve[0]["loss"]
    assert 40 <= len(curve) <= 60
    # control: half the neurons cannot carry 8 dense-ish (p = 0.3) features
    small, _ = train_squeezer(train, SqueezerConfig(M=3, lr=1e-2, batch_size=256, steps=600, seed=0))
    assert evaluate_codec(SqueezerCodec(small), batches_from_arrays(held))["fvu"] > 0.2


def test_sampled_loss_trains_too():
    train, held = planted_active(seed=0), planted_active(seed=1)
    cfg = SqueezerConfig(M=8, lr=1e-2, batch_size=256, steps=500, seed=0, loss_sample=8)
    model, _ = train_squeezer(train, cfg)
    assert evaluate_codec(SqueezerCodec(model), batches_from_arrays(held))["fvu"] < 0.05


def test_superposition_phase_change():
    """Toy Models of Superposition: n=20 features, M=5, importance 0.8^i. Sparse features are
    packed in superposition (more features represented than neurons); dense ones are not."""
    n, M = 20, 5
    cfg = dict(
        M=M,
        tied=True,
        importance="given",
        importance_given=[0.8**i for i in range(n)],
        lr=1e-2,
        batch_size=256,
        steps=1500,
        seed=0,
    )
    represented = {}
    for label, p in [("sparse", 0.03), ("dense", 1.0)]:
        train = synthetic_features(n, p, 10000, seed=0)
        model, _ = train_squeezer(train, SqueezerConfig(**cfg))
        held = synthetic_features(n, p, 2000, seed=1)
        represented[label] = evaluate_codec(SqueezerCodec(model), batches_from_arrays(held))[
            "features_represented"
        ]
    assert represented["sparse"] >= 2 * M, represented
    assert represented["dense"] <= M + 1, represented
    # the count is earned by training, not by the init scale (xavier rows here have norm ~0.63)
    untrained, _ = train_squeezer(
        synthetic_features(n, 0.03, 10000, seed=0), SqueezerConfig(**{**cfg, "steps": 1})
    )
    held = synthetic_features(n, 0.03, 2000, seed=1)
    assert evaluate_codec(SqueezerCodec(untrained), batches_from_arrays(held))["features_represented"] < M


def test_deterministic_for_a_seed():
    train = planted_active(N=2000)
    cfg = SqueezerConfig(M=4, lr=1e-2, batch_size=128, steps=100, seed=7, loss_sample=5)
    a, ca = train_squeezer(train, cfg)
    b, cb = train_squeezer(train, cfg)
    c, _ = train_squeezer(
        train, SqueezerConfig(M=4, lr=1e-2, batch_size=128, steps=100, seed=8, loss_sample=5)
    )
    for name in ("W_enc", "b_enc", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.W_dec, b.W_dec) and ca == cb
    assert not torch.equal(a.W_enc, c.W_enc)


@pytest.mark.parametrize("tied", [False, True])
def test_save_load_roundtrip(tmp_path, tied):
    train = planted_active(N=1000)
    cfg = SqueezerConfig(M=4, tied=tied, steps=20, batch_size=100)
    model, _ = train_squeezer(train, cfg)
    save_squeezer(tmp_path / "sq.pt", model, cfg, extra={"note": 1})
    state = torch.load(tmp_path / "sq.pt", weights_only=False)
    assert state["W_enc"].shape == (40, 4) and state["W_dec"].shape == (4, 40)
    assert state["b_enc"].shape == (4,) and state["b_dec"].shape == (40,)
    assert state["config"]["tied"] is tied and state["extra"] == {"note": 1}
    loaded = load_squeezer(tmp_path / "sq.pt")
    np.testing.assert_array_equal(neuron_activations(loaded, train, 300), neuron_activations(model, train))
    idx, val = torch.from_numpy(train.idx), torch.from_numpy(train.val)
    torch.testing.assert_close(loaded(idx, val), model(idx, val))
    assert not list(tmp_path.glob(".*tmp"))


# --------------------------------------------------------------------------------------------
# Shared metrics on hand-made codecs (exact values)
# --------------------------------------------------------------------------------------------


class ScaledCopy(Codec):
    """f_hat = c * f through n identity neurons."""

    def __init__(self, n, c):
        self.n, self.c = n, c

    def code(self, batch):
        h = torch.from_numpy(batch.feats.to_dense())
        return h, h

    def decode(self, h):
        return self.c * h


def test_metrics_exact_on_known_codecs():
    from sae_lens import StandardSAE, StandardSAEConfig

    n, d = 12, 5
    f = random_sparse(300, n, 4, seed=5)
    F = f.to_dense().astype(np.float64)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=n))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(n, d, generator=g))
        sae.b_dec.copy_(torch.randn(d, generator=g))
    resid = (torch.from_numpy(f.to_dense()) @ sae.W_dec + sae.b_dec).detach().numpy()
    decode = lambda x: (x @ sae.W_dec + sae.b_dec).detach()  # noqa: E731

    perfect = evaluate_codec(ScaledCopy(n, 1.0), batches_from_arrays(f, resid, batch_size=64), decode)
    assert perfect["fvu"] == pytest.approx(0, abs=1e-9)
    assert perfect["recovery_mean"] == pytest.approx(1) and perfect["recovery_frac_above_0_5"] == 1
    assert perfect["sae_explained_variance"] == pytest.approx(1, abs=1e-5)
    assert perfect["sae_explained_variance_ceiling"] == pytest.approx(1, abs=1e-5)
    assert perfect["features_represented"] == n and perfect["relu_engagement"] == 0
    assert perfect["linear_regime"] is True

    half = evaluate_codec(ScaledCopy(n, 0.5), batches_from_arrays(f, resid, batch_size=64), decode)
    expected_fvu = 0.25 * (F**2).sum() / ((F - F.mean(0)) ** 2).sum()
    assert half["fvu"] == pytest.approx(expected_fvu, rel=1e-6)
    assert half["recovery_mean"] == pytest.approx(0.75, rel=1e-6)  # 1 - E[(f/2)^2]/E[f^2]
    assert half["features_represented"] == 0  # gain 0.5 is not > 0.5
    assert half["median_self_gain"] == pytest.approx(0.5)
    X = resid.astype(np.float64)
    Xh = (0.5 * F) @ sae.W_dec.detach().double().numpy() + sae.b_dec.detach().double().numpy()
    ev = 1 - ((X - Xh) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert half["sae_explained_variance"] == pytest.approx(ev, rel=1e-5)


def test_relu_engagement_and_dead_neurons():
    f = random_sparse(200, 10, 3, seed=6)
    model = Squeezer(10, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.b_enc.copy_(torch.tensor([100.0, 100.0, -100.0, -100.0]))
    m = evaluate_codec(SqueezerCodec(model), batches_from_arrays(f, batch_size=50))
    assert m["dead_neurons"] == pytest.approx(0.5)
    # the dead half does not hide that the live half never clips: still the linear regime
    assert m["relu_engagement"] == 0 and m["linear_regime"] is True and m["linear_neurons"] == 1
    with torch.no_grad():
        model.b_enc.copy_(torch.tensor([100.0, 100.0, 0.0, -100.0]))
    pre = model.preactivations(torch.from_numpy(f.idx), torch.from_numpy(f.val)).detach().numpy()
    clipped = (pre[:, 2] < 0).mean()
    assert 0.2 < clipped < 0.8 and (pre[:, 2] > 0).any()
    m = evaluate_codec(SqueezerCodec(model), batches_from_arrays(f, batch_size=50))
    assert m["dead_neurons"] == pytest.approx(0.25)
    assert m["relu_engagement"] == pytest.approx(clipped / 3)  # mean over the 3 live neurons
    assert m["linear_regime"] is False and m["linear_neurons"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_config_rejects_bad_values_by_key():
    with pytest.raises(ParamError, match=r"squeezer\.M = 0"):
        from_dict(SqueezerConfig, {"M": 0}, "squeezer")
    with pytest.raises(ParamError, match=r"squeezer\.importance_given"):
        from_dict(SqueezerConfig, {"importance": "given"}, "squeezer")
    with pytest.raises(ParamError, match=r"squeezer\.importance"):
        from_dict(SqueezerConfig, {"importance": "sometimes"}, "squeezer")
    with pytest.raises(ParamError, match=r"squeezer\.loss_sample"):
        from_dict(SqueezerConfig, {"loss_sample": -1}, "squeezer")
    with pytest.raises(ParamError, match=r"squeezer\.lr"):
        from_dict(SqueezerConfig, {"lr": 0}, "squeezer")


def test_train_rejects_nan_and_wrong_importance_length():
    f = planted_active(N=500)
    bad = SparseFeatures(f.idx.copy(), f.val.copy(), f.n_features)
    bad.val[3, 0] = np.nan
    with pytest.raises(ParamError, match="NaN"):
        train_squeezer(bad, SqueezerConfig(M=2, steps=5))
    with pytest.raises(ParamError, match="importance_given"):
        train_squeezer(f, SqueezerConfig(M=2, steps=5, importance="given", importance_given=[1.0, 2.0]))


# --------------------------------------------------------------------------------------------
# The stage, on a tiny synthetic world written in the data contract's layout
# --------------------------------------------------------------------------------------------

N_FEAT, D_MODEL, N_NEURONS, TOP_K = 24, 8, 10, 6

STAGE_PARAMS = {
    "features": {"top_k": TOP_K},
    "squeezer": {
        "M": 6,
        "tied": False,
        "importance": "frequency",
        "lr": 0.01,
        "batch_size": 256,
        "steps": 300,
        "seed": 0,
    },
    "baselines": {"steps": 300, "lr": 0.01, "batch_size": 256, "seed": 0},
}


def write_world(root: Path, params: dict | None = None) -> None:
    """features (train/heldout, firing_freq), an SAELens SAE, and row-aligned activations whose
    `resid` is the SAE's reconstruction plus noise and whose `neurons` are ReLU(resid R)."""
    import yaml
    from sae_lens import StandardSAE, StandardSAEConfig

    data = root / "data"
    probs = torch.linspace(0.02, 0.15, N_FEAT)
    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=N_FEAT))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        W = torch.randn(N_FEAT, D_MODEL, generator=g)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        sae.b_dec.copy_(0.1 * torch.randn(D_MODEL, generator=g))
    sae.save_model(data / "sae")
    R = np.random.default_rng(2).standard_normal((D_MODEL, N_NEURONS)).astype(np.float32)
    (data / "activations").mkdir(parents=True)
    np.save(data / "activations/neuron_readin.npy", R)
    for split, N, seed in [("train", 3000, 0), ("heldout", 1000, 1)]:
        f = synthetic_features(N_FEAT, probs, N, seed, mean=1.0, std=0.2, k=TOP_K)
        storage.write_sparse(data / "features" / split, f, rows_per_shard=700)
        resid = (torch.from_numpy(f.to_dense()) @ sae.W_dec + sae.b_dec).detach().numpy()
        resid += 0.01 * np.random.default_rng(seed).standard_normal(resid.shape).astype(np.float32)
        w = storage.ShardWriter(
            data / "activations" / split, rows_per_shard=800, d_model=D_MODEL, n_neurons=N_NEURONS
        )
        w.append(resid=resid, neurons=np.maximum(resid @ R, 0))
        w.close()
        if split == "train":
            np.save(data / "features/firing_freq.npy", f.firing_frequency())
    (root / "params.yaml").write_text(yaml.safe_dump(params or STAGE_PARAMS))


def run_stage(name: str, root: Path, monkeypatch) -> int:
    monkeypatch.chdir(root)
    spec = importlib.util.spec_from_file_location(f"{name}_stage", ROOT / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("squeeze_world")
    write_world(root)
    return root


METRIC_KEYS = {
    "fvu",
    "recovery_mean",
    "recovery_frac_above_0_5",
    "features_represented",
    "dead_neurons",
    "relu_engagement",
    "linear_regime",
    "sae_explained_variance",
    "sae_explained_variance_ceiling",
}


def test_stage_end_to_end(world, monkeypatch):
    run_stage("squeeze", world, monkeypatch)
    saved = storage.read_json(world / "metrics/squeeze.json")
    assert list(saved) == ["squeezer"]  # a peer of the baselines: {method: metrics}
    m = saved["squeezer"]
    assert METRIC_KEYS <= set(m)
    assert m["M"] == 6 and m["n_features"] == N_FEAT
    assert not {"samples_per_s", "train_seconds"} & set(m)  # timings stay out of DVC metrics
    assert 0 <= m["fvu"] < 0.9
    # the SAE reads its own top-k features back almost perfectly; the Squeezer loses some
    assert m["sae_explained_variance_ceiling"] > 0.95
    assert m["sae_explained_variance"] < m["sae_explained_variance_ceiling"]
    assert m["sae_explained_variance"] > 0.2
    h = np.load(world / "data/squeeze/heldout_neurons.npy")
    held = storage.load_sparse(world / "data/features/heldout")
    model = load_squeezer(world / "data/squeeze/squeezer.pt")
    assert h.shape == (1000, 6)
    np.testing.assert_allclose(h, neuron_activations(model, held), rtol=1e-6, atol=1e-6)
    assert model.config["importance"] == "frequency"
    lines = (world / "plots/squeeze/curves/plots/metrics/loss.tsv").read_text().splitlines()
    assert lines[0] == "step\tloss" and 40 <= len(lines) - 1 <= 60
    assert sorted(p.name for p in (world / "data/squeeze").iterdir()) == [
        "heldout_neurons.npy",
        "squeezer.pt",
    ]


def _bad(root: Path, monkeypatch, match: str) -> None:
    with pytest.raises((ParamError, DataError), match=match):
        run_stage("squeeze", root, monkeypatch)
    assert not (root / "data/squeeze").exists()
    assert not (root / "metrics").exists() and not (root / "plots").exists()
    assert not list((root / "data").glob(".squeeze*"))


def test_stage_bad_inputs_fail_before_any_output(world, tmp_path, monkeypatch):
    import yaml

    root = tmp_path / "w"
    shutil.copytree(world, root, ignore=shutil.ignore_patterns("squeeze", "metrics", "plots"))

    def params(**changes):
        p = {k: dict(v) for k, v in STAGE_PARAMS.items()}
        for key, value in changes.items():
            section, name = key.split("__")
            p[section][name] = value
        (root / "params.yaml").write_text(yaml.safe_dump(p))

    params(squeezer__M=0)
    _bad(root, monkeypatch, r"squeezer\.M = 0")
    params(features__top_k=N_FEAT + 1)
    _bad(root, monkeypatch, r"features\.top_k = 25")
    params(squeezer__importance="given", squeezer__importance_given=[1.0] * 5)
    _bad(root, monkeypatch, r"squeezer\.importance_given")
    params()
    # NaN in the last held-out shard
    last = storage.shard_paths(root / "data/features/heldout")[-1]
    with np.load(last) as z:
        idx, val = z["idx"], z["val"].copy()
    val[-1, 0] = np.nan
    np.savez(last, idx=idx, val=val)
    _bad(root, monkeypatch, "NaN")
    # a missing upstream output
    shutil.rmtree(root / "data/features/heldout")
    _bad(root, monkeypatch, "missing upstream output")


def test_linear_hidden_is_the_tms_model_and_round_trips(tmp_path):
    cfg = SqueezerConfig(M=3, tied=True, hidden="linear", steps=5)
    model = Squeezer(10, 3, tied=True, hidden="linear", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.b_enc.copy_(torch.tensor([0.3, -0.2, 0.1]))
    dense = torch.rand(7, 10) * (torch.rand(7, 10) < 0.4)
    sf = SparseFeatures.from_dense(dense.numpy(), 10)
    W = model.W_enc.detach()
    expect = torch.relu(dense @ W @ W.T + model.b_enc.detach() @ W.T + model.b_dec.detach())
    got = model(torch.from_numpy(sf.idx), torch.from_numpy(sf.val))
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    save_squeezer(tmp_path / "s.pt", model, cfg)
    back = load_squeezer(tmp_path / "s.pt")
    assert back.hidden == "linear"
    torch.testing.assert_close(back(torch.from_numpy(sf.idx), torch.from_numpy(sf.val)), got)
    with pytest.raises(ParamError):
        from_dict(SqueezerConfig, {"hidden": "tanh"}, "squeezer")


def test_feature_gain_is_invariant_to_per_neuron_rescaling():
    model = Squeezer(30, 8, tied=False, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.W_dec_T.mul_(torch.rand(30, 8) + 0.5)  # untied: encoder and decoder differ
        before = model.feature_gain()
        raw_before = torch.sqrt(model.W_enc.norm(dim=1) * model.W_dec.norm(dim=0)).numpy()
        c = torch.from_numpy(np.random.default_rng(0).uniform(0.2, 5.0, 8)).float()
        model.W_enc.mul_(c)
        model.b_enc.mul_(c)
        model.W_dec_T.div_(c)
        raw_after = torch.sqrt(model.W_enc.norm(dim=1) * model.W_dec.norm(dim=0)).numpy()
    np.testing.assert_allclose(model.feature_gain(), before, rtol=1e-5)
    assert np.abs(raw_after - raw_before).max() > 1e-2  # the old definition moved
    tied = Squeezer(30, 8, tied=True, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(tied.feature_gain(), tied.W_enc.detach().norm(dim=1).numpy(), rtol=1e-5)
