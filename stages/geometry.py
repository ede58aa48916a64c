"""Stage `geometry`: feature dimensionality, polytopes and circles of the Squeezer's weights,
beside an untrained and a permuted-feature null (see neural_codec.pipeline.geometry).

Params: `geometry`, `squeezer`. Reads data/squeeze/squeezer.pt, data/labels/families.json,
data/features/{train,firing_freq.npy}. Writes metrics/geometry.json,
plots/geometry/dimensionality_hist.{csv,png}, polytopes.png and circles.png.
"""

from __future__ import annotations

from neural_codec.config import GeometryConfig, SqueezerConfig
from neural_codec.params import load_section
from neural_codec.pipeline import geometry
from neural_codec.stage import run


def main() -> None:
    cfg = load_section(GeometryConfig, "geometry")
    result = geometry.run(cfg, load_section(SqueezerConfig, "squeezer"))
    geometry.write(result, cfg)
    print(geometry.summary(result.metrics))


if __name__ == "__main__":
    run("geometry", main)
