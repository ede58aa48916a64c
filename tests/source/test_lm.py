"""The `lm` source end to end on a tiny offline HookedTransformer, text and SAEs the tests make."""

from __future__ import annotations

import dataclasses

import lm_fixtures as fx
import numpy as np
import pytest
import torch

from neural_codec import storage
from neural_codec.analysis.predictability import ACTIVATIONS
from neural_codec.config import ActivationsConfig, LMSourceConfig
from neural_codec.errors import LMUnavailable, ParamError
from neural_codec.params import from_dict
from neural_codec.sae import load_sae, sae_quality
from neural_codec.source.lm.ce import ce_scores, sae_faithfulness, squeezer_reconstruct_fn
from neural_codec.source.lm.extract import (
    check_hooks,
    extract_activations,
    mlp_input_hooks,
    neuron_form,
    neuron_readin,
    prepare_source,
)
from neural_codec.source.lm.labels import (
    _matches,
    feature_labels,
    find_cyclic_families,
    write_labels_and_families,
)
from neural_codec.source.lm.load import load_model
from neural_codec.source.lm.offline import GLASSLLM_SOURCE
from neural_codec.source.lm.settings import config_for_sae, honour_sae_settings, sae_settings
from neural_codec.source.lm.text import special_token_ids, token_batches

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("lm")
    fx.make_model(root)
    cfg = LMSourceConfig(
        model_name=f"local:{root / 'model'}",
        dataset=str(root / "text"),
        sae_hook="blocks.1.hook_resid_pre",
        neuron_hook="blocks.1.mlp.hook_post",
        context_size=32,
        n_tokens_train=3000,
        n_tokens_heldout=480,
        batch_size=8,
    )
    model = load_model(cfg)
    figures = extract_activations(cfg, root / "acts", ActivationsConfig(rows_per_shard=500), model=model)
    return root, cfg, model, figures


def test_config_validation_names_key_value_and_allowed():
    with pytest.raises(
        ParamError, match=r"source\.lm\.neuron_hook = 'blocks\.8\.hook_mlp_out'.*blocks\.L\.mlp\.hook_post"
    ):
        from_dict(LMSourceConfig, {"neuron_hook": "blocks.8.hook_mlp_out"}, "source.lm")
    with pytest.raises(ParamError, match=r"source\.lm\.sae_hook = 'resid8'"):
        from_dict(LMSourceConfig, {"sae_hook": "resid8"}, "source.lm")
    with pytest.raises(ParamError, match=r"activations\.dtype = 'bfloat16'"):
        from_dict(ActivationsConfig, {"dtype": "bfloat16"}, "activations")
    with pytest.raises(ParamError, match=r"source\.lm\.dtype = 'float16'.*one of the keys"):
        from_dict(LMSourceConfig, {"dtype": "float16"}, "source.lm")  # storage is activations.dtype
    with pytest.raises(ParamError, match=r"source\.lm\.context_size = 1\b"):
        from_dict(LMSourceConfig, {"context_size": 1}, "source.lm")
    cfg = from_dict(
        LMSourceConfig,
        {"sae_hook": "blocks.3.hook_resid_post", "neuron_hook": "blocks.5.mlp.hook_post"},
        "source.lm",
    )
    assert cfg.stop_at_layer == 6 and cfg.neuron_layer == 5


