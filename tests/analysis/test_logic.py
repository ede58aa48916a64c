"""Logic stage: planted exclusive families sharing neurons are found (lift < 1), an independent
control sharing neurons is not, correlated sharers give the BOWS verdict; sparse co-occurrence
equals a dense reference; truth tables are right on a hand-made example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from neural_codec import storage
from neural_codec.analysis.logic import (
    MIN_FEATURES_PER_BIN,
    analyse_sharing,
    compare_lifts,
    cooccurrence,
    frequency_bins,
    matched_controls,
    neuron_members,
    pair_stats,
    shared_pairs,
    truth_tables,
)
from neural_codec.config import LogicConfig, SqueezerConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict
from neural_codec.squeezer.checkpoint import save_squeezer
from neural_codec.squeezer.model import Squeezer
from neural_codec.storage import SparseFeatures

REPO = Path(__file__).resolve().parents[2]

N_FAM, FAM_SIZE, N_INDEP = 5, 4, 20
N_FEAT = N_FAM * FAM_SIZE + N_INDEP  # 40: features 0..19 in exclusive families, 20..39 not
FREQ = 0.1  # every feature fires in ~10% of rows


def planted_rows(n_rows: int, seed: int, correlated_pairs: bool = False) -> SparseFeatures:
    """Exclusive families: each active w.p. FAM_SIZE*FREQ, then exactly one member fires.
    Features 20..39 fire independently (or, with `correlated_pairs`, as always-co-firing pairs
    (20,21), (22,23), ...)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_rows, N_FEAT), dtype=np.float32)
    for f in range(N_FAM):
        on = rng.random(n_rows) < FAM_SIZE * FREQ
        member = f * FAM_SIZE + rng.integers(0, FAM_SIZE, n_rows)
        dense[np.flatnonzero(on), member[on]] = 1.0
    base = N_FAM * FAM_SIZE
    if correlated_pairs:
        for p in range(N_INDEP // 2):
            on = rng.random(n_rows) < FREQ
            dense[on, base + 2 * p] = 1.0
            dense[on, base + 2 * p + 1] = 1.0
    else:
        dense[:, base:] = rng.random((n_rows, N_INDEP)) < FREQ
    dense *= rng.uniform(0.5, 1.5, dense.shape).astype(np.float32)
    return SparseFeatures.from_dense(dense, k=N_FEAT)


def planted_w(groups: list[list[int]], seed: int = 0) -> np.ndarray:
    """One neuron per group (weight ~1 for its members); every other feature gets its own neuron;
    small noise elsewhere, far below the membership threshold."""
    rng = np.random.default_rng(seed)
    grouped = {i for g in groups for i in g}
    singles = [[i] for i in range(N_FEAT) if i not in grouped]
    cols = groups + singles
    w = rng.normal(0, 0.02, (N_FEAT, len(cols)))
    for j, g in enumerate(cols):
        w[g, j] = rng.uniform(0.9, 1.1, len(g))
    return w


EXCLUSIVE_GROUPS = [list(range(f * FAM_SIZE, (f + 1) * FAM_SIZE)) for f in range(N_FAM)]
INDEPENDENT_GROUPS = [list(range(20 + 4 * g, 24 + 4 * g)) for g in range(5)]
CORRELATED_GROUPS = [[20 + 2 * p, 21 + 2 * p] for p in range(N_INDEP // 2)]
FAMILIES = [
    {"name": f"fam{f}", "kind": "exclusive", "members": g, "true_members": g}
    for f, g in enumerate(EXCLUSIVE_GROUPS)
]

CFG = dict(n_control_per_pair=5, n_freq_bins=2, min_expected=5.0, seed=0, top_per_neuron=8)


def run(groups, feats, families=FAMILIES, batch=4096):
    cfg = LogicConfig(**CFG)
    res, _ = analyse_sharing(
        planted_w(groups), lambda: (feats[s : s + batch] for s in range(0, len(feats), batch)), cfg, families
    )
    return res.metrics


@pytest.fixture(scope="module")
def feats():
    return planted_rows(20000, seed=1)


def test_exclusive_families_sharing_neurons_have_lift_below_one(feats):
    m = run(EXCLUSIVE_GROUPS, feats)
    s = m["same_sign"]
    assert s["n_pairs"] == N_FAM * 6 and s["n_shared"] == N_FAM * 6
    assert s["median_lift_shared"] < 0.1 and 0.9 < s["median_lift_control"] < 1.1
    assert s["frac_lift_below_1_shared"] == 1.0
    assert s["p_value"] < 0.05 and s["cliffs_delta"] < -0.9
    assert m["verdict"] == "anticorrelated_share"
    assert s["median_phi_shared"] < 0 and abs(s["median_phi_control"]) < 0.05
    fam = m["families"]["exclusive"]["same_sign"]
    assert fam["n_sharing"] == N_FAM * 6 and fam["enrichment"] > 5
    assert fam["lift_sharing_pairs"]["median"] < 0.1
    assert m["opposite_sign"]["n_pairs"] == 0 and m["verdict_opposite_sign"] == "no_difference"


def test_independent_features_sharing_neurons_show_no_difference(feats):
    m = run(INDEPENDENT_GROUPS, feats)
    s = m["same_sign"]
    assert s["n_shared"] == 30
    assert 0.9 < s["median_lift_shared"] < 1.1
    assert s["p_value"] > 0.05
    assert m["verdict"] == "no_difference"
    # The exclusive families share no neuron here, yet are still exclusive in the data.
    fam = m["families"]["exclusive"]
    assert fam["same_sign"]["n_sharing"] == 0
    assert fam["lift_all_pairs"]["median"] < 0.1


def test_dead_latents_do_not_deflate_the_family_chance_rate(feats):
    """A trained Squeezer never makes a never-firing latent a member, so chance is the sharing
    rate of *live* pairs: 40 dead latents appended (no firing, weights far below the threshold)
    leave every family number unchanged. Dividing by all pairs made chance 30/3160 instead of
    30/780 and the enrichment 4x too large."""
    cfg = LogicConfig(**CFG)
    n_dead = 40
    w = planted_w(EXCLUSIVE_GROUPS)
    w_dead = np.vstack([w, np.random.default_rng(3).normal(0, 0.02, (n_dead, w.shape[1]))])
    padded = SparseFeatures(feats.idx, feats.val, N_FEAT + n_dead)
    fams = FAMILIES + [{"name": "dead", "kind": "exclusive", "members": [N_FEAT, N_FEAT + 1, 3]}]

    def fam(w_enc, f, families):
        res, _ = analyse_sharing(
            w_enc, lambda: (f[s : s + 4096] for s in range(0, len(f), 4096)), cfg, families
        )
        return res.metrics["families"]["exclusive"]

    live, dead = fam(w, feats, FAMILIES), fam(w_dead, padded, fams)
    n_live_pairs = N_FEAT * (N_FEAT - 1) / 2
    assert live["same_sign"]["frac_sharing_chance"] == pytest.approx(N_FAM * 6 / n_live_pairs)
    for g in ("same_sign", "opposite_sign"):
        for k in ("n_sharing", "frac_sharing_chance", "enrichment"):
            assert dead[g][k] == pytest.approx(live[g][k]), (g, k)
    # the dead members' pairs are not tested: the family of three keeps no pair
    assert dead["n_pairs"] == live["n_pairs"] and dead["n_members_dead"] == 2


def test_correlated_features_sharing_neurons_give_bows_verdict():
    feats = planted_rows(20000, seed=2, correlated_pairs=True)
    m = run(CORRELATED_GROUPS, feats)
    s = m["same_sign"]
    assert s["n_shared"] == 10
    assert s["median_lift_shared"] > 5 and 0.8 < s["median_lift_control"] < 1.2
    assert s["p_value"] < 0.05 and s["cliffs_delta"] > 0.9
    assert m["verdict"] == "correlated_share"


def test_sparse_cooccurrence_matches_dense_reference():
    rng = np.random.default_rng(0)
    dense = rng.random((700, 30)) * (rng.random((700, 30)) < 0.15)
    feats = SparseFeatures.from_dense(dense, k=5)
    b = (feats.to_dense() > 0).astype(np.int64)
    ref = b.T @ b
    i, j = np.triu_indices(30, k=1)
    pick = rng.choice(len(i), 60, replace=False)
    pairs = np.stack([i[pick], j[pick]], axis=1)
    full = cooccurrence([feats], pairs)
    streamed = cooccurrence((feats[s : s + 64] for s in range(0, 700, 64)), pairs)
    np.testing.assert_array_equal(full.counts, ref[pairs[:, 0], pairs[:, 1]])
    np.testing.assert_array_equal(streamed.counts, full.counts)
    np.testing.assert_array_equal(streamed.marginals, b.sum(axis=0))
    assert streamed.n_rows == 700
    st = pair_stats(full.counts, b.sum(0)[pairs[:, 0]], b.sum(0)[pairs[:, 1]], 700, pseudo_count=0)
    phi_ref = [np.corrcoef(b[:, p], b[:, q])[0, 1] for p, q in pairs]
    np.testing.assert_allclose(st["phi"], phi_ref, atol=1e-12)
    np.testing.assert_allclose(
        st["lift"], ref[pairs[:, 0], pairs[:, 1]] * 700 / (b.sum(0)[pairs[:, 0]] * b.sum(0)[pairs[:, 1]])
    )


def test_members_and_sign_groups():
    w = np.array([[1.0, 0.0], [0.8, -0.9], [0.2, 0.0], [-0.7, 0.1], [0.0, 1.0]])
    mem = neuron_members(w, frac=0.5)
    assert mem.positive[0].tolist() == [0, 1] and mem.negative[0].tolist() == [3]
    assert mem.positive[1].tolist() == [4] and mem.negative[1].tolist() == [1]
    g = shared_pairs(mem)
    assert g["same_sign"][0].tolist() == [[0, 1]]
    assert sorted(map(tuple, g["opposite_sign"][0].tolist())) == [(0, 3), (1, 3), (1, 4)]
    assert neuron_members(w, frac=0.5, top_per_neuron=1).positive[0].tolist() == [0]
    assert neuron_members(w, frac=0.1, abs_threshold=0.9).positive[0].tolist() == [0]


def test_truth_tables_hand_example():
    # rows: A only, A only, B only, both, both, neither, neither, neither
    a = [1, 1, 0, 1, 1, 0, 0, 0]
    b = [0, 0, 1, 1, 1, 0, 0, 0]
    dense = np.stack([a, b, [0] * 8], axis=1).astype(np.float32)
    dense[5, 2] = 1.0  # another feature is active in a "neither" row
    feats = SparseFeatures.from_dense(dense, k=2)
    h = np.zeros((8, 2))
    h[[0, 2, 5], 1] = 1.0  # neuron 1 fires on one A-only row, the B-only row, one neither row
    h[[3, 4], 0] = 2.0  # neuron 0 fires only on both
    t = truth_tables((feats[s : s + 3] for s in range(0, 8, 3)), h, [(1, 0, 1), (0, 0, 1)])
    assert (t[0]["n_a_only"], t[0]["n_b_only"], t[0]["n_both"], t[0]["n_neither"]) == (2, 1, 2, 3)
    assert t[0]["p_fire_a_only"] == 0.5 and t[0]["p_fire_b_only"] == 1.0
    assert t[0]["p_fire_both"] == 0.0 and t[0]["p_fire_neither"] == pytest.approx(1 / 3)
    assert t[1]["p_fire_both"] == 1.0 and t[1]["fires_a_only"] == 0 and t[1]["fires_neither"] == 0
    with pytest.raises(ValueError):
        truth_tables([feats], h[:5], [(0, 0, 1)])
    # a neuron with a positive bias is > 0 everywhere: it fires when it rises above its rest
    t = truth_tables([feats], h + 0.7, [(1, 0, 1), (0, 0, 1)], rest=np.array([0.7, 0.7]))
    assert t[0]["p_fire_b_only"] == 1.0 and t[0]["p_fire_neither"] == pytest.approx(1 / 3)
    assert t[1]["p_fire_both"] == 1.0 and t[1]["fires_a_only"] == 0 and t[1]["fires_neither"] == 0
    assert t[1]["mean_h_both"] == pytest.approx(2.7) and t[1]["mean_h_neither"] == pytest.approx(0.7)
    assert truth_tables([feats], h + 0.7, [(0, 0, 1)])[0]["p_fire_neither"] == 1.0  # h > 0 says nothing


def test_compare_lifts_effect_size_sign():
    lo, hi = np.full(20, 0.2), np.full(40, 1.0)
    r = compare_lifts(lo, hi)
    assert r["cliffs_delta"] == -1.0 and r["verdict"] == "anticorrelated_share"
    assert compare_lifts(hi, lo)["verdict"] == "correlated_share"
    assert compare_lifts(np.array([]), hi)["verdict"] == "no_difference"


def test_bad_params_fail_by_name():
    with pytest.raises(ParamError, match="logic.weight_threshold_frac"):
        from_dict(LogicConfig, {"weight_threshold_frac": 1.5}, "logic")
    with pytest.raises(ParamError, match="logic.control_pool"):
        from_dict(LogicConfig, {"control_pool": "some"}, "logic")
    with pytest.raises(ParamError, match="logic.no_such_key"):
        from_dict(LogicConfig, {"no_such_key": 1}, "logic")


def test_stage_end_to_end(tmp_path, monkeypatch, feats):
    torch = pytest.importorskip("torch")
    w = planted_w(EXCLUSIVE_GROUPS)
    storage.write_sparse(tmp_path / "data/features/train", feats, rows_per_shard=6000)
    held = planted_rows(4000, seed=3)
    storage.write_sparse(tmp_path / "data/features/heldout", held, rows_per_shard=1500)
    h = np.maximum(held.to_dense() @ w - 0.3, 0).astype(np.float32)
    (tmp_path / "data/squeeze").mkdir(parents=True)
    np.save(tmp_path / "data/squeeze/heldout_neurons.npy", h)
    model = Squeezer(w.shape[0], w.shape[1])
    with torch.no_grad():
        model.W_enc.copy_(torch.tensor(w, dtype=torch.float32))
        model.b_enc.zero_()
    save_squeezer(tmp_path / "data/squeeze/squeezer.pt", model, SqueezerConfig(M=w.shape[1]))
    storage.write_json(tmp_path / "data/labels/families.json", FAMILIES)
    params = {"logic": {**CFG, "batch_size": 5000, "n_truth_table_neurons": 3, "n_truth_table_pairs": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("logic_stage", REPO / "stages/logic.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main()
    m = storage.read_json("metrics/logic.json")
    assert m["verdict"] == "anticorrelated_share"
    assert "truth_tables" not in m  # a data output, not metrics
    tables = storage.read_json("data/logic/truth_tables.json")
    assert len(tables) == 6
    for t in tables:  # OR gate: fires on A alone and B alone, never sees A and B
        assert t["n_both"] == 0 and t["p_fire_both"] is None
        assert t["p_fire_a_only"] == 1.0 and t["p_fire_b_only"] == 1.0
    csv = Path("plots/logic/lift.csv").read_text().splitlines()
    assert csv[0].startswith("log2_lift,shared_same_sign,control_same_sign")
    assert Path("plots/logic/lift.png").stat().st_size > 1000
    # A bad value fails at once, naming the key, and leaves the outputs as they were.
    before = Path("metrics/logic.json").read_text()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"logic": {"n_freq_bins": 0}}))
    with pytest.raises(ParamError, match="logic.n_freq_bins"):
        stage.main()
    assert Path("metrics/logic.json").read_text() == before


# --- issue 11, item 5 ------------------------------------------------------------------------


def test_negative_negative_pairs_are_tested_as_same_sign():
    """Signs are folded: two features with large negative weights on one neuron share it (the old
    code tested only positive-positive pairs, so this pair was never tested)."""
    w = np.array([[-1.0, 0.0], [-0.9, 0.0], [0.1, 1.0], [0.0, 0.9]])
    g = shared_pairs(neuron_members(w, frac=0.5))
    assert sorted(map(tuple, g["same_sign"][0].tolist())) == [(0, 1), (2, 3)]
    assert len(g["opposite_sign"][0]) == 0


def test_negative_exclusive_families_are_found(feats):
    """The planted exclusive families encoded with negative weights give the same verdict."""
    cfg = LogicConfig(**CFG)
    w = -planted_w(EXCLUSIVE_GROUPS)
    res, _ = analyse_sharing(
        w, lambda: (feats[s : s + 4096] for s in range(0, len(feats), 4096)), cfg, FAMILIES
    )
    s = res.metrics["same_sign"]
    assert s["n_pairs"] == N_FAM * 6 and s["verdict"] == "anticorrelated_share"


def test_frequency_bins_do_not_collapse_on_small_pools():
    """10 assigned features, 20 bins asked: the old code gave one feature per bin, so every control
    of (i, j) was (i, j) itself and none survived; coarse bins keep the controls."""
    freq = np.geomspace(0.01, 0.1, 10)
    pool = np.ones(10, dtype=bool)
    bins = frequency_bins(freq, pool, 20)
    assert bins.max() + 1 == 10 // MIN_FEATURES_PER_BIN == 2
    pairs = np.array([[0, 1], [8, 9]])
    ctl = matched_controls(pairs, bins, np.array([1, 89]), 5, np.random.default_rng(0))
    assert len(ctl) == 10


def test_too_few_controls_refuses_a_verdict(feats):
    cfg = LogicConfig(**{**CFG, "min_control_pairs": 10_000})
    res, _ = analyse_sharing(planted_w(EXCLUSIVE_GROUPS), lambda: iter([feats]), cfg, FAMILIES)
    assert res.metrics["same_sign"]["verdict"] == "too_few_controls"
    assert res.metrics["same_sign"]["n_control"] < 10_000


def test_one_low_expected_rule_for_shared_and_controls(feats):
    """Controls are drawn only for testable shared pairs and under the same rule: none is dropped
    afterwards, and there are n_control_per_pair of them per tested pair (old: controls were
    drawn for every pair, then filtered on their own)."""
    dense = planted_rows(20000, seed=1).to_dense()
    dense[2000:, 20:24] = 0.0  # one independent group fires in 1% of rows: expected 2 < 60
    rare = SparseFeatures.from_dense(dense, k=N_FEAT)
    cfg = LogicConfig(**{**CFG, "min_expected": 60.0})
    res, _ = analyse_sharing(
        planted_w(EXCLUSIVE_GROUPS + INDEPENDENT_GROUPS), lambda: iter([rare]), cfg, FAMILIES
    )
    s = res.metrics["same_sign"]
    assert s["n_dropped_low_expected"] > 0 and s["n_shared"] > 0
    assert s["n_control_dropped_low_expected"] == 0
    assert s["n_control"] == s["n_control_sampled"] == s["n_shared"] * cfg.n_control_per_pair
