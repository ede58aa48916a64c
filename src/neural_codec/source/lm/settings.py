"""What a SAELens SAE says about how it was trained, and an `LMSourceConfig` that honours it.

A pretrained SAE fixes the hook it reads, whether windows start with BOS, the training context
and the model's `from_pretrained` kwargs (SAELens metadata). `config_for_sae` reads those from
the SAE's config alone (before any weights are loaded); `honour_sae_settings` reconciles them
with params.yaml (a contradicting hook is an error, a longer context is capped).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

from neural_codec import storage
from neural_codec.config import LMSourceConfig
from neural_codec.errors import OFFLINE_SAES, LMUnavailable, ParamError, check, first_line


def sae_settings(sae: Any) -> dict[str, Any]:
    """What an SAE says about how it was trained (SAELens metadata): hook, BOS, context, model."""
    md = sae.cfg.metadata
    return {
        "hook_name": md.get("hook_name"),
        "model_name": md.get("model_name"),
        "prepend_bos": md.get("prepend_bos"),
        "context_size": md.get("context_size"),
        "model_from_pretrained_kwargs": dict(md.get("model_from_pretrained_kwargs") or {}),
        "dataset_path": md.get("dataset_path"),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "architecture": sae.cfg.architecture(),
    }


def sae_settings_from_params(sae_params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The SAE's own settings (hook, BOS, context, model kwargs) from its config alone, before any
    weights are loaded: `sae.path`'s cfg.json, or the registry's (release, sae_id) config."""
    p = sae_params or {}
    if p.get("path"):
        d = json.loads((Path(p["path"]) / "cfg.json").read_text())
    elif p.get("pretrained_release") and p.get("pretrained_sae_id"):
        from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

        try:
            d = load_sae_config_from_huggingface(p["pretrained_release"], p["pretrained_sae_id"])
        except Exception as err:
            raise LMUnavailable(
                f"cannot read the config of SAE {p['pretrained_release']}/{p['pretrained_sae_id']} from "
                f"the Hugging Face hub ({first_line(err)}); offline alternatives: {OFFLINE_SAES}"
            ) from err
    else:
        return None
    md = d.get("metadata") or {}
    get = lambda k: md.get(k, d.get(k))  # noqa: E731  (pre-6.0 configs keep them top level)
    return {
        "hook_name": get("hook_name") or d.get("hook_point"),
        "prepend_bos": get("prepend_bos"),
        "context_size": get("context_size"),
        "model_name": get("model_name"),
        "model_from_pretrained_kwargs": dict(get("model_from_pretrained_kwargs") or {}),
        "d_in": d.get("d_in"),
        "d_sae": d.get("d_sae"),
    }


def config_for_sae(cfg: LMSourceConfig, sae_params: dict[str, Any] | None) -> LMSourceConfig:
    """`cfg` with the pretrained/local SAE's own settings honoured (unchanged if the SAE is trained)."""
    settings = sae_settings_from_params(sae_params)
    return cfg.resolved() if settings is None else honour_sae_settings(cfg, settings)


def honour_sae_settings(cfg: LMSourceConfig, settings: dict[str, Any]) -> LMSourceConfig:
    """Use the SAE's own hook, prepend_bos, context size and model kwargs (SAELens metadata).

    An explicit params value that contradicts the SAE's hook is an error (the SAE would read the
    wrong activations); a context size longer than the SAE's training context is capped with a
    warning; null fields are filled from the SAE.
    """
    hook = settings.get("hook_name")
    if hook and cfg.sae_hook and cfg.sae_hook != hook:
        raise ParamError(
            f"params.yaml: source.lm.sae_hook = {cfg.sae_hook!r} is not allowed; the SAE reads "
            f"{hook!r} (set it to that, or null)"
        )
    ctx = cfg.context_size
    sae_ctx = settings.get("context_size")
    if sae_ctx and (ctx is None or ctx > sae_ctx):
        if ctx is not None:
            warnings.warn(
                f"source.lm.context_size {ctx} > the SAE's training context {sae_ctx}; using {sae_ctx}",
                stacklevel=2,
            )
        ctx = int(sae_ctx)
    bos = cfg.prepend_bos
    if settings.get("prepend_bos") is not None:
        if bos is not None and bos != settings["prepend_bos"]:
            warnings.warn(
                f"source.lm.prepend_bos {bos} differs from the SAE's {settings['prepend_bos']}; using the SAE's",
                stacklevel=2,
            )
        bos = bool(settings["prepend_bos"])
    kwargs = {**settings.get("model_from_pretrained_kwargs", {}), **cfg.model_from_pretrained_kwargs}
    return dataclasses.replace(
        cfg,
        sae_hook=hook or cfg.sae_hook,
        context_size=ctx,
        prepend_bos=bos,
        model_from_pretrained_kwargs=kwargs,
    ).resolved()


def config_for_activations(sae: Any, cfg: LMSourceConfig, activations_dir: str | Path) -> LMSourceConfig:
    """`cfg` at the hook the activations were extracted at, honouring the SAE's settings, after
    checking that the SAE reads what was extracted (its d_in against the shards' d_model)."""
    meta = storage.read_meta(Path(activations_dir) / "train")
    settings = sae_settings(sae)
    cfg = honour_sae_settings(dataclasses.replace(cfg, sae_hook=meta["sae_hook"]), settings)
    check(
        settings["d_in"] == meta["d_model"],
        "sae (d_in)",
        settings["d_in"],
        f"the activations' d_model {meta['d_model']} at {meta['sae_hook']}",
    )
    return cfg