def test_sae_settings_are_honoured():
    cfg = LMSourceConfig(
        sae_hook=None, context_size=None, prepend_bos=None, model_from_pretrained_kwargs={"dtype": "float32"}
    )
    s = {
        "hook_name": "blocks.8.hook_resid_pre",
        "context_size": 128,
        "prepend_bos": True,
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    out = honour_sae_settings(cfg, s)
    assert (out.sae_hook, out.context_size, out.prepend_bos) == ("blocks.8.hook_resid_pre", 128, True)
    assert out.model_from_pretrained_kwargs == {"center_writing_weights": True, "dtype": "float32"}
    with pytest.warns(UserWarning, match="context"):
        assert honour_sae_settings(dataclasses.replace(cfg, context_size=1024), s).context_size == 128
    with pytest.raises(ParamError, match="sae_hook = 'blocks.6.hook_resid_pre'"):
        honour_sae_settings(dataclasses.replace(cfg, sae_hook="blocks.6.hook_resid_pre"), s)


def test_extraction_shapes_special_tokens_and_split(world):
    root, cfg, model, figures = world
    for split in ("train", "heldout"):
        meta = storage.read_meta(root / "acts" / split)
        assert (meta["d_model"], meta["n_neurons"]) == (32, 64)
        assert meta["n_rows"] == figures[split]["rows"] > 0
        resid = storage.load_array(root / "acts" / split, "resid")
        neurons = storage.load_array(root / "acts" / split, "neurons")
        tok = storage.load_array(root / "acts" / split, "token")
        pos = storage.load_array(root / "acts" / split, "position")
        assert resid.shape == (meta["n_rows"], 32) and neurons.shape == (meta["n_rows"], 64)
        assert not np.isin(tok, special_token_ids(model)).any()  # BOS / separators excluded
        assert pos.min() == 1  # position 0 is always BOS
        # fewer rows than tokens: exactly the special tokens (one BOS per window + EOS separators)
        assert meta["n_rows"] < figures[split]["tokens"]
        # the neurons' own form, for compare's readout (the fixture is a GELU MLP)
        assert (meta["neuron_act_fn"], meta["neuron_gated"]) == ("gelu", False)
    tr = set(storage.load_array(root / "acts/train", "context_id").tolist())
    ho = set(storage.load_array(root / "acts/heldout", "context_id").tolist())
    assert not tr & ho and all(w % cfg.heldout_every == 0 for w in ho)
    assert figures["train"]["tokens"] >= cfg.n_tokens_train
    readin = np.load(root / "acts" / "neuron_readin.npy")
    np.testing.assert_array_equal(readin, model.blocks[1].mlp.W_in.detach().numpy())


def test_default_hook_is_the_mlp_input_and_others_warn_in_one_line(world, tmp_path):
    import warnings

    root, cfg, model, _ = world
    default = LMSourceConfig(sae_hook=None, neuron_hook="blocks.1.mlp.hook_post").resolved().sae_hook
    assert LMSourceConfig().sae_hook == "blocks.8.ln2.hook_normalized"  # gpt2: layer 8's MLP input
    assert default == "blocks.1.ln2.hook_normalized" == mlp_input_hooks(model, 1)[0]
    for hook in (default, "blocks.1.hook_resid_mid"):  # the MLP's input: silent
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_hooks(model, dataclasses.replace(cfg, sae_hook=hook))
    for hook in ("blocks.1.hook_resid_pre", "blocks.0.ln2.hook_normalized"):  # not what layer 1's MLP reads
        with pytest.warns(UserWarning, match=f"sae_hook {hook} is not the input of the neurons") as rec:
            assert not check_hooks(model, dataclasses.replace(cfg, sae_hook=hook))
        assert len(rec) == 1 and "\n" not in str(rec[0].message)
    # extraction at the default hook: the neurons' pre-activations are an exact affine map of it
    cfg2 = dataclasses.replace(cfg, sae_hook=default, n_tokens_train=320, n_tokens_heldout=64)
    assert extract_activations(cfg2, tmp_path / "acts", model=model)["sae_reads_neuron_input"] is True
    x = storage.load_array(tmp_path / "acts/train", "resid")
    readin = np.load(tmp_path / "acts/neuron_readin.npy")
    blk = model.blocks[1]
    np.testing.assert_allclose(readin, (blk.ln2.w[:, None] * blk.mlp.W_in).detach().numpy(), rtol=1e-6)
    _, tokens = next(token_batches(model, cfg2, "train"))
    _, cache = model.run_with_cache(tokens)
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model)))
    bias = (blk.ln2.b @ blk.mlp.W_in + blk.mlp.b_in).detach().numpy()
    pre = cache["blocks.1.mlp.hook_pre"][keep].numpy()
    np.testing.assert_allclose(x[: len(pre)] @ readin + bias, pre, atol=1e-4, rtol=1e-4)


def test_rows_equal_a_direct_full_forward(world):
    """Rows match run_with_cache on the same windows without names_filter or stop_at_layer."""
    root, cfg, model, _ = world
    windows, tokens = next(token_batches(model, cfg, "train"))
    _, cache = model.run_with_cache(tokens)
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model)))
    n = int(keep.sum())
    got = next(storage.iter_batches(root / "acts/train", n, ["resid", "neurons", "token", "context_id"]))
    np.testing.assert_allclose(got["resid"], cache[cfg.sae_hook][keep].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["neurons"], cache[cfg.neuron_hook][keep].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["token"], tokens[keep].numpy())
    assert set(got["context_id"].tolist()) == set(windows.tolist())


