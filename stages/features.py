"""Stage `features`: SAE-encode the activations, keep the top-k latents per row, store them sparsely."""

from neural_codec import paths, storage
from neural_codec.config import FeaturesConfig
from neural_codec.features import encode_features
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.stage import run


def main() -> None:
    cfg = from_dict(FeaturesConfig, load_params().get("features"), "features")
    act = paths.ACTIVATIONS
    require_inputs(paths.SAE / "cfg.json", act / "train" / "meta.json", act / "heldout" / "meta.json")
    with storage.atomic_dir(paths.FEATURES) as out:
        metrics = encode_features(cfg, paths.SAE, act, out, paths.SOURCE)
    storage.write_json(paths.metrics_file("features"), metrics)


if __name__ == "__main__":
    run("features", main)
