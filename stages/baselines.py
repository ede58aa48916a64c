"""Stage `baselines`: PCA, no-superposition, random-encoder and model-neuron codecs at the
Squeezer's M, on the same data and metrics (see neural_codec.pipeline.baselines).

Params: `baselines`, `squeezer` (M, importance, init, bias_init), `features.top_k`. Reads
data/features, data/sae, data/activations. Writes metrics/baselines.json ({method: metrics})
plots/baselines/fvu.csv and the trained decoders' loss curves
(plots/baselines/curves/plots/metrics/{random_encoder,model_neurons}.tsv).
"""

from __future__ import annotations

from neural_codec.params import load_params
from neural_codec.pipeline import baselines
from neural_codec.stage import record_timing, run


def main() -> None:
    result = baselines.run(load_params())
    baselines.write(result)
    for method, timing in result.timings.items():
        record_timing(method, timing)
    print(baselines.summary(result))


if __name__ == "__main__":
    run("baselines", main)
