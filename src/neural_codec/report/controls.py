"""Positive controls: does each analysis find what the synthetic source planted, in this run?

Computed by the report stage from this run's own metrics (no extra training), written to
`metrics/controls.json` as `{control: {"planted", "measured", "found", "expected_found", "cite"}}`
and shown as the report's first table, each row beside the experiment's own headline result:

- sae_recovery: the true feature directions (source.json n_true_features) recovered by the SAE
  (sae.json ground_truth.frac_recovered >= 0.8, with its bootstrap interval over the true
  features; SAELens' F1 and uniqueness shown beside it).
- logic_exclusive_lift: planted exclusive families never co-occur: the median lift of their
  pairs (logic.json families.exclusive.lift_all_pairs.median) is < 0.5.
- logic_correlated_lift: planted correlated pairs co-occur: median lift > 2.
- logic_exclusive_antipodal: the planted exclusive families' placement on shared neurons as TMS
  predicts (antipodal): they avoid same-sign sharing and prefer opposite-sign sharing, i.e. the
  family-level enrichment is < 1 for same-sign and > 1 for opposite-sign sharing.
- geometry_circles: every planted cyclic family's circle statistic has p < 0.05 in the trained
  encoder (geometry.json trained.encoder.circles.<family>.p_value).
- compare_planted_codec: with `source.synthetic.model: codec` the model's neurons ARE a codec
  of the features, so the Squeezer's neurons should match them far above the floors: Hungarian
  |r| and CKA both exceed the best *informative* floor + FAR_ABOVE. A floor is informative for
  neuron identity only when the model's own second seed (ceiling_model_vs_model_seed2, the
  model retrained on the true data) clears it by INFORMATIVE (= FAR_ABOVE): if a retrained model matches the
  model no better than a Squeezer trained on permuted features (same marginals, no
  co-occurrence), the codec's neurons are not fixed by co-occurrence and no learner of the data
  can beat that floor (measured on the tiny planted codec: seed-2 Hungarian |r| 0.434 vs
  permuted 0.436, CKA 0.804 vs 0.763; its Hungarian |r| clears even the untrained floor by
  only 0.07, so on that codec only CKA can show identity beyond a floor). Such a floor is listed in `uninformative_floors`, not
  silently dropped; with no seed-2 ceiling every floor counts. With the toy model (a
  near-linear layer, no codec planted) `expected_found` is false: a found there is no control.

Lines and polytopes in the model's own weights need the TMS reproduction; they are not rows yet.
A row whose inputs are missing (lm source, an analysis switched off) has found = false and a
`measured` of None, so a broken or absent analysis can never pass.
"""

from __future__ import annotations

from typing import Any

from neural_codec.report.metrics import Metrics, fmt
from neural_codec.report.page import Row, Table

FAR_ABOVE = 0.1  # compare: the Squeezer-vs-model match must beat the best floor by this much
INFORMATIVE = FAR_ABOVE  # compare: a floor counts when the model's seed-2 ceiling clears it by this
# much (a learner at the ceiling cannot beat by FAR_ABOVE a floor the ceiling does not clear by it)
SAE_RECOVERED = 0.8
EXCLUSIVE_LIFT = 0.5
CORRELATED_LIFT = 2.0
CIRCLE_P = 0.05


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _lt(v: Any, thr: float) -> bool:
    x = _num(v)
    return x is not None and x < thr


def _gt(v: Any, thr: float) -> bool:
    x = _num(v)
    return x is not None and x > thr


