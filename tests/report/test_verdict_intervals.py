"""The verdict table reads metrics/intervals.json: the Squeezer's value and every floor with an
interval (Squeezer nulls over seeds, the random encoder over seeds, PCA / no superposition /
the model's neurons bootstrapped over held-out rows), and "holds" is the interval verdict."""

import pytest

from neural_codec.report.metrics import Metrics, Num
from neural_codec.report.verdicts import verdict_rows


def iv(mean, half, n_seeds=3, **extra):
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n_seeds": n_seeds, **extra}


def metrics(holds_fvu):
    base = {b: {"fvu": f, "fvu_interval": iv(f, 0.01, 1, n_rows=4000)} for b, f in
            (("pca", 0.30), ("no_superposition", 0.50), ("random_encoder", 0.40), ("model_neurons", 0.20))}  # fmt: skip
    return Metrics({
        "squeeze": {"squeezer": {"fvu": 0.25, "features_represented": 30}},
        "baselines": base,
        "compare": {"squeezer_vs_model": {"cka": 0.5}, "floor_untrained": {"cka": 0.1},
                    "floor_permuted": {"cka": 0.2}},
        "intervals": {
            "trained": {"fvu": iv(0.25, 0.02), "cka": iv(0.5, 0.05)},
            "untrained": {"fvu": iv(0.9, 0.02), "cka": iv(0.1, 0.05)},
            "permuted": {"fvu": iv(0.6, 0.02), "cka": iv(0.2, 0.05)},
            "baselines": {b: {"fvu": v["fvu_interval"]} for b, v in base.items() if b != "random_encoder"}
            | {"random_encoder": {"fvu": iv(0.4, 0.03)}},
            "holds": {"fvu": holds_fvu, "cka": True},
            "holds_against": {"fvu": {"untrained": True, "permuted": holds_fvu, "pca": True}},
        },
    })  # fmt: skip


def cites(cells):
    return [c.cite for c in cells if isinstance(c, Num)]


def row(rows, cite):
    return next(r for r in rows if r.value.cite == cite and r.floors and "pca" in r.floors[0].cite)


def test_every_floor_of_the_fvu_row_carries_its_interval():
    rows = verdict_rows(metrics(True))
    fvu = row(rows, "squeeze.json:squeezer.fvu")
    assert [cites(c) for c in fvu.floor_ci] == [
        [f"intervals.json:baselines.{b}.fvu.{k}" for k in ("ci_low", "ci_high", "n_rows" if b != "random_encoder" else "n_seeds")]
        for b in ("pca", "no_superposition", "random_encoder")
    ]  # fmt: skip
    assert "bootstrap over " in fvu.floor_ci[0] and " held-out rows)" in fvu.floor_ci[0]
    assert " seeds)" in fvu.floor_ci[2]
    ref = next(r for r in rows if r.floors and r.floors[0].cite == "baselines.json:model_neurons.fvu")
    assert cites(ref.floor_ci[0])[0] == "intervals.json:baselines.model_neurons.fvu.ci_low"
    cka = next(r for r in rows if r.value.cite == "compare.json:squeezer_vs_model.cka")
    assert [cites(c)[0] for c in cka.floor_ci] == ["intervals.json:untrained.cka.ci_low",
                                                    "intervals.json:permuted.cka.ci_low"]  # fmt: skip
    assert "holds (the interval clears every floor's interval)" in "".join(str(c) for c in fvu.decide())


def test_a_point_win_that_fails_over_intervals_does_not_hold():
    fvu = row(verdict_rows(metrics(False)), "squeeze.json:squeezer.fvu")
    text = "".join(c if isinstance(c, str) else "" for c in fvu.decide())
    assert text.startswith("does not hold over seeds")
    assert "(not: permuted-feature Squeezer)" in text  # names the floor it did not clear
    assert "below every floor: " in text  # the single-seed comparison, still shown beside it