def test_float16_storage_and_hf_dataset_folder(world, tmp_path):
    import datasets

    root, cfg, model, _ = world
    docs = [d for d in (root / "text" / "part0.txt").read_text().split("\n\n") if d.strip()]
    docs += [d for d in (root / "text" / "part1.txt").read_text().split("\n\n") if d.strip()]
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "ds"))
    cfg16 = dataclasses.replace(
        cfg, dataset=str(tmp_path / "ds"), text_column="body", n_tokens_train=640, n_tokens_heldout=64
    )
    extract_activations(cfg16, tmp_path / "acts", ActivationsConfig(dtype="float16"), model=model)
    r16 = storage.load_array(tmp_path / "acts/train", "resid")
    assert r16.dtype == np.float16
    r32 = storage.load_array(root / "acts/train", "resid")[: len(r16)]
    np.testing.assert_allclose(r16.astype(np.float32), r32, rtol=2e-3, atol=2e-3)


def test_load_sae_from_disk_and_errors(world, tmp_path, monkeypatch):
    root, cfg, _, _ = world
    sae = fx.random_sae(tmp_path / "sae", 32, 64, cfg.sae_hook)
    back = load_sae(tmp_path / "sae")
    torch.testing.assert_close(back.W_enc, sae.W_enc)
    assert sae_settings(back)["hook_name"] == cfg.sae_hook
    with pytest.raises(LMUnavailable, match="not a SAELens SAE folder"):
        load_sae(tmp_path)
    with pytest.raises(
        ParamError, match="pretrained_sae_id = 'blocks.99.hook_resid_pre'.*blocks.0.hook_resid_pre"
    ):
        load_sae(release="gpt2-small-res-jb", sae_id="blocks.99.hook_resid_pre")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LMUnavailable) as err:
        load_sae(release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre")
    msg = str(err.value)
    assert "\n" not in msg and "Hugging Face hub" in msg and "sae.path" in msg


def test_model_offline_error_is_one_line_with_alternatives(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LMUnavailable) as err:
        load_model(LMSourceConfig(model_name="gpt2"))
    msg = str(err.value)
    assert "\n" not in msg and "'gpt2'" in msg and "local:<dir>" in msg and "glassllm" in msg
    with pytest.raises(LMUnavailable, match="no hooked_transformer_config.json"):
        load_model(LMSourceConfig(model_name="local:/nonexistent"))


def test_ce_scores(world, tmp_path):
    root, cfg, model, _ = world

    class Identity:  # a perfect "SAE": encode and decode are the identity
        def encode(self, x):
            return x

        def decode(self, f):
            return f

    perfect = ce_scores(model, Identity(), cfg, n_batches=2)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-5)
    assert perfect["ce_zero_ablation"] > perfect["ce_clean"] + 0.5  # the trained model needs its residual
    assert perfect["ce_loss_score_sae"] == pytest.approx(1.0, abs=1e-4)

    sae = fx.random_sae(tmp_path / "sae", 32, 64, cfg.sae_hook)
    with torch.no_grad():
        sae.b_dec.zero_()
    s = ce_scores(model, sae, cfg, n_batches=2, reconstruct_fn=torch.zeros_like)
    assert s["ce_clean"] == pytest.approx(perfect["ce_clean"]) and s["ce_zero_ablation"] == pytest.approx(
        perfect["ce_zero_ablation"]
    )
    # decoding all-zero features with b_dec = 0 is exactly zero ablation
    assert s["ce_reconstruct"] == pytest.approx(s["ce_zero_ablation"], abs=1e-5)
    assert s["ce_loss_score_reconstruct"] == pytest.approx(0.0, abs=1e-5)
    same = ce_scores(model, sae, cfg, n_batches=2, reconstruct_fn=lambda f: f)
    assert same["ce_reconstruct"] == pytest.approx(same["ce_sae"], abs=1e-6)
    assert s["ce_sae"] != pytest.approx(s["ce_clean"], abs=1e-3)


