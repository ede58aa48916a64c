"""Stage `seeds`: the Squeezer over `seeds.n_seeds` seeds, each headline as mean [95% CI] beside
its untrained floor's; see neural_codec.pipeline.seeds.

Params: `seeds`, `squeezer`, `geometry`, `logic`, `compare`, `baselines`. Reads data/squeeze,
data/features, data/activations, data/sae, metrics/baselines.json. Writes metrics/intervals.json.
"""

from __future__ import annotations

from neural_codec.params import load_params
from neural_codec.pipeline import seeds
from neural_codec.stage import record_timing, run


def main() -> None:
    out = seeds.run(load_params())
    print(seeds.summary(out))
    for key, seconds in seeds.write(out).items():
        record_timing(key, seconds)


if __name__ == "__main__":
    run("seeds", main)
