"""Stage `squeeze`: train the Squeezer (M ReLU synthetic neurons) on the top-k SAE features.

Reads params sections `squeezer` (and `features.top_k` for validation), data/features/
{train,heldout} + firing_freq.npy, data/sae (SAELens format) and data/activations/heldout
(`resid`). Every input check runs before training (see `squeezer.check_upstream`).
Writes data/squeeze/{squeezer.pt, heldout_neurons.npy} (one atomic directory),
metrics/squeeze.json (the shared codec metrics + samples_per_s, M, n_features) and
plots/squeeze/curve.csv (step,loss).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from neural_codec import storage
from neural_codec.config import FeaturesConfig, SourceConfig, SqueezerConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict, load_params
from neural_codec.squeezer import (
    SqueezerCodec,
    check_upstream,
    eval_batch_size,
    evaluate_codec,
    iter_eval_batches,
    load_sae_decoder,
    resolve_importance,
    save_squeezer,
    train_squeezer,
)

FEATURES = Path("data/features")
ACTIVATIONS = Path("data/activations")
SAE_DIR = Path("data/sae")
OUT = Path("data/squeeze")
METRICS = Path("metrics/squeeze.json")
CURVE = Path("plots/squeeze/curve.csv")


def main() -> int:
    params = load_params()
    cfg = from_dict(SqueezerConfig, params.get("squeezer"), "squeezer")
    src = from_dict(SourceConfig, params.get("source"), "source")
    info = check_upstream(params, cfg, FEATURES, ACTIVATIONS, SAE_DIR)
    n = info["n_features"]
    sae_decode = load_sae_decoder(SAE_DIR)
    if sae_decode.n_features != n:
        raise ParamError(
            f"{SAE_DIR} has {sae_decode.n_features} latents but the features have {n}: re-run features"
        )
    weights = resolve_importance(cfg, n, info["firing_freq"])
    train = storage.load_sparse(FEATURES / "train")

    t0 = time.perf_counter()
    model, curve = train_squeezer(train, cfg, weights, n)
    train_seconds = time.perf_counter() - t0
    del train
    bs = eval_batch_size(n)
    metrics = evaluate_codec(
        SqueezerCodec(model), iter_eval_batches(FEATURES / "heldout", ACTIVATIONS / "heldout", bs), sae_decode
    )
    if src.kind == "lm":  # lm: the Squeezer's reconstruction, SAE-decoded and patched into the model
        from neural_codec import lm

        feats_cfg = from_dict(FeaturesConfig, params.get("features"), "features")
        metrics["lm"] = lm.squeezer_ce_scores(src.lm, SAE_DIR, model, info["k"], feats_cfg.min_value)

    with storage.atomic_dir(OUT) as out:
        save_squeezer(
            out / "squeezer.pt", model, cfg, extra={"n_features": n, "final_loss": curve[-1]["loss"]}
        )
        # held-out neurons streamed into a .npy memmap: memory bounded by a batch
        h = np.lib.format.open_memmap(
            out / "heldout_neurons.npy", mode="w+", dtype=np.float32, shape=(info["n_heldout"], cfg.M)
        )
        row = 0
        with torch.no_grad():
            for b in storage.iter_sparse(FEATURES / "heldout", bs):
                h[row : row + len(b)] = model.encode(torch.from_numpy(b.idx), torch.from_numpy(b.val)).numpy()
                row += len(b)
        h.flush()
        del h

    storage.write_json(
        METRICS,
        {
            **metrics,
            "M": cfg.M,
            "n_features": n,
            "k": info["k"],
            "tied": cfg.tied,
            "importance": cfg.importance,
            "samples_per_s": model.samples_per_s,
            "train_seconds": train_seconds,
            "final_loss": curve[-1]["loss"],
        },
    )
    storage.write_csv(CURVE, ["step", "loss"], [[c["step"], c["loss"]] for c in curve])
    print(
        f"[squeeze] M={cfg.M} n={n}: fvu={metrics['fvu']:.4f} recovery={metrics['recovery_mean']:.3f} "
        f"represented={metrics['features_represented']} dead={metrics['dead_neurons']:.3f} "
        f"{model.samples_per_s:.0f} samples/s"
    )
    return 0


if __name__ == "__main__":
    from neural_codec.stage import run

    run("squeeze", main)
