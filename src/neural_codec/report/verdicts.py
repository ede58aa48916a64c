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
    #: per ceiling (same order as `ceilings`): its interval cells, [] for none
    ceiling_ci: list[list[Cell]] = field(default_factory=list)
    #: floors the seeds stage did not run (intervals.json floors_not_run): named, never passed
    floors_not_run: list[str] = field(default_factory=list)

    def decide(self) -> list[Cell]:
        point = self._decide_point()
        h = self.interval_holds
        if h is None or h.value is None:
            if self.floors_not_run and h is not None:
                return [*point, f"; over seeds: no floor interval ({self._not_run()})"]
            return point
        if h.value is True:
            if self.floors_not_run:
                return [*point, "; over seeds: holds against the floors that were run (the interval clears "
                        f"their intervals; {self._not_run()})"]  # fmt: skip
            return [*point, "; over seeds: holds (the interval clears every floor's interval)"]
        missed = f" (not: {', '.join(self.floors_missed)})" if self.floors_missed else ""
        not_run = f"; {self._not_run()}" if self.floors_not_run else ""
        return [f"does not hold over seeds: the interval does not clear every floor's interval{missed}{not_run} (",
                *point, ")"]  # fmt: skip

    def _not_run(self) -> str:
        return f"not run: {', '.join(self.floors_not_run)}"

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
                _labelled(r.ceilings, r.ceiling_ci),
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
                [
                    f"circle '{fam}': variance share on the first circular harmonic, the circle in "
                    "whatever plane it lies (chance 2/(K-1); label-permutation p = ",
                    m.num(f"{t}.{c}.harmonic_p_value"),
                    ")",
                ],
                m.num(f"{t}.{c}.harmonic_frac"),
                nulls(f"{c}.harmonic_frac"),
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
    p = "compare.json:neuron_predictability"
    rows: list[VerdictRow] = []
    if isinstance(m.get(p), dict):
        form = m.get(f"{p}.readout") or "ReLU(w·x + b)"  # the neurons' own nonlinearity
        readout = f"model neuron as {form}"
        rows.append(VerdictRow(
            h,
            f"neuron predictability (the direct test): held-out mean R² of each model neuron as "
            f"{form} with x = the SAE features F, fitted on train rows",
            m.num(f"{p}.features.mean_r2"),
            [m.num(f"{p}.floor_shuffled.mean_r2", "F rows shuffled against the neurons"),
             m.num(f"{p}.floor_random_code.mean_r2", "random top-k code of equal L0")],
            [m.num(f"{p}.ceiling_dense.mean_r2", f"{readout} from the dense input the neurons read")],
            value_ci=_bootstrap_cells(m, f"{p}.features"),
            floor_ci=[_bootstrap_cells(m, f"{p}.floor_shuffled"), _bootstrap_cells(m, f"{p}.floor_random_code")],
            ceiling_ci=[_bootstrap_cells(m, f"{p}.ceiling_dense")],
        ))  # fmt: skip
    # soft matching, predictivity and the feature-sharing comparison carry no interval yet
    # (one fit per condition): they are in the compare section's table, not the verdict table
    return rows


#: the verdict table's blocks in order; a new hypothesis block is one more (Metrics -> rows) builder
ROW_BUILDERS = [compression_rows, geometry_rows, logic_rows, validation_rows, predictability_rows]


def verdict_rows(m: Metrics) -> list[VerdictRow]:
    return with_intervals([r for build in ROW_BUILDERS for r in build(m)], m)


#: a cite's prefix (`<file>.json:<group>.`) -> its group in metrics/intervals.json and its
#: measure there (None: the rest of the cite, renamed by `interval_measure`). Order matters: the
#: exact cites first. A new row's numbers get their intervals by one more entry here.
INTERVAL_GROUPS: tuple[tuple[str, str, str | None], ...] = (
    ("squeeze.json:squeezer.sae_explained_variance_ceiling", "ceilings.sae", "sae_explained_variance"),
    ("squeeze.json:squeezer.n_features_firing", "ceilings.firing", "n_features_firing"),
    ("squeeze.json:squeezer.", "trained", None),
    ("geometry.json:trained.encoder.", "trained", None),
    ("geometry.json:untrained.encoder.", "untrained", None),
    ("geometry.json:permuted.encoder.", "permuted", None),
    ("logic.json:", "trained", None),
    ("compare.json:squeezer_vs_model.", "trained", None),
    ("compare.json:floor_untrained.", "untrained", None),
    ("compare.json:floor_permuted.", "permuted", None),
    ("compare.json:ceiling_squeezer_vs_seed2.", "ceilings.squeezer_vs_seed2", None),
    ("compare.json:ceiling_model_vs_model_seed2.", "ceilings.model_vs_model_seed2", None),
)

#: a measure's name in its json -> in intervals.json (prefix match; the rest is appended)
MEASURE_RENAMES = (
    ("interference_mantel_r", "mantel_r"),
    ("sae_explained_variance_ceiling", "sae_explained_variance"),
)


