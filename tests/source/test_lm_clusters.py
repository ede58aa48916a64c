"""The cluster finder for cyclic families (`source.lm.clusters`): a planted month cluster (three
shared latents whose activations trace a circle over the months) is found and its circle
measured; shuffled token labels and shuffled member labels find nothing; and on the tiny lm world
the planted weekday SAE's latents come out as a weekday cluster, a random SAE's as nothing."""

from __future__ import annotations

import lm_fixtures as fx
import numpy as np
import pytest
import torch

from neural_codec import storage
from neural_codec.analysis.geometry import circle_stats, family_circles, family_phases, family_points
from neural_codec.config import ActivationsConfig, LMSourceConfig
from neural_codec.sae import load_sae
from neural_codec.source.lm.clusters import ClusterRule, cluster_families, find_cluster_family
from neural_codec.source.lm.extract import extract_activations
from neural_codec.source.lm.labels import MONTHS, WEEKDAYS
from neural_codec.source.lm.load import load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

CLUSTER = [5, 17, 29]


def planted_months(seed: int = 0, n_rows: int = 30_000, d_sae: int = 40, per_month: int = 30):
    """Activations (n_rows, d_sae): background latents fire anywhere; latents CLUSTER fire only on
    month rows, latent c at 1 + cos(theta_month - phi_c) (+ noise): the months on a circle in
    the cluster's 3 dimensions. Returns (acts, month of each row or -1)."""
    rng = np.random.default_rng(seed)
    acts = rng.exponential(1.0, (n_rows, d_sae)) * (rng.random((n_rows, d_sae)) < 0.05)
    month = np.full(n_rows, -1)
    rows = rng.choice(n_rows, 12 * per_month, replace=False)
    month[rows] = np.repeat(np.arange(12), per_month)
    acts[:, CLUSTER] = 0.0
    theta = 2 * np.pi * month[rows] / 12
    for c, phi in zip(CLUSTER, (0.0, 2 * np.pi / 3, 4 * np.pi / 3), strict=True):
        acts[rows, c] = np.maximum(0.0, 1 + np.cos(theta - phi) + 0.1 * rng.standard_normal(len(rows)))
    return acts, month


def run_finder(acts, month, rule=None):
    on = month >= 0
    return find_cluster_family(
        "months", MONTHS, acts[on], month[on], acts.sum(0), len(acts), rule or ClusterRule()
    )


def test_planted_month_cluster_is_found_and_lies_on_a_circle():
    acts, month = planted_months()
    fam, stats = run_finder(acts, month)
    assert fam is not None and stats["found"] and stats["p_value"] <= 0.01
    assert fam["members"] == CLUSTER and fam["labels"] == MONTHS and fam["positions"] == list(range(12))
    assert np.asarray(fam["member_weights"]).shape == (12, 3)
    # the circle analysis reads it through any weights whose rows are the latents
    W = np.random.default_rng(1).standard_normal((40, 16))
    P = family_points(W, fam)
    assert P.shape == (12, 16)
    circ = family_circles(W, [fam], n_permutations=199)["months"]
    assert circ["circular_corr"] > 0.9 and circ["p_value"] <= 0.01 and circ["closed"]


def test_members_left_out_keep_their_places_on_the_circle():
    acts, month = planted_months()
    month[np.isin(month, [2, 4])] = 99  # "march" and "may" unreadable (uncased), as in MiniLM
    month[month == 99] = -1
    fam, _ = run_finder(acts, month)
    assert fam is not None and fam["positions"] == [0, 1, 3] + list(range(5, 12))
    P = family_points(np.eye(40), fam)
    with_places = circle_stats(P, 199, 0, family_phases(fam))
    assert with_places["circular_corr"] > 0.9 and with_places["closed"]
    assert with_places["max_gap_ratio"] < 1.5


def test_shuffled_labels_find_nothing():
    acts, month = planted_months()
    rng = np.random.default_rng(2)
    # token labels shuffled across all rows: no latent carries its mass on the "month" rows
    fam, stats = run_finder(acts, rng.permutation(month))
    assert fam is None and stats["n_latents"] == 0
    # member labels shuffled among the month rows: the cluster is there, the members are not told apart
    on = np.flatnonzero(month >= 0)
    shuffled = month.copy()
    shuffled[on] = rng.permutation(month[on])
    fam, stats = run_finder(acts, shuffled)
    assert fam is None and stats["n_latents"] == 3 and stats["p_value"] > 0.01
    # too few rows per member: nothing placed
    fam, stats = run_finder(acts, month, ClusterRule(min_member_rows=31))
    assert fam is None and stats["n_members"] == 0


def test_weekday_cluster_from_a_planted_sae_on_the_tiny_model(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fx.make_model(tmp_path)
        cfg = LMSourceConfig(
            model_name=f"local:{tmp_path / 'model'}",
            dataset=str(tmp_path / "text"),
            sae_hook="blocks.0.hook_resid_pre",  # token identity is linear here (see test_lm)
            neuron_hook="blocks.1.mlp.hook_post",
            context_size=32,
            n_tokens_train=3000,
            n_tokens_heldout=480,
        )
        model = load_model(cfg)
        extract_activations(cfg, tmp_path / "acts", ActivationsConfig(rows_per_shard=500), model=model)
        acts = tmp_path / "acts/train"
        x, tok = storage.load_array(acts, "resid"), storage.load_array(acts, "token")
        _, latent_of = fx.planted_weekday_sae(tmp_path / "planted", x, tok, model.tokenizer, cfg.sae_hook)
        planted = load_sae(tmp_path / "planted")
        fams, stats = cluster_families(planted, acts, model.tokenizer)
        assert [f["name"] for f in fams] == ["weekdays"] and not stats["months"]["found"]
        assert fams[0]["labels"] == WEEKDAYS  # every weekday placed, in cyclic order
        assert fams[0]["members"] == sorted(latent_of[d] for d in fx.WEEKDAYS)  # no decoy latent
        # one latent per day: each day's mean activation sits on its own latent
        weights = np.asarray(fams[0]["member_weights"])
        assert [fams[0]["members"][i] for i in weights.argmax(1)] == [latent_of[d] for d in fx.WEEKDAYS]
        rand = fx.random_sae(tmp_path / "rand", 32, 64, cfg.sae_hook, seed=1)
        assert cluster_families(rand, acts, model.tokenizer)[0] == []
    finally:
        torch.set_num_threads(n)


def test_a_rare_family_is_found_by_its_lift_over_the_base_rate():
    acts, month = planted_months()
    rng = np.random.default_rng(3)
    off = np.flatnonzero(month < 0)
    for c in CLUSTER:  # the cluster latents also fire elsewhere: ~30% of their mass on months
        rows = rng.choice(off, 600, replace=False)
        acts[rows, c] = rng.exponential(1.5, len(rows))
    fam, stats = run_finder(acts, month)
    shares = [s for j, s, _, _ in stats["top_latents"][:3]]
    assert fam is not None and fam["members"] == CLUSTER and max(shares) < 0.5
    assert min(fam["latent_lifts"]) > 20
    fam, _ = run_finder(acts, month, ClusterRule(min_lift=1000.0))  # the share rule alone: nothing
    assert fam is None
