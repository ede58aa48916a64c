"""Stage `sae`: train a SAELens SAE on the activations (or load a pretrained one) and score it."""

from pathlib import Path

import numpy as np

from neural_codec import storage
from neural_codec.config import SAEConfig, SourceConfig
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.sae import (
    families_in_latent_space,
    ground_truth_recovery,
    latent_labels,
    load_sae,
    sae_quality,
    train_sae,
)
from neural_codec.stage import run

ACT = Path("data/activations")


def main() -> None:
    params = load_params()
    src = from_dict(SourceConfig, params.get("source"), "source")
    cfg = from_dict(SAEConfig, params.get("sae"), "sae")
    require_inputs(ACT / "train" / "meta.json", ACT / "heldout" / "meta.json")
    recovery_rows: list = []  # no ground truth for an lm source: the plot stays header-only
    with storage.atomic_dir("data/sae") as out:
        if cfg.pretrained:  # lm: a SAELens registry SAE or a folder, re-saved in SAELens format
            from neural_codec import lm

            lm.load_sae(cfg.pretrained_release, cfg.pretrained_sae_id, cfg.path).save_model(out)
        else:
            train_sae(cfg, ACT / "train").save_inference_model(out)
        sae = load_sae(out)  # what downstream stages will see
        # the loaded SAE's own architecture (a pretrained SAE need not be the sae.architecture param)
        metrics = {"architecture": sae.cfg.architecture(), **sae_quality(sae, ACT / "heldout")}
        if src.kind == "synthetic":
            truth = np.load("data/source/truth.npz")
            rec = ground_truth_recovery(sae, truth["directions"], cfg.recovery_threshold)
            families = storage.read_json("data/source/truth.json")["families"]
            storage.write_json(
                out / "families.json",
                families_in_latent_space(families, rec["best_latent"], rec["best_cosine"]),
            )
            storage.write_json(
                out / "latent_labels.json",
                latent_labels(families, rec["best_latent"], rec["best_cosine"], sae.cfg.d_sae),
            )
            metrics["ground_truth"] = {k: rec[k] for k in ("mean_best_cosine", "frac_recovered", "threshold")}
            hist = np.histogram(rec["best_cosine"], bins=20, range=(0, 1))[0]
            recovery_rows = [[round(0.025 + 0.05 * i, 3), int(c)] for i, c in enumerate(hist)]
        else:  # lm: labels from top-activating tokens, cyclic families from labels
            from neural_codec import lm

            metrics["lm"] = lm.write_labels_and_families(sae, src.lm, ACT, out)  # + CE-loss score
    storage.write_json("metrics/sae.json", metrics)
    storage.write_csv("plots/sae/recovery_hist.csv", ["cosine", "true_features"], recovery_rows)


if __name__ == "__main__":
    run("sae", main)
