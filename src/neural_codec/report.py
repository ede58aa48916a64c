"""The report: one page (report/index.html, report/REPORT.md) that says whether the hypotheses held.

Why a library and not a template: every number on the page must be traceable to a metrics file.
The page is built from `Num`s, each of which carries its citation (`squeeze.json:fvu`) and the
value read from that file; a missing file or key renders as "n/a", never as a guess. The HTML
marks each number with `data-metric="<file>:<key>"` so a test (or a reader) can check it against
the metrics, and embeds every figure as a base64 PNG so the page is one self-contained file;
REPORT.md links the same figures, copied to report/figures/.

Numbers are shown with 3 significant digits (`fmt`). The verdict table has one block per
hypothesis, each measure beside its floors (nulls, controls, linear baselines) and ceilings
(second seeds, the SAE itself); its outcome column is a comparison of the shown numbers.
"""

from __future__ import annotations

import base64
import csv
import html
import io as _io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neural_codec import storage

# The metrics files the report reads, in pipeline order (metrics/<stem>.json).
STAGES = ("source", "activations", "sae", "features", "squeeze", "baselines", "geometry", "logic", "compare")
BASELINES = ("pca", "no_superposition", "random_encoder", "model_neurons")
SWEEP_COLUMNS = ("squeezer",) + BASELINES  # FVU columns of the FVU-against-M plots
BASELINE_LABELS = {
    "pca": "PCA (linear optimum at M)",
    "no_superposition": "no superposition (top-M features)",
    "random_encoder": "random encoder, trained decoder",
    "model_neurons": "the model's own neurons",
}
IDEAL_POLYTOPES = ("digon", "triangle", "tetrahedron", "pentagon", "square_antiprism")
NA = "n/a"


# --------------------------------------------------------------------------------------------
# Numbers with citations
# --------------------------------------------------------------------------------------------


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


def lookup(metrics: dict[str, Any], cite: str) -> Any:
    """Value at `<stage>.json:<dotted.key>` (a digit indexes a list); a `+`-joined key list is
    the sum of its terms.

    Returns None when the file, a key or a term is missing (the caller shows "n/a").
    """
    stage, _, key = cite.partition(":")
    data = metrics.get(stage.removesuffix(".json"))
    if "+" in key:
        terms = [lookup(metrics, f"{stage}:{k}") for k in key.split("+")]
        if any(not isinstance(t, (int, float)) or isinstance(t, bool) for t in terms):
            return None
        return sum(terms)
    for part in key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]  # list items by position (truth_tables.0.neuron)
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
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v)


class Metrics:
    """The metrics files of one run, read once; `num(cite)` gives a cited number."""

    def __init__(self, data: dict[str, Any], missing: list[str] | None = None):
        self.data = data
        self.missing = missing or []

    @classmethod
    def load(cls, metrics_dir: str | Path) -> Metrics:
        data: dict[str, Any] = {}
        missing = []
        for stage in STAGES:
            p = Path(metrics_dir) / f"{stage}.json"
            if p.exists():
                data[stage] = storage.read_json(p)
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


# --------------------------------------------------------------------------------------------
# Page model: sections of paragraphs, tables and figures, rendered to Markdown and HTML
# --------------------------------------------------------------------------------------------

Cell = str | Num | list  # a list mixes text and Nums in one cell


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    css: str = ""


@dataclass
class Figure:
    name: str  # file name under report/figures/
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)
    anchor: str = ""


@dataclass
class VerdictRow:
    """One measure of one hypothesis: the Squeezer's value beside its floors and ceilings.

    `better`: "higher", "lower" or "" (no direction; the outcome then just states the numbers).
    The outcome is decided from the shown numbers only: the value beats every floor.
    """

    hypothesis: str
    measure: str | list
    value: Num
    floors: list[Num] = field(default_factory=list)
    ceilings: list[Num] = field(default_factory=list)
    better: str = "higher"
    outcome: list[Cell] | None = None  # set explicitly (e.g. the logic verdict) or computed

    def decide(self) -> list[Cell]:
        if self.outcome is not None:
            return self.outcome
        v = self.value.number
        floors = [f for f in self.floors if f.number is not None]
        if not self.better:
            return ["no direction (descriptive)"]
        if v is None or not floors:
            return [NA]
        if self.better == "higher":
            best = max(floors, key=lambda f: f.number)
            ok = v > best.number
            return [
                "above every floor: " if ok else "not above every floor: ",
                self.value,
                " > " if ok else " <= ",
                best,
                f" ({best.label})",
            ]
        best = min(floors, key=lambda f: f.number)
        ok = v < best.number
        return [
            "below every floor: " if ok else "not below every floor: ",
            self.value,
            " < " if ok else " >= ",
            best,
            f" ({best.label})",
        ]


def _labelled(nums: list[Num]) -> list[Cell]:
    out: list[Cell] = []
    for i, n in enumerate(nums):
        if i:
            out.append("; ")
        out += [f"{n.label} ", n] if n.label else [n]
    return out or ["—"]


