"""The verdict table: one block of rows per hypothesis (H1 compression, H2 geometry, H3 logic,
H4 validation), each measure beside its floors (nulls, controls, linear baselines) and ceilings
(second seeds, the SAE itself). The outcome column is a comparison of the shown numbers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neural_codec.report.metrics import BASELINE_LABELS, NA, Metrics, Num
from neural_codec.report.page import Cell, Row, Table

IDEAL_POLYTOPES = ("digon", "triangle", "tetrahedron", "pentagon", "square_antiprism")
#: the Squeezer's trained weights and the two nulls, as geometry.json groups them
GEOMETRY_NULLS = (("untrained", "untrained"), ("permuted", "co-occurrence permuted"))


@dataclass
class VerdictRow:
    """One measure of one hypothesis: the Squeezer's value beside its floors and ceilings.

    `better`: "higher", "lower" or "" (no direction; the outcome then just states the numbers).
    The outcome is decided from the shown numbers only: the value beats every floor.
    """

    hypothesis: str
    measure: Cell
    value: Num
    floors: list[Num] = field(default_factory=list)
    ceilings: list[Num] = field(default_factory=list)
    better: str = "higher"
    outcome: list[Cell] | None = None  # set explicitly (e.g. the logic verdict) or computed
    #: from metrics/intervals.json (`with_intervals`): the value's " [ci_low, ci_high] (n seeds)"
    #: cells, and whether its interval clears every floor's (None: no interval)
    value_ci: list[Cell] = field(default_factory=list)
    interval_holds: Num | None = None
    #: per floor (same order as `floors`): its " [ci_low, ci_high] (n seeds)" cells, [] for none
    floor_ci: list[list[Cell]] = field(default_factory=list)
    #: the floors (intervals.json holds_against) whose interval the value's does not clear
    floors_missed: list[str] = field(default_factory=list)

    def decide(self) -> list[Cell]:
        point = self._decide_point()
        h = self.interval_holds
        if h is None or h.value is None:
            return point
        if h.value is True:
            return [*point, "; over seeds: holds (the interval clears every floor's interval)"]
        missed = f" (not: {', '.join(self.floors_missed)})" if self.floors_missed else ""
        return [f"does not hold over seeds: the interval does not clear every floor's interval{missed} (",
                *point, ")"]  # fmt: skip

    def _decide_point(self) -> list[Cell]:
        if self.outcome is not None:
            return self.outcome
        if not self.better:
            return ["no direction (descriptive)"]
        v = self.value.number
        floors = [(f.number, f) for f in self.floors if f.number is not None]
        if v is None or not floors:
            return [NA]
        if self.better == "higher":
            bound, best = max(floors, key=lambda p: p[0])
            ok = v > bound
            words = ("above every floor: ", "not above every floor: ", " > ", " <= ")
        else:
            bound, best = min(floors, key=lambda p: p[0])
            ok = v < bound
            words = ("below every floor: ", "not below every floor: ", " < ", " >= ")
        return [
            words[0] if ok else words[1],
            self.value,
            words[2] if ok else words[3],
            best,
            f" ({best.label})",
        ]


def _labelled(nums: list[Num], cis: list[list[Cell]] | None = None) -> list[Cell]:
    out: list[Cell] = []
    for i, n in enumerate(nums):
        if i:
            out.append("; ")
        out += [f"{n.label} ", n] if n.label else [n]
        if cis and i < len(cis):
            out += cis[i]
    return out or ["—"]


def verdict_table(rows: list[VerdictRow]) -> Table:
    header = ["Hypothesis", "Measure", "Squeezer", "Floor(s)", "Ceiling(s)", "Outcome"]
    body: list[Row] = []
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1].hypothesis != r.hypothesis  # name each block once
        body.append(
            [
                r.hypothesis if first else "",
                r.measure,
                [r.value, *r.value_ci] if r.value_ci else r.value,
                _labelled(r.floors, r.floor_ci),
                _labelled(r.ceilings),
                r.decide(),
            ]
        )
    return Table(header, body, css="verdict")


def _reference_row(h: str, measure: str, value: Num, ref: Num) -> VerdictRow:
    """Squeezer against a reference code (lower is better), shown in the floor column."""
    v, r = value.number, ref.number
    if v is None or r is None:
        outcome: list[Cell] = [NA]
    else:
        op = " < " if v < r else " >= "
        outcome = ["Squeezer", op, "reference: ", value, op, ref]
    return VerdictRow(h, measure, value, [ref], [], better="lower", outcome=outcome)


def compression_rows(m: Metrics) -> list[VerdictRow]:
    h = "H1 compression: a ReLU bottleneck of M neurons carries F better than codes without superposition"
    sq = "squeeze.json:squeezer"
    floors = [
        m.num(f"baselines.json:{b}.fvu", BASELINE_LABELS[b])
        for b in ("pca", "no_superposition", "random_encoder")
    ]
    rows = [
        VerdictRow(
            h,
            "FVU of F on held-out rows (lower is better)",
            m.num(f"{sq}.fvu"),
            floors,
            [],
            better="lower",
        ),
        _reference_row(
            h,
            "against the model's own codec: FVU of F read out from the model's "
            "neurons (a reference, not a floor)",
            m.num(f"{sq}.fvu"),
            m.num("baselines.json:model_neurons.fvu", BASELINE_LABELS["model_neurons"]),
        ),
        VerdictRow(
            h,
            "explained variance of the SAE input, F_hat through the SAE decoder",
            m.num(f"{sq}.sae_explained_variance"),
            [m.num("baselines.json:pca.sae_explained_variance", "PCA")],
            [m.num(f"{sq}.sae_explained_variance_ceiling", "SAE on its own top-k F")],
        ),
        VerdictRow(
            h,
            "features represented (held-out slope of F_hat_i on F_i > 0.5)",
            m.num(f"{sq}.features_represented"),
            [
                m.num("baselines.json:pca.features_represented", "PCA"),
                m.num("baselines.json:no_superposition.features_represented", "no superposition"),
                m.num(
                    "baselines.json:random_encoder.features_represented", BASELINE_LABELS["random_encoder"]
                ),
            ],
            [m.num(f"{sq}.n_features_firing", "features that fire on held-out")],
        ),
    ]
    ce = m.first([f"{sq}.lm.ce_loss_score_reconstruct", f"{sq}.lm.ce.ce_loss_score_reconstruct"])
    if ce.value is not None:  # lm runs: next-token loss with the Squeezer's reconstruction
        rows.append(
            VerdictRow(
                h,
                "CE-loss score (0 = zero ablation, 1 = clean model)",
                ce,
                [],
                [
                    m.first(
                        [f"{sq}.lm.ce_loss_score_topk", f"{sq}.lm.ce.ce_loss_score_topk"],
                        "top-k F without the Squeezer",
                    ),
                    m.first(["sae.json:lm.ce.ce_loss_score_sae", "sae.json:lm.ce_loss_score_sae"], "SAE"),
                ],
                better="",
                outcome=["between ", ce, " and its ceilings"],
            )
        )
    hs = m.first([f"{sq}.lm.hidden_score_reconstruct"])
    if hs.value is not None:  # lm runs on an encoder (no next-token loss): final hidden states
        rows.append(
            VerdictRow(
                h,
                "final-hidden-state score (0 = zero ablation, 1 = clean model)",
                hs,
                [],
                [
                    m.first([f"{sq}.lm.hidden_score_topk"], "top-k F without the Squeezer"),
                    m.first(["sae.json:lm.ce.hidden_score_sae"], "SAE"),
                ],
                better="",
                outcome=["between ", hs, " and its ceilings"],
            )
        )
    return rows


def polytope_kinds(m: Metrics) -> list[str]:
    """The ideal polytope kinds geometry.json counts (all but "other" and "isolated")."""
    counts = m.get("geometry.json:trained.encoder.polytopes")
    if not isinstance(counts, dict):
        return list(IDEAL_POLYTOPES)
    return [k for k in counts if k not in ("other", "isolated")]


def cyclic_families(m: Metrics) -> list[str]:
    circles = m.get("geometry.json:trained.encoder.circles")
    return sorted(circles) if isinstance(circles, dict) else []


def geometry_rows(m: Metrics, part: str = "encoder") -> list[VerdictRow]:
    h = f"H2 geometry: the Squeezer's {part} weights form polytopes, lines and circles beyond nulls"
    g = "geometry.json"
    t = f"{g}:trained.{part}"

    def nulls(key: str) -> list[Num]:
        return [m.num(f"{g}:{null}.{part}.{key}", label) for null, label in GEOMETRY_NULLS]

    kinds = polytope_kinds(m)

    def polytopes(group: str) -> str:
        return "+".join(f"{group}.{part}.polytopes.{k}" for k in kinds)

    lines = m.get(f"{t}.lines")
    found = (
        [f for f, v in lines.items() if isinstance(v, dict) and v.get("is_line")]
        if isinstance(lines, dict)
        else []
    )
    rows = [
        VerdictRow(
            h,
            "D* = M / ||W||_F^2, dimensions per feature",
            m.num(f"{t}.D_star"),
            nulls("D_star"),
            better="",
        ),
        VerdictRow(
            h,
            "lines: polytope fractions (1, 3/4, ..., 1/3) where D piles up, count"
            + (f" (at {', '.join(found)})" if found else ""),
            m.num(f"{t}.n_lines"),
            nulls("n_lines"),
        ),
        VerdictRow(
            h,
            f"ideal polytopes in the interference graph ({', '.join(kinds)}), count",
            m.num(f"{g}:{polytopes('trained')}"),
            [m.num(f"{g}:{polytopes(null)}", label) for null, label in GEOMETRY_NULLS],
        ),
    ]
    for fam in cyclic_families(m):
        c = f"circles.{fam}"
        rows.append(
            VerdictRow(
                h,
                [
                    f"circle '{fam}': Fisher-Lee circular correlation of the angles (label-permutation p = ",
                    m.num(f"{t}.{c}.p_value"),
                    ")",
                ],
                m.num(f"{t}.{c}.circular_corr"),
                nulls(f"{c}.circular_corr"),
            )
        )
        rows.append(
            VerdictRow(
                h,
                f"circle '{fam}': fraction of cyclic neighbours adjacent in angle (1 = in order)",
                m.num(f"{t}.{c}.neighbour_frac"),
                nulls(f"{c}.neighbour_frac"),
            )
        )
        rows.append(
            VerdictRow(
                h,
                f"circle '{fam}': wrap ratio (about 1 = evenly spaced closed circle; large = a line; "
                "little power against an open arc, see the max angular gap)",
                m.num(f"{t}.{c}.wrap_ratio"),
                nulls(f"{c}.wrap_ratio"),
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
                    m.num(f"{p}.verdict"),
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
    return [
        VerdictRow(
            h,
            desc,
            m.num(f"{c}:squeezer_vs_model.{key}"),
            [
                m.num(f"{c}:floor_untrained.{key}", "untrained Squeezer"),
                m.num(f"{c}:floor_permuted.{key}", "permuted-feature Squeezer"),
            ],
            [
                m.num(f"{c}:ceiling_squeezer_vs_seed2.{key}", "Squeezer vs its seed 2"),
                m.num(f"{c}:ceiling_model_vs_model_seed2.{key}", "model vs its seed 2"),
            ],
        )
        for key, desc in COMPARE_MEASURES
    ]


# --- H4, the direct test and soft matching (issue 13): compare.json's `neuron_predictability`
# and each condition's `mean_best_abs_r_b` / `predictivity_r2`; rows only where the run has them


def _bootstrap_cells(m: Metrics, base: str) -> list[Cell]:
    """ " [ci_low, ci_high] (bootstrap over n held-out rows)" of a neuron_predictability entry."""
    if m.get(f"{base}.ci_low") is None:
        return []
    return [" [", m.num(f"{base}.ci_low"), ", ", m.num(f"{base}.ci_high"), "] (bootstrap over ",
            m.num(f"{base}.n_rows"), " held-out rows)"]  # fmt: skip


def predictability_rows(m: Metrics) -> list[VerdictRow]:
    h = "H4 validation: the synthetic neurons fire like the model's neurons on the same inputs"
    c, p = "compare.json", "compare.json:neuron_predictability"
    rows: list[VerdictRow] = []
    if isinstance(m.get(p), dict):
        readout = "model neuron as ReLU(w·x + b)"
        rows.append(VerdictRow(
            h,
            "neuron predictability (the direct test): held-out mean R² of each model neuron as "
            "ReLU(w·F + b) of the SAE features, fitted on train rows",
            m.num(f"{p}.features.mean_r2"),
            [m.num(f"{p}.floor_shuffled.mean_r2", "F rows shuffled against the neurons"),
             m.num(f"{p}.floor_random_code.mean_r2", "random top-k code of equal L0")],
            [m.num(f"{p}.ceiling_dense.mean_r2", f"{readout} from the dense input the neurons read")],
            value_ci=_bootstrap_cells(m, f"{p}.features"),
            floor_ci=[_bootstrap_cells(m, f"{p}.floor_shuffled"), _bootstrap_cells(m, f"{p}.floor_random_code")],
        ))  # fmt: skip
        if m.get(f"{p}.sharing.squeezer.mantel_r") is not None:
            rows.append(VerdictRow(
                h,
                "feature sharing: Mantel r between the features' co-loading on the fitted model "
                "neurons and on the Squeezer's neurons",
                m.num(f"{p}.sharing.squeezer.mantel_r"),
                [m.num(f"{p}.sharing.floor_untrained.mantel_r", "untrained Squeezer"),
                 m.num(f"{p}.sharing.floor_permuted.mantel_r", "permuted-feature Squeezer")],
                [m.num(f"{p}.sharing.model_loadings.mantel_r", "the model's own read-in of the SAE directions")],
            ))  # fmt: skip
    for key, desc in (
        ("mean_best_abs_r_b", "soft matching: each model neuron's best |r| over the synthetic neurons"),
        ("predictivity_r2", "predictivity: held-out R² of each model neuron from all synthetic neurons (ridge)"),
    ):
        if m.get(f"{c}:squeezer_vs_model.{key}") is None:
            continue
        rows.append(VerdictRow(
            h,
            desc,
            m.num(f"{c}:squeezer_vs_model.{key}"),
            [m.num(f"{c}:floor_untrained.{key}", "untrained Squeezer"),
             m.num(f"{c}:floor_permuted.{key}", "permuted-feature Squeezer")],
            [m.num(f"{c}:ceiling_squeezer_vs_seed2.{key}", "Squeezer vs its seed 2"),
             m.num(f"{c}:ceiling_model_vs_model_seed2.{key}", "model vs its seed 2")],
        ))  # fmt: skip
    return rows


def verdict_rows(m: Metrics) -> list[VerdictRow]:
    rows = compression_rows(m) + geometry_rows(m) + logic_rows(m) + validation_rows(m) + predictability_rows(m)
    return with_intervals(rows, m)


#: the single-seed cite (its key after `<file>.json:`, prefix match) -> its key in intervals.json
INTERVAL_KEYS = (
    ("squeeze.json:squeezer.fvu", "fvu"),
    ("squeeze.json:squeezer.features_represented", "features_represented"),
    ("geometry.json:trained.encoder.D_star", "D_star"),
    ("geometry.json:trained.encoder.n_lines", "n_lines"),
    ("geometry.json:trained.encoder.polytopes.", "n_polytopes"),
    ("logic.json:same_sign.median_lift_shared", "logic_same_sign_median_lift"),
    ("logic.json:opposite_sign.median_lift_shared", "logic_opposite_sign_median_lift"),
    ("compare.json:squeezer_vs_model.hungarian_mean_r", "hungarian_mean_r"),
    ("compare.json:squeezer_vs_model.cka", "cka"),
    ("compare.json:squeezer_vs_model.svcca", "svcca"),
    ("compare.json:squeezer_vs_model.interference_mantel_r", "mantel_r"),
)


def interval_key(cite: str) -> str | None:
    """The intervals.json key of a verdict value's cite (circles: circular_corr_<family>)."""
    for prefix, key in INTERVAL_KEYS:
        if cite.startswith(prefix):
            return key
    c = "geometry.json:trained.encoder.circles."
    if cite.startswith(c) and cite.endswith(".circular_corr"):
        return "circular_corr_" + cite[len(c) : -len(".circular_corr")]
    return None


