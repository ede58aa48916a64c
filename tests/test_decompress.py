"""Stages source -> activations -> sae -> features on a tiny synthetic config, checked against truth."""

import json

import numpy as np
import pytest
from pipeline_helpers import TINY_PARAMS as TINY
from pipeline_helpers import run_stage, tiny_params, write_params

from neural_codec import storage
from neural_codec.config import FeaturesConfig

# the features stage at its code defaults (top_k, min_value), on the tiny source
FEATURES = {"top_k": FeaturesConfig().top_k, "min_value": FeaturesConfig().min_value}


def params(**overrides):
    return tiny_params(**{"features": FEATURES, **overrides})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("decompress")
    write_params(wd, params())
    for stage in ("source", "activations", "sae", "labels", "features"):
        run_stage(wd, stage)
    return wd


def test_outputs_and_metrics_exist(workdir):
    for p in ["data/source/model.pt", "data/source/model_seed2.pt", "data/source/truth.npz",
              "data/activations/train/meta.json", "data/activations/neuron_readin.npy",
              "data/sae/cfg.json", "data/labels/families.json", "data/features/firing_freq.npy",
              "metrics/source.json", "metrics/activations.json", "metrics/sae.json",
              "metrics/features.json"]:  # fmt: skip
        assert (workdir / p).exists(), p
    # No temporary leftovers from the atomic writers.
    assert not list((workdir / "data").glob(".*tmp"))


def test_activations_are_the_toy_model_on_true_features(workdir):
    import torch

    from neural_codec.source.synthetic import load_toy_model

    model = load_toy_model(workdir / "data/source/model.pt")
    shard = next(storage.iter_shards(workdir / "data/activations/heldout"))
    true = storage.SparseFeatures(shard["true_idx"], shard["true_val"], model.embedding.shape[0])
    x = model.resid(torch.from_numpy(true.to_dense()))
    np.testing.assert_allclose(shard["resid"], x.numpy(), atol=1e-5)
    np.testing.assert_allclose(shard["neurons"], model.neurons(x).detach().numpy(), atol=1e-5)
    meta = storage.read_meta(workdir / "data/activations/train")
    assert meta["n_rows"] == 20000 and meta["n_shards"] == 3


def test_sae_recovers_the_true_features(workdir):
    m = json.loads((workdir / "metrics/sae.json").read_text())
    assert m["ground_truth"]["frac_recovered"] >= 0.8
    iv = m["ground_truth"]["frac_recovered_interval"]  # a bootstrap over the true features
    src = json.loads((workdir / "metrics/source.json").read_text())
    assert (
        iv["mean"] == pytest.approx(m["ground_truth"]["frac_recovered"])
        and iv["n_rows"] == src["n_true_features"]
    )
    assert iv["ci_low"] <= iv["mean"] <= iv["ci_high"] and iv["ci_low"] >= 0.7
    cos = m["ground_truth"]["mean_best_cosine_interval"]
    assert cos["ci_low"] <= m["ground_truth"]["mean_best_cosine"] <= cos["ci_high"]
    assert m["explained_variance"] > 0.8
    assert m["l0"] == pytest.approx(3, abs=0.01)
    from neural_codec.sae import load_sae

    sae = load_sae(workdir / "data/sae")  # SAELens's own loader reads it
    assert sae.cfg.d_sae == 128


def test_families_map_to_distinct_well_matched_latents(workdir):
    fams = json.loads((workdir / "data/labels/families.json").read_text())
    cyc = [f for f in fams if f["kind"] == "cyclic"][0]
    assert len(cyc["members"]) == 7 and cyc["labels"][0] == "Monday"
    assert len(set(cyc["members"])) == 7
    assert min(cyc["cosines"]) > 0.8


