"""sae.kind = transcoder: a SAELens Transcoder from resid to the toy model's MLP output, trained on
the tiny synthetic source, and the features stage encoding with it (lm: tests/source/test_lm_transcoder.py)."""

import json

import numpy as np
import pytest
import torch
from pipeline_helpers import run_stage, tiny_params, write_params

from neural_codec import storage
from neural_codec.config import SAEConfig
from neural_codec.errors import ParamError

SAE = {"kind": "transcoder", "l1_coefficient": 0.03}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("transcoder")
    write_params(wd, tiny_params(sae=SAE, squeezer={"M": 16, "steps": 200, "batch_size": 512}))
    for stage in ("source", "activations", "sae", "labels", "features", "squeeze"):
        run_stage(wd, stage)
    return wd


def test_transcoder_explains_the_mlp_output(workdir):
    from sae_lens import Transcoder

    from neural_codec.sae import load_sae
    from neural_codec.sae_build import synthetic_mlp_out

    m = json.loads((workdir / "metrics/sae.json").read_text())
    assert m["architecture"] == "transcoder"
    # the mean predictor explains 0, the zero predictor less; a working transcoder far more
    assert m["explained_variance"] > 0.5 > m["zero_predictor_explained_variance"]
    assert m["fvu"] == pytest.approx(1 - m["explained_variance"])
    tc = load_sae(workdir / "data/sae")
    assert isinstance(tc, Transcoder)
    # by hand on held-out rows: the decoded latents match h W_out + b_out better than its mean
    x = storage.load_array(workdir / "data/activations/heldout", "resid")[:1000]
    h = storage.load_array(workdir / "data/activations/heldout", "neurons")[:1000]
    y = synthetic_mlp_out(workdir / "data/source")(torch.from_numpy(h)).numpy()
    with torch.no_grad():
        y_hat = tc.decode(tc.encode(torch.from_numpy(x))).numpy()
    assert ((y - y_hat) ** 2).sum() < 0.5 * ((y - y.mean(0)) ** 2).sum()


def test_features_are_the_transcoder_latents(workdir):
    from neural_codec.sae import load_sae

    tc = load_sae(workdir / "data/sae")
    feats = storage.load_sparse(workdir / "data/features/heldout")
    x = storage.load_array(workdir / "data/activations/heldout", "resid")[:200]
    with torch.no_grad():
        dense = tc.encode(torch.from_numpy(x)).numpy()
    top = np.sort(dense, 1)[:, ::-1][:, : feats.k]
    got = np.sort(feats[:200].to_dense(), 1)[:, ::-1][:, : feats.k]
    kept = got > 0
    np.testing.assert_allclose(got[kept], top[kept], atol=1e-5)
    assert kept.any()


def test_bad_kind_is_refused():
    with pytest.raises(ParamError, match="sae.kind"):
        SAEConfig(kind="crosscoder")
    with pytest.raises(ParamError, match="sae.kind"):
        SAEConfig(kind="transcoder", path="some/sae")


def test_squeezer_runs_on_transcoder_features_without_a_resid_score(workdir):
    m = json.loads((workdir / "metrics/squeeze.json").read_text())["squeezer"]
    assert m["n_features"] == 128 and 0 <= m["fvu"] < 1
    # its decoder writes the MLP output: no activation-space (resid) score is claimed
    assert m.get("sae_explained_variance") is None


def test_sae_stage_writes_the_transcoder_loop_curves(workdir):
    """The transcoder's Adam loop gives the sae stage's curves: loss = MSE + the L1 term, ~50
    points ending on its last step (400,000 // 512)."""
    from neural_codec.curves import read_curve

    c = {n: read_curve(workdir / f"plots/sae/curves/plots/metrics/{n}.tsv") for n in ("loss", "mse", "l0")}
    steps = c["loss"][0]
    assert steps == c["mse"][0] == c["l0"][0] and steps[-1] == 781 and 45 <= len(steps) <= 55
    assert all(t > m for m, t in zip(c["mse"][1], c["loss"][1], strict=True))
    assert c["mse"][1][-1] < c["mse"][1][0]