def interval_cells(m: Metrics, group: str, key: str) -> list[Cell]:
    """ " [ci_low, ci_high] (n seeds)" of intervals.json:<group>.<key>, cited."""
    base = f"intervals.json:{group}.{key}"
    cells: list[Cell] = [" [", m.num(f"{base}.ci_low"), ", ", m.num(f"{base}.ci_high"), "] ("]
    if m.get(f"{base}.n_rows") is not None:  # one fit, a bootstrap over held-out rows
        return [*cells, "bootstrap over ", m.num(f"{base}.n_rows"), " held-out rows)"]
    return [*cells, m.num(f"{base}.n_seeds"), " seeds)"]


def with_intervals(rows: list[VerdictRow], m: Metrics) -> list[VerdictRow]:
    """Attach each row's interval over seeds (metrics/intervals.json, stage `seeds`): the value
    shows as mean-of-seed-0 [CI], and the row holds only if its interval clears the floor's."""
    if not isinstance(m.get("intervals.json:trained"), dict):
        return rows
    for r in rows:
        key = interval_key(r.value.cite)
        if key is None or m.get(f"intervals.json:trained.{key}.mean") is None:
            continue
        r.value_ci = [" (seed 0); mean ", m.num(f"intervals.json:trained.{key}.mean"),
                      *interval_cells(m, "trained", key)]  # fmt: skip
        r.interval_holds = m.num(f"intervals.json:holds.{key}")
        r.floor_ci = [floor_interval_cells(m, f.cite, key) for f in r.floors]
        against = m.get(f"intervals.json:holds_against.{key}")
        if isinstance(against, dict):
            r.floors_missed = [str(FLOOR_NAMES.get(f) or f) for f, ok in against.items() if ok is False]
    return rows


