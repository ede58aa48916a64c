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
    "compare": {"max_features_for_mantel": 200},
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
        "baselines",
        "seeds",
    ]:
        run_stage(root, stage)
    first = (root / "metrics/intervals.json").read_text()
    run_stage(root, "seeds")
    yield root, first
    torch.set_num_threads(threads)


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
