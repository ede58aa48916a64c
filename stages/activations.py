"""Stage `activations`: run the source model over N samples, cache SAE inputs and neurons in shards."""

from neural_codec import paths, storage
from neural_codec.config import ActivationsConfig, SourceConfig
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.source.build import extract_source_activations
from neural_codec.stage import record_timing, run


def main() -> None:
    params = load_params()
    src = from_dict(SourceConfig, params.get("source"), "source")
    cfg = from_dict(ActivationsConfig, params.get("activations"), "activations")
    require_inputs(paths.SOURCE / "model.pt")
    with storage.atomic_dir(paths.ACTIVATIONS) as out:
        metrics, timings = extract_source_activations(src, cfg, params.get("sae"), paths.SOURCE, out)
    for key, value in timings.items():  # tokens/s per split (lm): timings/, not metrics/
        record_timing(key, value)
    storage.write_json(paths.metrics_file("activations"), metrics)


if __name__ == "__main__":
    run("activations", main)
