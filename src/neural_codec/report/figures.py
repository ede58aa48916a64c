"""The report's own figures, drawn from the stages' plot CSVs (PNG bytes, for embedding).

The stages' PNGs are embedded as they are; these are the figures made from CSVs (training curves,
histograms, the FVU bars, the matched-neuron |r| curves). matplotlib comes from
`neural_codec.plotting` (the one Agg set-up); the PNGs carry no metadata, so the same inputs give
byte-identical figures.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from neural_codec.curves import read_curve
from neural_codec.plotting import png_bytes, pyplot
from neural_codec.report.metrics import fmt


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return (rows[0], rows[1:]) if rows else ([], [])


def _column(rows: list[list[str]], j: int) -> list[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r[j]))
        except (ValueError, IndexError):
            out.append(float("nan"))
    return out


def curve_figure(directory: Path, title: str, logy: bool = True) -> bytes:
    """Training curves: every dvclive metric TSV under `directory` (curves.write_curves) by step."""
    fig, ax = pyplot().subplots(figsize=(6.4, 3.4))
    for path in sorted((directory / "plots" / "metrics").glob("*.tsv")):
        steps, values = read_curve(path)
        ax.plot(steps, values, label=path.stem, lw=1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


#: an interval for a figure: (mean, ci_low, ci_high), or None where there is none
Interval = tuple[float, float, float] | None


def _interval(iv: Any) -> Interval:
    """(mean, ci_low, ci_high) of an intervals.json-style dict, None unless all three are numbers."""
    if not isinstance(iv, dict):
        return None
    t = tuple(iv.get(k) for k in ("mean", "ci_low", "ci_high"))
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in t)
    return (float(t[0]), float(t[1]), float(t[2])) if ok else None  # type: ignore[arg-type]


def bars_figure(
    labels: list[str],
    values: list[float | None],
    title: str,
    xlabel: str,
    intervals: list[Any] | None = None,
) -> bytes:
    """Horizontal bars, the first (the Squeezer) highlighted; a missing value is an empty bar.
    `intervals` (one per bar, intervals.json-style dicts or None): a black error bar at each
    interval's mean spanning [ci_low, ci_high] (over seeds, or a bootstrap over rows)."""
    fig, ax = pyplot().subplots(figsize=(6.4, 0.45 * len(labels) + 1.2))
    vals = [v if v is not None else 0.0 for v in values]
    ax.barh(range(len(labels)), vals, color=["C3"] + ["C0"] * (len(labels) - 1))
    ivs = [_interval(iv) for iv in intervals or []]
    for i, iv in enumerate(ivs):
        if iv is not None:
            mean, lo, hi = iv
            ax.errorbar([mean], [i], xerr=[[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]], fmt="o",
                        color="k", ms=3, capsize=3, lw=1)  # fmt: skip
    tops = [
        max(v, iv[2]) if iv is not None else v for v, iv in zip(vals, ivs + [None] * len(vals), strict=False)
    ]
    for i, v in enumerate(values):
        ax.text(tops[i], i, " " + fmt(v), va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(tops + [1e-9]) * 1.25)
    fig.tight_layout()
    return png_bytes(fig)


def histogram_csv_figure(path: Path, title: str, xlabel: str, ylabel: str) -> bytes:
    """Bars of every CSV column against the first (the bin centres)."""
    header, rows = read_csv(path)
    fig, ax = pyplot().subplots(figsize=(6.4, 3.2))
    x = _column(rows, 0)
    width = (x[1] - x[0]) * 0.9 if len(x) > 1 else 0.05
    for j, name in enumerate(header[1:], start=1):
        ax.bar(x, _column(rows, j), width=width, alpha=0.7, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def matched_r_figure(path: Path, bands: dict[str, Any] | None = None) -> bytes:
    """plots/compare/matched_r.csv: sorted |r| of matched neuron pairs, one line per condition.
    `bands` {condition: intervals.json-style dict}: the condition's Hungarian mean |r| over
    seeds, a shaded band [ci_low, ci_high] in the condition's colour with its mean dotted."""
    header, rows = read_csv(path)
    fig, ax = pyplot().subplots(figsize=(6.4, 3.4))
    x = _column(rows, 0)
    styles: dict[str, dict[str, Any]] = {"squeezer_vs_model": dict(color="C3", lw=2)}
    for j, name in enumerate(header[1:], start=1):
        style = styles.get(name, dict(lw=1, ls="--" if name.startswith("floor") else "-"))
        (line,) = ax.plot(x, _column(rows, j), label=name, **style)
        iv = _interval((bands or {}).get(name))
        if iv is not None:
            ax.axhspan(iv[1], iv[2], color=line.get_color(), alpha=0.15, lw=0,
                       label=f"{name}: mean |r| 95% CI over seeds")  # fmt: skip
            ax.axhline(iv[0], color=line.get_color(), lw=0.8, ls=":")
    ax.set_xlabel("matched pair (sorted by |r|)")
    ax.set_ylabel("|r| of the Hungarian-matched pair")
    ax.set_ylim(0, 1)
    ax.set_title("Matched-neuron correlation against floors and ceilings", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
