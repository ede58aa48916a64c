"""Baselines: PCA is the streamed linear optimum (dense and sparse-operator paths agree with
numpy), no-superposition keeps the right features, the orderings theory fixes hold, the
model-neuron readout finds a codec that is there and not one that is not, and the stage."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_squeezer import (
    METRIC_KEYS,
    N_FEAT,
    N_NEURONS,
    STAGE_PARAMS,
    run_stage,
    synthetic_features,
    write_world,
)

from neural_codec import storage
from neural_codec.baselines import (
    array_batches,
    feature_moments,
    fit_model_neurons,
    fit_no_superposition,
    fit_pca,
    fit_random_encoder,
    orthonormalize,
    randomized_top_eigh,
)
from neural_codec.codec import SqueezerCodec, batches_from_arrays, evaluate_codec
from neural_codec.config import BaselinesConfig, SqueezerConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict
from neural_codec.squeezer.train import train_squeezer

pytestmark = pytest.mark.usefixtures("one_thread")


def graded(n=30, N=4000, seed=0, p=None):
    """Features with clearly different variances (firing probability and magnitude vary)."""
    probs = torch.linspace(0.05, 0.6, n) if p is None else torch.full((n,), p)
    mags = torch.linspace(0.3, 2.0, n)
    return synthetic_features(n, probs, N, seed, mean=mags, std=0.1 * mags)


def fvu(codec, feats):
    return evaluate_codec(codec, batches_from_arrays(feats, batch_size=1000))["fvu"]


def test_pca_matches_numpy_and_the_sparse_operator_path():
    f = graded()
    M = 6
    F = f.to_dense().astype(np.float64)
    C = np.cov(F, rowvar=False, bias=True)
    evals, evecs = np.linalg.eigh(C)
    top = evecs[:, np.argsort(evals)[::-1][:M]]
    P_ref = top @ top.T
    dense = fit_pca(f, M, dense_limit=4096, batch_size=700)  # several streamed batches
    sparse_op = fit_pca(f, M, dense_limit=5)  # eigsh on the LinearOperator
    randomized = fit_pca(f, M, dense_limit=5, exact_max_k=M - 1)  # subspace iteration on it
    for codec in (dense, sparse_op):
        V = codec.V.double().numpy()
        np.testing.assert_allclose(V @ V.T, P_ref, atol=1e-5)
        np.testing.assert_allclose(codec.mu.numpy(), F.mean(0), rtol=1e-5)
    np.testing.assert_allclose(dense.eigenvalues, np.sort(evals)[::-1][:M], rtol=1e-6)
    np.testing.assert_allclose(randomized.eigenvalues, np.sort(evals)[::-1][:M], rtol=1e-4)
    assert fvu(randomized, f) == pytest.approx(fvu(dense, f), rel=1e-4)
    # FVU of the rank-M PCA reconstruction = dropped eigenvalues / total (on the fitted data)
    assert fvu(dense, f) == pytest.approx(np.sort(evals)[::-1][M:].sum() / evals.sum(), rel=1e-4)
    # M >= n reconstructs exactly
    assert fvu(fit_pca(f, 40), f) == pytest.approx(0, abs=1e-9)


def test_randomized_eigh_finds_the_top_subspace_of_a_flat_tailed_spectrum():
    """The randomized path used at large M: on a spectrum with a gap after k and a flat noisy
    tail (what a sparse code's covariance looks like), its top-k eigenvalues match eigh and the
    subspace it returns captures the top-k variance to 1e-5; an unconverged start (no power
    iterations, no oversampling) does measurably worse, so the test sees the iteration work."""
    rng = np.random.default_rng(3)
    n, k = 300, 40
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    spectrum = np.concatenate([np.linspace(10, 2, k), 0.5 + 0.1 * rng.random(n - k)])
    C = (q * spectrum) @ q.T
    ref = np.sort(spectrum)[::-1][:k]
    evals, evecs = randomized_top_eigh(lambda x: C @ x, n, k)
    np.testing.assert_allclose(evals, ref, rtol=1e-3)  # the last ones, next to the gap, converge slowest
    assert np.trace(evecs.T @ C @ evecs) == pytest.approx(ref.sum(), rel=1e-5)
    rough, _ = randomized_top_eigh(lambda x: C @ x, n, k, oversample=0, power_iters=0)
    assert rough.sum() < ref.sum() * (1 - 1e-3)


def test_orthonormalize_spans_the_block_and_falls_back_on_a_rank_deficient_one():
    """Cholesky-QR2 gives an orthonormal basis of the same span as Householder QR on a block
    with decaying columns (a power step's); a rank-deficient block, where the Gram's Cholesky
    fails, still gets an orthonormal basis (the QR fallback)."""
    rng = np.random.default_rng(5)
    Y = rng.standard_normal((500, 60)) * np.logspace(0, -4, 60)
    Q = orthonormalize(Y)
    np.testing.assert_allclose(Q.T @ Q, np.eye(60), atol=1e-12)
    Q_ref = np.linalg.qr(Y)[0]
    assert np.linalg.norm(Q_ref @ (Q_ref.T @ Q) - Q) < 1e-10
    low = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 60))  # rank 5 of 60 columns
    Q = orthonormalize(low)
    np.testing.assert_allclose(Q.T @ Q, np.eye(60), atol=1e-10)
    assert np.linalg.norm(low - Q @ (Q.T @ low)) < 1e-8 * np.linalg.norm(low)


def test_no_superposition_keeps_the_highest_variance_features_and_loses_the_rest():
    f = graded()
    M = 5
    mu, var = feature_moments(f)
    codec = fit_no_superposition(f, M)
    assert set(codec.keep) == set(np.argsort(-var)[:M])
    # exact for kept features, mean for the rest: FVU = dropped variance / total variance
    dropped = np.setdiff1d(np.arange(f.n_features), codec.keep)
    assert fvu(codec, f) == pytest.approx(var[dropped].sum() / var.sum(), rel=1e-5)
    m = evaluate_codec(codec, batches_from_arrays(f))
    assert m["features_represented"] == M and m["relu_engagement"] == 0
    # importance weights change the choice: weight the five lowest-variance features heavily
    w = np.ones(f.n_features)
    low = np.argsort(var)[:M]
    w[low] = 1e3
    assert set(fit_no_superposition(f, M, w).keep) == set(low)
    # PCA is the best rank-M linear code, and no-superposition is one (theory, fitted data)
    assert fvu(fit_pca(f, M), f) <= fvu(codec, f) + 1e-9


def test_orderings_dense_pca_beats_the_random_encoder():
    train, held = graded(p=1.0, N=4000, seed=0), graded(p=1.0, N=2000, seed=1)
    M = 5
    cfg = BaselinesConfig(steps=600, lr=1e-2, batch_size=256)
    rand, _ = fit_random_encoder(train, M, cfg)
    pca = fit_pca(train, M)
    assert fvu(pca, held) < fvu(rand, held) - 0.05
    # dense features with large means: the centred start lets the Squeezer reach the linear
    # optimum (it cannot beat it by much: with no sparsity there is nothing to superpose);
    # the zero start is far behind after the same steps
    base = dict(M=M, lr=3e-3, batch_size=256, steps=1500, seed=0)
    centred, _ = train_squeezer(train, SqueezerConfig(**base, bias_init="mean"))
    zero, _ = train_squeezer(train, SqueezerConfig(**base))
    f_pca, f_c, f_z = fvu(pca, held), fvu(SqueezerCodec(centred), held), fvu(SqueezerCodec(zero), held)
    assert f_pca - 0.05 < f_c < f_pca + 0.15, (f_pca, f_c)
    assert f_z > 2 * f_c, (f_z, f_c)


def test_orderings_sparse_squeezer_beats_no_superposition():
    n, M = 30, 6
    probs = torch.full((n,), 0.04)
    train = synthetic_features(n, probs, 8000, seed=0, mean=1.0, std=0.2)
    held = synthetic_features(n, probs, 2000, seed=1, mean=1.0, std=0.2)
    sq, _ = train_squeezer(train, SqueezerConfig(M=M, lr=1e-2, batch_size=256, steps=800, seed=0))
    cfg = BaselinesConfig(steps=800, lr=1e-2, batch_size=256)
    rand, _ = fit_random_encoder(train, M, cfg)
    f_sq = fvu(SqueezerCodec(sq), held)
    f_ns = fvu(fit_no_superposition(train, M), held)
    f_rand = fvu(rand, held)
    # the Squeezer's function class contains both the no-superposition code and (untied) the
    # random-encoder code; on sparse features superposition wins by a wide margin
    assert f_sq < f_ns - 0.2
    assert f_sq <= f_rand + 0.02
    assert f_ns > 0.7  # 6 of 30 equal features kept: ~80% of the variance is lost


def test_model_neuron_readout_finds_a_real_codec_and_not_a_shuffled_one():
    f_train, f_held = graded(seed=0), graded(N=1500, seed=1)
    cfg = BaselinesConfig(steps=500, lr=1e-2, batch_size=256)
    # the "model" carries each feature on its own neuron (x 3): a perfect codec
    codec, curve, sps = fit_model_neurons(array_batches(3 * f_train.to_dense(), f_train, 256, 0), 30, cfg)
    good = evaluate_codec(codec, batches_from_arrays(f_held, neurons=3 * f_held.to_dense()))
    assert good["fvu"] < 0.05 and sps > 0 and len(curve) >= 40
    # control: neurons from other rows carry no information about these rows' features
    perm = np.random.default_rng(0).permutation(len(f_train))
    codec, _, _ = fit_model_neurons(array_batches(f_train.to_dense()[perm], f_train, 256, 0), 30, cfg)
    permh = np.random.default_rng(1).permutation(len(f_held))
    bad = evaluate_codec(codec, batches_from_arrays(f_held, neurons=f_held.to_dense()[permh]))
    assert bad["fvu"] > 0.9


def test_config_rejects_bad_values_by_key():
    with pytest.raises(ParamError, match=r"baselines\.methods"):
        from_dict(BaselinesConfig, {"methods": ["pca", "magic"]}, "baselines")
    with pytest.raises(ParamError, match=r"baselines\.steps"):
        from_dict(BaselinesConfig, {"steps": 0}, "baselines")
    with pytest.raises(ParamError, match=r"baselines\.bogus"):
        from_dict(BaselinesConfig, {"bogus": 1}, "baselines")


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines_world")
    write_world(root)
    return root


def test_stage_end_to_end(world, monkeypatch):
    run_stage("baselines", world, monkeypatch)
    m = storage.read_json(world / "metrics/baselines.json")
    assert list(m) == ["pca", "no_superposition", "random_encoder", "model_neurons"]
    for method, r in m.items():
        assert METRIC_KEYS <= set(r), method
        assert not {"samples_per_s", "fit_seconds"} & set(r), method
        assert r["n_features"] == N_FEAT
    assert all(
        m[k]["M"] == STAGE_PARAMS["squeezer"]["M"] for k in ("pca", "no_superposition", "random_encoder")
    )
    assert m["model_neurons"]["M"] == N_NEURONS
    assert m["no_superposition"]["features_represented"] == STAGE_PARAMS["squeezer"]["M"]
    assert m["model_neurons"]["features_represented"] > 0
    assert m["pca"]["linear_regime"] is True
    # the neurons are ReLU(resid R) with more neurons than resid dims: the readout beats PCA-at-6
    assert m["model_neurons"]["fvu"] < m["pca"]["fvu"]
    rows = (world / "plots/baselines/fvu.csv").read_text().splitlines()
    assert rows[0] == "method,fvu" and len(rows) == 5


def test_stage_rejects_bad_params_before_work(world, tmp_path, monkeypatch):
    import yaml

    root = tmp_path / "w"
    shutil.copytree(world, root, ignore=shutil.ignore_patterns("metrics", "plots"))
    for section, key, value, match in [
        ("squeezer", "M", 0, r"squeezer\.M = 0"),
        ("baselines", "methods", ["pca", "svd"], r"baselines\.methods"),
        ("features", "top_k", 99, r"features\.top_k = 99"),
    ]:
        p = {k: dict(v) for k, v in STAGE_PARAMS.items()}
        p[section][key] = value
        (root / "params.yaml").write_text(yaml.safe_dump(p))
        with pytest.raises(ParamError, match=match):
            run_stage("baselines", root, monkeypatch)
    (root / "params.yaml").write_text(yaml.safe_dump(STAGE_PARAMS))
    shutil.rmtree(root / "data/activations/train")
    with pytest.raises(ParamError, match="missing upstream output"):
        run_stage("baselines", root, monkeypatch)
    assert not (root / "metrics").exists() and not (root / "plots").exists()


def test_stage_writes_the_trained_decoders_curves_byte_identical_on_rerun(world, tmp_path, monkeypatch):
    """plots/baselines/curves: the random encoder's decoder curve is the one its fit returns
    (same seeded training), model_neurons (not in methods) is header-only, and a rerun writes
    the same bytes."""
    import yaml

    from neural_codec.curves import read_curve
    from neural_codec.squeezer.model import resolve_importance

    root = tmp_path / "w"
    shutil.copytree(world, root, ignore=shutil.ignore_patterns("metrics", "plots"))
    p = {k: dict(v) for k, v in STAGE_PARAMS.items()}
    p["baselines"]["methods"] = ["pca", "random_encoder"]
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    run_stage("baselines", root, monkeypatch)
    tsv = root / "plots/baselines/curves/plots/metrics"
    assert sorted(f.name for f in tsv.iterdir()) == ["model_neurons.tsv", "random_encoder.tsv"]
    assert (tsv / "model_neurons.tsv").read_text() == "step\tmodel_neurons\n"
    first = (tsv / "random_encoder.tsv").read_bytes()
    sq = from_dict(SqueezerConfig, p["squeezer"], "squeezer")
    cfg = from_dict(BaselinesConfig, p["baselines"], "baselines")
    w = resolve_importance(sq, N_FEAT, np.load(root / "data/features/firing_freq.npy"))
    train = storage.load_sparse(root / "data/features/train")
    _, curve = fit_random_encoder(train, sq.M, cfg, w, sq.init, sq.bias_init)
    steps, values = read_curve(tsv / "random_encoder.tsv")
    assert steps == [c["step"] for c in curve] and steps[-1] == cfg.steps and 40 <= len(steps) <= 60
    assert values == [c["loss"] for c in curve]
    assert values[-1] < values[0]  # the decoder learns
    run_stage("baselines", root, monkeypatch)
    assert (tsv / "random_encoder.tsv").read_bytes() == first