def test_figures_draw_the_intervals_deterministically(tmp_path):
    from neural_codec.report.figures import bars_figure, matched_r_figure

    labels, values = ["Squeezer", "PCA"], [0.25, 0.3]
    ivs = [iv(0.26, 0.02), iv(0.3, 0.01, 1, n_rows=4000)]
    plain = bars_figure(labels, values, "t", "FVU")
    with_bars = bars_figure(labels, values, "t", "FVU", ivs)
    assert with_bars != plain and with_bars == bars_figure(labels, values, "t", "FVU", ivs)
    assert bars_figure(labels, values, "t", "FVU", [None, {"mean": None}]) == plain  # nothing to draw
    csv = tmp_path / "matched_r.csv"
    csv.write_text("rank,squeezer_vs_model,floor_untrained\n0,0.9,0.3\n1,0.7,0.2\n2,0.5,0.1\n")
    band = matched_r_figure(csv, {"squeezer_vs_model": iv(0.7, 0.05)})
    assert band != matched_r_figure(csv) and band == matched_r_figure(
        csv, {"squeezer_vs_model": iv(0.7, 0.05)}
    )


def full_metrics(floors_not_run=(), drop=()):
    """Every number the verdict table prints, each with its interval (over seeds or a bootstrap)."""
    sq = {"fvu": 0.25, "features_represented": 30, "sae_explained_variance": 0.9,
          "sae_explained_variance_ceiling": 0.95, "n_features_firing": 60}  # fmt: skip
    base = {b: {"fvu": f, "features_represented": 10, "sae_explained_variance": 0.5,
                "fvu_interval": iv(f, 0.01, 1, n_rows=4000)}
            for b, f in (("pca", 0.30), ("no_superposition", 0.50), ("random_encoder", 0.40), ("model_neurons", 0.2))}  # fmt: skip
    circle = {"circular_corr": 0.8, "neighbour_frac": 0.7, "wrap_ratio": 1.1, "p_value": 0.01}
    geo = {g: {"encoder": {"D_star": 0.2, "n_lines": 1, "polytopes": {"digon": 2, "other": 1},
                           "circles": {"weekdays": circle}}} for g in ("trained", "untrained", "permuted")}  # fmt: skip
    logic = {g: {"n_shared": 40, "n_control": 200, "median_lift_shared": 0.4, "median_lift_control": 0.6,
                 "verdict": "less", "p_value": 0.001, "cliffs_delta": -0.3} for g in ("same_sign", "opposite_sign")}  # fmt: skip
    pair = {"hungarian_mean_r": 0.5, "cka": 0.5, "svcca": 0.6, "interference_mantel_r": 0.2}
    compare = {c: dict(pair) for c in ("squeezer_vs_model", "floor_untrained", "floor_permuted",
                                       "ceiling_squeezer_vs_seed2", "ceiling_model_vs_model_seed2")}  # fmt: skip
    seeds = {"fvu": 0.25, "features_represented": 30, "sae_explained_variance": 0.9, "D_star": 0.2,
             "n_lines": 1, "n_polytopes": 2, "circular_corr_weekdays": 0.8, "neighbour_frac_weekdays": 0.7,
             "wrap_ratio_weekdays": 1.1, "hungarian_mean_r": 0.5, "cka": 0.5, "svcca": 0.6, "mantel_r": 0.2}  # fmt: skip
    for g in ("same_sign", "opposite_sign"):
        seeds |= {f"logic_{g}_median_lift": 0.4, f"logic_{g}_median_lift_control": 0.6,
                  f"logic_{g}_n_shared": 40, f"logic_{g}_n_control": 200, f"logic_{g}_cliffs_delta": -0.3}  # fmt: skip
    trained = {k: iv(v, 0.01) | {"per_seed": [v] * 3} for k, v in seeds.items() if k not in drop}
    floors = {k: iv(v / 2, 0.01) | {"per_seed": [v / 2] * 3} for k, v in seeds.items()}
    pair_iv = {
        "hungarian_mean_r": iv(0.5, 0.1),
        "cka": iv(0.5, 0.1),
        "svcca": iv(0.6, 0.1),
        "mantel_r": iv(0.2, 0.1),
    }
    intervals = {
        "n_seeds": 3,
        "trained": trained,
        "untrained": floors,
        "permuted": {} if "permuted" in floors_not_run else floors,
        "floors_not_run": list(floors_not_run),
        "baselines": {
            b: {
                "fvu": iv(v["fvu"], 0.01, 1, n_rows=4000),
                "features_represented": iv(10, 1, 1, n_rows=4000),
                "sae_explained_variance": iv(0.5, 0.01, 1, n_rows=4000),
            }
            for b, v in base.items()
        },  # fmt: skip
        "ceilings": {
            "squeezer_vs_seed2": {
                k: v | {"per_seed": [v["mean"]] * 3, "n_pairs": 3} for k, v in pair_iv.items()
            },
            "model_vs_model_seed2": {k: iv(v["mean"], 0.05, 1, n_rows=4000) for k, v in pair_iv.items()},
            "sae": {"sae_explained_variance": iv(0.95, 0.01, 1, n_rows=4000)},
            "firing": {"n_features_firing": iv(60, 2, 1, n_rows=4000)},
        },
        "holds": {k: k != "logic_same_sign_median_lift" for k in seeds},
        "holds_against": {"logic_same_sign_median_lift": {"untrained": True, "matched_control": False}},
    }
    return Metrics({"squeeze": {"squeezer": sq}, "baselines": base, "geometry": geo, "logic": logic,
                    "compare": compare, "intervals": intervals})  # fmt: skip


