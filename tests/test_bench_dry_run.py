"""The speed benchmark's convergence case (FVU against wall-clock) and the full-width dry run's
pieces: its named configuration passes the params check, and `random:gpt2` builds a GPT-2-shaped
model offline. Sizes are tiny; nothing here is timed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from benchmarks.cases.convergence import planted_features, time_to_target
from benchmarks.dry_run import CONFIG, apply_config
from benchmarks.harness import QUICK, ROOT
from benchmarks.run import main as run_benchmarks
from neural_codec import storage
from neural_codec.config import LMSourceConfig
from neural_codec.errors import LMUnavailable
from neural_codec.params import check_params


def test_planted_features_are_k_distinct_positive_features_per_row():
    f = planted_features(500, 1024, 16, hidden=32, hidden_k=4, rows_seed=3, chunk=128)
    assert f.idx.shape == (500, 16) and (f.val > 0).all()
    assert all(len(set(r)) == 16 for r in f.idx.tolist())
    again = planted_features(500, 1024, 16, hidden=32, hidden_k=4, rows_seed=3, chunk=128)
    np.testing.assert_array_equal(f.val, again.val)  # seeded
    other = planted_features(500, 1024, 16, hidden=32, hidden_k=4, rows_seed=4)
    assert not np.array_equal(f.idx, other.idx)


def test_time_to_target_interpolates_the_crossing():
    curve = [[0, 0.0, 1.0], [10, 2.0, 0.6], [20, 4.0, 0.2]]
    assert time_to_target(curve, 0.4) == pytest.approx(3.0)
    assert time_to_target(curve, 1.0) == 0.0
    assert time_to_target(curve, 0.1) is None


def test_convergence_quick_run(tmp_path):
    assert run_benchmarks(["--quick", "--only", "convergence", "--out", str(tmp_path)]) == 0
    cv = storage.read_json(tmp_path / "latest_quick.json")["convergence"]
    ex, nv = cv["ours_exact"], cv["naive_dense"]
    # the naive model is the same function from the same init on the same batches: same FVU curve
    np.testing.assert_allclose(
        [c[2] for c in ex["curve"]], [c[2] for c in nv["curve"]][: len(ex["curve"])], rtol=1e-3
    )
    assert ex["final_fvu"] < 0.9 * ex["curve"][0][2]  # it learns the planted code
    chk = cv["fvu_check_vs_evaluate_codec"]
    assert chk["fast"] == pytest.approx(chk["evaluate_codec"], rel=1e-6)
    assert cv["target_fvu"] == pytest.approx(ex["final_fvu"] * 1.05)
    assert ex["time_to_target_s"] is not None and ex["steps"] == QUICK.conv_steps
    assert (tmp_path / "convergence_quick.png").exists() and (tmp_path / "convergence_quick.csv").exists()


def test_dry_run_config_passes_the_params_check(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    flat = yaml.safe_load(CONFIG.read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(apply_config(params, flat)))
    out = check_params(tmp_path / "params.yaml")
    assert out["sae"].d_sae == 24_576 and out["squeezer"].M == 3072
    with pytest.raises(KeyError, match="squeezer.no_such_key"):
        apply_config(params, {"squeezer.no_such_key": 1})


def test_random_model_unknown_shape_is_one_line():
    from neural_codec.source.lm.load import load_model

    with pytest.raises(LMUnavailable, match="random:<shape>") as err:
        load_model(LMSourceConfig(model_name="random:gpt9", device="cpu"))
    assert "\n" not in str(err.value) and "gpt2" in str(err.value)


def test_random_gpt2_has_gpt2_widths_offline_and_leaves_the_global_rng():
    pytest.importorskip("glassllm")
    from neural_codec.source.lm.load import load_model

    state = torch.random.get_rng_state()
    model = load_model(LMSourceConfig(model_name="random:gpt2", device="cpu"))
    assert torch.equal(torch.random.get_rng_state(), state)
    c = model.cfg
    assert (c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.d_vocab) == (12, 768, 3072, 12, 50257)
    toks = model.to_tokens("On Monday we went to the market.")
    _, cache = model.run_with_cache(
        toks, names_filter=["blocks.8.ln2.hook_normalized", "blocks.8.mlp.hook_post"], stop_at_layer=9
    )
    assert cache["blocks.8.mlp.hook_post"].shape[-1] == 3072
    assert cache["blocks.8.ln2.hook_normalized"].shape[-1] == 768
    w = model.blocks[8].mlp.W_in.detach().clone()
    again = load_model(LMSourceConfig(model_name="random:gpt2", device="cpu"))
    assert torch.equal(again.blocks[8].mlp.W_in, w)  # seeded