def test_features_are_top_k_of_the_sae_and_aligned(workdir):
    import torch

    from neural_codec.sae import load_sae

    sae = load_sae(workdir / "data/sae")
    feats = storage.load_sparse(workdir / "data/features/heldout")
    assert len(feats) == 4000 and feats.k == FEATURES["top_k"] and feats.n_features == 128
    x = storage.load_array(workdir / "data/activations/heldout", "resid")[:200]
    dense = sae.encode(torch.from_numpy(x)).detach().numpy()
    dense[dense <= FEATURES["min_value"]] = 0
    expected = storage.SparseFeatures.from_dense(dense, FEATURES["top_k"]).to_dense()
    np.testing.assert_allclose(feats[:200].to_dense(), expected, atol=1e-5)
    freq = np.load(workdir / "data/features/firing_freq.npy")
    train = storage.load_sparse(workdir / "data/features/train")
    np.testing.assert_allclose(freq, train.firing_frequency())


def test_bad_params_fail_before_work_and_leave_outputs(workdir, tmp_path):
    before = (workdir / "data/features/train/meta.json").read_text()
    write_params(workdir, params(features={**FEATURES, "top_k": 500}))
    with pytest.raises(SystemExit) as exc:
        run_stage(workdir, "features")
    assert exc.value.code == 2
    assert (workdir / "data/features/train/meta.json").read_text() == before
    write_params(workdir, params())


def test_missing_upstream_is_named(tmp_path, capsys):
    write_params(tmp_path, tiny_params())
    with pytest.raises(SystemExit):
        run_stage(tmp_path, "activations")
    err = capsys.readouterr().err
    assert "missing upstream output data/source/model.pt" in err
    assert not (tmp_path / "data/activations").exists()


def test_a_nan_from_the_sae_is_an_error_not_padding(workdir, tmp_path):
    """NaN > min_value is False: thresholding first would store a NaN latent as padding."""
    import torch

    from neural_codec.config import FeaturesConfig
    from neural_codec.features import encode_split
    from neural_codec.sae import load_sae

    sae = load_sae(workdir / "data/sae")
    with torch.no_grad():
        sae.W_enc[:, 7] = float("nan")
    with pytest.raises(ValueError, match="non-finite feature activations"):
        encode_split(sae, FeaturesConfig(), workdir / "data/activations/heldout", tmp_path / "out")


def test_saelens_synthetic_metrics_are_reported(workdir):
    """metrics/sae.json carries SAELens' synthetic metrics (F1 over all latents, uniqueness,
    shrinkage): a TopK SAE with k = 3 on a true L0 ~1.2 fires filler latents, so its F1 over all
    latents sits below the F1 of the latents matched to true features."""
    s = json.loads((workdir / "metrics/sae.json").read_text())["synthetic"]
    for key in ("f1", "precision", "recall", "f1_matched", "uniqueness", "mcc", "shrinkage"):
        assert 0.0 <= s[key] <= 1.5, key
    assert s["f1"] < s["f1_matched"]
    assert s["mcc"] > 0.8 and s["uniqueness"] < 1.0


