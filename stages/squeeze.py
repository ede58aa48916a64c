"""Stage `squeeze`: train the Squeezer (M ReLU synthetic neurons) on the top-k SAE features
(see neural_codec.pipeline.squeeze).

Params: `squeezer`, `features.top_k`, `features.min_value`, `source` (kind, lm). Reads
data/features, data/sae, data/activations/heldout. Writes data/squeeze/{squeezer.pt,
heldout_neurons.npy} (one atomic directory), metrics/squeeze.json ({"squeezer": codec metrics})
and plots/squeeze/curves/ (dvclive TSV).
"""

from __future__ import annotations

from neural_codec.params import load_params
from neural_codec.pipeline import squeeze
from neural_codec.stage import record_timing, run


def main() -> None:
    result = squeeze.run(load_params())
    squeeze.write(result)
    record_timing("samples_per_s", result.model.samples_per_s)
    record_timing("train_seconds", result.train_seconds)
    print(squeeze.summary(result))


if __name__ == "__main__":
    run("squeeze", main)
