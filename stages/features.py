"""Stage `features`: SAE-encode the activations, keep the top-k latents per row, store them sparsely."""

from pathlib import Path

import numpy as np

from neural_codec import storage
from neural_codec.config import FeaturesConfig
from neural_codec.features import encode_split, validate_against_sae
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.sae import load_sae
from neural_codec.stage import run

ACT = Path("data/activations")


def main() -> None:
    cfg = from_dict(FeaturesConfig, load_params().get("features"), "features")
    require_inputs("data/sae/cfg.json", ACT / "train" / "meta.json", ACT / "heldout" / "meta.json")
    sae = load_sae("data/sae")
    validate_against_sae(cfg, sae.cfg.d_sae)
    metrics = {"top_k": cfg.top_k, "n_features": int(sae.cfg.d_sae)}
    with storage.atomic_dir("data/features") as out:
        for split in ("train", "heldout"):
            stats = encode_split(sae, cfg, ACT / split, out / split)
            if split == "train":
                np.save(out / "firing_freq.npy", stats["firing_freq"])
                freq = stats["firing_freq"]
                metrics["alive_features"] = int((freq > 0).sum())
                metrics["max_firing_freq"] = float(freq.max())
            metrics[split] = {"rows": stats["rows"], "mean_l0": stats["mean_l0"]}
    storage.write_json("metrics/features.json", metrics)


if __name__ == "__main__":
    run("features", main)
