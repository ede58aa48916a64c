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
from neural_codec.sae import ground_truth_recovery, latent_labels, load_sae


def sparsify(f: torch.Tensor, top_k: int, min_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, val) of the top-k latents per row, those <= min_value zeroed: what this stage stores,
    and what `lm` feeds the Squeezer when scoring it inside the model."""
    val, idx = torch.topk(f.float(), min(top_k, f.shape[-1]), dim=-1)
    return idx, torch.where(val > min_value, val, torch.zeros_like(val))


def filler_counts(
    idx: np.ndarray, val: np.ndarray, latent_true: np.ndarray, true_idx: np.ndarray, true_val: np.ndarray
) -> dict[str, int]:
    """Counts for F's purity against the synthetic truth, on one batch of stored (idx, val).

    A nonzero of F is *filler* when its latent matches no true feature (`latent_true` = -1) or
    its feature is off in that row: a TopK SAE fires k latents on every row, and on rows with
    fewer true features the extras are noise that every co-occurrence downstream would count.
    `covered` counts the (row, true feature) events that F carries through the feature's latent.
    """
    on = val > 0
    t = np.where(on, latent_true[idx], -1)  # (rows, k) true feature of each stored latent
    active = true_val > 0  # (rows, true_top_k)
    # a stored latent is real when its true feature is among the row's active true features
    real = on & (t >= 0) & ((t[:, :, None] == true_idx[:, None, :]) & active[:, None, :]).any(-1)
    has_latent = np.isin(true_idx, latent_true[latent_true >= 0])
    # true events whose matched latent F stores in that row
    stored = np.where(real, t, -2)
    covered = active & (true_idx[:, :, None] == stored[:, None, :]).any(-1)
    return {
        "nonzeros": int(on.sum()),
        "filler": int(on.sum() - real.sum()),
        "true_events": int(active.sum()),
        "true_events_with_latent": int((active & has_latent).sum()),
        "covered": int(covered.sum()),
    }


def validate_against_sae(cfg: FeaturesConfig, d_sae: int) -> None:
    check(cfg.top_k <= d_sae, "features.top_k", cfg.top_k,
          f"<= the SAE's number of latents ({d_sae})")  # fmt: skip


def latent_truth(sae: Any, source_dir: Path) -> np.ndarray:
    """Per latent, the true feature it stands for (-1: none): each true feature's best-matching
    decoder row (as the `labels` stage names them, `sae.latent_labels`; computed here from the
    source's truth so that the features stage never waits on the labeller)."""
    truth = np.load(source_dir / "truth.npz")
    rec = ground_truth_recovery(sae, truth["directions"], threshold=0.0)
    out = np.full(int(sae.cfg.d_sae), -1, dtype=np.int64)
    for e in latent_labels([], rec["best_latent"], rec["best_cosine"], int(sae.cfg.d_sae)):
        if e["true_feature"] is not None:
            out[int(e["latent"])] = int(e["true_feature"])
    return out


def purity(c: dict[str, int]) -> dict[str, float]:
    """F's filler share (of its nonzeros), coverage (of the true events) and their F1 (precision
    = 1 - filler share, recall = coverage) from `filler_counts`."""
    prec = 1 - c["filler"] / max(c["nonzeros"], 1)
    rec = c["covered"] / max(c["true_events"], 1)
    return {
        "filler_share": 1 - prec,
        "true_coverage": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0,
    }


@torch.no_grad()
def encode_split(
    sae: Any, cfg: FeaturesConfig, act_dir: Path, out_dir: Path, latent_true: np.ndarray | None = None
) -> dict[str, Any]:
    """Stream activation shards through the SAE encoder; write top-k (idx, val) shards. With
    `latent_true` (synthetic) also count F's filler against the rows' true features."""
    d_sae = int(sae.cfg.d_sae)
    writer = storage.sparse_writer(out_dir, d_sae, cfg.top_k, cfg.rows_per_shard)
    counts = np.zeros(d_sae, dtype=np.int64)
    n = 0
    nnz = 0
    tally: dict[str, int] = {}
    keys = ["resid"] if latent_true is None else ["resid", "true_idx", "true_val"]
    for b in progress(storage.iter_batches(act_dir, cfg.batch_size, keys), f"encode {act_dir.name}"):
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
        if latent_true is not None:
            c = filler_counts(idx_np, val_np, latent_true, b["true_idx"], b["true_val"])
            tally = {k: tally.get(k, 0) + v for k, v in c.items()}
        counts += np.bincount(idx_np[val_np > 0], minlength=d_sae)
        nnz += int((val_np > 0).sum())
        n += len(idx_np)
    writer.close()
    out: dict[str, Any] = {"rows": n, "mean_l0": nnz / n, "firing_freq": counts / n}
    if latent_true is not None:
        out["purity"] = purity(tally)
    return out


def encode_features(
    cfg: FeaturesConfig, sae_dir: Path, activations_dir: Path, out_dir: Path, source_dir: Path
) -> dict[str, Any]:
    """Stage `features`: every split encoded into `out_dir/{train,heldout[,cooc]}`, the training split's
    per-latent firing frequencies in `out_dir/firing_freq.npy`; returns metrics/features.json."""
    sae = load_sae(sae_dir)
    validate_against_sae(cfg, sae.cfg.d_sae)
    metrics: dict[str, Any] = {"top_k": cfg.top_k, "n_features": int(sae.cfg.d_sae)}
    synthetic = storage.read_meta(activations_dir / "train").get("source") == "synthetic"
    # synthetic: how much of F is filler (a latent off its true feature), per split
    lt = latent_truth(sae, source_dir) if synthetic else None
    for split in ("train", "heldout", "cooc"):
        if split == "cooc" and not (activations_dir / split / "meta.json").exists():
            continue  # lm sources and n_cooc: 0 write no co-occurrence split
        stats = encode_split(sae, cfg, activations_dir / split, out_dir / split, lt)
        if split == "train":
            freq = stats["firing_freq"]
            np.save(out_dir / "firing_freq.npy", freq)
            metrics["alive_features"] = int((freq > 0).sum())
            metrics["max_firing_freq"] = float(freq.max())
        metrics[split] = {"rows": stats["rows"], "mean_l0": stats["mean_l0"], **stats.get("purity", {})}
    return metrics
