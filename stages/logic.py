"""Stage `logic`: do features that share a synthetic neuron co-occur less (TMS) or more (BOWS)?
(see neural_codec.pipeline.logic and neural_codec.analysis.logic).

Params: `logic`. Reads data/squeeze/{squeezer.pt,heldout_neurons.npy}, data/features,
data/labels/families.json. Writes metrics/logic.json, data/logic/truth_tables.json,
plots/logic/lift.{csv,png}.
"""

from __future__ import annotations

from neural_codec.config import LogicConfig
from neural_codec.params import load_section
from neural_codec.pipeline import logic
from neural_codec.stage import run


def main() -> None:
    result = logic.run(load_section(LogicConfig, "logic"))
    logic.write(result)
    print(logic.summary(result.metrics))


if __name__ == "__main__":
    run("logic", main)
