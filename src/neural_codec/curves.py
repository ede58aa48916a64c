"""Step-wise training curves written by dvclive's metric writer, for `dvc plots show/diff`.

The trainers keep their curves in memory (e.g. squeezer.train's CurveLogger); the stages' write()
functions hand the collected points here. dvclive's `Metric` is the TSV writer `Live.log_metric`
uses (`<dir>/plots/metrics/<name>.tsv`, columns step and <name>), called without `Live` itself:
`Live` looks for a DVC repository (and runs `dvc init` in a bare git one), adds files to git
inside `dvc exp run`, and may post to Studio; none of that belongs in a pipeline stage. No
timestamps are written, so the same curve gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dvclive.plots import Metric

from neural_codec import storage

#: one training curve: points {"step": int, "loss": float}
Curve = Sequence[Mapping[str, float]]


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
