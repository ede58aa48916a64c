"""The page's sections after the verdict: setup, SAE, compression, geometry, logic, comparison.

Each section is built from cited numbers (`Metrics.num`) and the stages' plots; `build` assembles
the whole page model (verdict table first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from neural_codec import paths
from neural_codec.report.figures import bars_figure, curve_figure, histogram_csv_figure, matched_r_figure
from neural_codec.report.metrics import BASELINE_LABELS, BASELINES, TRUTH_TABLES, Metrics, fmt
from neural_codec.report.page import Block, Cell, Figure, Report, Row, Section, Table
from neural_codec.report.verdicts import (
    cyclic_families,
    ceiling_table,
    interval_table,
    polytope_kinds,
    verdict_rows,
    verdict_table,
)

SQ = "squeeze.json:squeezer"  # every squeeze metric sits under "squeezer"


def kv_table(m: Metrics, stage: str, keys: Iterable[str] | None = None) -> Table:
    """Key / value rows of one metrics file (all scalars, or the given keys)."""
    if keys is None:
        keys = m.scalars(stage)
    rows: list[Row] = [[f"`{k}`", m.num(f"{stage}.json:{k}")] for k in keys]
    return Table(["metric", "value"], rows)


def _figure_or_note(
    blocks: list[Block], path: Path, name: str, caption: str, make: Callable[[Path], bytes] | None = None
) -> None:
    """Append a figure from an existing PNG (or made from a CSV by `make`); note a missing input."""
    if not path.exists():
        blocks.append(f"*{caption}: {path} n/a in this run.*")
        return
    png = make(path) if make is not None else path.read_bytes()
    blocks.append(Figure(name, png, f"{caption} (from `{path.as_posix()}`)"))


def setup_section(m: Metrics) -> Section:
    s = Section("Setup", anchor="setup")
    model: Cell = (
        m.num("source.json:model_name")
        if m.get("source.json:model_name")
        else [
            "synthetic toy model: ",
            m.num("source.json:n_true_features"),
            " true features, d_model ",
            m.num("source.json:d_model"),
            ", ",
            m.num("source.json:n_neurons"),
            " ReLU neurons",
        ]
    )
    rows: list[Row] = [
        ["source", m.num("source.json:kind")],
        ["model", model],
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
        ["Squeezer M (synthetic neurons)", m.num(f"{SQ}.M")],
        [
            "Squeezer top-k input, tied, importance",
            [m.num(f"{SQ}.k"), ", ", m.num(f"{SQ}.tied"), ", ", m.num(f"{SQ}.importance")],
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
    keys = ["l0", "explained_variance", "dead_latent_fraction"] + m.scalars("sae", "ground_truth.")
    s.blocks.append(kv_table(m, "sae", keys))
    lm = m.scalars("sae", "lm.")
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
        plots / "source/curves",
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
    rows: list[Row] = [["**Squeezer**", *(m.num(f"{SQ}.{c}") for c in CODEC_COLUMNS)]]
    for b in BASELINES:
        rows.append([BASELINE_LABELS[b], *(m.num(f"baselines.json:{b}.{c}") for c in CODEC_COLUMNS)])
    rows.append(
        [
            "SAE ceiling",
            *(
                m.num(f"{SQ}.sae_explained_variance_ceiling") if c == "sae_explained_variance" else "—"
                for c in CODEC_COLUMNS
            ),
        ]
    )
    s.blocks.append(Table(["codec", *CODEC_COLUMNS], rows))
    lm = m.scalars("squeeze", "squeezer.lm.")
    if lm:
        s.blocks.append(kv_table(m, "squeeze", lm))
    labels = ["Squeezer"] + [BASELINE_LABELS[b] for b in BASELINES]
    nums = [m.num(f"{SQ}.fvu")] + [m.num(f"baselines.json:{b}.fvu") for b in BASELINES]
    s.blocks.append(
        Figure(
            "fvu_bars.png",
            bars_figure(
                labels,
                [n.number for n in nums],
                f"FVU of F at M = {fmt(m.get(f'{SQ}.M'))} (lower is better)",
                "FVU",
                [m.get("intervals.json:trained.fvu")]
                + [m.get(f"intervals.json:baselines.{b}.fvu") for b in BASELINES],
            ),
            "FVU of F on held-out rows (from `metrics/squeeze.json`, `metrics/baselines.json`); "
            "error bars: 95% interval (`metrics/intervals.json`) over seeds (Squeezer, random "
            "encoder) or a bootstrap over held-out rows (PCA, no superposition, model neurons), "
            "the dot at its mean",
        )
    )
    _figure_or_note(
        s.blocks,
        plots / "squeeze/curves",
        "squeeze_curve.png",
        "Squeezer training loss",
        lambda p: curve_figure(p, "Squeezer training loss"),
    )
    return s


#: geometry.json's weight sets: the trained Squeezer and its two nulls, encoder and decoder
GEOMETRY_COLUMNS = (
    ("trained encoder", "trained.encoder"),
    ("trained decoder", "trained.decoder"),
    ("untrained encoder", "untrained.encoder"),
    ("permuted encoder", "permuted.encoder"),
    ("untrained decoder", "untrained.decoder"),
    ("permuted decoder", "permuted.decoder"),
)


def geometry_section(m: Metrics, plots: Path) -> Section:
    s = Section("Geometry of the codec (weights)", anchor="geometry")
    g = "geometry.json"
    cols = GEOMETRY_COLUMNS
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
    lines = m.get(f"{g}:trained.encoder.lines")
    fractions = list(lines) if isinstance(lines, dict) else []
    stats += [f"lines.{f}.count" for f in fractions] + [f"lines.{f}.is_line" for f in fractions]
    rows: list[Row] = [[f"`{st}`", *(m.num(f"{g}:{p}.{st}") for _, p in cols)] for st in stats]
    s.blocks.append(
        "Nulls: the untrained Squeezer (its initial weights) and a Squeezer trained on "
        "features whose columns were permuted across rows (frequencies kept, "
        "co-occurrence destroyed)."
    )
    s.blocks.append(Table(["statistic"] + [c for c, _ in cols], rows))
    fams = cyclic_families(m)
    if fams:
        crows: list[Row] = [
            [fam, f"`{st}`", *(m.num(f"{g}:{p}.circles.{fam}.{st}") for _, p in cols)]
            for fam in fams
            for st in (
                "circular_corr",
                "circular_rank_corr",
                "p_value",
                "harmonic_frac",
                "harmonic_p_value",
                "max_gap_ratio",
                "wrap_ratio",
                "neighbour_frac",
                "pc2_var_frac",
            )
        ]
        s.blocks.append(Table(["family", "statistic"] + [c for c, _ in cols], crows))
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


LOGIC_STATISTICS = (
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
)


def logic_section(m: Metrics, plots: Path) -> Section:
    s = Section("Logic: do features sharing a neuron co-occur?", anchor="logic")
    rows: list[Row] = [
        [f"`{k}`", m.num(f"logic.json:same_sign.{k}"), m.num(f"logic.json:opposite_sign.{k}")]
        for k in LOGIC_STATISTICS
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
        frows: list[Row] = []
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
            "Planted / found families: how often their pairs share a neuron, against the chance rate "
            "(the fraction of all live latent pairs, both firing on the co-occurrence split, that share one)."
        )
        s.blocks.append(
            [
                "Exclusive families, same-sign enrichment ",
                m.num("logic.json:families.exclusive.same_sign.enrichment"),
                ", opposite-sign enrichment ",
                m.num("logic.json:families.exclusive.opposite_sign.enrichment"),
                " (x chance). Exclusive pairs shared with opposite signs above chance, and ahead of "
                "same-sign sharing, are TMS's antipodal placement: two features that never fire "
                "together can share a neuron with opposite signs at no interference cost. A tied "
                "Squeezer (TMS's model) should place them so; an untied one may share them with "
                "either sign, since its decoder reads each feature along its own row "
                "(`metrics/controls.json` logic_exclusive_antipodal, which pools the seeds stage's "
                "Squeezers and requires them to share the pairs more than its untrained and permuted "
                "nulls do). It shows in this family-level "
                "enrichment, not in the headline same-sign verdict, where exclusive pairs are a few "
                "percent of all sharing pairs.",
            ]
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
    tables = m.data.get(TRUTH_TABLES)
    if isinstance(tables, list) and tables:
        trows: list[Row] = []
        for i in range(min(len(tables), 8)):
            p = f"{TRUTH_TABLES}.json:{i}"
            fires: list[Cell] = [
                [m.num(f"{p}.p_fire_{c}"), " (n ", m.num(f"{p}.n_{c}"), ")"]
                for c in ("neither", "a_only", "b_only", "both")
            ]
            trows.append([m.num(f"{p}.neuron"), m.num(f"{p}.feature_a"), m.num(f"{p}.feature_b"), *fires])
        s.blocks.append(
            "Neuron truth tables: P(neuron fires) given which of the two member "
            "features is active (held-out rows; from `data/logic/truth_tables.json`)."
        )
        s.blocks.append(Table(["neuron", "A", "B", "neither", "A only", "B only", "A and B"], trows))
    _figure_or_note(
        s.blocks,
        plots / "logic/lift.png",
        "lift.png",
        "Lift of neuron-sharing pairs against frequency-matched controls",
    )
    return s


#: compare.json's conditions, each a pair of neuron populations on the same held-out rows
COMPARE_CONDITIONS = (
    ("squeezer_vs_model", "**Squeezer vs model**"),
    ("floor_untrained", "floor: untrained Squeezer vs model"),
    ("floor_permuted", "floor: permuted-feature Squeezer vs model"),
    ("squeezer_seed2_vs_model", "second measurement: Squeezer seed 2 vs model"),
    ("ceiling_squeezer_vs_seed2", "ceiling: Squeezer vs Squeezer seed 2"),
    ("ceiling_model_vs_model_seed2", "ceiling: model vs model seed 2"),
    ("reference_true_features", "reference: Squeezer on the true features (no SAE) vs model"),
)
COMPARE_KEYS = (
    "hungarian_mean_r",
    "mean_best_abs_r",
    "mean_best_abs_r_b",
    "predictivity_r2",
    "frac_matched_above_0_5",
    "cka",
    "svcca",
    "interference_mantel_r",
    "interference_mantel_p",
    "top_pc_share_a",
    "effective_rank_a",
    "top_pc_share_b",
    "effective_rank_b",
)


def compare_section(m: Metrics, plots: Path) -> Section:
    s = Section("Circuit comparison: synthetic neurons against the model's neurons", anchor="compare")
    rows: list[Row] = [
        [label, *(m.num(f"compare.json:{c}.{k}") for k in COMPARE_KEYS)] for c, label in COMPARE_CONDITIONS
    ]
    s.blocks.append(Table(["condition", *COMPARE_KEYS], rows))
    s.blocks.append(
        "Linear CKA weighs directions by variance: read it beside each population's "
        "top principal component share and effective rank (participation ratio); "
        "a = the first population named, b = the second."
    )
    s.blocks.append(["Held-out rows: ", m.num("compare.json:n_heldout_rows"), "."])
    if isinstance(m.get("compare.json:interference_features"), dict):
        s.blocks.append("Features in the interference (Mantel) comparison:")
        s.blocks.append(kv_table(m, "compare", m.scalars("compare", "interference_features.")))
    _figure_or_note(
        s.blocks,
        plots / "compare/matched_r.csv",
        "matched_r.png",
        "Sorted |r| of Hungarian-matched neuron pairs (bands: the Hungarian mean |r| over seeds, "
        "95% interval, from `metrics/intervals.json`)",
        lambda p: matched_r_figure(
            p,
            {
                "squeezer_vs_model": m.get("intervals.json:trained.hungarian_mean_r"),
                "floor_untrained": m.get("intervals.json:untrained.hungarian_mean_r"),
                "floor_permuted": m.get("intervals.json:permuted.hungarian_mean_r"),
            },
        ),
    )
    _figure_or_note(
        s.blocks,
        plots / "compare/correlation_matrix.png",
        "correlation_matrix.png",
        "Neuron correlation matrices in matched order",
    )
    if (plots / "compare/predictability.png").exists():
        _figure_or_note(
            s.blocks,
            plots / "compare/predictability.png",
            "predictability.png",
            f"Neuron predictability: held-out R² per model neuron of "
            f"{m.get('compare.json:neuron_predictability.readout') or 'ReLU(w·x + b)'} from the SAE "
            "features, its floors (shuffled rows, a random top-k code) and the dense-input ceiling",
        )
    sh = "compare.json:neuron_predictability.sharing"
    if m.get(f"{sh}.squeezer.mantel_r") is not None:
        s.blocks.append(
            [
                "Feature sharing (does the model pack its features as the Squeezer does?): Mantel r "
                "between the features' co-loading on the fitted model neurons and on the Squeezer's "
                "neurons ",
                m.num(f"{sh}.squeezer.mantel_r"),
                "; floors: untrained Squeezer ",
                m.num(f"{sh}.floor_untrained.mantel_r"),
                ", permuted-feature Squeezer ",
                m.num(f"{sh}.floor_permuted.mantel_r"),
                "; the fitted readout against the model's own read-in of the SAE directions ",
                m.num(f"{sh}.model_loadings.mantel_r"),
                " (one fit each; no interval yet).",
            ]
        )
    return s


def _seed_lines(st: dict) -> list[str]:
    """A tms.json summary's lines, each with its seed count when it is over several seeds."""
    lines, frac, n = st.get("lines_found") or [], st.get("lines_found_frac"), st.get("n_seeds")
    if not isinstance(frac, dict) or not isinstance(n, int) or n <= 1:
        return list(lines)
    return [f"{line} in {round(frac.get(line, 0) * n)} of {n} seeds" for line in lines]


