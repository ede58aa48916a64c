"""Stage `tms`: the Toy Models of Superposition reproduction through the project's Squeezer and
geometry code, on TMS's synthetic features (see neural_codec.pipeline.tms). Depends on no other
stage.

Params: `tms`, `geometry`. Writes metrics/tms.json ({setting: {model: summary}}) and
plots/tms/{dstar.csv, dstar.png, pentagon.png}.
"""

from __future__ import annotations

from neural_codec.config import GeometryConfig, TMSConfig
from neural_codec.params import load_section
from neural_codec.pipeline import tms
from neural_codec.stage import record_timing, run


def main() -> None:
    gcfg = load_section(GeometryConfig, "geometry")
    result = tms.run(load_section(TMSConfig, "tms"), gcfg)
    tms.write(result, gcfg)
    record_timing("train_and_analyse_seconds", result.seconds)
    print(tms.summary(result))


if __name__ == "__main__":
    run("tms", main)
