"""Stage `squeeze`: train the Squeezer (M ReLU synthetic neurons) on the top-k SAE features.

Every input check runs before training (`squeezer.inputs.check_upstream`). The Squeezer is
scored by the metric every baseline shares (`codec.evaluate_codec`) on held-out rows; for an lm
source also by the CE loss of its reconstruction, SAE-decoded and patched into the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import paths, storage
from neural_codec.codec import SqueezerCodec, eval_batch_size, evaluate_codec, iter_eval_batches
from neural_codec.config import FeaturesConfig, SourceConfig, SqueezerConfig
from neural_codec.curves import write_curves
from neural_codec.errors import ParamError
from neural_codec.params import check_fits, from_dict, squeezer_bytes
from neural_codec.runtime import autocast_dtype, resolve_device
from neural_codec.sae import load_sae_decoder
from neural_codec.source.lm.ce import squeezer_ce_scores
from neural_codec.squeezer.checkpoint import save_squeezer
from neural_codec.squeezer.inputs import check_upstream
from neural_codec.squeezer.model import Squeezer, resolve_importance
from neural_codec.squeezer.stream import open_train
from neural_codec.squeezer.train import train_squeezer


@dataclass
class SqueezeRun:
    cfg: SqueezerConfig
    model: Squeezer
    curve: list[dict[str, float]]
    metrics: dict[str, Any]
    n_heldout: int
    train_seconds: float


def run(params: dict[str, Any]) -> SqueezeRun:
    cfg = from_dict(SqueezerConfig, params.get("squeezer"), "squeezer")
    src = from_dict(SourceConfig, params.get("source"), "source")
    device = resolve_device(cfg.device, "squeezer.device")  # a missing GPU fails here, before work
    autocast_dtype(cfg.autocast, device, "squeezer.autocast")
    info = check_upstream(params, cfg, paths.FEATURES, paths.ACTIVATIONS, paths.SAE)
    n = info["n_features"]
    # before an allocation traceback; a split bigger than squeezer.buffer_rows streams (the buffer counts)
    need = squeezer_bytes(n, cfg, info["n_train"], info["k"])
    check_fits("squeezer.M", cfg.M, need, f"n_features {n} x M {cfg.M}, batch {cfg.batch_size}")
    sae_decode = load_sae_decoder(paths.SAE)
    if sae_decode.n_features != n:
        raise ParamError(
            f"{paths.SAE} has {sae_decode.n_features} latents but the features have {n}: re-run features"
        )
    weights = resolve_importance(cfg, n, info["firing_freq"])
    train = open_train(paths.FEATURES / "train", cfg.buffer_rows)  # in memory if it fits, else shards
    t0 = time.perf_counter()
    model, curve = train_squeezer(train, cfg, weights, n)
    train_seconds = time.perf_counter() - t0
    del train
    batches = iter_eval_batches(paths.FEATURES / "heldout", paths.ACTIVATIONS / "heldout", eval_batch_size(n))
    metrics = evaluate_codec(SqueezerCodec(model, device), batches, sae_decode)
    if src.kind == "lm":  # lm: the Squeezer's reconstruction, SAE-decoded and patched into the model
        feats_cfg = from_dict(FeaturesConfig, params.get("features"), "features")
        metrics["lm"] = squeezer_ce_scores(src.lm, paths.SAE, model, info["k"], feats_cfg.min_value)
    metrics.update(
        {
            "M": cfg.M,
            "n_features": n,
            "k": info["k"],
            "tied": cfg.tied,
            "importance": cfg.importance,
            "final_loss": curve[-1]["loss"],
        }
    )
    return SqueezeRun(cfg, model, curve, metrics, info["n_heldout"], train_seconds)


def write_heldout_neurons(model: Squeezer, features_dir: Path, path: Path, n_rows: int) -> None:
    """The synthetic neurons on the held-out rows, streamed into a .npy memmap (memory: a batch)."""
    bs = eval_batch_size(model.n_features)
    h = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, model.M))
    row = 0
    with torch.no_grad():
        for b in storage.iter_sparse(features_dir, bs):
            h[row : row + len(b)] = model.encode(torch.from_numpy(b.idx), torch.from_numpy(b.val)).numpy()
            row += len(b)
    h.flush()
    del h


def write(r: SqueezeRun) -> None:
    with storage.atomic_dir(paths.SQUEEZE) as out:
        extra = {"n_features": r.model.n_features, "final_loss": r.curve[-1]["loss"]}
        save_squeezer(out / paths.SQUEEZER.name, r.model, r.cfg, extra=extra)
        write_heldout_neurons(
            r.model, paths.FEATURES / "heldout", out / paths.HELDOUT_NEURONS.name, r.n_heldout
        )
    storage.write_json(paths.metrics_file("squeeze"), {"squeezer": r.metrics})
    write_curves(paths.curve_dir("squeeze"), {"loss": r.curve})


def summary(r: SqueezeRun) -> str:
    m = r.metrics
    return (
        f"[squeeze] M={r.cfg.M} n={r.model.n_features}: fvu={m['fvu']:.4f} recovery={m['recovery_mean']:.3f} "
        f"represented={m['features_represented']} dead={m['dead_neurons']:.3f} "
        f"{r.model.samples_per_s:.0f} samples/s"
    )