def tms_section(m: Metrics, plots: Path) -> Section:
    """The TMS reproduction (stage `tms`): the positive control of the geometry analysis."""
    s = Section("Positive control: Toy Models of Superposition", anchor="tms")
    data = m.data.get("tms") or {}
    s.blocks.append(
        "The TMS model (tied, linear hidden layer: x' = ReLU(W^T W x + b)), the tied and the "
        "untied ReLU Squeezers, trained on TMS's synthetic features (no SAE; p = 1 - S) and "
        "analysed by the geometry stage's code on balanced weights; `untrained` is the TMS "
        "model at its initialisation. Pentagon: fraction of seeds whose five features form one "
        "(the pentagon setting; in the uniform sweep, seeds with at least one pentagon). A model "
        "over several seeds lists each line with the seeds it was found in."
    )
    rows: list[Row] = []
    for setting, models in data.items():
        for model, st in models.items():
            key = f"tms.json:{setting}.{model}"
            lines = ", ".join(_seed_lines(st)) or "none"
            poly = ", ".join(f"{k} {v}" for k, v in (st.get("polytopes_found") or {}).items()) or "none"
            rows.append(
                [
                    f"`{setting}`",
                    model,
                    m.num(f"{key}.D_star"),
                    lines,
                    poly,
                    m.num(f"{key}.pentagon_found_frac"),
                ]
            )
    s.blocks.append(Table(["setting", "model", "D*", "lines", "polytopes", "pentagon (seeds)"], rows))
    _figure_or_note(
        s.blocks, plots / "tms/dstar.png", "tms_dstar.png", "TMS uniform sweep: D_i and D* against 1/(1-S)"
    )
    _figure_or_note(s.blocks, plots / "tms/pentagon.png", "tms_pentagon.png", "TMS pentagon setting, seed 0")
    return s