def test_every_number_in_the_verdict_table_has_an_interval():
    from neural_codec.report.verdicts import numbers_without_interval

    m = full_metrics()
    rows = verdict_rows(m)
    assert numbers_without_interval(rows, m) == []
    # a missing interval is caught
    assert numbers_without_interval(verdict_rows(full_metrics(drop=("neighbour_frac_weekdays",))), m) == [
        "geometry.json:trained.encoder.circles.weekdays.neighbour_frac"
    ]
    sae = next(r for r in rows if r.value.cite == "squeeze.json:squeezer.sae_explained_variance")
    assert cites(sae.ceiling_ci[0])[0] == "intervals.json:ceilings.sae.sae_explained_variance.ci_low"
    assert cites(sae.floor_ci[0])[0] == "intervals.json:baselines.pca.sae_explained_variance.ci_low"
    assert sae.interval_holds.cite == "intervals.json:holds.sae_explained_variance"
    hung = next(r for r in rows if r.value.cite == "compare.json:squeezer_vs_model.hungarian_mean_r")
    assert [cites(c)[0] for c in hung.ceiling_ci] == [
        "intervals.json:ceilings.squeezer_vs_seed2.hungarian_mean_r.mean",
        "intervals.json:ceilings.model_vs_model_seed2.hungarian_mean_r.ci_low",
    ]
    assert " seed pairs)" in hung.ceiling_ci[0] and " held-out rows)" in hung.ceiling_ci[1]
    for key in ("neighbour_frac", "wrap_ratio"):
        r = next(r for r in rows if r.value.cite.endswith(f"weekdays.{key}"))
        assert r.interval_holds.cite == f"intervals.json:holds.{key}_weekdays"
        assert cites(r.floor_ci[0])[1] == f"intervals.json:untrained.{key}_weekdays.ci_low"


def test_the_logic_verdict_reads_the_controls_interval():
    rows = verdict_rows(full_metrics())
    same = next(r for r in rows if r.value.cite == "logic.json:same_sign.median_lift_shared")
    assert cites(same.floor_ci[0])[1] == "intervals.json:trained.logic_same_sign_median_lift_control.ci_low"
    assert same.floors_missed == ["frequency-matched control"]
    text = "".join(c if isinstance(c, str) else "" for c in same.decide())
    assert text.startswith("does not hold over seeds") and "(not: frequency-matched control)" in text
    measure = cites(same.measure)  # n = sharing pairs, with its interval over seeds
    assert "intervals.json:trained.logic_same_sign_n_shared.ci_low" in measure
    outcome = cites(same.outcome)  # Cliff's delta and the control count, with theirs
    assert "intervals.json:trained.logic_same_sign_cliffs_delta.ci_low" in outcome
    assert "intervals.json:trained.logic_same_sign_n_control.ci_low" in outcome


