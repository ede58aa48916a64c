"""Stage `features`: encode activations with the SAE, keep the top-k latents per row, store sparsely.

The output (`SparseFeatures` shards, row-aligned with the activations) is what the Squeezer and
every analysis read; each latent's firing frequency rides along for importance weighting and
frequency-matched controls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.config import FeaturesConfig
from neural_codec.errors import check, data_error
from neural_codec.runtime import progress
from neural_codec.sae import load_sae


def sparsify(f: torch.Tensor, top_k: int, min_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, val) of the top-k latents per row, those <= min_value zeroed: what this stage stores,
    and what `lm` feeds the Squeezer when scoring it inside the model."""
    val, idx = torch.topk(f.float(), min(top_k, f.shape[-1]), dim=-1)
    return idx, torch.where(val > min_value, val, torch.zeros_like(val))


def validate_against_sae(cfg: FeaturesConfig, d_sae: int) -> None:
    check(cfg.top_k <= d_sae, "features.top_k", cfg.top_k,
          f"<= the SAE's number of latents ({d_sae})")  # fmt: skip


@torch.no_grad()
def encode_split(sae: Any, cfg: FeaturesConfig, act_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Stream activation shards through the SAE encoder; write top-k (idx, val) shards."""
    d_sae = int(sae.cfg.d_sae)
    writer = storage.sparse_writer(out_dir, d_sae, cfg.top_k, cfg.rows_per_shard)
    counts = np.zeros(d_sae, dtype=np.int64)
    n = 0
    nnz = 0
    for b in progress(storage.iter_batches(act_dir, cfg.batch_size, ["resid"]), f"encode {act_dir.name}"):
        x = torch.from_numpy(b["resid"].astype(np.float32))
        f = sae.encode(x)  # (the shards' finiteness is checked as they are read: storage.load_shard)
        # checked before the threshold below, which would turn a NaN into silent padding
        if not torch.isfinite(f).all():
            n_bad = int((~torch.isfinite(f)).sum())
            raise data_error(
                act_dir,
                f"the SAE produced {n_bad} non-finite feature activations on rows {n}..{n + len(x) - 1}",
                "the SAE weights are bad: re-run `dvc repro -f sae` (or `dvc checkout data/sae`)",
            )
        idx, val = sparsify(f, cfg.top_k, cfg.min_value)
        idx = torch.where(val > 0, idx, torch.zeros_like(idx))
        idx_np, val_np = idx.numpy().astype(np.int32), val.numpy().astype(np.float32)
        writer.append(idx=idx_np, val=val_np)
        counts += np.bincount(idx_np[val_np > 0], minlength=d_sae)
        nnz += int((val_np > 0).sum())
        n += len(idx_np)
    writer.close()
    return {"rows": n, "mean_l0": nnz / n, "firing_freq": counts / n}


def encode_features(
    cfg: FeaturesConfig, sae_dir: Path, activations_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Stage `features`: every split encoded into `out_dir/{train,heldout[,cooc]}`, the training split's
    per-latent firing frequencies in `out_dir/firing_freq.npy`; returns metrics/features.json."""
    sae = load_sae(sae_dir)
    validate_against_sae(cfg, sae.cfg.d_sae)
    metrics: dict[str, Any] = {"top_k": cfg.top_k, "n_features": int(sae.cfg.d_sae)}
    for split in ("train", "heldout", "cooc"):
        if split == "cooc" and not (activations_dir / split / "meta.json").exists():
            continue  # lm sources and n_cooc: 0 write no co-occurrence split
        stats = encode_split(sae, cfg, activations_dir / split, out_dir / split)
        if split == "train":
            freq = stats["firing_freq"]
            np.save(out_dir / "firing_freq.npy", freq)
            metrics["alive_features"] = int((freq > 0).sum())
            metrics["max_firing_freq"] = float(freq.max())
        metrics[split] = {"rows": stats["rows"], "mean_l0": stats["mean_l0"]}
    return metrics
