"""Stage `sae`: train a SAELens SAE (or a transcoder) on the activations, or load a pretrained
one, and score it. Writes data/sae, metrics/sae.json, plots/sae/recovery_hist.csv and the training
curves plots/sae/curves/plots/metrics/{loss,mse,l0}.tsv (header-only for a pretrained SAE)."""

from neural_codec import paths, storage
from neural_codec.config import SAEConfig, SourceConfig
from neural_codec.curves import write_curves
from neural_codec.params import from_dict, load_params, require_inputs
from neural_codec.sae_build import build_sae
from neural_codec.stage import run


def main() -> None:
    params = load_params()
    src = from_dict(SourceConfig, params.get("source"), "source")
    cfg = from_dict(SAEConfig, params.get("sae"), "sae")
    require_inputs(paths.ACTIVATIONS / "train" / "meta.json", paths.ACTIVATIONS / "heldout" / "meta.json")
    with storage.atomic_dir(paths.SAE) as out:
        metrics, recovery_rows, curves = build_sae(src, cfg, paths.ACTIVATIONS, paths.SOURCE, out)
    storage.write_json(paths.metrics_file("sae"), metrics)
    # no ground truth for an lm source: the plot stays header-only
    storage.write_csv(paths.plot_dir("sae") / "recovery_hist.csv", ["cosine", "true_features"], recovery_rows)
    write_curves(paths.curve_dir("sae"), curves)


if __name__ == "__main__":
    run("sae", main)
