"""Stage `source`: plant ground-truth features and train the toy model (or prepare an LM source)."""

from neural_codec import paths, storage
from neural_codec.config import SourceConfig
from neural_codec.params import from_dict, load_params
from neural_codec.source.build import build_source
from neural_codec.stage import run


def main() -> None:
    cfg = from_dict(SourceConfig, load_params().get("source"), "source")
    with storage.atomic_dir(paths.SOURCE) as out:
        result = build_source(cfg, out)
    storage.write_json(paths.metrics_file("source"), result["metrics"])
    # Always written (a DVC output); an lm source trains nothing here, so it is header-only.
    storage.write_csv(
        paths.plot_dir("source") / "toy_model_curve.csv",
        ["step", "loss", "loss_seed2"],
        result.get("curve") or [],
    )


if __name__ == "__main__":
    run("source", main)
