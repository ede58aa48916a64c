"""Next-token cross-entropy with a reconstruction patched in at the SAE's hook: the CE-loss score
of the SAE, and of the Squeezer's reconstruction decoded by the SAE decoder.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from neural_codec.config import LMSourceConfig
from neural_codec.features import sparsify
from neural_codec.sae import load_sae
from neural_codec.source.lm.load import load_model
from neural_codec.source.lm.settings import honour_sae_settings, sae_settings
from neural_codec.source.lm.text import special_token_ids, token_batches


@torch.no_grad()
def ce_scores(
    model: Any,
    sae: Any,
    cfg: LMSourceConfig,
    reconstruct_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_batches: int = 8,
    split: Literal["train", "heldout"] = "heldout",
) -> dict[str, float]:
    """Next-token CE clean, with the SAE reconstruction patched in at sae_hook, with zero ablation,
    and the CE-loss score (CE_zero - CE_patched) / (CE_zero - CE_clean).

    With `reconstruct_fn(features (N, d_sae)) -> features`, also the CE of
    decode(reconstruct_fn(encode(x))): the Squeezer's reconstruction through the SAE decoder.
    Special-token positions (BOS) keep their clean activations in every patched run.
    """
    cfg = cfg.resolved()
    special = torch.as_tensor(special_token_ids(model), device=cfg.device)

    def patcher(fn: Callable[[torch.Tensor], torch.Tensor], keep: torch.Tensor):
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            new = fn(act[keep].float()).to(act.dtype)
            act = act.clone()
            act[keep] = new
            return act

        return hook

    runs: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
        "clean": None,
        "zero": torch.zeros_like,
        "sae": lambda x: sae.decode(sae.encode(x)),
    }
    if reconstruct_fn is not None:
        runs["reconstruct"] = lambda x: sae.decode(reconstruct_fn(sae.encode(x)))
    sums = {k: 0.0 for k in runs}
    n = 0
    for i, (_, tokens) in enumerate(token_batches(model, cfg, split)):
        if i >= n_batches:
            break
        keep = (
            ~torch.isin(tokens, special)
            if cfg.exclude_special_tokens
            else torch.ones_like(tokens, dtype=torch.bool)
        )
        for k, fn in runs.items():
            hooks = [] if fn is None else [(cfg.sae_hook, patcher(fn, keep))]
            loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
            sums[k] += float(loss.sum())
        n += tokens.shape[0] * (tokens.shape[1] - 1)
    ce = {k: v / max(n, 1) for k, v in sums.items()}
    out = {
        "ce_clean": ce["clean"],
        "ce_zero_ablation": ce["zero"],
        "ce_sae": ce["sae"],
        "ce_loss_score_sae": _score(ce["zero"], ce["sae"], ce["clean"]),
        "n_tokens": n,
    }
    if "reconstruct" in ce:
        out["ce_reconstruct"] = ce["reconstruct"]
        out["ce_loss_score_reconstruct"] = _score(ce["zero"], ce["reconstruct"], ce["clean"])
    return out


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
) -> dict[str, float]:
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
    out["ce_topk"] = tk["ce_reconstruct"]
    out["ce_loss_score_topk"] = tk["ce_loss_score_reconstruct"]
    return out
