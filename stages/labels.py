"""Stage `labels`: latent labels and the families the analyses read (data/labels)."""

from neural_codec import paths, storage
from neural_codec.config import SAEConfig, SourceConfig
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.pipeline.labels import build_labels
from neural_codec.stage import run


def main() -> None:
    params = load_params()
    src = from_dict(SourceConfig, params.get("source"), "source")
    cfg = from_dict(SAEConfig, params.get("sae"), "sae")
    require_inputs(paths.SAE / "cfg.json", paths.ACTIVATIONS / "train" / "meta.json")
    with storage.atomic_dir(paths.LABELS) as out:
        metrics = build_labels(src, cfg, paths.ACTIVATIONS, paths.SOURCE, paths.SAE, out)
    storage.write_json(paths.metrics_file("labels"), metrics)


if __name__ == "__main__":
    run("labels", main)