def interval_measure(group: str, rest: str) -> str | None:
    """The intervals.json measure of a cite's remainder after its group prefix."""
    if rest.startswith("polytopes."):  # a `+`-sum of polytope kinds
        return "n_polytopes"
    if rest.startswith("circles."):  # circles.<family>.<measure> -> <measure>_<family>
        parts = rest.split(".")
        return f"{parts[2]}_{parts[1]}" if len(parts) == 3 else None
    if group == "trained" and rest.startswith(("same_sign.", "opposite_sign.")):  # logic.json
        grp, _, key = rest.partition(".")
        return {"median_lift_shared": f"logic_{grp}_median_lift", "median_lift_control":
                f"logic_{grp}_median_lift_control", "n_shared": f"logic_{grp}_n_shared", "n_control": f"logic_{grp}_n_control",
                "cliffs_delta": f"logic_{grp}_cliffs_delta"}.get(key)  # fmt: skip
    for old, new in MEASURE_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def interval_path(m: Metrics, cite: str) -> str | None:
    """Where a cited number's interval is: in metrics/intervals.json (over seeds, or a bootstrap
    for the one-fit baselines and ceilings), or beside the number as `<cite>_interval` (e.g. the
    lm CE-loss scores' bootstrap over held-out sequences). None when it has none."""
    candidates = [f"{cite}_interval"]
    if cite.startswith("baselines.json:"):
        method, _, rest = cite[len("baselines.json:") :].partition(".")
        candidates.insert(0, f"intervals.json:baselines.{method}.{rest}")
    for prefix, group, fixed in INTERVAL_GROUPS:
        if cite.startswith(prefix):
            key = fixed or interval_measure(group, cite[len(prefix) :])
            if key is not None:
                candidates.insert(0, f"intervals.json:{group}.{key}")
            break
    for c in candidates:
        if isinstance(m.get(c), dict) and m.get(f"{c}.ci_low") is not None:
            return c
    return None


def interval_key(cite: str) -> str | None:
    """The intervals.json measure of a Squeezer value's cite (None: not a seeds headline)."""
    for prefix, group, fixed in INTERVAL_GROUPS:
        if cite.startswith(prefix):
            return (fixed or interval_measure(group, cite[len(prefix) :])) if group == "trained" else None
    return None


#: what a bootstrap resampled (the interval's size key) -> its words
RESAMPLED = (
    ("n_rows", " held-out rows"),
    ("n_sequences", " held-out sequences"),
    ("n_features", " features"),
)


def interval_cells(m: Metrics, group: str, key: str) -> list[Cell]:
    """ " [ci_low, ci_high] (n seeds)" of intervals.json:<group>.<key>, cited."""
    return path_cells(m, f"intervals.json:{group}.{key}")


def path_cells(m: Metrics, base: str) -> list[Cell]:
    """ " [ci_low, ci_high] (n seeds | bootstrap over n rows | n seed pairs)" of the interval at
    `base` (a cite), cited."""
    cells: list[Cell] = [" [", m.num(f"{base}.ci_low"), ", ", m.num(f"{base}.ci_high"), "] ("]
    for size, words in RESAMPLED:
        if m.get(f"{base}.{size}") is not None:  # one fit, a bootstrap
            return [*cells, "bootstrap over ", m.num(f"{base}.{size}"), f"{words})"]
    if m.get(f"{base}.n_pairs") is not None:
        return [*cells, m.num(f"{base}.n_pairs"), " seed pairs)"]
    return [*cells, m.num(f"{base}.n_seeds"), " seeds)"]


def value_cells(m: Metrics, num: Num, seed0: bool = False) -> list[Cell]:
    """A number's interval cells: ", mean X [lo, hi] (n seeds)" over seeds (" (seed 0); mean ..."
    for the Squeezer's value, which is seed 0), or " [lo, hi] (bootstrap ...)" around a one-fit
    number; [] when it has none."""
    path = interval_path(m, num.cite)
    if path is None:
        return []
    if m.get(f"{path}.per_seed") is not None:
        first = " (seed 0); mean " if seed0 and m.get(f"{path}.n_pairs") is None else ", mean "
        return [first, m.num(f"{path}.mean"), *path_cells(m, path)]
    return path_cells(m, path)


def annotate(cells: Cell | list[Cell], m: Metrics, skip: set[str]) -> Cell | list[Cell]:
    """Put each number's interval after it (numbers cited in `skip` are shown elsewhere)."""
    if not isinstance(cells, list):
        return cells
    out: list[Cell] = []
    for c in cells:
        out.append(c)
        if isinstance(c, Num) and c.cite not in skip:
            out += value_cells(m, c, seed0=interval_key(c.cite) is not None)
    return out


