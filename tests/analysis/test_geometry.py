"""Ground truth for the geometry analysis: tiny Toy-Models-of-Superposition models whose geometry
is known (pentagon, antipodal digon, dedicated dimensions), planted circles and planted lines,
each with a control that must NOT be found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neural_codec import nulls
from neural_codec.analysis import geometry as g
from neural_codec.config import GeometryConfig, parse_fraction


def train_tms(n, m, p, importance, steps=2500, seed=0, batch=1024, lr=1e-2):
    """ReLU(W^T W x + b), x_i ~ U[0,1] with probability p else 0 (Elhage et al. 2022).
    Returns W with rows = features (n, m)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: thread hand-off costs far more than the work
    try:
        return _train_tms(n, m, p, importance, steps, seed, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _train_tms(n, m, p, importance, steps, seed, batch, lr):
    gen = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(m, n, generator=gen) * 0.5)
    b = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.Adam([W, b], lr=lr)
    imp = torch.as_tensor(np.asarray(importance), dtype=torch.float32)
    for _ in range(steps):
        x = torch.rand(batch, n, generator=gen) * (torch.rand(batch, n, generator=gen) < p)
        out = torch.relu(x @ W.T @ W + b)
        loss = (imp * (out - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return W.detach().numpy().T.astype(np.float64)


@pytest.fixture(scope="module")
def pentagon_W():
    return train_tms(5, 2, 0.05, np.ones(5), seed=0)


def test_dimensionality_formula_matches_gram_definition():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(30, 7))
    W[3] = 0
    G = W @ W.T
    expect = np.diag(G) ** 2 / (G**2).sum(1).clip(1e-300)
    D = g.feature_dimensionality(W)
    assert D[3] == 0
    np.testing.assert_allclose(np.delete(D, 3), np.delete(expect, 3), rtol=1e-10)
    assert g.dimensions_per_feature(np.eye(4)) == pytest.approx(1.0)


def test_pentagon_in_two_dims(pentagon_W):
    W = pentagon_W
    D = g.feature_dimensionality(W)
    np.testing.assert_allclose(D, 0.4, atol=0.02)
    res = g.find_polytopes(W, threshold=GeometryConfig().interference_threshold, tolerance=0.1)
    assert res.counts()["pentagon"] == 1
    assert sorted(res.polytopes[0].members.tolist()) == [0, 1, 2, 3, 4]
    assert res.polytopes[0].error < 0.05
    # a non-pentagonal 5-point frame (5 directions bunched in half the circle) is not a pentagon
    ang = np.linspace(0, np.pi * 0.9, 5)
    bad = np.stack([np.cos(ang), np.sin(ang)], 1)
    assert g.find_polytopes(bad, threshold=0.25).counts()["pentagon"] == 0


def test_antipodal_digon_in_one_dim():
    W = train_tms(2, 1, 0.05, np.ones(2), seed=0)
    D = g.feature_dimensionality(W)
    np.testing.assert_allclose(D, 0.5, atol=0.02)
    c = g.find_polytopes(W, threshold=0.25).counts()
    assert c["digon"] == 1 and c["other"] == 0
    # two features on the same side of the line are not a digon
    same = np.array([[1.0], [0.8]])
    assert g.find_polytopes(same).counts()["digon"] == 0


def test_dense_features_get_dedicated_dims_and_no_polytopes():
    W = train_tms(5, 2, 1.0, 0.7 ** np.arange(5), seed=0)
    D = g.feature_dimensionality(W)
    assert np.all((D < 0.05) | (D > 0.95)), D
    assert (D > 0.95).sum() == 2
    c = g.find_polytopes(W, threshold=0.25, min_norm_frac=0.1).counts()
    assert all(c[k] == 0 for k in list(g.ideal_polytopes()) + ["other"]), c
    assert c["isolated"] == 2


def test_ideal_polytopes_have_their_fraction():
    for name, V in g.ideal_polytopes().items():
        D = g.feature_dimensionality(V)
        np.testing.assert_allclose(D, parse_fraction(g.POLYTOPE_FRACTION[name]), atol=1e-9)
        # rotated, scaled, re-ordered and embedded in a bigger space, it is still found
        rng = np.random.default_rng(1)
        Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
        X = np.pad(V, ((0, 0), (0, 10 - V.shape[1]))) @ Q * 3.0
        X = X[rng.permutation(len(X))]
        res = g.find_polytopes(X, threshold=0.25)
        assert res.counts()[name] == 1, (name, res.counts())


def test_pipeline_threshold_finds_noisy_digons_triangles_and_pentagons():
    """At the params.yaml threshold (the dataclass default equals it, see test_params_io), a
    triangle whose cosines scatter around -1/2 is still connected (a threshold of 1/2 cuts it)."""
    threshold = GeometryConfig().interference_threshold
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    for name in ("digon", "triangle", "pentagon"):
        V = g.ideal_polytopes()[name]
        found = 0
        for _ in range(10):
            X = np.pad(V, ((0, 0), (0, 16 - V.shape[1]))) @ Q + 0.03 * rng.normal(size=(len(V), 16))
            found += g.find_polytopes(X, threshold=threshold).counts()[name]
        assert found == 10, (name, found)


def test_several_polytopes_in_orthogonal_subspaces():
    P = g.ideal_polytopes()
    blocks = [P["pentagon"], P["triangle"], P["digon"], P["tetrahedron"], np.array([[1.0]])]
    dim = sum(b.shape[1] for b in blocks)
    rows, c = [], 0
    for b in blocks:
        x = np.zeros((len(b), dim))
        x[:, c : c + b.shape[1]] = b
        rows.append(x)
        c += b.shape[1]
    W = np.concatenate(rows)
    W = np.concatenate([W, np.zeros((3, dim))])  # unrepresented features are ignored
    counts = g.find_polytopes(W).counts()
    assert counts == {
        "digon": 1,
        "triangle": 1,
        "tetrahedron": 1,
        "pentagon": 1,
        "square_antiprism": 0,
        "other": 0,
        "isolated": 1,
    }


def planted_circle(K=12, dim=32, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    phase = 2 * np.pi * np.arange(K) / K
    X = np.stack([np.cos(phase), np.sin(phase)], 1) @ Q[:2] + rng.normal(size=dim)  # offset
    return X + noise * rng.normal(size=(K, dim))


def test_planted_circle_found_and_shuffled_labels_not():
    X = planted_circle()
    s = g.circle_stats(X, n_permutations=500, seed=0)
    assert s["circular_corr"] > 0.9
    assert s["neighbour_frac"] == 1.0
    assert 0.7 < s["wrap_ratio"] < 1.4
    assert s["p_value"] < 0.05
    # reversed direction is the same circle
    assert g.circle_stats(X[::-1], 200)["circular_corr"] == pytest.approx(s["circular_corr"])
    # the same points with the labels shuffled: no circular order
    rng = np.random.default_rng(3)
    shuffled = [g.circle_stats(X[rng.permutation(len(X))], 200, seed=i) for i in range(10)]
    assert sum(r["p_value"] < 0.05 for r in shuffled) <= 1
    assert np.mean([r["circular_corr"] for r in shuffled]) < 0.5


def test_open_arc_has_large_wrap_ratio():
    rng = np.random.default_rng(0)
    t = np.linspace(0, np.pi, 12)  # half circle: ordered but not closed
    X = np.stack([np.cos(t), np.sin(t)], 1) @ rng.normal(size=(2, 16)) + 0.01 * rng.normal(size=(12, 16))
    assert g.circle_stats(X, 100)["wrap_ratio"] > 4


def test_family_circles_uses_cyclic_families_only():
    X = planted_circle(K=7, dim=16)
    W = np.random.default_rng(0).normal(size=(40, 16))
    members = [30, 2, 17, 5, 11, 23, 8]
    W[members] = X
    fams = [
        {"name": "weekdays", "kind": "cyclic", "members": members},
        {"name": "excl", "kind": "exclusive", "members": [0, 1, 3]},
    ]
    out = g.family_circles(W, fams, n_permutations=200)
    assert list(out) == ["weekdays"]
    assert out["weekdays"]["circular_corr"] > 0.9 and out["weekdays"]["p_value"] < 0.05
    with pytest.raises(ValueError):
        g.family_circles(W, [{"name": "x", "kind": "cyclic", "members": [1, 2, 99]}])


def test_line_test_finds_planted_pile_up_only():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(0, 1, 3000)
    none = g.find_lines(uniform)
    assert not any(v["is_line"] for v in none.values()), none
    piled = np.concatenate([uniform, 0.4 + rng.uniform(-0.003, 0.003, 60)])
    found = g.find_lines(piled)
    assert found["2/5"]["is_line"]
    assert found["2/5"]["enrichment"] > 2
    assert [k for k, v in found.items() if v["is_line"]] == ["2/5"]
    # a broad bump around 2/5 (density high near it, but no narrow pile-up) is not a line
    bump = np.concatenate([uniform, rng.normal(0.4, 0.08, 600).clip(0, 1)])
    assert not g.find_lines(bump)["2/5"]["is_line"]


def test_line_at_one_with_dedicated_features():
    rng = np.random.default_rng(1)
    D = np.concatenate([rng.uniform(0, 1, 1000), np.ones(40)])
    assert g.find_lines(D)["1"]["is_line"]


def test_analyse_returns_small_json(pentagon_W):
    res = g.analyse_weights(pentagon_W, [], GeometryConfig(n_permutations=50))
    pub = g.public(res)
    assert pub["polytopes"]["pentagon"] == 1
    assert pub["mean_D"] == pytest.approx(0.4, abs=0.02)
    assert not any(k.startswith("_") for k in pub)


def test_permute_feature_columns_keeps_frequencies_and_breaks_cooccurrence():
    from neural_codec.storage import SparseFeatures

    rng = np.random.default_rng(0)
    N, n = 4000, 12
    dense = (rng.random((N, n)) < 0.1) * rng.uniform(0.5, 1.5, (N, n))
    dense[:, 1] = np.where(dense[:, 0] > 0, 1.0, 0.0)  # feature 1 fires exactly with feature 0
    feats = SparseFeatures.from_dense(dense, k=n)
    perm = nulls.permute_feature_columns(feats, seed=0)
    a, b = feats.to_dense(), perm.to_dense()
    np.testing.assert_array_equal((a > 0).sum(0), (b > 0).sum(0))
    for j in range(n):
        np.testing.assert_allclose(np.sort(a[:, j]), np.sort(b[:, j]), rtol=1e-6)
    both = lambda x: float(((x[:, 0] > 0) & (x[:, 1] > 0)).mean())  # noqa: E731
    assert both(a) == pytest.approx(0.1, abs=0.02)
    assert both(b) < 0.03  # ~ 0.1 * 0.1 once independent
    assert not np.array_equal(a, b)


def _load_stage():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "stages" / "geometry.py"
    spec = importlib.util.spec_from_file_location("stage_geometry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _workspace(tmp_path, geometry_params):
    import yaml

    from neural_codec import storage
    from neural_codec.config import SqueezerConfig
    from neural_codec.squeezer.checkpoint import save_squeezer

    n, M = 30, 6
    sq = {"M": M, "steps": 40, "batch_size": 128, "seed": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"geometry": geometry_params, "squeezer": sq}))
    rng = np.random.default_rng(0)
    dense = (rng.random((600, n)) < 0.1) * rng.random((600, n))
    feats = storage.SparseFeatures.from_dense(dense, 4)
    storage.write_sparse(tmp_path / "data/features/train", feats)
    np.save(tmp_path / "data/features/firing_freq.npy", feats.firing_frequency())
    # planted weights: a pentagon in neurons 0-1, a 6-member circle in 2-5, the rest tiny
    W = 0.01 * rng.normal(size=(n, M))
    W[:5, :2] = g.ideal_polytopes()["pentagon"]
    circle = [20, 7, 13, 25, 9, 16]
    ph = 2 * np.pi * np.arange(6) / 6
    W[circle, 2:4] = np.stack([np.cos(ph), np.sin(ph)], 1)
    W[circle, 4:] = 0.7
    import torch

    from neural_codec.squeezer.model import Squeezer

    cfg = SqueezerConfig(**sq)
    model = Squeezer(n, M)
    with torch.no_grad():
        model.W_enc.copy_(torch.tensor(W, dtype=torch.float32))
        model._W_dec.copy_(torch.tensor(W.T, dtype=torch.float32))
    save_squeezer(tmp_path / "data/squeeze/squeezer.pt", model, cfg)
    fams = [
        {"name": "weekdays", "kind": "cyclic", "members": circle, "labels": list("MTWRFS")},
        {"name": "ex", "kind": "exclusive", "members": [1, 2]},
    ]
    storage.write_json(tmp_path / "data/labels/families.json", fams)


def test_stage_end_to_end(tmp_path, monkeypatch):
    from neural_codec import storage

    _workspace(tmp_path, {"n_permutations": 99, "null_rows": 500, "null_steps": 30})
    monkeypatch.chdir(tmp_path)
    _load_stage().main()
    saved = storage.read_json("metrics/geometry.json")
    assert {"trained", "untrained", "permuted"} <= set(saved)
    assert saved["trained"]["encoder"]["polytopes"]["pentagon"] == 1
    assert saved["trained"]["decoder"]["polytopes"]["pentagon"] == 1
    circ = saved["trained"]["encoder"]["circles"]["weekdays"]
    assert circ["circular_corr"] > 0.95 and circ["p_value"] < 0.05 and 0.8 < circ["wrap_ratio"] < 1.2
    for null in ("untrained", "permuted"):
        assert set(saved[null]) == {"encoder", "decoder"}
        assert saved[null]["encoder"]["polytopes"]["pentagon"] == 0
    assert saved["trained"]["encoder"]["n_features"] == 30
    header = (tmp_path / "plots/geometry/dimensionality_hist.csv").read_text().splitlines()[0]
    assert header.split(",")[0] == "D" and "trained_encoder" in header and "permuted_decoder" in header
    for png in ("dimensionality_hist.png", "polytopes.png", "circles.png"):
        assert (tmp_path / "plots/geometry" / png).stat().st_size > 1000


def test_stage_rejects_bad_params_before_work(tmp_path, monkeypatch):
    from neural_codec.errors import ParamError

    _workspace(tmp_path, {"interference_threshold": 1.5})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=r"geometry\.interference_threshold = 1\.5"):
        _load_stage().main()
    _workspace(tmp_path, {"fractions": ["2/5", "7/3"]})
    with pytest.raises(ParamError, match=r"geometry\.fractions"):
        _load_stage().main()
    assert not (tmp_path / "metrics").exists()


