"""Next-token cross-entropy with a reconstruction patched in at the SAE's hook: the CE-loss score
of the SAE, and of the Squeezer's reconstruction decoded by the SAE decoder. A transcoder reads
its hook and writes the MLP output: its output replaces `blocks.L.hook_mlp_out` (zero ablation:
of the MLP output), the splice of Dunefsky et al.'s transcoder evaluation.

An encoder (BERT, e.g. `minilm`) has no next-token loss, and a sentence-transformers checkpoint
has no masked-LM head. Its faithfulness measure is the change of the final hidden states (the
model's output, what its sentence embeddings pool) when the reconstruction is patched in:
`hidden_rel_change_*` = ||h_patched - h_clean|| / ||h_clean|| over non-special tokens, and
`hidden_score_*` = 1 - MSE(h_patched, h_clean) / MSE(h_zero, h_clean), read like the CE-loss
score (0 = zero ablation at the hook, 1 = the clean model).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from neural_codec.config import LMSourceConfig
from neural_codec.errors import ParamError
from neural_codec.features import sparsify
from neural_codec.sae import load_sae
from neural_codec.source.lm.load import is_encoder, load_model
from neural_codec.source.lm.settings import config_for_activations, honour_sae_settings, sae_settings
from neural_codec.source.lm.text import special_token_ids, token_batches


@torch.no_grad()
def ce_scores(
    model: Any,
    sae: Any,
    cfg: LMSourceConfig,
    reconstruct_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_batches: int = 8,
    split: Literal["train", "heldout"] = "heldout",
) -> dict[str, Any]:
    """Next-token CE clean, with the SAE reconstruction patched in at sae_hook, with zero ablation,
    and the CE-loss score (CE_zero - CE_patched) / (CE_zero - CE_clean).

    With `reconstruct_fn(features (N, d_sae)) -> features`, also the CE of
    decode(reconstruct_fn(encode(x))): the Squeezer's reconstruction through the SAE decoder.
    Special-token positions (BOS) keep their clean activations in every patched run. Each score
    also gets `<score>_interval`, a bootstrap over the held-out sequences (`score_intervals`).
    """
    cfg = cfg.resolved()
    runs = _runs(sae, reconstruct_fn)
    out_hook = transcoder_out_hook(sae, cfg)
    if is_encoder(model):
        return hidden_scores(model, cfg, runs, n_batches, split, out_hook)
    sums = {k: 0.0 for k in runs}
    per_seq: dict[str, list[torch.Tensor]] = {k: [] for k in runs}  # for score_intervals
    n = 0
    for tokens, keep in _scored_batches(model, cfg, split, n_batches):
        for k, fn in runs.items():
            hooks = [] if fn is None else _patch_hooks(fn, keep, cfg, out_hook)
            loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
            sums[k] += float(loss.sum())
            per_seq[k].append(loss.detach().double().sum(-1).cpu())
        n += tokens.shape[0] * (tokens.shape[1] - 1)
    ce = {k: v / max(n, 1) for k, v in sums.items()}
    out: dict[str, Any] = {
        "ce_clean": ce["clean"],
        "ce_zero_ablation": ce["zero"],
        "ce_sae": ce["sae"],
        "ce_loss_score_sae": _score(ce["zero"], ce["sae"], ce["clean"]),
        "n_tokens": n,
    }
    if "reconstruct" in ce:
        out["ce_reconstruct"] = ce["reconstruct"]
        out["ce_loss_score_reconstruct"] = _score(ce["zero"], ce["reconstruct"], ce["clean"])
    out.update(score_intervals(per_seq, "ce"))
    return out


Patch = Callable[[torch.Tensor], torch.Tensor]


def _scored_batches(
    model: Any, cfg: LMSourceConfig, split: Literal["train", "heldout"], n_batches: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens (B, T), keep (B, T)) for the first `n_batches` token batches of `split`: `keep`
    marks the positions that are patched and scored (not special tokens, unless
    `exclude_special_tokens` is off), for both the CE and the hidden-state scores."""
    special = torch.as_tensor(special_token_ids(model), device=cfg.device)
    for i, (_, tokens) in enumerate(token_batches(model, cfg, split)):
        if i >= n_batches:
            return
        keep = (
            ~torch.isin(tokens, special)
            if cfg.exclude_special_tokens
            else torch.ones_like(tokens, dtype=torch.bool)
        )
        yield tokens, keep


