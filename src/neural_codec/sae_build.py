"""Stage `sae` for either kind of source: get the SAE (trained, or a pretrained one re-saved in
SAELens format), score it, and label its latents and families.

Synthetic: labels and families come from the ground truth (best-matching decoder rows). lm: from
top-activating tokens (`source.lm.labels`), with the SAE's CE-loss score. Kept apart from `sae`
so that the `features` stage, which only loads the SAE, does not depend on the labeller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neural_codec import storage
from neural_codec.analysis.stats import bootstrap_interval
from neural_codec.config import SAEConfig, SourceConfig
from neural_codec.sae import (
    families_in_latent_space,
    ground_truth_recovery,
    latent_labels,
    load_sae,
    sae_quality,
    synthetic_sae_metrics,
    train_sae,
)
from neural_codec.source.lm.labels import write_labels_and_families


def build_sae(
    src: SourceConfig, cfg: SAEConfig, activations_dir: Path, source_dir: Path, out_dir: Path
) -> tuple[dict[str, Any], list[list[Any]]]:
    """(metrics for metrics/sae.json, rows of the recovery histogram: header-only for lm)."""
    if cfg.pretrained:  # lm: a SAELens registry SAE or a folder, re-saved in SAELens format
        load_sae(cfg.path, release=cfg.pretrained_release, sae_id=cfg.pretrained_sae_id).save_model(out_dir)
    else:
        train_sae(cfg, activations_dir / "train").save_inference_model(out_dir)
    storage.write_json_sorted(out_dir / "cfg.json")  # SAELens' key order varies between runs
    sae = load_sae(out_dir)  # what downstream stages will see
    # the loaded SAE's own architecture (a pretrained SAE need not be the sae.architecture param)
    metrics: dict[str, Any] = {
        "architecture": sae.cfg.architecture(),
        **sae_quality(sae, activations_dir / "heldout"),
    }
    if src.kind != "synthetic":  # lm: labels from top-activating tokens, cyclic families from labels
        metrics["lm"] = write_labels_and_families(sae, src.lm, activations_dir, out_dir)  # + CE score
        return metrics, []
    truth = np.load(source_dir / "truth.npz")
    rec = ground_truth_recovery(sae, truth["directions"], cfg.recovery_threshold)
    families = storage.read_json(source_dir / "truth.json")["families"]
    storage.write_json(
        out_dir / "families.json", families_in_latent_space(families, rec["best_latent"], rec["best_cosine"])
    )
    storage.write_json(
        out_dir / "latent_labels.json",
        latent_labels(families, rec["best_latent"], rec["best_cosine"], sae.cfg.d_sae),
    )
    metrics["ground_truth"] = {k: rec[k] for k in ("mean_best_cosine", "frac_recovered", "threshold")}
    # one SAE: a bootstrap over the true features (percentile, 1000 resamples)
    best = np.asarray(rec["best_cosine"], dtype=np.float64)
    metrics["ground_truth"]["frac_recovered_interval"] = bootstrap_interval(best >= rec["threshold"])
    metrics["ground_truth"]["mean_best_cosine_interval"] = bootstrap_interval(best)
    # SAELens' synthetic metrics: F1 over all latents shows filler latents the cosines hide
    metrics["synthetic"] = synthetic_sae_metrics(sae, activations_dir / "heldout", truth["directions"])
    hist = np.histogram(rec["best_cosine"], bins=20, range=(0, 1))[0]
    return metrics, [[round(0.025 + 0.05 * i, 3), int(c)] for i, c in enumerate(hist)]