def test_sae_quality(world, tmp_path):
    root, cfg, _, _ = world

    class Identity:
        cfg = type("C", (), {"d_sae": 32})
        device = torch.device("cpu")

        def encode(self, x):
            return x

        def decode(self, f):
            return f

    q = sae_quality(Identity(), root / "acts/heldout")
    assert q["explained_variance"] == pytest.approx(1.0) and q["d_sae"] == 32
    assert "dead_fraction" not in q and 0 <= q["dead_latent_fraction"] <= 1
    sae = fx.random_sae(tmp_path / "sae", 32, 64, cfg.sae_hook)
    r = sae_quality(sae, root / "acts/heldout")
    assert 0 < r["l0"] <= 64 and r["explained_variance"] < 0.99


def test_labels_and_cyclic_family_on_planted_sae(world, tmp_path):
    root, cfg, model, _ = world
    # plant on the token embedding stream (blocks.0.hook_resid_pre), where words are linearly
    # separable; deeper residuals of this tiny model mix in what it predicts next
    cfg0 = dataclasses.replace(cfg, sae_hook="blocks.0.hook_resid_pre")
    extract_activations(cfg0, tmp_path / "acts", model=model)
    acts = tmp_path / "acts/train"
    x, tok = storage.load_array(acts, "resid"), storage.load_array(acts, "token")
    _, planted = fx.planted_weekday_sae(tmp_path / "planted", x, tok, model.tokenizer, cfg0.sae_hook)
    sae = load_sae(tmp_path / "planted")  # through SAELens's own disk loader
    labels = feature_labels(sae, acts, model.tokenizer, top_n=5)
    assert len(labels) == sae.cfg.d_sae
    for word, j in planted.items():
        assert labels[j]["top_tokens"][0][0] == word
        assert "[[" + word + "]]" in labels[j]["examples"][0]["context"]
    fams = find_cyclic_families(labels)
    assert [f["name"] for f in fams] == ["weekdays"]  # no month latents planted
    assert fams[0]["kind"] == "cyclic"
    assert fams[0]["members"] == [planted[d] for d in fx.WEEKDAYS]  # cyclic order, one per day
    assert fams[0]["labels"] == [d.lower() for d in fx.WEEKDAYS]

    # controls: a random SAE, and the planted labels with their tokens shuffled across latents
    rand = fx.random_sae(tmp_path / "rand", 32, 64, cfg0.sae_hook, seed=1)
    assert find_cyclic_families(feature_labels(rand, acts, model.tokenizer)) == []
    rng = np.random.default_rng(0)
    all_tokens = [t for lab in labels for t in lab["top_tokens"]]
    shuffled = [
        dict(lab, top_tokens=[all_tokens[i] for i in rng.choice(len(all_tokens), 5)]) for lab in labels
    ]
    fam = find_cyclic_families(shuffled)
    assert not fam or fam[0]["members"] != fams[0]["members"]


def test_throughput_reported(world):
    _, _, _, figures = world
    assert figures["timings"]["train"]["tokens_per_s"] > 0 and figures["stop_at_layer"] == 2


def test_stage_entry_points(world, tmp_path):
    root, cfg, model, _ = world
    res = prepare_source(cfg, tmp_path)
    assert res["metrics"]["n_layers"] == 2 and (tmp_path / "model.pt").exists()
    with pytest.raises(ParamError, match=r"source\.lm\.sae_hook = 'blocks\.5\.hook_resid_pre'"):
        prepare_source(dataclasses.replace(cfg, sae_hook="blocks.5.hook_resid_pre"), tmp_path)
    sae = fx.random_sae(tmp_path / "sae", 32, 64, cfg.sae_hook)
    assert (
        config_for_sae(dataclasses.replace(cfg, sae_hook=None), {"path": str(tmp_path / "sae")}).sae_hook
        == cfg.sae_hook
    )
    m = write_labels_and_families(sae, cfg, root / "acts", tmp_path / "out")
    assert 0 < m["labelled_latents"] <= 64 and m["cluster_families"]["weekdays"]["found"] is False
    assert np.isfinite(sae_faithfulness(sae, cfg, root / "acts", ce_batches=1)["ce"]["ce_loss_score_sae"])
    assert len(storage.read_json(tmp_path / "out" / "latent_labels.json")) == 64
    assert storage.read_json(tmp_path / "out" / "families.json") == []
    wrong = fx.random_sae(tmp_path / "sae0", 32, 64, "blocks.0.hook_resid_pre")
    with pytest.raises(ParamError, match="the SAE reads 'blocks.0.hook_resid_pre'"):
        write_labels_and_families(wrong, cfg, root / "acts", tmp_path / "out")
    with pytest.raises(ParamError, match="the SAE reads 'blocks.0.hook_resid_pre'"):
        sae_faithfulness(wrong, cfg, root / "acts")