def _runs(sae: Any, reconstruct_fn: Patch | None) -> dict[str, Patch | None]:
    runs: dict[str, Patch | None] = {
        "clean": None,
        "zero": torch.zeros_like,
        "sae": lambda x: sae.decode(sae.encode(x)),
    }
    if reconstruct_fn is not None:
        runs["reconstruct"] = lambda x: sae.decode(reconstruct_fn(sae.encode(x)))
    return runs


def transcoder_out_hook(sae: Any, cfg: LMSourceConfig) -> str | None:
    """The hook a transcoder writes (its SAELens `hook_name_out`, else the neuron layer's MLP
    output); None for an SAE (or any object without a SAELens config), which writes the hook it reads."""
    sae_cfg = getattr(sae, "cfg", None)
    if sae_cfg is None or sae_cfg.architecture() != "transcoder":
        return None
    return sae_cfg.metadata.get("hook_name_out") or f"blocks.{cfg.neuron_layer}.hook_mlp_out"


def _patch_hooks(
    fn: Patch, keep: torch.Tensor, cfg: LMSourceConfig, out_hook: str | None
) -> list[tuple[Any, Any]]:
    """Forward hooks patching `fn(x)` in at sae_hook (an SAE), or reading x at sae_hook and
    writing `fn(x)` at `out_hook` (a transcoder, in place of the MLP output)."""
    if out_hook is None:
        return [(cfg.sae_hook, _patcher(fn, keep))]
    seen: dict[str, torch.Tensor] = {}

    def read(act: torch.Tensor, hook: Any) -> None:
        seen["x"] = act[keep].float()

    def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if "x" not in seen:
            raise ParamError(f"params.yaml: source.lm.sae_hook = {cfg.sae_hook!r} is not allowed; "
                             f"expected a hook computed before {out_hook} (the transcoder's input)")  # fmt: skip
        act = act.clone()
        act[keep] = fn(seen.pop("x")).to(act.dtype)
        return act

    return [(cfg.sae_hook, read), (out_hook, write)]


