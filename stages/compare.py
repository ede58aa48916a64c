"""Stage `compare`: do the Squeezer's synthetic neurons fire like the model's neurons, beside
floors (untrained, permuted-feature Squeezers) and ceilings (a second Squeezer seed, the model's
second seed)? See neural_codec.pipeline.compare.

Params: `compare` (and `squeezer` when squeezer.pt holds no config). Reads data/squeeze,
data/activations, data/sae, data/features, data/source. Writes metrics/compare.json,
plots/compare/matched_r.csv, plots/compare/correlation_matrix.png and (compare.predictability)
plots/compare/predictability.{csv,png}.
"""

from __future__ import annotations

from neural_codec.config import CompareConfig
from neural_codec.params import load_section
from neural_codec.pipeline import compare
from neural_codec.stage import run


def main() -> None:
    cfg = load_section(CompareConfig, "compare")
    result = compare.run(cfg)
    compare.write(result, cfg)
    print(compare.summary(result))


if __name__ == "__main__":
    run("compare", main)
