"""Stage `sae`: train (or load) a SAELens SAE on the cached activations, and score it.

Training uses SAELens's own `SAETrainer` fed by a streaming iterator over the activation shards
(memory bounded by a batch). The result is saved in SAELens's inference format so that
`SAE.load_from_disk(path)` loads it. On the synthetic source the SAE is also scored against the
truth: per true feature the best cosine with an SAE decoder row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.config import SAEConfig
from neural_codec.errors import check


def _training_sae(cfg: SAEConfig, d_in: int):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    torch.manual_seed(cfg.seed)
    if cfg.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k))
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k))
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, l0_coefficient=cfg.l1_coefficient)
        )
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, l1_coefficient=cfg.l1_coefficient)
    )


def _cycle_batches(directory: Path, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless stream of `resid` batches: shards in a seeded order, rows shuffled within a shard."""
    rng = np.random.default_rng(seed)
    paths = storage.shard_paths(directory)
    while True:
        for p in rng.permutation(len(paths)):
            with np.load(paths[p]) as z:
                x = z["resid"].astype(np.float32)
            x = x[rng.permutation(len(x))]
            for i in range(0, len(x) - batch_size + 1, batch_size):
                yield torch.from_numpy(x[i : i + batch_size])


def train_sae(cfg: SAEConfig, train_dir: Path):
    """Train with SAELens's SAETrainer on the cached residual activations."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = int(storage.read_meta(train_dir)["d_model"])
    sae = _training_sae(cfg, d_in)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_samples,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=cfg.training_samples // cfg.batch_size // 5,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
    )
    rows = int(storage.read_meta(train_dir)["n_rows"])
    check(rows >= cfg.batch_size, "sae.batch_size", cfg.batch_size,
          f"<= the number of training rows ({rows})")  # fmt: skip
    torch.manual_seed(cfg.seed)
    trainer = SAETrainer(
        cfg=trainer_cfg, sae=sae, data_provider=_cycle_batches(train_dir, cfg.batch_size, cfg.seed)
    )
    return trainer.fit()


def load_sae(path: str | Path):
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device="cpu")


@torch.no_grad()
def sae_quality(sae, heldout_dir: Path, batch_size: int = 4096) -> dict[str, float]:
    """L0, explained variance and dead-latent fraction on the held-out activations (streamed)."""
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.bool)
    l0_sum = sse = sq_sum = 0.0
    x_sum = None
    n = 0
    for b in storage.iter_batches(heldout_dir, batch_size, ["resid"]):
        x = torch.from_numpy(b["resid"].astype(np.float32))
        f = sae.encode(x)
        x_hat = sae.decode(f)
        fired |= (f > 0).any(0)
        l0_sum += float((f > 0).sum())
        sse += float(((x - x_hat) ** 2).sum())
        sq_sum += float((x**2).sum())
        x_sum = x.sum(0) if x_sum is None else x_sum + x.sum(0)
        n += len(x)
    total_var = sq_sum - float((x_sum**2).sum()) / n
    return {
        "l0": l0_sum / n,
        "explained_variance": 1 - sse / total_var,
        "dead_latent_fraction": float((~fired).float().mean()),
        "d_sae": d_sae,
    }


def ground_truth_recovery(sae, directions: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per true feature, the best cosine between its direction and any SAE decoder row."""
    W = sae.W_dec.detach().float().numpy()
    W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    D = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    cos = D @ W.T  # (n_true, d_sae)
    best_latent = cos.argmax(1)
    best_cos = cos.max(1)
    return {
        "mean_best_cosine": float(best_cos.mean()),
        "frac_recovered": float((best_cos >= threshold).mean()),
        "threshold": threshold,
        "best_latent": best_latent,
        "best_cosine": best_cos,
    }


def families_in_latent_space(families: list[dict[str, Any]], best_latent: np.ndarray,
                             best_cos: np.ndarray) -> list[dict[str, Any]]:  # fmt: skip
    """Map each planted family's true members to their best-matching SAE latents."""
    out = []
    for fam in families:
        true_members = fam["members"]
        out.append({
            "name": fam["name"], "kind": fam["kind"],
            "members": [int(best_latent[m]) for m in true_members],
            "true_members": true_members, "labels": fam.get("labels", []),
            "cosines": [float(best_cos[m]) for m in true_members],
        })  # fmt: skip
    return out


def latent_labels(families: list[dict[str, Any]], best_latent: np.ndarray, best_cos: np.ndarray,
                  d_sae: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per latent: the true feature it matches best (if any) and its family label."""
    label_of = {}
    for fam in families:
        for m, lab in zip(fam["members"], fam.get("labels", []), strict=False):
            label_of[m] = lab
    labels = [{"latent": i, "label": None, "true_feature": None, "cosine": 0.0} for i in range(d_sae)]
    for t, (lat, c) in enumerate(zip(best_latent, best_cos, strict=False)):
        entry = labels[int(lat)]
        if c > entry["cosine"]:
            entry.update(true_feature=t, cosine=float(c), label=label_of.get(t, f"true{t}"))
    return labels
