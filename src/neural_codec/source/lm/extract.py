"""Stages `source` and `activations` for the `lm` source: check the model and its hooks, and
stream residual-stream activations at the SAE's hook and one layer's MLP neurons into shards.

Only the two hooks are cached and the forward pass stops after the last needed block, so memory
is bounded by one batch of activations.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.config import ActivationsConfig, LMSourceConfig, hook_layer
from neural_codec.errors import LMUnavailable, check
from neural_codec.runtime import progress
from neural_codec.source.lm.load import is_encoder, load_model
from neural_codec.source.lm.text import iter_text, special_token_ids, token_batches


def mlp_input_hooks(model: Any, layer: int) -> list[str]:
    """The hooks that are the input of layer `layer`'s MLP neurons, the exact one first.

    A pre-norm decoder's MLP reads `ln2(resid_mid)`: `blocks.L.ln2.hook_normalized` is that input
    up to LayerNorm's fixed elementwise affine (folded into `neuron_readin`), so the neurons'
    pre-activations are an exact linear function of it; `hook_resid_mid` / `hook_mlp_in` are the
    same stream before the per-token normalisation. A post-LN encoder (BERT) normalises after
    attention with `ln1`: its MLP reads `blocks.L.ln1.hook_normalized`.
    """
    p = f"blocks.{layer}."
    norm = [p + ("ln1" if is_encoder(model) else "ln2") + ".hook_normalized"]
    raw = [p + "hook_resid_mid"] + ([] if is_encoder(model) else [p + "hook_mlp_in"])
    return [h for h in norm + raw if h in model.hook_dict]


def warn_unless_mlp_input(model: Any, cfg: LMSourceConfig) -> bool:
    """One warning line when `sae_hook` is not the input of the neurons compared (the features
    then never see what the neurons read). True if it is."""
    inputs = mlp_input_hooks(model, cfg.neuron_layer)
    if cfg.sae_hook is None or cfg.sae_hook in inputs:
        return True
    warnings.warn(
        f"source.lm.sae_hook {cfg.sae_hook} is not the input of the neurons {cfg.neuron_hook} "
        f"(that is {inputs[0] if inputs else 'their MLP input'}): the features do not see what they read",
        stacklevel=2,
    )
    return False


def check_hooks(model: Any, cfg: LMSourceConfig) -> bool:
    """Fail by key if a hook does not exist in this model (e.g. blocks.8 of a 4-layer model);
    warn (one line) if the SAE's hook is not the neuron layer's MLP input. True if it is."""
    n_layers = model.cfg.n_layers
    for key, hook in (("sae_hook", cfg.sae_hook), ("neuron_hook", cfg.neuron_hook)):
        if hook is None:  # taken from the SAE later (config_for_sae)
            continue
        layer = hook_layer(hook)
        check(
            hook in model.hook_dict and (layer is None or layer < n_layers),
            f"source.lm.{key}",
            hook,
            f"a hook of {cfg.model_name} ({n_layers} layers), e.g. blocks.{n_layers - 1}.hook_resid_pre",
        )
    check(
        (cfg.context_size or 0) <= model.cfg.n_ctx,
        "source.lm.context_size",
        cfg.context_size,
        f"at most the model's context {model.cfg.n_ctx}",
    )
    return warn_unless_mlp_input(model, cfg)


def prepare_source(cfg: LMSourceConfig, out_dir: str | Path) -> dict[str, Any]:
    """Stage `source` for lm: load the model once (so a bad name or an unreachable hub fails at
    the first stage), check the hooks, and record the config in `out_dir/model.pt`. A null
    sae_hook / context_size / prepend_bos stays null: the activations stage fills them from the SAE."""
    model = load_model(cfg)
    check_hooks(model, cfg)
    next(iter_text(cfg))  # the dataset is reachable and non-empty
    torch.save({"kind": "lm", "config": dataclasses.asdict(cfg)}, Path(out_dir) / "model.pt")
    mc = model.cfg
    return {
        "metrics": {
            "kind": "lm",
            "model_name": cfg.model_name,
            "n_layers": mc.n_layers,
            "d_model": mc.d_model,
            "d_mlp": mc.d_mlp,
            "d_vocab": mc.d_vocab,
            "n_ctx": mc.n_ctx,
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "sae_hook": cfg.sae_hook,
            "neuron_hook": cfg.neuron_hook,
            "context_size": cfg.context_size,
            "prepend_bos": cfg.prepend_bos,
            "special_token_ids": special_token_ids(model),
            **neuron_form(model),
        }
    }


def neuron_form(model: Any) -> dict[str, Any]:
    """The neurons' own nonlinearity (`neuron_act_fn`) and whether the MLP is gated
    (`neuron_gated`: hook_post = act(x W_gate) * (x W_in)), for the compare stage's readout."""
    return {"neuron_act_fn": str(model.cfg.act_fn), "neuron_gated": bool(model.cfg.gated_mlp)}


def neuron_readin(model: Any, layer: int, sae_hook: str | None = None) -> np.ndarray:
    """(d_model, d_mlp) W_in of the neuron layer's MLP (ignoring LayerNorm scale; gate excluded).

    Read at the norm's output before its elementwise weight (`blocks.L.ln2.hook_normalized` of a
    pre-norm decoder, `blocks.L.ln1.hook_normalized` of a post-LN encoder such as BERT):
    `diag(ln.w) W_in`, the exact linear part of the map to the neurons' pre-activations.
    """
    w_in = model.blocks[layer].mlp.W_in.detach().float()
    ln = "ln1" if is_encoder(model) else "ln2"
    norm: Any = getattr(model.blocks[layer], ln, None)
    if sae_hook == f"blocks.{layer}.{ln}.hook_normalized" and hasattr(norm, "w"):
        w_in = norm.w.detach().float()[:, None] * w_in
    return w_in.cpu().numpy()


