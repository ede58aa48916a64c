"""The source model: a local model folder, the packaged `glassllm`, or TransformerLens by name.

Loading is always the libraries' own code (`HookedTransformer.from_pretrained_no_processing` with
the SAE's `model_from_pretrained_kwargs`, as SAELens does). Where the hub cannot be reached the
error says so in one line and names the offline alternatives.

Local model folder (`model_name: local:<dir>` or a path to the folder), see `save_local_model`:
    <dir>/hooked_transformer_config.json   HookedTransformerConfig keyword arguments
    <dir>/model.safetensors                the HookedTransformer state_dict
    <dir>/tokenizer/                       a Hugging Face tokenizer folder (save_pretrained)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from neural_codec import storage
from neural_codec.config import LMSourceConfig
from neural_codec.errors import OFFLINE_MODELS, LMUnavailable, first_line
from neural_codec.source.lm.offline import glassllm_model

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
