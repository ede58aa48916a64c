"""Stage `seeds` on a tiny synthetic run: every headline as {"mean", "ci_low", "ci_high",
"n_seeds"}, seed 0 = the single-seed numbers, the trained FVU clears its untrained floor, the
stage is bit-reproducible on one machine; logic reads the co-occurrence split by default."""

import json

import pytest
import torch
from pipeline_helpers import copy_repo, run_stage, tiny_params, write_params

OVERRIDES = {
    "squeezer": {"M": 16, "steps": 300, "batch_size": 512},
    "logic": {"min_expected": 2.0},
    "compare": {"max_features_for_mantel": 200, "n_mantel_permutations": 49},
    "seeds": {"n_seeds": 3, "n_permutations": 49},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = copy_repo(tmp_path_factory.mktemp("seeds") / "repo")
    write_params(root, tiny_params(**OVERRIDES))
    for stage in [
        "source",
        "activations",
        "sae",
        "labels",
        "features",
        "squeeze",
        "logic",
        "geometry",
        "baselines",
        "compare",
        "seeds",
    ]:
        run_stage(root, stage)
    first = (root / "metrics/intervals.json").read_text()
    run_stage(root, "seeds")
    yield root, first
    torch.set_num_threads(threads)


def test_circle_verdicts_leave_the_intervals():
    from neural_codec.pipeline.seeds import circle_verdicts

    per = {
        "fvu": [0.1, 0.2],
        "circle.p_value.weekdays": [0.01, 0.3],
        "circle.harmonic_p_value.months.x": [0.5, 0.6],
    }
    assert circle_verdicts(per) == {
        "weekdays": {"p_value": [0.01, 0.3]},
        "months.x": {"harmonic_p_value": [0.5, 0.6]},
    }
    assert per == {"fvu": [0.1, 0.2]}


def read(root, name):
    return json.loads((root / "metrics" / name).read_text())


def test_every_headline_has_an_interval_over_three_seeds(run):
    root, _ = run
    iv = read(root, "intervals.json")
    assert iv["n_seeds"] == 3 and iv["seeds"] == [0, 1, 2]
    for key in ("fvu", "features_represented", "D_star", "n_lines", "n_polytopes", "circular_corr_weekdays",
                "logic_same_sign_cliffs_delta", "hungarian_mean_r", "cka", "svcca", "mantel_r"):  # fmt: skip
        t = iv["trained"][key]
        assert set(t) >= {"mean", "ci_low", "ci_high", "n_seeds"} and t["n_seeds"] == 3, key
        assert t["ci_low"] <= t["mean"] <= t["ci_high"], key
        assert key in iv["untrained"] and key in iv["holds"]
    # the per-seed circle verdicts (the geometry_circles control counts them): out of the intervals
    geo = read(root, "geometry.json")["trained"]["encoder"]["circles"]["weekdays"]
    for cond in ("trained", "untrained", "permuted"):
        w = iv["circles"][cond]["weekdays"]
        assert (
            set(w) == {"p_value", "harmonic_p_value", "decoder_harmonic_p_value"} and len(w["p_value"]) == 3
        )
        assert all(0 < p <= 1 for p in w["harmonic_p_value"] + w["decoder_harmonic_p_value"])
    assert iv["trained"]["harmonic_frac_weekdays"]["per_seed"][0] == pytest.approx(geo["harmonic_frac"])
    assert not any(k.startswith("circle.") for k in iv["trained"])


def test_family_sharing_counts_are_kept_per_seed_and_seed_zero_is_the_logic_stages(run):
    """The exclusive pairs' sharing counts per seed (the antipodal control pools them), out of
    the intervals; seed 0's are the logic stage's own (the same Squeezer, pairs and rule)."""
    root, _ = run
    iv, fam = read(root, "intervals.json"), read(root, "logic.json")["families"]["exclusive"]
    for cond in ("trained", "untrained", "permuted"):
        x = iv["family_sharing"][cond]["exclusive"]
        assert x["n_pairs"] == fam["n_pairs"]
        for g in ("same_sign", "opposite_sign"):
            assert len(x[g]["n_sharing"]) == 3 and all(0 < c < 1 for c in x[g]["frac_sharing_chance"])
    for g in ("same_sign", "opposite_sign"):
        t = iv["family_sharing"]["trained"]["exclusive"][g]
        assert t["n_sharing"][0] == fam[g]["n_sharing"]
        assert t["frac_sharing_chance"][0] == pytest.approx(fam[g]["frac_sharing_chance"])
    assert not any(k.startswith("sharing.") for k in iv["trained"])


def test_seed_zero_is_the_single_seed_run_and_fvu_clears_its_floor(run):
    root, _ = run
    iv, sq = read(root, "intervals.json"), read(root, "squeeze.json")["squeezer"]
    assert iv["trained"]["fvu"]["per_seed"][0] == pytest.approx(sq["fvu"], rel=1e-9)
    assert iv["trained"]["fvu"]["ci_high"] < iv["untrained"]["fvu"]["ci_low"]
    assert iv["holds_untrained"]["fvu"] is True and iv["holds_untrained"]["features_represented"] is True


def test_seeds_stage_is_bit_reproducible_on_one_machine(run):
    root, first = run
    assert (root / "metrics/intervals.json").read_text() == first


def test_logic_reads_the_cooccurrence_split_by_default(run):
    root, _ = run
    logic = read(root, "logic.json")
    assert logic["split"] == "cooc" and logic["n_rows"] == tiny_params()["activations"]["n_cooc"]
    meta = json.loads((root / "data/activations/cooc/meta.json").read_text())
    assert meta["n_rows"] == logic["n_rows"]


def test_every_floor_has_an_interval_and_holds_reads_them_all(run):
    root, _ = run
    iv, base = read(root, "intervals.json"), read(root, "baselines.json")
    for key in ("fvu", "features_represented", "D_star", "hungarian_mean_r"):
        p = iv["permuted"][key]
        assert p["n_seeds"] == 3 and p["ci_low"] <= p["mean"] <= p["ci_high"], key
    re = iv["baselines"]["random_encoder"]["fvu"]
    assert re["n_seeds"] == 3 and re["per_seed"][0] == pytest.approx(base["random_encoder"]["fvu"], rel=1e-6)
    for b in ("pca", "no_superposition", "model_neurons"):
        b_iv = iv["baselines"][b]["fvu"]
        assert b_iv["mean"] == pytest.approx(base[b]["fvu"], rel=1e-9), b  # bootstrap centred on the fit
        assert b_iv["ci_low"] < b_iv["mean"] < b_iv["ci_high"], b
        fr = iv["baselines"][b]["features_represented"]  # Poisson bootstrap, centred on the count
        assert (
            fr["mean"] == base[b]["features_represented"] and fr["ci_low"] <= fr["mean"] <= fr["ci_high"]
        ), b
    # holds = clears every floor; a trained FVU above PCA's interval would not hold
    t = iv["trained"]["fvu"]
    beats = [t["ci_high"] < iv[c]["fvu"]["ci_low"] for c in ("untrained", "permuted")]
    beats += [
        t["ci_high"] < iv["baselines"][b]["fvu"]["ci_low"]
        for b in ("pca", "no_superposition", "random_encoder")
    ]
    assert iv["holds"]["fvu"] is all(beats)
    against = iv["holds_against"]["fvu"]
    assert set(against) == {"untrained", "permuted", "pca", "no_superposition", "random_encoder"}
    assert [against[f] for f in ("untrained", "permuted")] == beats[:2] and iv["holds"]["fvu"] is all(
        against.values()
    )
    assert iv["holds_untrained"]["fvu"] is True


def test_every_verdict_number_has_an_interval(run):
    """The numbers the verdict table prints beside the headlines: SAE-input explained variance,
    circle neighbour fraction and wrap ratio, the logic controls' lift and pair counts."""
    root, _ = run
    iv = read(root, "intervals.json")
    for key in ("sae_explained_variance", "neighbour_frac_weekdays", "wrap_ratio_weekdays",
                "logic_same_sign_median_lift_control", "logic_opposite_sign_median_lift_control",
                "logic_same_sign_n_shared", "logic_opposite_sign_n_shared"):  # fmt: skip
        t = iv["trained"][key]
        assert t["n_seeds"] == 3 and t["ci_low"] <= t["mean"] <= t["ci_high"], key
        assert key in iv["untrained"] and key in iv["permuted"], key
    sq, logic = read(root, "squeeze.json")["squeezer"], read(root, "logic.json")
    assert iv["trained"]["sae_explained_variance"]["per_seed"][0] == pytest.approx(
        sq["sae_explained_variance"]
    )
    for g in ("same_sign", "opposite_sign"):  # seed 0 is the logic stage's Squeezer
        assert iv["trained"][f"logic_{g}_median_lift_control"]["per_seed"][0] == pytest.approx(
            logic[g]["median_lift_control"]
        )
        assert iv["trained"][f"logic_{g}_n_shared"]["per_seed"][0] == logic[g]["n_shared"]
    # the logic lift's own floor: its frequency-matched controls, read by holds
    against = iv["holds_against"]["logic_same_sign_median_lift"]
    assert set(against) == {"untrained", "permuted", "matched_control"}
    t, c = iv["trained"]["logic_same_sign_median_lift"], iv["trained"]["logic_same_sign_median_lift_control"]
    assert against["matched_control"] is (t["ci_high"] < c["ci_low"])
    pca = iv["baselines"]["pca"]["sae_explained_variance"]
    assert pca["n_rows"] > 0 and pca["ci_low"] < pca["mean"] < pca["ci_high"]
    assert pca["mean"] == pytest.approx(
        read(root, "baselines.json")["pca"]["sae_explained_variance"], rel=1e-9
    )
    assert "pca" in iv["holds_against"]["sae_explained_variance"]


def test_ceilings_have_intervals_and_seed_zero_is_the_compare_stage(run):
    root, _ = run
    iv, comp = read(root, "intervals.json"), read(root, "compare.json")
    ce = iv["ceilings"]
    seed_pair = ce["squeezer_vs_seed2"]
    for key, cite in (("hungarian_mean_r", "hungarian_mean_r"), ("cka", "cka"), ("svcca", "svcca"),
                      ("mantel_r", "interference_mantel_r")):  # fmt: skip
        assert seed_pair[key]["n_pairs"] == 3 and seed_pair[key]["n_seeds"] == 3, key
        # pair (0, 1) is the compare stage's Squeezer against its seed 2 (same seed, same steps)
        assert seed_pair[key]["per_seed"][0] == pytest.approx(
            comp["ceiling_squeezer_vs_seed2"][cite], rel=1e-5
        )
        model = ce["model_vs_model_seed2"][key]
        assert model["mean"] == pytest.approx(comp["ceiling_model_vs_model_seed2"][cite], rel=1e-5), key
        assert model["ci_low"] <= model["mean"] <= model["ci_high"] and model["ci_low"] < model["ci_high"], (
            key
        )
        assert ("n_features" if key == "mantel_r" else "n_rows") in model, key
    sae = ce["sae"]["sae_explained_variance"]
    assert sae["mean"] == pytest.approx(
        read(root, "squeeze.json")["squeezer"]["sae_explained_variance_ceiling"]
    )
    assert sae["ci_low"] < sae["mean"] < sae["ci_high"] and sae["n_rows"] == 4000
    firing = ce["firing"]["n_features_firing"]  # centred on the count that fires on held-out
    assert firing["mean"] == read(root, "squeeze.json")["squeezer"]["n_features_firing"]
    assert firing["ci_low"] <= firing["mean"] <= firing["ci_high"]


def test_mantel_features_are_the_compare_stages(run):
    """compare and seeds share `mantel_features`: seed 0's Mantel r is compare.json's."""
    root, _ = run
    iv, comp = read(root, "intervals.json"), read(root, "compare.json")
    assert iv["trained"]["mantel_r"]["per_seed"][0] == pytest.approx(
        comp["squeezer_vs_model"]["interference_mantel_r"], rel=1e-5
    )


def test_without_the_permuted_floor_the_run_says_so(run, tmp_path):
    import shutil

    root, _ = run
    cheap = shutil.copytree(root, tmp_path / "repo", ignore=shutil.ignore_patterns("timings"))
    write_params(
        cheap, tiny_params(**{**OVERRIDES, "seeds": {**OVERRIDES["seeds"], "floor_permuted": False}})
    )
    run_stage(cheap, "seeds")
    iv = read(cheap, "intervals.json")
    assert iv["floors_not_run"] == ["permuted"] and iv["permuted"] == {}
    assert "permuted" not in iv["holds_against"]["fvu"] and "untrained" in iv["holds_against"]["fvu"]
    full = read(root, "intervals.json")
    assert full["floors_not_run"] == [] and iv["trained"]["fvu"] == full["trained"]["fvu"]


def test_the_verdict_table_shows_an_interval_for_every_number(run):
    """On a real (tiny) run: every number the verdict table prints has its interval beside it,
    and each Squeezer headline's outcome is the interval verdict."""
    from neural_codec.report.metrics import Metrics
    from neural_codec.report.verdicts import numbers_without_interval, verdict_rows

    root, _ = run
    m = Metrics.load(root / "metrics", root / "data/logic/truth_tables.json")
    rows = verdict_rows(m)
    assert numbers_without_interval(rows, m) == []
    with_holds = [r for r in rows if r.interval_holds is not None and r.interval_holds.value is not None]
    assert len(with_holds) >= 10 and all(r.value_ci for r in rows if r.value.value is not None)
