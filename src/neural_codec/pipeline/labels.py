"""Stage `labels`: name the SAE's latents and find the families the analyses read.

Synthetic: from the ground truth (each true feature's best-matching decoder row). lm: from the
top-activating tokens (`source.lm.labels`) and the weekday/month families (label finder, else
the cluster finder, `source.lm.clusters`). A stage of its own so that editing the labeller
re-runs the analyses that read families, never the SAE or the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neural_codec import storage
from neural_codec.config import SAEConfig, SourceConfig
from neural_codec.sae import families_in_latent_space, ground_truth_recovery, latent_labels, load_sae
from neural_codec.source.lm.labels import write_labels_and_families


def build_labels(
    src: SourceConfig, cfg: SAEConfig, activations_dir: Path, source_dir: Path, sae_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Write `out_dir/latent_labels.json` and `out_dir/families.json`; metrics for metrics/labels.json."""
    sae = load_sae(sae_dir)
    if src.kind != "synthetic":
        return write_labels_and_families(sae, src.lm, activations_dir, out_dir)
    truth = np.load(source_dir / "truth.npz")
    rec = ground_truth_recovery(sae, truth["directions"], cfg.recovery_threshold)
    families = storage.read_json(source_dir / "truth.json")["families"]
    in_latents = families_in_latent_space(
        families, rec["best_latent"], rec["best_cosine"], cfg.recovery_threshold
    )
    labels = latent_labels(families, rec["best_latent"], rec["best_cosine"], sae.cfg.d_sae)
    storage.write_json(out_dir / "families.json", in_latents)
    storage.write_json(out_dir / "latent_labels.json", labels)
    return {
        "families": {f["name"]: len(f["members"]) for f in in_latents},
        "labelled_latents": sum(1 for lab in labels if lab["true_feature"] is not None),
    }
