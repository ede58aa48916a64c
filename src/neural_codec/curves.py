"""Step-wise training curves written by dvclive's metric writer, for `dvc plots show/diff`.

The trainers keep their curves in memory with `CurveLogger` (the Squeezer, the baselines'
decoders, the SAE and the transcoder); the stages' write() functions hand the collected points
here. dvclive's `Metric` is the TSV writer `Live.log_metric`
uses (`<dir>/plots/metrics/<name>.tsv`, columns step and <name>), called without `Live` itself:
`Live` looks for a DVC repository (and runs `dvc init` in a bare git one), adds files to git
inside `dvc exp run`, and may post to Studio; none of that belongs in a pipeline stage. No
timestamps are written, so the same curve gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dvclive.plots import Metric

from neural_codec import storage

#: one training curve: points {"step": int, "loss": float}
Curve = Sequence[Mapping[str, float]]


@dataclass
class CurveLogger:
    """Mean loss over each logging interval, ~`points` points over training.

    `add` takes the loss tensor and sums it in float64 where it lives, so a GPU step never waits
    for a host read; only a logging point reads it (the same float64 sums as Python floats)."""

    n_steps: int
    points: int = 50
    curve: list[dict[str, float]] = field(default_factory=list)
    _sum: Any = 0.0
    _count: int = 0

    def add(self, step: int, loss: torch.Tensor | float) -> bool:
        """Add one step's loss; True when this step closed a logging interval."""
        self._sum = self._sum + (loss.detach().double() if isinstance(loss, torch.Tensor) else float(loss))
        self._count += 1
        every = max(1, self.n_steps // self.points)
        if (step + 1) % every == 0 or step + 1 == self.n_steps:
            self.curve.append({"step": step + 1, "loss": float(self._sum) / self._count})
            self._sum, self._count = 0.0, 0
            return True
        return False


class CurveLoggers:
    """One `CurveLogger` per named quantity (e.g. loss, mse, l0), closed on the same steps."""

    def __init__(self, names: Sequence[str], n_steps: int, points: int = 50):
        self.logs = {name: CurveLogger(n_steps, points) for name in names}

    def add(self, step: int, **values: torch.Tensor | float) -> None:
        for name, log in self.logs.items():
            log.add(step, values[name])

    @property
    def curves(self) -> dict[str, list[dict[str, float]]]:
        return {name: log.curve for name, log in self.logs.items()}


def write_curves(directory: str | Path, curves: Mapping[str, Curve]) -> None:
    """Replace `directory` with one `plots/metrics/<name>.tsv` per curve (y column `<name>`).

    An empty curve (nothing trained, e.g. an lm source) gives a header-only file, so a declared
    DVC output always exists."""
    with storage.atomic_dir(directory) as tmp:
        for name, curve in curves.items():
            metric = Metric(name, str(tmp / "plots"))
            if not curve:
                metric.output_path.write_text(f"step\t{name}\n")
            for point in curve:
                metric.step = int(point["step"])
                metric.dump(float(point["loss"]))


def read_curve(path: str | Path) -> tuple[list[int], list[float]]:
    """(steps, values) of one dvclive metric TSV."""
    lines = Path(path).read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines if line]
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows]
