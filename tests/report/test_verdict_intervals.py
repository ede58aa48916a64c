"""The verdict table reads metrics/intervals.json: the Squeezer's value and every floor with an
interval (Squeezer nulls over seeds, the random encoder over seeds, PCA / no superposition /
the model's neurons bootstrapped over held-out rows), and "holds" is the interval verdict."""

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
    assert band != matched_r_figure(csv) and band == matched_r_figure(csv, {"squeezer_vs_model": iv(0.7, 0.05)})