def with_intervals(rows: list[VerdictRow], m: Metrics) -> list[VerdictRow]:
    """Attach each number's interval (metrics/intervals.json, stage `seeds`; or a bootstrap): the
    value shows as seed 0, mean [CI]; floors and ceilings with theirs; and a Squeezer headline
    holds only if its interval clears every floor's (a floor the run skipped is named)."""
    if not isinstance(m.get("intervals.json:trained"), dict):
        return rows
    not_run = m.get("intervals.json:floors_not_run")
    not_run = [str(FLOOR_NAMES.get(f) or f) for f in not_run] if isinstance(not_run, list) else []
    for r in rows:
        # intervals.json's cells, else the row's own (a bootstrap the row's stage wrote)
        own_f, own_c = r.floor_ci or [[]] * len(r.floors), r.ceiling_ci or [[]] * len(r.ceilings)
        r.value_ci = value_cells(m, r.value, seed0=interval_key(r.value.cite) is not None) or r.value_ci
        r.floor_ci = [value_cells(m, f) or o for f, o in zip(r.floors, own_f, strict=True)]
        r.ceiling_ci = [value_cells(m, c) or o for c, o in zip(r.ceilings, own_c, strict=True)]
        shown = {r.value.cite, *(f.cite for f in r.floors), *(c.cite for c in r.ceilings)}
        r.measure = annotate(r.measure, m, shown)
        if r.outcome is not None:
            r.outcome = annotate(r.outcome, m, shown)  # type: ignore[assignment]
        key = interval_key(r.value.cite)
        if key is None or m.get(f"intervals.json:trained.{key}.mean") is None:
            continue
        r.interval_holds = m.num(f"intervals.json:holds.{key}")
        r.floors_not_run = not_run
        against = m.get(f"intervals.json:holds_against.{key}")
        if isinstance(against, dict):
            r.floors_missed = [str(FLOOR_NAMES.get(f) or f) for f, ok in against.items() if ok is False]
    return rows


#: numbers the verdict reads as they are (test p-values, verdict words): no interval expected
AS_IS = (".p_value", ".harmonic_p_value", ".verdict")


def is_interval_part(cite: str) -> bool:
    """An interval's own numbers (bounds, sizes) or a number read as it is (AS_IS)."""
    return cite.startswith("intervals.json:") or "_interval." in cite or cite.endswith(AS_IS)


def numbers_without_interval(rows: list[VerdictRow], m: Metrics) -> list[str]:
    """The cites of every number in the verdict table that has no interval beside it (a test
    p-value or a verdict word excepted): [] when every number is shown as value [CI]."""

    def nums(cells: Cell | list[Cell]) -> list[tuple[Num, bool]]:
        items = cells if isinstance(cells, list) else [cells]
        out = []
        for i, c in enumerate(items):
            if isinstance(c, Num):
                nxt = items[i + 1] if i + 1 < len(items) else None
                out.append((c, isinstance(nxt, str) and nxt.startswith((" [", " (seed", ", mean "))))
            elif isinstance(c, list):
                out += nums(c)
        return out

    missing = []
    for r in rows:
        pairs = [(r.value, bool(r.value_ci))]
        pairs += [(f, bool(ci)) for f, ci in zip(r.floors, r.floor_ci or [[]] * len(r.floors), strict=True)]
        pairs += [
            (c, bool(ci)) for c, ci in zip(r.ceilings, r.ceiling_ci or [[]] * len(r.ceilings), strict=True)
        ]
        shown = {n.cite for n, _ in pairs}
        pairs += [(n, ok) for n, ok in nums(r.measure) + nums(r.outcome or []) if n.cite not in shown]
        missing += [
            n.cite for n, ok in pairs if not ok and n.value is not None and not is_interval_part(n.cite)
        ]
    return missing


#: intervals.json floor names as the outcome column names them
FLOOR_NAMES = {"untrained": "untrained Squeezer", "permuted": "permuted-feature Squeezer",
               "matched_control": "frequency-matched control", **BASELINE_LABELS}  # fmt: skip


#: intervals.json ceilings as the uncertainty section names them
CEILING_NAMES = {
    "squeezer_vs_seed2": "Squeezer vs its next seed",
    "model_vs_model_seed2": "model vs its seed 2",
    "sae": "SAE on its own top-k F",
    "firing": "features that fire on held-out",
}


def ceiling_table(m: Metrics) -> Table:
    """Every ceiling's interval: over seed pairs (the Squeezer against its next seed) or a
    bootstrap (the one-fit ceilings)."""
    ceilings = m.get("intervals.json:ceilings")
    body: list[Row] = []
    for name, ivs in ceilings.items() if isinstance(ceilings, dict) else []:
        for key in ivs if isinstance(ivs, dict) else []:
            base = f"intervals.json:ceilings.{name}.{key}"
            body.append(
                [str(CEILING_NAMES.get(name, name)), f"`{key}`", [m.num(f"{base}.mean"), *path_cells(m, base)]]
            )
    return Table(["ceiling", "measure", "mean [95% CI]"], body)


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