# --------------------------------------------------------------------------------------------
# Issue 11: closure, rank correlation, weak features, a single pentagon, rescaling invariance
# --------------------------------------------------------------------------------------------


def arc_points(K, frac, dim=16, noise=0.02, seed=0):
    """K points on `frac` of a circle (frac = 1: evenly spaced and closed; else from 0 to
    frac * 2 pi inclusive), seen through a random non-orthogonal map into `dim` dims."""
    rng = np.random.default_rng(seed)
    t = 2 * np.pi * frac * np.arange(K) / (K if frac == 1 else K - 1)
    X = np.stack([np.cos(t), np.sin(t)], 1) @ rng.normal(size=(2, dim)) + rng.normal(size=dim)
    return X + noise * rng.normal(size=(K, dim))


@pytest.mark.parametrize("K", [7, 12])
def test_closure_separates_three_quarter_arc_from_full_circle(K):
    for seed in range(5):
        full = g.circle_stats(arc_points(K, 1.0, seed=seed), 50)
        arc = g.circle_stats(arc_points(K, 0.75, seed=seed), 50)
        assert full["closed"] and full["max_gap_ratio"] < 1.2
        assert not arc["closed"] and arc["max_gap_ratio"] > 1.6
    # the old statistic cannot: a 3/4 arc's wrap ratio is ~2, inside a random cloud's range
    assert g.circle_stats(arc_points(7, 0.75), 50)["wrap_ratio"] < 2.5


