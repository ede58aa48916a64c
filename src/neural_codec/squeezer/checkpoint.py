"""The one reader and the one writer of `squeezer.pt` (weights, config, extra)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from neural_codec.config import SqueezerConfig
from neural_codec.errors import RESTORE, data_error
from neural_codec.squeezer.model import Squeezer
from neural_codec.storage import torch_load, torch_save


def save_squeezer(path: str | Path, model: Squeezer, cfg: SqueezerConfig, extra: dict | None = None) -> None:
    """torch.save a dict: W_enc (n, M), b_enc (M,), W_dec (M, n), b_dec (n,), config, extra."""
    state = {
        "W_enc": model.W_enc.detach().cpu().clone(),
        "b_enc": model.b_enc.detach().cpu().clone(),
        "W_dec": model.W_dec.detach().cpu().clone().contiguous(),
        "b_dec": model.b_dec.detach().cpu().clone(),
        "config": dataclasses.asdict(cfg),
        "extra": extra or {},
    }
    torch_save(path, state)


def load_squeezer(path: str | Path) -> Squeezer:
    state = torch_load(path)
    if not isinstance(state, dict) or not {"W_enc", "b_enc", "W_dec", "b_dec", "config"} <= set(state):
        raise data_error(path, "not a squeezer checkpoint (no W_enc/b_enc/W_dec/b_dec/config)", RESTORE)
    n, M = state["W_enc"].shape
    tied = bool(state["config"].get("tied", False))
    model = Squeezer(n, M, tied, hidden=state["config"].get("hidden", "relu"))
    with torch.no_grad():
        model.W_enc.copy_(state["W_enc"])
        model.b_enc.copy_(state["b_enc"])
        model.b_dec.copy_(state["b_dec"])
        if not tied:
            model.W_dec_T.copy_(state["W_dec"].T)
    model.config = state["config"]
    model.extra = state.get("extra", {})
    model.eval()
    return model