def test_squeezer_reconstruct_fn_keeps_top_k():
    seen = {}

    def squeezer(idx, val):
        seen["idx"], seen["val"] = idx, val
        return torch.zeros(idx.shape[0], 10).scatter_add_(1, idx, val)

    f = torch.tensor([[0.0, 3.0, 1.0, 0.0, 2.0, 0.5, 0, 0, 0, 0]])
    out = squeezer_reconstruct_fn(squeezer, top_k=2)(f)
    assert sorted(seen["idx"][0].tolist()) == [1, 4]
    torch.testing.assert_close(out, torch.tensor([[0.0, 3.0, 0, 0, 2.0, 0, 0, 0, 0, 0]]))


def test_glassllm_real_weights_match_its_own_forward():
    glassllm = pytest.importorskip("glassllm")

    gm, gtok = glassllm.load_pretrained("en")
    cfg = LMSourceConfig(**{**GLASSLLM_SOURCE, "dataset": "unused"})
    model = load_model(cfg)
    check_hooks(model, cfg)
    text = "Alice was beginning to get very tired of sitting by her sister on the bank, on Monday in May."
    ids = gtok.encode(text)
    assert model.tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    with glassllm.no_grad():
        ref = gm.forward(np.array([ids])).data
    got = model(torch.tensor([ids])).detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert model.cfg.d_mlp == 341 and model.cfg.gated_mlp
    # features at layer 2's MLP input: the linear half of SwiGLU is exactly hook x diag(w) W_in
    assert cfg.sae_hook == "blocks.2.ln2.hook_normalized" == mlp_input_hooks(model, 2)[0]
    _, cache = model.run_with_cache(torch.tensor([ids]))
    np.testing.assert_allclose(
        cache[cfg.sae_hook][0].numpy() @ neuron_readin(model, 2, cfg.sae_hook),
        cache["blocks.2.mlp.hook_pre_linear"][0].numpy(),
        atol=1e-4,
        rtol=1e-4,
    )
    # compare's readout takes the neurons' own form: hook_post = silu(gate) * (linear half)
    form = neuron_form(model)
    assert form == {"neuron_act_fn": "silu", "neuron_gated": True}
    gate, lin = cache["blocks.2.mlp.hook_pre"][0], cache["blocks.2.mlp.hook_pre_linear"][0]
    act = ACTIVATIONS[form["neuron_act_fn"]]
    torch.testing.assert_close(act(gate) * lin, cache["blocks.2.mlp.hook_post"][0], atol=1e-5, rtol=1e-4)


def test_month_and_day_names_must_be_capitalised():
    assert _matches(" May", "may") and _matches("March", "march") and _matches(" Mondays", "monday")
    assert not _matches(" may", "may") and not _matches("march", "march")  # the modal, the verb
    assert _matches(" Sept", "september") and not _matches(" sept", "september")


def test_real_configs_read_the_mlp_input_with_m_the_neurons_compared():
    import yaml
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    configs = fx.REPO / "configs"
    glass = yaml.safe_load((configs / "lm-glassllm.yaml").read_text())
    assert glass["source.lm.sae_hook"] == "blocks.2.ln2.hook_normalized" and glass["squeezer.M"] == 341
    gpt2 = yaml.safe_load((configs / "gpt2-small-res-jb.yaml").read_text())
    assert gpt2["squeezer.M"] == 3072 and gpt2["source.lm.neuron_hook"] == "blocks.8.mlp.hook_post"
    release = get_pretrained_saes_directory()[gpt2["sae.pretrained_release"]]  # the registry file
    assert release.model == "gpt2-small" and gpt2["sae.pretrained_sae_id"] in release.saes_map
    assert gpt2["sae.pretrained_sae_id"] == "blocks.8.hook_resid_mid"  # layer 8's MLP input