def test_circle_plot_draws_no_closing_segment_for_an_open_arc(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from neural_codec.analysis import geometry_plots

    drawn = []
    orig = Axes.plot

    def plot(self, x, y, *a, **k):
        drawn.append(np.column_stack([x, y]))
        return orig(self, x, y, *a, **k)

    monkeypatch.setattr(Axes, "plot", plot)
    fams = [{"name": "arc", "kind": "cyclic", "members": list(range(7))}]
    for frac, closes in ((0.75, False), (1.0, True)):
        W = arc_points(7, frac)
        res = {"w": g.analyse_weights(W, fams, GeometryConfig(n_permutations=20))}
        drawn.clear()
        geometry_plots.plot_circles(tmp_path / "c.png", {"w": W}, fams, res)
        (path,) = drawn
        assert len(path) == (8 if closes else 7)


def test_circular_rank_correlation_is_computed_on_ranks():
    K = 12
    phase = 2 * np.pi * np.arange(K) / K
    # in order but unevenly spaced: the ranks are perfect, the raw angles are not
    warped = phase + 0.45 * np.sin(phase * 2)
    X = np.stack([np.cos(warped), np.sin(warped)], 1)
    s = g.circle_stats(X, 50)
    assert s["circular_rank_corr"] == pytest.approx(1.0)
    assert s["circular_corr"] < 0.99
    assert g.fisher_lee(g.circular_ranks(warped), phase) == pytest.approx(1.0)


def pentagon_with_weak_features():
    ang = 2 * np.pi * np.arange(5) / 5
    penta = np.stack([np.cos(ang), np.sin(ang)], 1)
    weak_ang = np.array([0.3, 1.9, 4.0])
    weak = np.stack([np.cos(weak_ang), np.sin(weak_ang)], 1) * np.array([0.18, 0.26, 0.35])[:, None]
    return np.vstack([penta, weak])


def test_default_norm_cut_finds_a_clean_pentagon_among_weak_features():
    W = pentagon_with_weak_features()
    res = g.public(g.analyse_weights(W, [], GeometryConfig(n_permutations=20)))
    assert res["polytopes"]["pentagon"] == 1 and res["polytopes"]["other"] == 0
    # the old cut (0.1) let the weak features into the component: no pentagon
    old = g.public(g.analyse_weights(W, [], GeometryConfig(n_permutations=20, min_norm_frac=0.1)))
    assert old["polytopes"]["pentagon"] == 0


def test_a_single_perfect_pentagon_registers_as_a_line():
    lines = g.find_lines(np.full(5, 0.4))
    assert lines["2/5"]["is_line"], lines["2/5"]
    assert [k for k, v in lines.items() if v["is_line"]] == ["2/5"]
    # Bonferroni over the 7 fractions could not: (1/3)^5 = 0.0041 > 0.01 / 7
    assert lines["2/5"]["p_value"] == pytest.approx(3.0**-5)
    assert lines["2/5"]["p_value"] > 0.01 / 7
    # and four features are not a line (min_count), nor is a uniform smear
    assert not g.find_lines(np.full(4, 0.4))["2/5"]["is_line"]
    rng = np.random.default_rng(0)
    for s in range(20):
        D = np.random.default_rng(s).uniform(0, 1, 40)
        assert not any(v["is_line"] for v in g.find_lines(D).values())
    del rng


def _geometry_stats(model):
    from neural_codec.pipeline.geometry import weights_of

    out = {}
    for part, W in weights_of(model).items():
        r = g.analyse_weights(W, [], GeometryConfig(n_permutations=20, interference_threshold=0.3))
        out[part] = (r["D_star"], r["_D"], r["n_lines"], r["polytopes"], r["_mask"])
    return out


def test_geometry_is_invariant_to_per_neuron_rescaling():
    from neural_codec.config import SqueezerConfig
    from neural_codec.squeezer.train import train_squeezer
    from neural_codec.storage import SparseFeatures

    rng = np.random.default_rng(0)
    n, M, N = 24, 6, 4000
    dense = rng.uniform(0, 1, (N, n)) * (rng.uniform(size=(N, n)) < 0.05)
    feats = SparseFeatures.from_dense(dense.astype(np.float32), 6)
    model, _ = train_squeezer(feats, SqueezerConfig(M=M, tied=False, steps=400, lr=1e-2, batch_size=256))
    before = _geometry_stats(model)
    idx, val = torch.from_numpy(feats.idx[:500]), torch.from_numpy(feats.val[:500])
    with torch.no_grad():
        out0 = model(idx, val).clone()
        c = torch.from_numpy(rng.uniform(0.2, 5.0, M)).float()
        model.W_enc.mul_(c)
        model.b_enc.mul_(c)
        model.W_dec_T.div_(c)
        assert torch.allclose(model(idx, val), out0, atol=1e-5)  # the function is unchanged
    after = _geometry_stats(model)
    for part in before:
        (d0, D0, l0, p0, m0), (d1, D1, l1, p1, m1) = before[part], after[part]
        assert d1 == pytest.approx(d0, abs=1e-6)
        np.testing.assert_allclose(D1, D0, atol=1e-6)
        assert (l1, p1) == (l0, p0) and np.array_equal(m1, m0)
    # the raw encoder rows are not invariant (what the stage analysed before)
    raw = g.dimensions_per_feature(model.W_enc.detach().double().numpy())
    assert abs(raw - before["encoder"][0]) > 1e-3