def _patcher(fn: Patch, keep: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        new = fn(act[keep].float()).to(act.dtype)
        act = act.clone()
        act[keep] = new
        return act

    return hook


@torch.no_grad()
def hidden_scores(
    model: Any,
    cfg: LMSourceConfig,
    runs: dict[str, Patch | None],
    n_batches: int = 8,
    split: Literal["train", "heldout"] = "heldout",
    out_hook: str | None = None,
) -> dict[str, Any]:
    """An encoder's faithfulness measure (no next-token loss): how far the final hidden states
    move when each run's reconstruction is patched in at sae_hook (a transcoder's: at `out_hook`,
    see the module docstring)."""
    sq = {k: 0.0 for k in runs if k != "clean"}
    per_seq: dict[str, list[torch.Tensor]] = {k: [] for k in sq}  # for score_intervals
    norm = 0.0
    n = 0
    for tokens, keep in _scored_batches(model, cfg, split, n_batches):
        clean = model.encoder_output(tokens)[keep].float()
        norm += float(clean.pow(2).sum())
        n += int(keep.sum())
        for k, fn in runs.items():
            if fn is None:
                continue
            with model.hooks(fwd_hooks=_patch_hooks(fn, keep, cfg, out_hook)):
                h = model.encoder_output(tokens)[keep].float()
            sq[k] += float((h - clean).pow(2).sum())
            rows = torch.zeros(tokens.shape[0], dtype=torch.float64)
            per_seq[k].append(
                rows.index_add_(0, keep.nonzero()[:, 0].cpu(), (h - clean).pow(2).sum(-1).double().cpu())
            )
    out: dict[str, Any] = {"n_tokens": n}
    for k, v in sq.items():
        if k == "zero":
            out["hidden_rel_change_zero_ablation"] = (v / max(norm, 1e-12)) ** 0.5
            continue
        out[f"hidden_rel_change_{k}"] = (v / max(norm, 1e-12)) ** 0.5
        out[f"hidden_score_{k}"] = float("nan") if sq["zero"] < 1e-12 else 1.0 - v / sq["zero"]
    out.update(score_intervals(per_seq, "hidden"))
    return out


def sae_faithfulness(
    sae: Any, cfg: LMSourceConfig, activations_dir: str | Path, ce_batches: int = 8
) -> dict[str, Any]:
    """Stage `sae` for lm: the SAE's CE-loss score (an encoder's: the hidden-state score) on
    held-out windows, after checking that the SAE reads what was extracted (hook from SAELens
    metadata, d_in). Returns `{"ce": ...}` for metrics/sae.json `lm`."""
    cfg = config_for_activations(sae, cfg, activations_dir)
    model = load_model(cfg)
    ce = ce_scores(model, sae.to(cfg.device), cfg, n_batches=ce_batches)  # the model's device
    sae.to("cpu")
    return {"ce": ce}


def _score(zero: float, patched: float, clean: float) -> float:
    denom = zero - clean
    return float("nan") if abs(denom) < 1e-12 else (zero - patched) / denom


def squeezer_reconstruct_fn(
    squeezer: Any, top_k: int, min_value: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """features -> sparsified as the `features` stage stores them -> Squeezer -> features (for
    `ce_scores`), so the CE score is the Squeezer's on its real input."""

    @torch.no_grad()
    def fn(f: torch.Tensor) -> torch.Tensor:
        return squeezer(*sparsify(f, top_k, min_value))

    return fn


def squeezer_ce_scores(
    cfg: LMSourceConfig,
    sae_dir: str | Path,
    squeezer: Any,
    top_k: int,
    min_value: float = 0.0,
    n_batches: int = 8,
) -> dict[str, Any]:
    """CE-loss score of the Squeezer's reconstruction decoded by the SAE decoder (and, for
    reference, the SAE's own and the top-k-only reconstruction), on held-out windows."""
    sae = load_sae(sae_dir, device=cfg.device)
    cfg = honour_sae_settings(cfg, sae_settings(sae))
    model = load_model(cfg)
    squeezer = copy.deepcopy(squeezer).to(cfg.device)  # trained on the CPU; the caller keeps it there
    fn = squeezer_reconstruct_fn(squeezer, top_k, min_value)
    out = ce_scores(model, sae, cfg, reconstruct_fn=fn, n_batches=n_batches)

    def topk_only(f: torch.Tensor) -> torch.Tensor:
        idx, val = sparsify(f, top_k, min_value)
        return torch.zeros_like(f).scatter_(-1, idx, val.to(f.dtype))

    tk = ce_scores(model, sae, cfg, reconstruct_fn=topk_only, n_batches=n_batches)
    if is_encoder(model):
        out["hidden_rel_change_topk"] = tk["hidden_rel_change_reconstruct"]
        out["hidden_score_topk"] = tk["hidden_score_reconstruct"]
        if "hidden_score_reconstruct_interval" in tk:
            out["hidden_score_topk_interval"] = tk["hidden_score_reconstruct_interval"]
        return out
    out["ce_topk"] = tk["ce_reconstruct"]
    out["ce_loss_score_topk"] = tk["ce_loss_score_reconstruct"]
    if "ce_loss_score_reconstruct_interval" in tk:
        out["ce_loss_score_topk_interval"] = tk["ce_loss_score_reconstruct_interval"]
    return out


# --- intervals (issue 12): a bootstrap over held-out sequences ---------------------------------


def score_intervals(
    per_seq: dict[str, list[torch.Tensor]], kind: Literal["ce", "hidden"], n_boot: int = 200, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """`<score>_interval` for each patched run's score: {"mean" (the full-sample score), "ci_low",
    "ci_high" (percentile 95%), "n_seeds": 1, "n_sequences"}, resampling whole held-out sequences.

    `per_seq[run]`: per batch, each sequence's summed CE (kind "ce": runs clean, zero, ...) or
    summed squared change of the final hidden states (kind "hidden": runs zero, ...). A score is
    a ratio of these sums, so a resample reweights them (a sequence drawn twice counts twice).
    Scores whose denominator vanishes are left out (the point score is NaN there too)."""
    sums = {k: torch.cat(v).numpy() for k, v in per_seq.items() if v}
    if "zero" not in sums or len(sums["zero"]) < 2:
        return {}
    n = len(sums["zero"])
    rng = np.random.default_rng(seed)
    w = np.vstack([np.ones(n), [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]])
    tot = {k: w @ v for k, v in sums.items()}  # row 0: the full sample
    out: dict[str, dict[str, Any]] = {}
    for k, t in tot.items():
        if k in ("clean", "zero"):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "ce":
                score = (tot["zero"] - t) / (tot["zero"] - tot["clean"])
                name = f"ce_loss_score_{k}_interval"
            else:
                score = 1.0 - t / tot["zero"]
                name = f"hidden_score_{k}_interval"
        boot = score[1:][np.isfinite(score[1:])]
        if not np.isfinite(score[0]) or len(boot) < 2:
            continue
        lo, hi = np.quantile(boot, [0.025, 0.975])
        out[name] = {"mean": float(score[0]), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": 1,
                     "n_sequences": n}  # fmt: skip
    return out