def test_synthetic_sae_metrics_hand_sae(tmp_path):
    """A perfect SAE (decoder = true directions, exact codes) scores F1 = uniqueness = 1; a copy
    of every latent (duplicates fire on the same rows) halves uniqueness."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    from neural_codec.sae import synthetic_sae_metrics

    n, d = 8, 8
    E = np.eye(n, d, dtype=np.float32)
    rng = np.random.default_rng(0)
    f = ((rng.random((2000, n)) < 0.2) * rng.uniform(0.5, 1.5, (2000, n))).astype(np.float32)
    true = storage.SparseFeatures.from_dense(f, n)
    wr = storage.ShardWriter(tmp_path / "heldout", rows_per_shard=1000, d_model=d, n_neurons=1)
    wr.append(resid=f @ E, true_idx=true.idx, true_val=true.val)
    wr.close()
    for copies, want_u in ((1, 1.0), (2, 0.5)):
        sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=n * copies))
        with torch.no_grad():
            sae.W_dec.copy_(torch.from_numpy(np.tile(E, (copies, 1)) / copies))
            sae.W_enc.copy_(torch.from_numpy(np.tile(E, (copies, 1)).T))
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        m = synthetic_sae_metrics(sae, tmp_path / "heldout", E)
        assert m["f1"] == pytest.approx(1.0) and m["uniqueness"] == pytest.approx(want_u)
        assert m["shrinkage"] == pytest.approx(1.0, abs=1e-4)


def test_features_carry_the_true_features_not_filler(workdir):
    """At the features defaults, F (what the Squeezer and every co-occurrence read) is the true
    features: few of its nonzeros are filler (a TopK SAE's extra latents on quiet rows; 42% at
    the old min_value = 0.05 on this source) and most true events are carried. The measurement
    itself sees filler: one planted noise latent per row pushes the share far over the bound."""
    import torch

    from neural_codec.features import filler_counts, latent_truth, purity, sparsify
    from neural_codec.sae import load_sae

    m = json.loads((workdir / "metrics/features.json").read_text())
    for split in ("train", "heldout", "cooc"):
        assert m[split]["filler_share"] < 0.1, split
        assert m[split]["true_coverage"] > 0.75 and m[split]["f1"] > 0.85, split
    sae = load_sae(workdir / "data/sae")
    lt = latent_truth(sae, workdir / "data/source")
    b = storage.load_shard(next(iter(storage.shard_paths(workdir / "data/activations/heldout"))))
    idx, val = sparsify(
        sae.encode(torch.from_numpy(b["resid"])).detach(), FEATURES["top_k"], FEATURES["min_value"]
    )
    c = filler_counts(idx.numpy(), val.numpy(), lt, b["true_idx"], b["true_val"])
    assert purity(c)["filler_share"] == pytest.approx(m["heldout"]["filler_share"], abs=0.03)
    unmatched = np.flatnonzero(lt < 0)
    noise = np.random.default_rng(0).choice(unmatched, len(idx))[:, None]
    planted = filler_counts(np.hstack([idx.numpy(), noise]), np.hstack([val.numpy(), np.full_like(noise, 0.5, dtype=np.float32)]),
                            lt, b["true_idx"], b["true_val"])  # fmt: skip
    assert purity(planted)["filler_share"] > 0.3


def test_filler_counts_by_hand():
    """Latent 0 = true feature 5, latent 1 = true 6, latent 2 = no true feature. Row 0 has true 5
    on: latent 0 is real, latent 1 (feature 6 off) and latent 2 (unmatched) are filler. Row 1 has
    true 6 and 7 on: latent 1 is real and covers 6; 7 has no latent, so it is never covered."""
    from neural_codec.features import filler_counts, purity

    latent_true = np.array([5, 6, -1])
    idx = np.array([[0, 1, 2], [1, 0, 0]])
    val = np.array([[0.9, 0.2, 0.1], [0.8, 0.0, 0.0]], dtype=np.float32)
    true_idx = np.array([[5, 0], [6, 7]])
    true_val = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    c = filler_counts(idx, val, latent_true, true_idx, true_val)
    assert c == {"nonzeros": 4, "filler": 2, "true_events": 3, "true_events_with_latent": 2, "covered": 2}
    assert purity(c) == {
        "filler_share": 0.5,
        "true_coverage": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7),
    }


def test_sae_stage_writes_the_saelens_training_curves(workdir):
    """SAETrainer's per-step loss, MSE and L0 (curves.CurveLoggers), ~50 points, ending on the
    last step SAELens runs (it trains until training_samples are seen: ceil(400,000 / 512))."""
    from neural_codec.curves import read_curve

    k = TINY["sae"]["k"]
    c = {n: read_curve(workdir / f"plots/sae/curves/plots/metrics/{n}.tsv") for n in ("loss", "mse", "l0")}
    steps = c["loss"][0]
    assert steps == c["mse"][0] == c["l0"][0] and steps[-1] == 782 and 45 <= len(steps) <= 55
    assert c["mse"][1][-1] < 0.5 * c["mse"][1][0] and all(0 < v <= k for v in c["l0"][1])