def positive_controls(m: Metrics) -> dict[str, dict[str, Any]]:
    """The control rows of this run (empty for an lm source: nothing is planted there)."""
    if m.get("source.json:kind") != "synthetic":
        return {}
    planted = m.get("source.json:planted") or {}
    out: dict[str, dict[str, Any]] = {}

    frac = m.get("sae.json:ground_truth.frac_recovered")
    out["sae_recovery"] = {
        "planted": {"n_true_features": m.get("source.json:n_true_features")},
        "measured": {
            "frac_recovered": frac,
            "frac_recovered_ci": [
                m.get("sae.json:ground_truth.frac_recovered_interval.ci_low"),
                m.get("sae.json:ground_truth.frac_recovered_interval.ci_high"),
            ],
            "f1": m.get("sae.json:synthetic.f1"),
            "uniqueness": m.get("sae.json:synthetic.uniqueness"),
        },
        "found": not _lt(frac, SAE_RECOVERED) and _num(frac) is not None,
        "expected_found": True,
        "cite": "sae.json:ground_truth.frac_recovered",
    }
    fam = "logic.json:families"
    lift_x = m.get(f"{fam}.exclusive.lift_all_pairs.median")
    out["logic_exclusive_lift"] = {
        "planted": {"exclusive_families": planted.get("exclusive")},
        "measured": {"median_lift": lift_x},
        "found": _lt(lift_x, EXCLUSIVE_LIFT),
        "expected_found": bool(planted.get("exclusive")),
        "cite": f"{fam}.exclusive.lift_all_pairs.median",
    }
    lift_c = m.get(f"{fam}.correlated.lift_all_pairs.median")
    out["logic_correlated_lift"] = {
        "planted": {"correlated_pairs": planted.get("correlated")},
        "measured": {"median_lift": lift_c},
        "found": _gt(lift_c, CORRELATED_LIFT),
        "expected_found": bool(planted.get("correlated")),
        "cite": f"{fam}.correlated.lift_all_pairs.median",
    }
    e_same = m.get(f"{fam}.exclusive.same_sign.enrichment")
    e_opp = m.get(f"{fam}.exclusive.opposite_sign.enrichment")
    out["logic_exclusive_antipodal"] = {
        "planted": {"exclusive_families": planted.get("exclusive")},
        "measured": {"same_sign_enrichment": e_same, "opposite_sign_enrichment": e_opp},
        "found": _lt(e_same, 1.0) and _gt(e_opp, 1.0),
        "expected_found": bool(planted.get("exclusive")),
        "cite": f"{fam}.exclusive.opposite_sign.enrichment",
    }
    circles = m.get("geometry.json:trained.encoder.circles") or {}
    p_values = {name: c.get("p_value") for name, c in circles.items() if isinstance(c, dict)}
    out["geometry_circles"] = {
        "planted": {"cyclic_families": planted.get("cyclic")},
        "measured": {"p_value": p_values},
        "found": bool(p_values) and all(_lt(p, CIRCLE_P) for p in p_values.values()),
        "expected_found": bool(planted.get("cyclic")),
        "cite": "geometry.json:trained.encoder.circles",
    }
    measured: dict[str, Any] = {}
    found = True
    for key in ("hungarian_mean_r", "cka"):
        main = m.get(f"compare.json:squeezer_vs_model.{key}")
        ceiling = _num(m.get(f"compare.json:ceiling_model_vs_model_seed2.{key}"))
        raw = {f: _num(m.get(f"compare.json:{f}.{key}")) for f in ("floor_untrained", "floor_permuted")}
        floors = {f: x for f, x in raw.items() if x is not None}
        useless = sorted(f for f, x in floors.items() if ceiling is not None and ceiling - x < INFORMATIVE)
        best = max((x for f, x in floors.items() if f not in useless), default=None)
        measured[key] = main
        measured[f"{key}_best_floor"] = best
        measured[f"{key}_ceiling_model_seed2"] = ceiling
        measured[f"{key}_uninformative_floors"] = useless
        found = found and best is not None and _gt(main, best + FAR_ABOVE)
    out["compare_planted_codec"] = {
        "planted": {"model": m.get("source.json:model") or "toy"},
        "measured": measured,
        "found": bool(found),
        "expected_found": m.get("source.json:model") == "codec",
        "cite": "compare.json:squeezer_vs_model.hungarian_mean_r",
    }
    return out


def _cell(d: Any) -> str:
    if isinstance(d, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in d.items())
    if isinstance(d, list) and d and all(isinstance(v, (int, float)) for v in d):  # [ci_low, ci_high]
        return "[" + ", ".join(_cell(v) for v in d) + "]"
    if isinstance(d, list):  # names (e.g. uninformative floors)
        return "/".join(map(str, d)) or "none"
    return fmt(d)


def controls_table(controls: dict[str, dict[str, Any]]) -> Table:
    """One row per control: planted truth, measured, found, and whether a find is expected here."""
    rows: list[Row] = []
    for name, c in controls.items():
        verdict = "found" if c["found"] else "not found"
        status = "ok" if c["found"] == c["expected_found"] else "CONTROL FAILED"
        rows.append(
            [
                f"`{name}`",
                _cell(c["planted"]),
                _cell(c["measured"]),
                verdict,
                "expected" if c["expected_found"] else "not expected (nothing planted for it here)",
                status,
            ]
        )
    return Table(["control", "planted truth", "measured (this run)", "found", "expected", "status"], rows)