def verdict_table(rows: list[VerdictRow]) -> Table:
    header = ["Hypothesis", "Measure", "Squeezer", "Floor(s)", "Ceiling(s)", "Outcome"]
    body = []
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1].hypothesis != r.hypothesis  # name each block once
        body.append(
            [
                r.hypothesis if first else "",
                r.measure,
                r.value,
                _labelled(r.floors),
                _labelled(r.ceilings),
                r.decide(),
            ]
        )
    return Table(header, body, css="verdict")


# --------------------------------------------------------------------------------------------
# The verdict rows (one block per hypothesis)
# --------------------------------------------------------------------------------------------


def _reference_row(h: str, measure: str, value: Num, ref: Num) -> VerdictRow:
    """Squeezer against a reference code (lower is better), shown in the floor column."""
    if value.number is None or ref.number is None:
        outcome: list[Cell] = [NA]
    else:
        op = " < " if value.number < ref.number else " >= "
        outcome = ["Squeezer", op, "reference: ", value, op, ref]
    return VerdictRow(h, measure, value, [ref], [], better="lower", outcome=outcome)


def compression_rows(m: Metrics) -> list[VerdictRow]:
    h = "H1 compression: a ReLU bottleneck of M neurons carries F better than codes without superposition"
    floors = [
        m.num(f"baselines.json:{b}.fvu", BASELINE_LABELS[b])
        for b in ("pca", "no_superposition", "random_encoder")
    ]
    rows = [
        VerdictRow(
            h,
            "FVU of F on held-out rows (lower is better)",
            m.num("squeeze.json:fvu"),
            floors,
            [],
            better="lower",
        ),
        _reference_row(
            h,
            "against the model's own codec: FVU of F read out from the model's "
            "neurons (a reference, not a floor)",
            m.num("squeeze.json:fvu"),
            m.num("baselines.json:model_neurons.fvu", BASELINE_LABELS["model_neurons"]),
        ),
        VerdictRow(
            h,
            "explained variance of the SAE input, F_hat through the SAE decoder",
            m.num("squeeze.json:sae_explained_variance"),
            [m.num("baselines.json:pca.sae_explained_variance", "PCA")],
            [m.num("squeeze.json:sae_explained_variance_ceiling", "SAE on its own top-k F")],
        ),
        VerdictRow(
            h,
            "features represented (held-out slope of F_hat_i on F_i > 0.5)",
            m.num("squeeze.json:features_represented"),
            [
                m.num("baselines.json:pca.features_represented", "PCA"),
                m.num("baselines.json:no_superposition.features_represented", "no superposition"),
                m.num(
                    "baselines.json:random_encoder.features_represented", BASELINE_LABELS["random_encoder"]
                ),
            ],
            [m.num("squeeze.json:n_features_firing", "features that fire on held-out")],
        ),
    ]
    ce = m.first(
        ["squeeze.json:lm.ce_loss_score_reconstruct", "squeeze.json:lm.ce.ce_loss_score_reconstruct"]
    )
    if ce.value is not None:  # lm runs: next-token loss with the Squeezer's reconstruction
        rows.append(
            VerdictRow(
                h,
                "CE-loss score (0 = zero ablation, 1 = clean model)",
                ce,
                [],
                [
                    m.first(
                        ["squeeze.json:lm.ce_loss_score_topk", "squeeze.json:lm.ce.ce_loss_score_topk"],
                        "top-k F without the Squeezer",
                    ),
                    m.first(["sae.json:lm.ce.ce_loss_score_sae", "sae.json:lm.ce_loss_score_sae"], "SAE"),
                ],
                better="",
                outcome=["between ", ce, " and its ceilings"],
            )
        )
    return rows


def polytope_kinds(m: Metrics) -> list[str]:
    """The ideal polytope kinds geometry.json counts (all but "other" and "isolated")."""
    counts = m.get("geometry.json:encoder.polytopes")
    if not isinstance(counts, dict):
        return list(IDEAL_POLYTOPES)
    return [k for k in counts if k not in ("other", "isolated")]


def cyclic_families(m: Metrics) -> list[str]:
    circles = m.get("geometry.json:encoder.circles")
    return sorted(circles) if isinstance(circles, dict) else []


