"""Stage `source`: plant ground-truth features and train the toy model (or prepare an LM source)."""

from neural_codec import paths, storage
from neural_codec.config import SourceConfig
from neural_codec.curves import write_curves
from neural_codec.params import from_dict, load_params
from neural_codec.pipeline.source import run_source
from neural_codec.stage import run


def main() -> None:
    cfg = from_dict(SourceConfig, load_params().get("source"), "source")
    with storage.atomic_dir(paths.SOURCE) as out:
        result = run_source(cfg, out)
    storage.write_json(paths.metrics_file("source"), result["metrics"])
    # Always written (DVC outputs); an lm source trains nothing here, so they are header-only.
    curve = result.get("curve") or []
    write_curves(
        paths.curve_dir("source"),
        {
            "loss": [{"step": c[0], "loss": c[1]} for c in curve],
            "loss_seed2": [{"step": c[0], "loss": c[2]} for c in curve],
        },
    )


if __name__ == "__main__":
    run("source", main)
