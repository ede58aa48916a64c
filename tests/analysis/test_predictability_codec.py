"""Neuron predictability on a tiny planted codec (`source.synthetic.model: codec`), end to end
through source -> activations -> sae -> features -> squeeze -> compare.

The codec's neurons are a sparse ReLU codec of the true features, read from `resid` exactly, so
the dense ceiling is ~1, the SAE's features F predict them far above both floors (the shuffled
rows score ~0, a random top-k code of equal L0 much less), and the fitted readout recovers the
model's own loadings of the SAE directions (its co-loading geometry).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from pipeline_helpers import run_stage, tiny_params, write_params  # noqa: E402

TINY_CODEC = {"model": "codec", "d_model": 64, "n_neurons": 32, "codec_l1": 0.05, "train_steps": 1500,
              "lr": 0.003, "train_pool": 20000}  # fmt: skip
COMPARE = {"retrain_steps": 300, "n_mantel_permutations": 49, "predict_epochs": 4, "predict_batch_size": 256,
           "n_bootstrap": 200}  # fmt: skip


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    wd = tmp_path_factory.mktemp("predict_codec")
    p = tiny_params(squeezer={"M": 32, "steps": 1500}, compare=COMPARE)
    p["source"]["synthetic"].update(TINY_CODEC)
    write_params(wd, p)
    for stage in ("source", "activations", "sae", "features", "squeeze", "compare"):
        run_stage(wd, stage)
    return json.loads((wd / "metrics/compare.json").read_text())


def test_planted_codec_neurons_are_predictable_from_f_above_both_floors(codec):
    p = codec["neuron_predictability"]
    print({k: (round(v["mean_r2"], 3), round(v["ci_low"], 3), round(v["ci_high"], 3))
           for k, v in p.items() if isinstance(v, dict) and "mean_r2" in v})  # fmt: skip
    f, shuf, rand, dense = (
        p[k] for k in ("features", "floor_shuffled", "floor_random_code", "ceiling_dense")
    )
    assert dense["mean_r2"] > 0.97  # the neurons read resid exactly: the readout form is right
    assert f["mean_r2"] > 0.8
    assert abs(shuf["mean_r2"]) < 0.05 and shuf["ci_high"] < 0.05
    assert f["ci_low"] > rand["ci_high"] + 0.1 and f["ci_low"] > shuf["ci_high"] + 0.5
    assert f["n_rows"] == 4000 and f["n_neurons"] == 32


def test_fitted_readout_recovers_the_models_own_feature_loadings(codec):
    sh = codec["neuron_predictability"]["sharing"]
    assert sh["model_loadings"]["mantel_r"] > 0.8 and sh["model_loadings"]["mantel_p"] <= 0.05


def test_predictivity_and_soft_matching_beside_their_floors(codec):
    main, floor = codec["squeezer_vs_model"], codec["floor_untrained"]
    assert main["predictivity_r2"] > floor["predictivity_r2"]
    # M = the model's width, so every model neuron is Hungarian-matched and its best |r| is at
    # least its matched pair's: soft matching >= Hungarian
    assert main["n_neurons_a"] == main["n_neurons_b"]
    assert main["mean_best_abs_r_b"] >= main["hungarian_mean_r"] - 1e-9
