"""Numbers with citations: the metrics files of one run, read once, and the report's one number format.

Every number on the page is a `Num`: the citation it comes from (`squeeze.json:squeezer.fvu`,
`<file>.json:<dotted.key>`) and the value found there. A missing file or key gives the value None,
which renders as "n/a", never as a guess. The truth tables are not a metrics file: they are read
from `data/logic/truth_tables.json` and cited as `truth_tables.json:<row>.<key>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neural_codec import paths, storage

#: the metrics files the report reads, in pipeline order (metrics/<stem>.json)
STAGES = (
    "source",
    "activations",
    "sae",
    "features",
    "squeeze",
    "baselines",
    "geometry",
    "logic",
    "compare",
    "tms",
    "intervals",
)  # fmt: skip  (intervals: the headlines over seeds, stage `seeds`)
#: the cite stem of paths.TRUTH_TABLES (a list of truth-table dicts written by the logic stage)
TRUTH_TABLES = "truth_tables"
BASELINES = ("pca", "no_superposition", "random_encoder", "model_neurons")
BASELINE_LABELS = {
    "pca": "PCA (linear optimum at M)",
    "no_superposition": "no superposition (top-M features)",
    "random_encoder": "random encoder, trained decoder",
    "model_neurons": "the model's own neurons",
}
NA = "n/a"


def fmt(value: Any) -> str:
    """The one number format of the report: 3 significant digits; None/NaN/inf -> "n/a"."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return NA
        return f"{value:.3g}"
    return str(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def lookup(metrics: dict[str, Any], cite: str) -> Any:
    """Value at `<stage>.json:<dotted.key>` (a digit indexes a list); a `+`-joined key list is
    the sum of its terms.

    Returns None when the file, a key or a term is missing (the caller shows "n/a").
    """
    stage, _, key = cite.partition(":")
    if "+" in key:
        terms = [lookup(metrics, f"{stage}:{k}") for k in key.split("+")]
        if not all(_is_number(t) for t in terms):
            return None
        return sum(terms)
    data = metrics.get(stage.removesuffix(".json"))
    for part in key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]  # list items by position (truth_tables.json:0.neuron)
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


@dataclass
class Num:
    """A number on the page: its label, the metric it comes from and the value found there."""

    cite: str
    value: Any
    label: str = ""

    @property
    def text(self) -> str:
        return fmt(self.value)

    @property
    def number(self) -> float | None:
        v = self.value
        if not _is_number(v) or not math.isfinite(v):
            return None
        return float(v)


class Metrics:
    """The metrics files of one run (and the truth tables), read once; `num(cite)` gives a cited number."""

    def __init__(self, data: dict[str, Any], missing: list[str] | None = None):
        self.data = data
        self.missing = missing or []

    @classmethod
    def load(cls, metrics_dir: str | Path, truth_tables: str | Path = paths.TRUTH_TABLES) -> Metrics:
        files = {stage: Path(metrics_dir) / f"{stage}.json" for stage in STAGES}
        files[TRUTH_TABLES] = Path(truth_tables)
        data: dict[str, Any] = {}
        missing = []
        for stem, p in files.items():
            if p.exists():
                data[stem] = storage.read_json(p)
            else:
                missing.append(str(p))
        return cls(data, missing)

    def get(self, cite: str) -> Any:
        return lookup(self.data, cite)

    def num(self, cite: str, label: str = "") -> Num:
        return Num(cite, self.get(cite), label)

    def first(self, cites: Iterable[str], label: str = "") -> Num:
        """The first of several candidate keys that exists (e.g. an lm block's layouts)."""
        cites = list(cites)
        for c in cites:
            if self.get(c) is not None:
                return self.num(c, label)
        return Num(cites[0], None, label)

    def scalars(self, stem: str, prefix: str = "") -> list[str]:
        """The dotted keys of every scalar in one file (lists skipped) that start with `prefix`."""
        return [k for k in _scalar_keys(self.data.get(stem)) if k.startswith(prefix)]


def _scalar_keys(d: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _scalar_keys(v, key + ".")
        elif not isinstance(v, list):
            out.append(key)
    return out
