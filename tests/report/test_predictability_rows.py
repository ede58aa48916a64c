"""The H4 row of the direct test (neuron predictability): cited from compare.json, beside their
floors and ceilings, with the bootstrap interval; absent when the run has no such metrics."""

from __future__ import annotations

from neural_codec.report.metrics import Metrics
from neural_codec.report.verdicts import predictability_rows, verdict_rows


def _entry(mean: float) -> dict:
    return {"mean_r2": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01, "n_rows": 1000}


def _compare(pred: float, shuffled: float) -> dict:
    out: dict = {
        "squeezer_vs_model": {"mean_best_abs_r_b": 0.7, "predictivity_r2": 0.8},
        "floor_untrained": {"mean_best_abs_r_b": 0.5, "predictivity_r2": 0.4},
        "floor_permuted": {"mean_best_abs_r_b": 0.6, "predictivity_r2": 0.5},
        "ceiling_squeezer_vs_seed2": {"mean_best_abs_r_b": 0.9, "predictivity_r2": 0.9},
        "ceiling_model_vs_model_seed2": {"mean_best_abs_r_b": 0.8, "predictivity_r2": 0.9},
    }
    out["neuron_predictability"] = {
        "features": _entry(pred),
        "floor_shuffled": _entry(shuffled),
        "floor_random_code": _entry(0.3),
        "ceiling_dense": _entry(0.99),
        "sharing": {k: {"mantel_r": v} for k, v in
                    (("squeezer", 0.4), ("floor_untrained", 0.0), ("floor_permuted", 0.05), ("model_loadings", 0.97))},
    }  # fmt: skip
    return out


def test_rows_cite_values_floors_ceilings_and_decide():
    rows = predictability_rows(Metrics({"compare": _compare(0.95, 0.0)}))
    cites = [r.value.cite for r in rows]
    # soft matching, predictivity and sharing carry no interval yet: compare section, not verdict
    assert cites == ["compare.json:neuron_predictability.features.mean_r2"]
    direct = rows[0]
    assert [f.cite.split(".")[-2] for f in direct.floors] == ["floor_shuffled", "floor_random_code"]
    assert direct.ceilings[0].cite.endswith("ceiling_dense.mean_r2")
    assert any(getattr(c, "cite", "").endswith("features.ci_low") for c in direct.value_ci)
    assert direct.decide()[0].startswith("above every floor")
    assert any(getattr(c, "cite", "").endswith("ceiling_dense.ci_low") for c in direct.ceiling_ci[0])
    # a direct test that does not beat its shuffled floor says so
    low = predictability_rows(Metrics({"compare": _compare(0.2, 0.25)}))[0]
    assert low.decide()[0].startswith("not above every floor")


def test_no_rows_without_the_metrics():
    assert predictability_rows(Metrics({"compare": {"squeezer_vs_model": {"cka": 0.5}}})) == []
    assert len(verdict_rows(Metrics({"compare": _compare(0.9, 0.0)}))) >= 4