def build(m: Metrics, plots_dir: str | Path = paths.PLOTS) -> Report:
    """The whole page: the verdict table, then one section per pipeline part."""
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
            tms_section(m, plots),
            uncertainty_section(m),
        ],
    )


def uncertainty_section(m: Metrics) -> Section:
    """The headlines over seeds (metrics/intervals.json) and what is bit-reproducible."""
    s = Section("Uncertainty: every headline over seeds, and what reproduces", anchor="seeds")
    if not isinstance(m.get("intervals.json:trained"), dict):
        s.blocks.append("No `metrics/intervals.json`: run the `seeds` stage for intervals.")
        return s
    s.blocks.append(
        [
            "The Squeezer trained from ",
            m.num("intervals.json:n_seeds"),
            " seeds (seed 0 is the main Squeezer of the sections above), each beside the untrained "
            "Squeezer at the same seed. Mean and Student-t 95% interval over seeds; a measure "
            "**holds** only when its interval clears the floor's (above it; below it for FVU; "
            "disjoint from it for descriptive measures such as D* and lines; a logic lift must also "
            "lie below its frequency-matched controls' interval).",
        ]
    )
    not_run = m.get("intervals.json:floors_not_run")
    if isinstance(not_run, list) and not_run:
        s.blocks.append(
            f"Floors not run over seeds in this run: {', '.join(not_run)} (`seeds.floor_permuted: false`); "
            "the verdicts name them and hold against the floors that were run only."
        )
    s.blocks.append(interval_table(m))
    if isinstance(m.get("intervals.json:ceilings"), dict):
        s.blocks.append(
            "Ceilings: the Squeezer against its next seed (over the seed pairs), and, with one fit "
            "each, a bootstrap over held-out rows (the SAE's own explained variance, the features "
            "that fire, the model against its second seed) or over features (that pair's Mantel r)."
        )
        s.blocks.append(ceiling_table(m))
    s.blocks.append(
        "Reproducibility: on one machine, the same params and seeds give bit-identical metrics "
        "(every stage seeds torch and numpy and runs single-threaded reductions in a fixed order). "
        "Across machines (another CPU, BLAS or thread count) floating-point differences move the "
        "trained weights, so no single-seed number is expected to reproduce there: read every "
        "Squeezer number through its interval over seeds. Counts that do not depend on training "
        "(firing frequencies, co-occurrence counts of given pairs, the source's planted truth) "
        "are exact. Tests combined in one report are corrected with Holm's step-down method "
        "(line fractions, cyclic families, the two logic sign groups)."
    )
    return s