def geometry_rows(m: Metrics, part: str = "encoder") -> list[VerdictRow]:
    h = f"H2 geometry: the Squeezer's {part} weights form polytopes, lines and circles beyond nulls"
    g = "geometry.json"

    def nulls(key: str) -> list[Num]:
        return [
            m.num(f"{g}:null_untrained.{part}.{key}", "untrained"),
            m.num(f"{g}:null_permuted.{part}.{key}", "co-occurrence permuted"),
        ]

    kinds = polytope_kinds(m)
    poly = "+".join(f"{part}.polytopes.{k}" for k in kinds)
    poly_null = {
        n: "+".join(f"{n}.{part}.polytopes.{k}" for k in kinds) for n in ("null_untrained", "null_permuted")
    }
    found = m.get(f"{g}:{part}.lines")
    found = (
        [f for f, v in found.items() if isinstance(v, dict) and v.get("is_line")]
        if isinstance(found, dict)
        else []
    )
    rows = [
        VerdictRow(
            h,
            "D* = M / ||W||_F^2, dimensions per feature",
            m.num(f"{g}:{part}.D_star"),
            nulls("D_star"),
            better="",
        ),
        VerdictRow(
            h,
            "lines: polytope fractions (1, 3/4, ..., 1/3) where D piles up, count"
            + (f" (at {', '.join(found)})" if found else ""),
            m.num(f"{g}:{part}.n_lines"),
            nulls("n_lines"),
        ),
        VerdictRow(
            h,
            f"ideal polytopes in the interference graph ({', '.join(kinds)}), count",
            m.num(f"{g}:{poly}"),
            [
                m.num(f"{g}:{poly_null['null_untrained']}", "untrained"),
                m.num(f"{g}:{poly_null['null_permuted']}", "co-occurrence permuted"),
            ],
        ),
    ]
    for fam in cyclic_families(m):
        rows.append(
            VerdictRow(
                h,
                [
                    f"circle '{fam}': circular correlation (label-shuffle p = ",
                    m.num(f"{g}:{part}.circles.{fam}.p_value"),
                    ")",
                ],
                m.num(f"{g}:{part}.circles.{fam}.circular_corr"),
                nulls(f"circles.{fam}.circular_corr"),
            )
        )
        rows.append(
            VerdictRow(
                h,
                f"circle '{fam}': fraction of cyclic neighbours adjacent in angle (1 = in order)",
                m.num(f"{g}:{part}.circles.{fam}.neighbour_frac"),
                nulls(f"circles.{fam}.neighbour_frac"),
            )
        )
        rows.append(
            VerdictRow(
                h,
                f"circle '{fam}': wrap ratio (about 1 = evenly spaced closed circle, K-1 = open arc)",
                m.num(f"{g}:{part}.circles.{fam}.wrap_ratio"),
                nulls(f"circles.{fam}.wrap_ratio"),
                better="",
            )
        )
    return rows


def logic_rows(m: Metrics) -> list[VerdictRow]:
    h = "H3 logic (OR gate): features sharing a neuron co-occur less than matched controls"
    rows = []
    for group, desc in (
        ("same_sign", "same-sign sharing pairs"),
        ("opposite_sign", "opposite-sign sharing pairs"),
    ):
        p = f"logic.json:{group}"
        verdict = m.num(f"{p}.verdict")
        rows.append(
            VerdictRow(
                h,
                [f"{desc}: median lift P(i,j)/(P(i)P(j)) (n = ", m.num(f"{p}.n_shared"), ")"],
                m.num(f"{p}.median_lift_shared"),
                [m.num(f"{p}.median_lift_control", "frequency-matched control")],
                [],
                better="",
                outcome=[
                    "verdict ",
                    verdict,
                    ": Mann-Whitney p = ",
                    m.num(f"{p}.p_value"),
                    ", Cliff's delta = ",
                    m.num(f"{p}.cliffs_delta"),
                    " (control n = ",
                    m.num(f"{p}.n_control"),
                    ")",
                ],
            )
        )
    return rows


COMPARE_MEASURES = (
    ("hungarian_mean_r", "matched-neuron |r| (Hungarian mean)"),
    ("cka", "linear CKA"),
    ("svcca", "SVCCA"),
    ("interference_mantel_r", "feature-interference Mantel r"),
)


def validation_rows(m: Metrics) -> list[VerdictRow]:
    h = "H4 validation: the synthetic neurons fire like the model's neurons on the same inputs"
    c = "compare.json"
    rows = []
    for key, desc in COMPARE_MEASURES:
        rows.append(
            VerdictRow(
                h,
                desc,
                m.num(f"{c}:squeezer_vs_model.{key}"),
                [
                    m.num(f"{c}:floor_untrained.{key}", "untrained Squeezer"),
                    m.num(f"{c}:floor_shuffled.{key}", "shuffled-feature Squeezer"),
                ],
                [
                    m.num(f"{c}:ceiling_squeezer_vs_seed2.{key}", "Squeezer vs its seed 2"),
                    m.num(f"{c}:ceiling_model_vs_model_seed2.{key}", "model vs its seed 2"),
                ],
            )
        )
    return rows


def verdict_rows(m: Metrics) -> list[VerdictRow]:
    return compression_rows(m) + geometry_rows(m) + logic_rows(m) + validation_rows(m)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = _io.BytesIO()
    # no Software/date metadata: the same metrics give byte-identical PNGs (the report is in git)
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


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