def neuron_readout(model: Any, layer: int) -> dict[str, np.ndarray]:
    """W_out (d_mlp, d_model) and b_out (d_model,) of the neuron layer's MLP: its output
    (`blocks.L.hook_mlp_out`) is exactly `hook_post @ W_out + b_out`, for a GELU, a gated (SwiGLU)
    and an encoder's (BERT) MLP alike, so a transcoder's target needs no second activation."""
    mlp = model.blocks[layer].mlp
    return {
        "W_out": mlp.W_out.detach().float().cpu().numpy(),
        "b_out": mlp.b_out.detach().float().cpu().numpy(),
    }


def run_hooks(model: Any, tokens: torch.Tensor, cfg: LMSourceConfig) -> Any:
    """The cache of `cfg.hooks` on `tokens` (a decoder stops after the last needed block; an
    encoder has no `stop_at_layer` and skips its unused masked-LM head instead)."""
    if is_encoder(model):
        return model.run_with_cache(tokens, names_filter=cfg.hooks, return_type=None)[1]
    return model.run_with_cache(tokens, names_filter=cfg.hooks, stop_at_layer=cfg.stop_at_layer)[1]


def extract_activations(
    cfg: LMSourceConfig, out_dir: str | Path, act_cfg: Any = None, *, model: Any = None
) -> dict[str, Any]:
    """Stream `resid` (sae_hook) and `neurons` (neuron_hook) of non-special tokens into shards.

    Writes `out_dir/{train,heldout}/shard_*.npz + meta.json`, `out_dir/neuron_readin.npy` and
    `out_dir/neuron_readout.npz` (the neurons' W_out, b_out: the MLP output a transcoder predicts).
    Only the two hooks are cached and the forward pass stops after the last needed block, so
    memory is one batch of activations. `act_cfg` (the `activations` params section) sets the
    storage `dtype` and `rows_per_shard` (as for the synthetic source; None: its defaults);
    token counts come from `source.lm`. Returns the split sizes, and throughput figures under
    "timings" (for `stage.record_timing`, not for metrics).
    """
    cfg = cfg.resolved()
    act_cfg = act_cfg if act_cfg is not None else ActivationsConfig()
    out_dir = Path(out_dir)
    model = model if model is not None else load_model(cfg)
    reads_input = check_hooks(model, cfg)
    special = torch.as_tensor(special_token_ids(model), device=cfg.device)
    store = np.float16 if act_cfg.dtype == "float16" else np.float32
    d_model, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    figures: dict[str, Any] = {
        "model_name": cfg.model_name,
        "sae_hook": cfg.sae_hook,
        "neuron_hook": cfg.neuron_hook,
        "stop_at_layer": cfg.stop_at_layer,
        # the neurons are a function of what the features read (compare_readout_ceiling)
        "sae_reads_neuron_input": reads_input,
    }
    timings: dict[str, Any] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "heldout"):
        writer = storage.ShardWriter(
            out_dir / split,
            act_cfg.rows_per_shard,
            d_model=d_model,
            n_neurons=d_mlp,
            model_name=cfg.model_name,
            sae_hook=cfg.sae_hook,
            neuron_hook=cfg.neuron_hook,
            context_size=cfg.context_size,
            prepend_bos=cfg.prepend_bos,
            dtype=act_cfg.dtype,
            special_token_ids=special.tolist(),
            exclude_special_tokens=cfg.exclude_special_tokens,
            **neuron_form(model),
        )
        n_tok = 0
        t0 = time.perf_counter()
        target = cfg.n_tokens_train if split == "train" else cfg.n_tokens_heldout
        bar = progress(desc=f"extract {split}", total=target, unit="tok", unit_scale=True)  # tokens/s
        for window_ids, tokens in token_batches(model, cfg, split):
            with torch.no_grad():
                cache = run_hooks(model, tokens, cfg)
            keep = (
                ~torch.isin(tokens, special)
                if cfg.exclude_special_tokens
                else torch.ones_like(tokens, dtype=torch.bool)
            )
            b, t = tokens.shape
            pos = torch.arange(t, device=tokens.device).expand(b, t)
            ctx = torch.as_tensor(window_ids, device=tokens.device)[:, None].expand(b, t)
            writer.append(
                resid=cache[cfg.sae_hook][keep].float().cpu().numpy().astype(store),
                neurons=cache[cfg.neuron_hook][keep].float().cpu().numpy().astype(store),
                token=tokens[keep].cpu().numpy().astype(np.int32),
                context_id=ctx[keep].cpu().numpy().astype(np.int64),
                position=pos[keep].cpu().numpy().astype(np.int32),
            )
            n_tok += tokens.numel()
            bar.update(tokens.numel())
            del cache
        bar.close()
        meta = writer.close()
        secs = time.perf_counter() - t0
        if meta["n_rows"] == 0:
            raise LMUnavailable(
                f"no {split} tokens: the dataset {cfg.dataset!r} is too short for context_size {cfg.context_size}"
            )
        figures[split] = {"tokens": n_tok, "rows": meta["n_rows"]}
        timings[split] = {"seconds": secs, "tokens_per_s": n_tok / max(secs, 1e-9)}
    with storage.atomic_path(out_dir / "neuron_readin.npy") as tmp:
        with tmp.open("wb") as fh:
            np.save(fh, neuron_readin(model, cfg.neuron_layer, cfg.sae_hook))
    storage.save_npz(out_dir / "neuron_readout.npz", **neuron_readout(model, cfg.neuron_layer))
    return {**figures, "timings": timings}
