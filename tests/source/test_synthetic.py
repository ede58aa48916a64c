"""The synthetic source plants what it says it plants (the ground truth every later test relies on)."""

import numpy as np
import pytest
import torch
from pipeline_helpers import TINY_SYNTHETIC

from neural_codec.config import SyntheticConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict
from neural_codec.source.synthetic import build_generator, make_embedding, toy_model_metrics, train_toy_model


@pytest.fixture(scope="module")
def sample():
    cfg = from_dict(SyntheticConfig, TINY_SYNTHETIC, "source.synthetic")
    gen, families = build_generator(cfg, seed=0)
    torch.manual_seed(0)
    return cfg, gen, families, gen.sample(40000).numpy()


def test_exclusive_families_never_co_fire_but_fire(sample):
    _, _, families, f = sample
    for fam in (x for x in families if x["kind"] == "exclusive"):
        active = f[:, fam["members"]] > 0
        assert active.sum(1).max() == 1
        assert active.any(1).mean() > 0.01


def test_cyclic_family_fires_adjacent_pairs_only(sample):
    cfg, _, families, f = sample
    (cyc,) = [x for x in families if x["kind"] == "cyclic"]
    k = len(cyc["members"])
    active = f[:, cyc["members"]] > 0
    assert active.sum(1).max() == 2
    assert active.any(1).mean() == pytest.approx(cfg.cyclic_prob, abs=0.01)
    co = active.T.astype(float) @ active.astype(float)
    for i in range(k):
        for j in range(k):
            adjacent = (j - i) % k in (1, k - 1)
            if adjacent:
                assert co[i, j] > 50
            elif i != j:
                assert co[i, j] == 0


def test_correlated_pairs_co_fire_above_chance_and_independents_do_not(sample):
    _, _, families, f = sample
    b = f > 0
    for fam in (x for x in families if x["kind"] == "correlated"):
        i, j = fam["members"]
        lift = (b[:, i] & b[:, j]).mean() / (b[:, i].mean() * b[:, j].mean())
        assert lift > 3
    planted = {m for fam in families for m in fam["members"]}
    free = [i for i in range(b.shape[1]) if i not in planted][:2]
    i, j = free
    lift = (b[:, i] & b[:, j]).mean() / (b[:, i].mean() * b[:, j].mean())
    assert 0.5 < lift < 1.6


def test_toy_model_learns_and_is_deterministic(sample):
    cfg, gen, _, _ = sample
    emb = make_embedding(cfg, 0)
    np.testing.assert_allclose(np.linalg.norm(emb.numpy(), axis=1), 1, atol=1e-5)
    m1, _ = train_toy_model(cfg, gen, emb, seed=3)
    m2, _ = train_toy_model(cfg, gen, emb, seed=3)
    torch.testing.assert_close(m1.W_in, m2.W_in)
    torch.manual_seed(1)
    assert toy_model_metrics(m1, gen)["fvu"] < 0.8  # learned something (predicting 0 gives ~1)


def test_planted_structure_must_fit():
    with pytest.raises(ParamError, match="source.synthetic.n_features = 10"):
        from_dict(SyntheticConfig, {"n_features": 10}, "source.synthetic")
    with pytest.raises(ParamError, match=r"cyclic_families\[0\] = 2"):
        from_dict(SyntheticConfig, {"cyclic_families": [2]}, "source.synthetic")


def test_planted_pairs_are_frequent_enough_to_measure():
    """Exclusive and correlated members take the frequent end of the Zipf curve (a permutation:
    the total firing mass, hence the true L0, is unchanged), so in the default 200k rows every
    planted exclusive pair expects >= 5 co-occurrences under independence."""
    from neural_codec.source.synthetic import firing_probabilities, plant_families

    cfg = SyntheticConfig()
    fams = plant_families(cfg)
    p = firing_probabilities(cfg, 0, fams).numpy()
    uniform = firing_probabilities(cfg, 0).numpy()
    assert p.sum() == pytest.approx(uniform.sum()) and sorted(p) == pytest.approx(sorted(uniform))
    planted = [m for f in fams if f["kind"] in ("exclusive", "correlated") for m in f["members"]]
    rest = np.setdiff1d(
        np.arange(cfg.n_features), planted + [m for f in fams if f["kind"] == "cyclic" for m in f["members"]]
    )
    assert p[planted].min() >= p[rest].max()
    for f in fams:
        if f["kind"] == "exclusive":
            q = p[f["members"]]
            assert (np.outer(q, q)[np.triu_indices(len(q), 1)] * 200_000).min() >= 5
