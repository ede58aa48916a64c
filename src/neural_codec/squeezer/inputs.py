"""What squeeze and baselines read, checked before any training: shapes, finiteness, row alignment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neural_codec.config import SqueezerConfig
from neural_codec.errors import ParamError, check
from neural_codec.params import require_inputs
from neural_codec.storage import SparseFeatures, check_shards, iter_sparse, load_npy, read_meta


def check_features(feats: SparseFeatures, what: str = "features") -> None:
    """Non-finite, negative or out-of-range features fail before any training."""
    val = feats.val
    if not np.all(np.isfinite(val)):
        bad = int((~np.isfinite(val)).sum())
        raise ParamError(f"{what}: {bad} non-finite (NaN/inf) feature values; fix the features stage output")
    if np.any(val < 0):
        raise ParamError(f"{what}: negative feature values (min {val.min():g}); SAE features must be >= 0")
    used = feats.idx[val > 0]
    if used.size and (used.min() < 0 or used.max() >= feats.n_features):
        raise ParamError(f"{what}: feature index outside [0, {feats.n_features})")


def check_upstream(
    params: dict[str, Any],
    cfg: SqueezerConfig,
    features_dir: str | Path,
    activations_dir: str | Path,
    sae_dir: str | Path,
    need_train_activations: bool = False,
) -> dict[str, Any]:
    """Everything that can be wrong with the inputs, checked before any training:
    upstream outputs exist, features.top_k <= n_features, importance_given has length
    n_features, features are finite / non-negative / in range (every shard scanned),
    held-out activations are readable, finite and row-aligned with held-out features.
    Returns {"n_features", "k", "firing_freq", "n_train", "n_heldout"}."""

    features_dir, activations_dir, sae_dir = Path(features_dir), Path(activations_dir), Path(sae_dir)
    needed = [
        features_dir / "train" / "meta.json",
        features_dir / "heldout" / "meta.json",
        features_dir / "firing_freq.npy",
        sae_dir / "cfg.json",
        activations_dir / "heldout" / "meta.json",
    ]
    if need_train_activations:
        needed.append(activations_dir / "train" / "meta.json")
    require_inputs(*needed)
    meta = read_meta(features_dir / "train")
    n, k = int(meta["n_features"]), int(meta["k"])
    top_k = (params.get("features") or {}).get("top_k")
    if top_k is not None:
        check(
            isinstance(top_k, int) and 1 <= top_k <= n,
            "features.top_k",
            top_k,
            f"an integer in [1, n_features = {n}] (the SAE has {n} latents)",
        )
    check(k <= n, f"{features_dir / 'train' / 'meta.json'}: k", k, f"at most n_features = {n}")
    if cfg.importance_given is not None:
        check(
            len(cfg.importance_given) == n,
            "squeezer.importance_given",
            f"<list of length {len(cfg.importance_given)}>",
            f"a list of length n_features = {n}",
        )
    freq = load_npy(features_dir / "firing_freq.npy")
    check(freq.shape == (n,), str(features_dir / "firing_freq.npy"), freq.shape, f"shape ({n},)")
    counts = {}
    for split in ("train", "heldout"):
        rows = 0
        for b in iter_sparse(features_dir / split, 65536):
            check_features(b, f"{features_dir / split}")
            rows += len(b)
        counts[split] = rows
    act_rows = int(read_meta(activations_dir / "heldout")["n_rows"])
    check_shards(activations_dir / "heldout")  # readable and finite (a NaN would score as null)
    check(
        act_rows == counts["heldout"],
        f"{activations_dir / 'heldout'}: n_rows",
        act_rows,
        f"{counts['heldout']} rows, row-aligned with {features_dir / 'heldout'} (re-run features)",
    )
    if need_train_activations:
        tr_rows = int(read_meta(activations_dir / "train")["n_rows"])
        check(
            tr_rows == counts["train"],
            f"{activations_dir / 'train'}: n_rows",
            tr_rows,
            f"{counts['train']} rows, row-aligned with {features_dir / 'train'} (re-run features)",
        )
    return {
        "n_features": n,
        "k": k,
        "firing_freq": freq,
        "n_train": counts["train"],
        "n_heldout": counts["heldout"],
    }