def curve_figure(path: Path, title: str, logy: bool = True) -> bytes:
    """Training curves: the first CSV column against every other column."""
    header, rows = read_csv(path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    x = _column(rows, 0)
    for j, name in enumerate(header[1:], start=1):
        ax.plot(x, _column(rows, j), label=name, lw=1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(header[0])
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def bars_figure(labels: list[str], values: list[float | None], title: str, xlabel: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(labels) + 1.2))
    vals = [v if v is not None else 0.0 for v in values]
    ax.barh(range(len(labels)), vals, color=["C3"] + ["C0"] * (len(labels) - 1))
    for i, v in enumerate(values):
        ax.text(vals[i], i, " " + fmt(v), va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(vals + [1e-9]) * 1.25)
    fig.tight_layout()
    return _png(fig)


def histogram_csv_figure(path: Path, title: str, xlabel: str, ylabel: str) -> bytes:
    header, rows = read_csv(path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    x = _column(rows, 0)
    width = (x[1] - x[0]) * 0.9 if len(x) > 1 else 0.05
    for j, name in enumerate(header[1:], start=1):
        ax.bar(x, _column(rows, j), width=width, alpha=0.7, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def matched_r_figure(path: Path) -> bytes:
    header, rows = read_csv(path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    x = _column(rows, 0)
    styles = {"squeezer_vs_model": dict(color="C3", lw=2)}
    for j, name in enumerate(header[1:], start=1):
        style = styles.get(name, dict(lw=1, ls="--" if name.startswith("floor") else "-"))
        ax.plot(x, _column(rows, j), label=name, **style)
    ax.set_xlabel("matched pair (sorted by |r|)")
    ax.set_ylabel("|r| of the Hungarian-matched pair")
    ax.set_ylim(0, 1)
    ax.set_title("Matched-neuron correlation against floors and ceilings", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _scalars(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten a metrics dict to (dotted key, scalar) pairs; lists are skipped."""
    out: list[tuple[str, Any]] = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _scalars(v, key + ".")
        elif not isinstance(v, list):
            out.append((key, v))
    return out


def kv_table(m: Metrics, stage: str, keys: Iterable[str] | None = None) -> Table:
    """Key / value rows of one metrics file (all scalars, or the given keys)."""
    if keys is None:
        keys = [k for k, _ in _scalars(m.data.get(stage))]
    rows = [[f"`{k}`", m.num(f"{stage}.json:{k}")] for k in keys]
    return Table(["metric", "value"], rows)


def _figure_or_note(blocks: list[Any], path: Path, name: str, caption: str, make=None) -> None:
    """Append a figure from an existing PNG (or made from a CSV by `make`); note a missing input."""
    if not path.exists():
        blocks.append(f"*{caption}: {path} n/a in this run.*")
        return
    png = make(path) if make is not None else path.read_bytes()
    blocks.append(Figure(name, png, f"{caption} (from `{path.as_posix()}`)"))


def setup_section(m: Metrics) -> Section:
    s = Section("Setup", anchor="setup")
    rows = [
        ["source", m.num("source.json:kind")],
        [
            "model",
            m.first(["source.json:model_name"], "")
            if m.get("source.json:model_name")
            else [
                "synthetic toy model: ",
                m.num("source.json:n_true_features"),
                " true features, d_model ",
                m.num("source.json:d_model"),
                ", ",
                m.num("source.json:n_neurons"),
                " ReLU neurons",
            ],
        ],
        [
            "activations (train / held-out rows)",
            [m.num("activations.json:train.rows"), " / ", m.num("activations.json:heldout.rows")],
        ],
        [
            "SAE",
            [
                m.num("sae.json:architecture"),
                ", d_sae ",
                m.num("sae.json:d_sae"),
                ", L0 ",
                m.num("sae.json:l0"),
            ],
        ],
        [
            "features F (top-k, alive of n)",
            [
                m.num("features.json:top_k"),
                ", ",
                m.num("features.json:alive_features"),
                " of ",
                m.num("features.json:n_features"),
            ],
        ],
        ["Squeezer M (synthetic neurons)", m.num("squeeze.json:M")],
        [
            "Squeezer top-k input, tied, importance",
            [
                m.num("squeeze.json:k"),
                ", ",
                m.num("squeeze.json:tied"),
                ", ",
                m.num("squeeze.json:importance"),
            ],
        ],
    ]
    s.blocks.append(Table(["", "value"], rows))
    if m.missing:
        s.blocks.append(
            "Missing metrics files (their numbers show as n/a): " + ", ".join(f"`{p}`" for p in m.missing)
        )
    s.blocks.append("All source metrics:")
    s.blocks.append(kv_table(m, "source"))
    return s


def sae_section(m: Metrics, plots: Path) -> Section:
    s = Section("SAE quality (the decompression)", anchor="sae")
    keys = ["l0", "explained_variance", "dead_latent_fraction"]
    keys += [k for k, _ in _scalars(m.data.get("sae")) if k.startswith("ground_truth.")]
    s.blocks.append(kv_table(m, "sae", keys))
    lm = [k for k, _ in _scalars(m.data.get("sae")) if k.startswith("lm.")]
    if lm:
        s.blocks.append(
            "Language model: next-token cross-entropy with the SAE spliced in "
            "(CE-loss score: 0 = zero ablation, 1 = clean)."
        )
        s.blocks.append(kv_table(m, "sae", lm))
    _figure_or_note(
        s.blocks,
        plots / "sae/recovery_hist.csv",
        "sae_recovery.png",
        "Best cosine of each true feature with an SAE latent",
        lambda p: histogram_csv_figure(p, "Ground-truth recovery by the SAE", "best cosine", "true features"),
    )
    _figure_or_note(
        s.blocks,
        plots / "source/toy_model_curve.csv",
        "source_curve.png",
        "Source toy model training loss (both seeds)",
        lambda p: curve_figure(p, "Source toy model training loss"),
    )
    return s


CODEC_COLUMNS = (
    "fvu",
    "sae_explained_variance",
    "recovery_mean",
    "recovery_frac_above_0_5",
    "features_represented",
    "dead_neurons",
    "relu_engagement",
    "linear_regime",
)


def compression_section(m: Metrics, plots: Path) -> Section:
    s = Section("The Squeezer against its baselines (same data, same M)", anchor="compression")
    rows = [["**Squeezer**"] + [m.num(f"squeeze.json:{c}") for c in CODEC_COLUMNS]]
    for b in BASELINES:
        rows.append([BASELINE_LABELS[b]] + [m.num(f"baselines.json:{b}.{c}") for c in CODEC_COLUMNS])
    rows.append(
        ["SAE ceiling"]
        + [
            m.num("squeeze.json:sae_explained_variance_ceiling") if c == "sae_explained_variance" else "—"
            for c in CODEC_COLUMNS
        ]
    )
    s.blocks.append(Table(["codec"] + list(CODEC_COLUMNS), rows))
    lm = [k for k, _ in _scalars(m.data.get("squeeze")) if k.startswith("lm.")]
    if lm:
        s.blocks.append(kv_table(m, "squeeze", lm))
    labels = ["Squeezer"] + [BASELINE_LABELS[b] for b in BASELINES]
    values = [m.get("squeeze.json:fvu")] + [m.get(f"baselines.json:{b}.fvu") for b in BASELINES]
    s.blocks.append(
        Figure(
            "fvu_bars.png",
            bars_figure(
                labels,
                [v if isinstance(v, (int, float)) else None for v in values],
                f"FVU of F at M = {fmt(m.get('squeeze.json:M'))} (lower is better)",
                "FVU",
            ),
            "FVU of F on held-out rows (from `metrics/squeeze.json`, `metrics/baselines.json`)",
        )
    )
    _figure_or_note(
        s.blocks,
        plots / "squeeze/curve.csv",
        "squeeze_curve.png",
        "Squeezer training loss",
        lambda p: curve_figure(p, "Squeezer training loss"),
    )
    return s


def geometry_section(m: Metrics, plots: Path) -> Section:
    s = Section("Geometry of the codec (weights)", anchor="geometry")
    g = "geometry.json"
    cols = [
        ("trained encoder", "encoder"),
        ("trained decoder", "decoder"),
        ("untrained encoder", "null_untrained.encoder"),
        ("permuted encoder", "null_permuted.encoder"),
        ("untrained decoder", "null_untrained.decoder"),
        ("permuted decoder", "null_permuted.decoder"),
    ]
    stats = [
        "D_star",
        "D_star_represented",
        "frac_features_represented",
        "mean_D",
        "median_D",
        "n_lines",
        "n_components",
        "largest_component",
    ]
    stats += [f"polytopes.{k}" for k in polytope_kinds(m) + ["other", "isolated"]]
    fractions = m.get(f"{g}:encoder.lines")
    fractions = list(fractions) if isinstance(fractions, dict) else []
    stats += [f"lines.{f}.count" for f in fractions] + [f"lines.{f}.is_line" for f in fractions]
    rows = [[f"`{st}`"] + [m.num(f"{g}:{p}.{st}") for _, p in cols] for st in stats]
    s.blocks.append(
        "Nulls: the untrained Squeezer (its initial weights) and a Squeezer trained on "
        "features whose columns were permuted across rows (frequencies kept, "
        "co-occurrence destroyed)."
    )
    s.blocks.append(Table(["statistic"] + [c for c, _ in cols], rows))
    fams = cyclic_families(m)
    if fams:
        crow = []
        for fam in fams:
            for st in ("circular_corr", "p_value", "wrap_ratio", "neighbour_frac", "pc2_var_frac"):
                crow.append([f"{fam}", f"`{st}`"] + [m.num(f"{g}:{p}.circles.{fam}.{st}") for _, p in cols])
        s.blocks.append(Table(["family", "statistic"] + [c for c, _ in cols], crow))
    _figure_or_note(
        s.blocks,
        plots / "geometry/dimensionality_hist.png",
        "dimensionality_hist.png",
        "Feature dimensionality D_i against the polytope fractions",
    )
    _figure_or_note(
        s.blocks,
        plots / "geometry/polytopes.png",
        "polytopes.png",
        "Polytopes found in the interference graph",
    )
    _figure_or_note(
        s.blocks, plots / "geometry/circles.png", "circles.png", "Cyclic families in their top-2 PC plane"
    )
    return s


def logic_section(m: Metrics, plots: Path) -> Section:
    s = Section("Logic: do features sharing a neuron co-occur?", anchor="logic")
    keys = [
        "n_shared",
        "n_control",
        "median_lift_shared",
        "median_lift_control",
        "mean_log2_lift_shared",
        "mean_log2_lift_control",
        "frac_lift_below_1_shared",
        "frac_lift_below_1_control",
        "frac_never_cooccur_shared",
        "frac_never_cooccur_control",
        "p_value",
        "cliffs_delta",
        "verdict",
        "median_phi_shared",
        "median_phi_control",
        "phi_p_value",
        "phi_cliffs_delta",
        "n_pairs",
        "n_dropped_low_expected",
    ]
    rows = [
        [f"`{k}`", m.num(f"logic.json:same_sign.{k}"), m.num(f"logic.json:opposite_sign.{k}")] for k in keys
    ]
    s.blocks.append(
        [
            "Verdict (same-sign pairs): ",
            m.num("logic.json:verdict"),
            "; opposite-sign pairs: ",
            m.num("logic.json:verdict_opposite_sign"),
            ". anticorrelated_share = OR gate (TMS), correlated_share = features that "
            "fire together share a neuron, no_difference = neither at p < alpha "
            "and |Cliff's delta| >= min_effect.",
        ]
    )
    s.blocks.append(Table(["statistic", "same sign", "opposite sign"], rows))
    fams = m.get("logic.json:families")
    if isinstance(fams, dict) and fams:
        frows = []
        for kind in fams:
            p = f"logic.json:families.{kind}"
            for sign in ("same_sign", "opposite_sign"):
                frows.append(
                    [
                        kind,
                        sign,
                        m.num(f"{p}.n_pairs"),
                        m.num(f"{p}.{sign}.n_sharing"),
                        m.num(f"{p}.{sign}.frac_sharing"),
                        m.num(f"{p}.{sign}.frac_sharing_chance"),
                        m.num(f"{p}.{sign}.lift_sharing_pairs.median"),
                        m.num(f"{p}.lift_all_pairs.median"),
                    ]
                )
        s.blocks.append(
            "Planted / found families: how often their pairs share a neuron, against the chance rate."
        )
        s.blocks.append(
            Table(
                [
                    "family kind",
                    "sign",
                    "pairs",
                    "sharing",
                    "fraction sharing",
                    "chance",
                    "median lift (sharing)",
                    "median lift (all pairs)",
                ],
                frows,
            )
        )
    tables = m.get("logic.json:truth_tables")
    if isinstance(tables, list) and tables:
        trows = []
        for i, _ in enumerate(tables[:8]):
            p = f"logic.json:truth_tables.{i}"
            trows.append(
                [m.num(f"{p}.neuron"), m.num(f"{p}.feature_a"), m.num(f"{p}.feature_b")]
                + [
                    [m.num(f"{p}.p_fire_{c}"), " (n ", m.num(f"{p}.n_{c}"), ")"]
                    for c in ("neither", "a_only", "b_only", "both")
                ]
            )
        s.blocks.append(
            "Neuron truth tables: P(neuron fires) given which of the two member "
            "features is active (held-out rows)."
        )
        s.blocks.append(Table(["neuron", "A", "B", "neither", "A only", "B only", "A and B"], trows))
    _figure_or_note(
        s.blocks,
        plots / "logic/lift.png",
        "lift.png",
        "Lift of neuron-sharing pairs against frequency-matched controls",
    )
    return s


def compare_section(m: Metrics, plots: Path) -> Section:
    s = Section("Circuit comparison: synthetic neurons against the model's neurons", anchor="compare")
    conds = [
        ("squeezer_vs_model", "**Squeezer vs model**"),
        ("floor_untrained", "floor: untrained Squeezer vs model"),
        ("floor_shuffled", "floor: shuffled-feature Squeezer vs model"),
        ("ceiling_squeezer_seed2_vs_model", "Squeezer seed 2 vs model"),
        ("ceiling_squeezer_vs_seed2", "ceiling: Squeezer vs Squeezer seed 2"),
        ("ceiling_model_vs_model_seed2", "ceiling: model vs model seed 2"),
    ]
    keys = [
        "hungarian_mean_r",
        "mean_best_abs_r",
        "frac_matched_above_0_5",
        "cka",
        "svcca",
        "interference_mantel_r",
        "interference_mantel_p",
        "top_pc_share_a",
        "effective_rank_a",
        "top_pc_share_b",
        "effective_rank_b",
    ]
    rows = [[label] + [m.num(f"compare.json:{c}.{k}") for k in keys] for c, label in conds]
    s.blocks.append(Table(["condition"] + keys, rows))
    s.blocks.append(
        "Linear CKA weighs directions by variance: read it beside each population's "
        "top principal component share and effective rank (participation ratio); "
        "a = the first population named, b = the second."
    )
    s.blocks.append(["Held-out rows: ", m.num("compare.json:n_heldout_rows"), "."])
    if isinstance(m.get("compare.json:interference_features"), dict):
        s.blocks.append("Features in the interference (Mantel) comparison:")
        s.blocks.append(
            kv_table(
                m,
                "compare",
                [k for k, _ in _scalars(m.data.get("compare")) if k.startswith("interference_features.")],
            )
        )
    _figure_or_note(
        s.blocks,
        plots / "compare/matched_r.csv",
        "matched_r.png",
        "Sorted |r| of Hungarian-matched neuron pairs",
        matched_r_figure,
    )
    _figure_or_note(
        s.blocks,
        plots / "compare/correlation_matrix.png",
        "correlation_matrix.png",
        "Neuron correlation matrices in matched order",
    )
    return s


@dataclass
class Report:
    title: str
    verdict: Table
    sections: list[Section]


def build(metrics_dir: str | Path = "metrics", plots_dir: str | Path = "plots") -> Report:
    m = Metrics.load(metrics_dir)
    plots = Path(plots_dir)
    return Report(
        "The Neural Codec: report",
        verdict_table(verdict_rows(m)),
        [
            setup_section(m),
            sae_section(m, plots),
            compression_section(m, plots),
            geometry_section(m, plots),
            logic_section(m, plots),
            compare_section(m, plots),
        ],
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Num):
        return cell.text
    if isinstance(cell, list):
        return "".join(_md_cell(c) for c in cell)
    return str(cell).replace("|", "\\|").replace("\n", " ")


def plain(cell: Cell) -> str:
    """A cell as plain text (for the console)."""
    if isinstance(cell, Num):
        return cell.text
    if isinstance(cell, list):
        return "".join(plain(c) for c in cell)
    return str(cell)


def summary(r: Report) -> str:
    """The verdict table as console lines: measure: value -> outcome."""
    return "\n".join(f"{plain(row[1])}: {plain(row[2])} -> {plain(row[5])}" for row in r.verdict.rows)


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _md_block(b: Any) -> str:
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Figure):
        return f"![{b.caption}](figures/{b.name})\n\n*{b.caption}*"
    return _md_cell(b)


VERDICT_INTRO = (
    "Every number is read from `metrics/*.json` (3 significant digits; n/a = not in this run's "
    "metrics). Floors are nulls, controls and codes without superposition; ceilings are second "
    "seeds and the SAE itself. The outcome compares the shown numbers: a measure with a direction "
    "holds when the Squeezer beats every floor."
)


def render_markdown(r: Report) -> str:
    out = [f"# {r.title}", "", "## Verdict", "", VERDICT_INTRO, "", _md_table(r.verdict), ""]
    for s in r.sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            out += [_md_block(b), ""]
    return "\n".join(out)


def _inline_md(text: str) -> str:
    """Escape text, then the two inline Markdown marks the sections use: `code`, **bold**."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, Num):
        cls = "num na" if cell.text == NA else "num"
        return (
            f'<span class="{cls}" data-metric="{html.escape(cell.cite)}" '
            f'title="{html.escape(cell.cite)}">{html.escape(cell.text)}</span>'
        )
    if isinstance(cell, list):
        return "".join(_html_cell(c) for c in cell)
    return _inline_md(str(cell))


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_inline_md(h)}</th>" for h in t.header)
    # in the verdict table a non-empty first cell starts a hypothesis: rule a line above it
    body = "".join(
        ('<tr class="start">' if t.css == "verdict" and row[0] else "<tr>")
        + "".join(f"<td>{_html_cell(c)}</td>" for c in row)
        + "</tr>"
        for row in t.rows
    )
    return f'<table class="{t.css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_block(b: Any) -> str:
    if isinstance(b, Table):
        return f'<div class="scroll">{_html_table(b)}</div>'
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline_md(b.caption)}</figcaption></figure>"
        )
    return f"<p>{_html_cell(b)}</p>"


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #333; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 13px; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
table.verdict td:nth-child(1) { max-width: 18em; font-weight: 600; }
table.verdict td:nth-child(3) { font-size: 15px; font-weight: 700; }
table.verdict tr.start td { border-top: 2px solid #666; }
.num { font-variant-numeric: tabular-nums; } .na { color: #b00; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; } nav a { margin-right: 1em; }
code { background: #f4f4f4; padding: 0 2px; }
"""


def render_html(r: Report) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in r.sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(r.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(r.title)}</h1>",
        f'<nav><a href="#verdict">Verdict</a> {nav}</nav>',
        '<h2 id="verdict">Verdict</h2>',
        f"<p>{_inline_md(VERDICT_INTRO)}</p>",
        _html_block(r.verdict),
    ]
    for s in r.sections:
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        parts += [_html_block(b) for b in s.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def figures(r: Report) -> list[Figure]:
    return [b for s in r.sections for b in s.blocks if isinstance(b, Figure)]


def fvu_at_m(m: Metrics) -> tuple[list[str], list[Any]]:
    """This run's point of the FVU-against-M plot (`dvc plots diff` overlays experiments)."""
    vals = [m.get("squeeze.json:fvu")] + [m.get(f"baselines.json:{b}.fvu") for b in BASELINES]
    M = m.get("squeeze.json:M")
    return ["M", *SWEEP_COLUMNS], ["" if M is None else M] + ["" if v is None else v for v in vals]


def write_report(
    out_dir: str | Path, metrics_dir: str | Path = "metrics", plots_dir: str | Path = "plots"
) -> Report:
    """Build the report and write out_dir/{REPORT.md, index.html, figures/*.png} atomically,
    with out_dir/fvu_at_m.csv (this run's M and FVUs, for `dvc plots diff` across experiments)."""
    r = build(metrics_dir, plots_dir)
    with storage.atomic_dir(out_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the report is meant to be read
        (tmp / "figures").mkdir()
        for f in figures(r):
            (tmp / "figures" / f.name).write_bytes(f.png)
        (tmp / "REPORT.md").write_text(render_markdown(r))
        header, row = fvu_at_m(Metrics.load(metrics_dir))
        storage.write_csv(tmp / "fvu_at_m.csv", header, [row])
        (tmp / "index.html").write_text(render_html(r))
    return r


# --------------------------------------------------------------------------------------------
# FVU against M across experiments (`dvc exp show --json`), for scripts/sweep_m.py
# --------------------------------------------------------------------------------------------


def _walk_exp_show(entries: Any) -> Iterable[dict[str, Any]]:
    """Every revision in `dvc exp show --json` output: baselines and their experiments."""
    for e in entries or []:
        if not isinstance(e, dict):
            continue
        yield e
        for exp in e.get("experiments") or []:
            yield from _walk_exp_show(exp.get("revs") if isinstance(exp, dict) else None)


def _file_data(data: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
    block = (data.get(kind) or {}).get(path) or {}
    return block.get("data") or {} if isinstance(block, dict) else {}


def parse_exp_show(
    entries: list[dict[str, Any]], include_workspace: bool = False, params_file: str = "params.yaml"
) -> list[dict[str, Any]]:
    """One row per finished experiment: M (params squeezer.M), its name, and the FVU of the
    Squeezer (metrics/squeeze.json fvu) and of each baseline (metrics/baselines.json <m>.fvu).

    Revisions with an error, without metrics (queued, running, failed) or without M are skipped;
    a revision listed twice (a branch tip and the same commit as a baseline) counts once; the
    workspace is skipped unless `include_workspace` (it usually repeats HEAD).
    """
    rows: dict[str, dict[str, Any]] = {}
    for e in _walk_exp_show(entries):
        rev = e.get("rev")
        data = e.get("data")
        if not isinstance(data, dict) or e.get("error") or not rev:
            continue
        if rev == "workspace" and not include_workspace:
            continue
        squeeze = _file_data(data, "metrics", "metrics/squeeze.json")
        base = _file_data(data, "metrics", "metrics/baselines.json")
        M = (_file_data(data, "params", params_file).get("squeezer") or {}).get("M", squeeze.get("M"))
        fvu = {"squeezer": squeeze.get("fvu")}
        fvu.update(
            {b: (base.get(b) or {}).get("fvu") if isinstance(base.get(b), dict) else None for b in BASELINES}
        )
        if not isinstance(M, int) or all(v is None for v in fvu.values()):
            continue
        key = data.get("rev") or rev
        name = e.get("name") or (rev if rev == "workspace" else str(rev)[:7])
        rows.setdefault(key, {"M": M, "experiment": name, **fvu})
    return sorted(rows.values(), key=lambda r: (r["M"], r["experiment"]))


def write_sweep(rows: list[dict[str, Any]], csv_path: str | Path, png_path: str | Path | None) -> None:
    """plots/sweep/fvu_vs_m.csv (M, experiment, one FVU column per method) and a PNG."""
    header = ["M", "experiment", *SWEEP_COLUMNS]
    table = [
        [r["M"], r["experiment"]] + ["" if r[c] is None else float(r[c]) for c in SWEEP_COLUMNS] for r in rows
    ]
    storage.write_csv(csv_path, header, table)
    if png_path is None:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for j, c in enumerate(SWEEP_COLUMNS):
        pts = sorted((r["M"], r[c]) for r in rows if r[c] is not None)
        if pts:
            ax.plot(
                *zip(*pts, strict=False),
                "o-" if c == "squeezer" else "o--",
                color=f"C{3 if j == 0 else j - 1}",
                lw=2 if c == "squeezer" else 1,
                label=c,
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("M (synthetic neurons)")
    ax.set_ylabel("FVU of F (held-out)")
    ax.set_title("FVU against M across experiments", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = _png(fig)
    with storage.atomic_path(png_path) as tmp:
        tmp.write_bytes(png)