def test_a_floor_that_was_not_run_is_named_not_passed():
    rows = verdict_rows(full_metrics(floors_not_run=("permuted",)))
    d_star = next(r for r in rows if r.value.cite == "geometry.json:trained.encoder.D_star")
    assert d_star.floor_ci[1] == []  # no permuted-floor interval
    text = "".join(c if isinstance(c, str) else "" for c in d_star.decide())
    assert "holds against the floors that were run" in text and "not run: permuted-feature Squeezer" in text
    assert "holds (the interval clears every floor's interval)" not in text
    full = "".join(c if isinstance(c, str) else "" for c in next(
        r for r in verdict_rows(full_metrics()) if r.value.cite == d_star.value.cite).decide())  # fmt: skip
    assert "not run" not in full


def test_lm_scores_carry_their_bootstrap_over_sequences():
    m = full_metrics()
    lm = {"ce_loss_score_reconstruct": 0.8, "ce_loss_score_topk": 0.9,
          "ce_loss_score_reconstruct_interval": iv(0.8, 0.05, 1, n_sequences=64),
          "ce_loss_score_topk_interval": iv(0.9, 0.05, 1, n_sequences=64)}  # fmt: skip
    m.data["squeeze"]["squeezer"]["lm"] = lm
    m.data["sae"] = {
        "lm": {
            "ce": {"ce_loss_score_sae": 0.95, "ce_loss_score_sae_interval": iv(0.95, 0.01, 1, n_sequences=64)}
        }
    }
    rows = verdict_rows(m)
    ce = next(r for r in rows if r.value.cite == "squeeze.json:squeezer.lm.ce_loss_score_reconstruct")
    assert cites(ce.value_ci)[0] == "squeeze.json:squeezer.lm.ce_loss_score_reconstruct_interval.ci_low"
    assert " held-out sequences)" in ce.value_ci
    assert [cites(c)[0] for c in ce.ceiling_ci] == ["squeeze.json:squeezer.lm.ce_loss_score_topk_interval.ci_low",
                                                     "sae.json:lm.ce.ce_loss_score_sae_interval.ci_low"]  # fmt: skip
    from neural_codec.report.verdicts import numbers_without_interval

    assert numbers_without_interval(rows, m) == []
    del lm["ce_loss_score_reconstruct_interval"]
    assert numbers_without_interval(verdict_rows(m), m) == [
        "squeeze.json:squeezer.lm.ce_loss_score_reconstruct"
    ]


def test_score_intervals_bootstrap_whole_sequences():
    import torch

    from neural_codec.source.lm.ce import score_intervals

    g = torch.Generator().manual_seed(0)
    clean = [torch.rand(32, generator=g, dtype=torch.float64) + 1.0]
    zero = [c + 3.0 for c in clean]
    noisy = [c + 1.5 + 0.5 * torch.rand(32, generator=g, dtype=torch.float64) for c in clean]
    out = score_intervals({"clean": clean, "zero": zero, "sae": clean, "reconstruct": noisy}, "ce")
    exact = out["ce_loss_score_sae_interval"]  # patched = clean on every sequence: score 1, no spread
    assert exact["mean"] == exact["ci_low"] == exact["ci_high"] == 1.0 and exact["n_sequences"] == 32
    r = out["ce_loss_score_reconstruct_interval"]
    want = float((zero[0] - noisy[0]).sum() / (zero[0] - clean[0]).sum())
    assert r["mean"] == pytest.approx(want) and r["ci_low"] < want < r["ci_high"] and 0.3 < r["mean"] < 0.55
    hidden = score_intervals({"zero": [torch.ones(8)], "reconstruct": [torch.zeros(8)]}, "hidden")
    assert hidden["hidden_score_reconstruct_interval"]["mean"] == 1.0
