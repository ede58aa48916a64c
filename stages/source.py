"""Stage `source`: plant ground-truth features and train the toy model (or prepare an LM source)."""

from neural_codec import storage
from neural_codec.config import SourceConfig
from neural_codec.params import from_dict, load_params
from neural_codec.source import build_synthetic_source
from neural_codec.stage import run


def main() -> None:
    cfg = from_dict(SourceConfig, load_params().get("source"), "source")
    with storage.atomic_dir("data/source") as out:
        if cfg.kind == "synthetic":
            result = build_synthetic_source(cfg, out)
        else:  # lm: the model is loaded by name in `activations`; record and check the config here
            from neural_codec import lm

            result = lm.prepare_source(cfg.lm, out)
    storage.write_json("metrics/source.json", result["metrics"])
    # Always written (a DVC output); an lm source trains nothing here, so it is header-only.
    storage.write_csv(
        "plots/source/toy_model_curve.csv", ["step", "loss", "loss_seed2"], result.get("curve") or []
    )


if __name__ == "__main__":
    run("source", main)