#: intervals.json floor names as the outcome column names them
FLOOR_NAMES = {"untrained": "untrained Squeezer", "permuted": "permuted-feature Squeezer", **BASELINE_LABELS}


def floor_group(cite: str) -> str | None:
    """The intervals.json group holding a floor's interval: `untrained` / `permuted` (the
    Squeezer nulls over seeds) or `baselines.<method>` (baselines.json:<method>.*)."""
    if cite.startswith("baselines.json:"):
        return "baselines." + cite[len("baselines.json:") :].split(".")[0]
    for group in ("untrained", "permuted"):
        if cite.startswith((f"geometry.json:{group}.", f"compare.json:floor_{group}.")):
            return group
    return None


def floor_interval_cells(m: Metrics, cite: str, key: str) -> list[Cell]:
    """A floor's " [ci_low, ci_high] (n seeds)" from intervals.json, [] when it has none."""
    group = floor_group(cite)
    if group is None or m.get(f"intervals.json:{group}.{key}.ci_low") is None:
        return []
    return interval_cells(m, group, key)


def interval_table(m: Metrics) -> Table:
    """Every headline over seeds: mean [95% CI] beside the untrained and permuted floors', and
    whether it holds (clears every floor's interval, baselines included)."""
    trained = m.get("intervals.json:trained")
    body: list[Row] = []
    for key in trained if isinstance(trained, dict) else []:
        holds = m.num(f"intervals.json:holds.{key}")
        word = {True: "holds", False: "does not hold"}.get(holds.value, NA)  # type: ignore[call-overload]
        body.append([
            f"`{key}`",
            [m.num(f"intervals.json:trained.{key}.mean"), *interval_cells(m, "trained", key)],
            [m.num(f"intervals.json:untrained.{key}.mean"), *interval_cells(m, "untrained", key)],
            [m.num(f"intervals.json:permuted.{key}.mean"), *interval_cells(m, "permuted", key)]
            if m.get(f"intervals.json:permuted.{key}.mean") is not None else "—",
            word,
        ])  # fmt: skip
    header = ["measure", "Squeezer: mean [95% CI]", "untrained floor: mean [95% CI]",
              "permuted-feature floor: mean [95% CI]", "outcome (against every floor)"]  # fmt: skip
    return Table(header, body)
