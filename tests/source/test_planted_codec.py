"""The planted-codec synthetic source (`source.synthetic.model: codec`, configs/planted-codec.yaml):
its neurons ARE a sparse ReLU codec of the true features, so the pipeline has a known positive.

On a tiny version: the codec's neurons engage their ReLU (the toy model's are almost all on), and
compare's Squeezer-vs-model Hungarian |r| and CKA are far above the untrained and permuted floors
on the codec, but not on the toy (default) source.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from exp_args import exp_args  # noqa: E402
from pipeline_helpers import run_stage, tiny_params, write_params  # noqa: E402

from neural_codec.config import SourceConfig, SqueezerConfig  # noqa: E402
from neural_codec.errors import ParamError  # noqa: E402
from neural_codec.params import from_dict  # noqa: E402

TINY_CODEC = {"model": "codec", "d_model": 64, "n_neurons": 32, "codec_l1": 0.05, "train_steps": 1500,
              "lr": 0.003, "train_pool": 20000}  # fmt: skip
SQUEEZE = {"M": 32, "steps": 1500}
COMPARE = {"retrain_steps": 1500, "n_mantel_permutations": 49}
FAR_ABOVE = 0.1


def test_named_config_is_valid_and_spells_dvc_args():
    flat = yaml.safe_load((REPO / "configs/planted-codec.yaml").read_text())
    src = {"synthetic": {k.split(".")[-1]: v for k, v in flat.items() if k.startswith("source.synthetic.")}}
    cfg = from_dict(SourceConfig, src, "source")
    assert cfg.synthetic.model == "codec" and cfg.synthetic.n_neurons < cfg.synthetic.n_features
    assert from_dict(SqueezerConfig, {"M": flat["squeezer.M"]}, "squeezer").M == cfg.synthetic.n_neurons
    assert "-S" in exp_args(str(REPO / "configs/planted-codec.yaml"))
    with pytest.raises(ParamError, match="d_model"):
        from_dict(SourceConfig, {"synthetic": {"model": "codec", "d_model": 16, "n_features": 64}}, "source")


def _run(wd: Path, codec: bool) -> dict:
    p = tiny_params(squeezer=SQUEEZE, compare=COMPARE)
    if codec:
        p["source"]["synthetic"].update(TINY_CODEC)
    write_params(wd, p)
    for stage in ("source", "activations", "sae", "features", "squeeze", "compare"):
        run_stage(wd, stage)
    return {s: json.loads((wd / f"metrics/{s}.json").read_text()) for s in ("source", "compare")}


def _margin(c: dict, key: str) -> float:
    return c["squeezer_vs_model"][key] - max(c["floor_untrained"][key], c["floor_permuted"][key])


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("planted_codec"), codec=True)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("toy"), codec=False)


def test_codec_neurons_engage_their_relu(codec_run, toy_run):
    assert codec_run["source"]["toy_model"]["neuron_on_fraction"] < 0.6
    assert toy_run["source"]["toy_model"]["neuron_on_fraction"] > 0.8


def test_squeezer_matches_the_planted_codec_far_above_the_floors(codec_run):
    c = codec_run["compare"]
    print({k: (round(v["hungarian_mean_r"], 3), round(v["cka"], 3)) for k, v in c.items() if "cka" in v})
    assert _margin(c, "hungarian_mean_r") > FAR_ABOVE
    assert _margin(c, "cka") > FAR_ABOVE


def test_toy_source_is_no_positive(toy_run):
    c = toy_run["compare"]
    assert _margin(c, "hungarian_mean_r") < FAR_ABOVE or _margin(c, "cka") < FAR_ABOVE
