"""Stage `activations`: run the source model over N samples, cache SAE inputs and neurons in shards."""

from pathlib import Path

from neural_codec import storage
from neural_codec.config import ActivationsConfig, SourceConfig
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.source import extract_synthetic
from neural_codec.stage import run


def main() -> None:
    params = load_params()
    src = from_dict(SourceConfig, params.get("source"), "source")
    cfg = from_dict(ActivationsConfig, params.get("activations"), "activations")
    require_inputs("data/source/model.pt")
    with storage.atomic_dir("data/activations") as out:
        if src.kind == "synthetic":
            stats = extract_synthetic(src, cfg, Path("data/source"), out)
        else:  # lm: stream the TransformerLens model's hooks into the same shard format
            from neural_codec import lm

            # a pretrained SAE's own hook, BOS, context and model kwargs (SAELens metadata) win
            lm_cfg = lm.config_for_sae(src.lm, params.get("sae"))
            stats = lm.extract_activations(lm_cfg, out, cfg)
    storage.write_json("metrics/activations.json", {"kind": src.kind, **stats})


if __name__ == "__main__":
    run("activations", main)
