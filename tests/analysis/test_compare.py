"""Tests for the circuit comparison: known cases for each statistic, planted structure found,
independent controls not found, and a ground-truth check on a toy model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from scipy.stats import ortho_group

from neural_codec import nulls
from neural_codec.analysis import compare as cmp
from neural_codec.storage import SparseFeatures


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------
# Correlation matrix, best |r|, Hungarian
# ------------------------------------------------------------------------------------------


def test_correlation_matrix_equals_corrcoef_streaming_and_dead_columns():
    rng = _rng(0)
    A = rng.normal(size=(500, 7)) * rng.uniform(0.1, 10, size=7) + 100.0  # large offset
    B = A @ rng.normal(size=(7, 5)) + rng.normal(size=(500, 5))
    ref = np.corrcoef(A.T, B.T)[:7, 7:]
    for bs in (37, 500):
        C = cmp.correlation_matrix(A, B, batch_size=bs)
        np.testing.assert_allclose(C, ref, atol=1e-10)
    # constant and dead (all-zero ReLU) columns give r = 0, not NaN
    B2 = B.copy()
    B2[:, 1] = 3.25
    B2[:, 2] = 0.0
    C2 = cmp.correlation_matrix(A, B2, batch_size=64)
    assert np.isfinite(C2).all()
    assert (C2[:, 1] == 0).all() and (C2[:, 2] == 0).all()
    np.testing.assert_allclose(C2[:, [0, 3, 4]], ref[:, [0, 3, 4]], atol=1e-10)
    m = cmp.moments(A, B2)
    assert m.dead()[1].tolist() == [False, True, True, False, False]
    # shared population moments (one Moments for B feeding two pairs) give the same answers
    pa, pb, pc = cmp.Moments(7), cmp.Moments(5), cmp.Moments(5)
    ab = cmp.CrossMoments(7, 5, ma=pa, mb=pb)
    cb = cmp.CrossMoments(5, 5, ma=pc, mb=pb)
    for s in range(0, 500, 120):
        xa, xb, xc = pa.update(A[s : s + 120]), pb.update(B2[s : s + 120]), pc.update(B[s : s + 120])
        ab.update_cross(xa, xb)
        cb.update_cross(xc, xb)
    np.testing.assert_allclose(ab.correlation(), C2, atol=1e-10)
    np.testing.assert_allclose(cb.correlation(), cmp.correlation_matrix(B, B2), atol=1e-10)
    assert ab.cka() == pytest.approx(cmp.linear_cka(A, B2), rel=1e-9)


def test_best_abs_r_takes_absolute_maximum_per_row():
    C = np.array([[0.1, -0.9, 0.3], [0.2, 0.0, 0.4]])
    np.testing.assert_allclose(cmp.best_abs_r(C), [0.9, 0.4])


def test_hungarian_finds_planted_permutation_rectangular():
    rng = _rng(1)
    N, q, p = 2000, 12, 8
    B = np.maximum(rng.normal(size=(N, q)), 0)
    perm = rng.permutation(q)[:p]  # candidate neuron i is a noisy copy of reference perm[i]
    sign = np.array([1, -1] * (p // 2))
    A = B[:, perm] * sign + 0.3 * rng.normal(size=(N, p))
    C = cmp.correlation_matrix(A, B)
    match = cmp.hungarian_match(C)
    assert len(match.rows) == p
    found = dict(zip(match.rows.tolist(), match.cols.tolist(), strict=False))
    assert found == {i: int(perm[i]) for i in range(p)}
    assert np.all(np.diff(match.abs_r) <= 0)  # sorted best first
    assert np.all(np.sign(match.r) == sign[match.rows])
    # a shuffled control (rows of A permuted) matches nothing well
    ctrl = cmp.hungarian_match(cmp.correlation_matrix(A[rng.permutation(N)], B))
    assert ctrl.abs_r.mean() < 0.1 < 0.8 < match.abs_r.mean()


def test_matched_order_puts_matches_on_diagonal():
    rng = _rng(2)
    C = rng.uniform(-1, 1, size=(4, 6))
    match = cmp.hungarian_match(C)
    ro, co = cmp.matched_order(C, match)
    assert sorted(ro.tolist()) == list(range(4)) and sorted(co.tolist()) == list(range(6))
    np.testing.assert_allclose(np.diag(C[np.ix_(ro, co)])[:4], match.r)


# ------------------------------------------------------------------------------------------
# CKA and SVCCA
# ------------------------------------------------------------------------------------------


def test_linear_cka_known_cases():
    rng = _rng(3)
    A = rng.normal(size=(800, 10)) @ rng.normal(size=(10, 10))
    Q = ortho_group.rvs(10, random_state=4)
    assert cmp.linear_cka(A, A @ Q) == pytest.approx(1.0, abs=1e-9)
    assert cmp.linear_cka(A, 7.5 * A + 3.0) == pytest.approx(1.0, abs=1e-9)
    noise = cmp.linear_cka(A, rng.normal(size=(800, 10)))
    assert noise < 0.05
    # matches the textbook formula on explicitly centred data
    B = A @ rng.normal(size=(10, 6)) + rng.normal(size=(800, 6))
    Ac, Bc = A - A.mean(0), B - B.mean(0)
    ref = np.linalg.norm(Ac.T @ Bc) ** 2 / (np.linalg.norm(Ac.T @ Ac) * np.linalg.norm(Bc.T @ Bc))
    assert cmp.linear_cka(A, B) == pytest.approx(ref, rel=1e-9)
    # not invariant to a non-orthogonal invertible map (that's what SVCCA is for)
    T = np.diag(np.geomspace(1, 50, 10))
    assert cmp.linear_cka(A, A @ T) < 0.95


def test_svcca_invertible_transform_and_noise():
    rng = _rng(5)
    A = rng.normal(size=(1000, 8)) * np.geomspace(1, 4, 8)
    T = rng.normal(size=(8, 8))
    assert abs(np.linalg.det(T)) > 1e-3
    assert cmp.svcca(A, A @ T + 2.0, keep=1.0) == pytest.approx(1.0, abs=1e-8)
    # a rank-5 signal in 20 dims (plus tiny noise): 99% of variance keeps the signal subspace
    Z = rng.normal(size=(1000, 5))
    A2 = Z @ rng.normal(size=(5, 20)) + 1e-3 * rng.normal(size=(1000, 20))
    B2 = Z @ rng.normal(size=(5, 30)) + 1e-3 * rng.normal(size=(1000, 30))
    assert cmp.svcca(A2, B2, keep=0.99) > 0.99
    m = cmp.moments(A2, B2)
    assert cmp.svcca_from_cov(m.cov_aa(), m.cov_bb(), m.cov_ab(), 0.99) == pytest.approx(m.svcca(0.99))
    # independent populations: canonical correlations ~ sqrt(dims / N), far below 1
    assert cmp.svcca(A, rng.normal(size=(1000, 8)), keep=0.99) < 0.15
    with pytest.raises(ValueError):
        cmp.svcca(A, A, keep=0.0)


# ------------------------------------------------------------------------------------------
# Interference Grams and the Mantel test
# ------------------------------------------------------------------------------------------


def test_mantel_related_vs_unrelated():
    rng = _rng(6)
    n = 60
    X = rng.normal(size=(n, 5))
    G1 = cmp.normalized_gram(X)
    G2 = cmp.normalized_gram(X @ rng.normal(size=(5, 5)) + 0.3 * rng.normal(size=(n, 5)))
    rel = cmp.mantel(G1, G2, n_perm=199, seed=0)
    iu = np.triu_indices(n, 1)
    assert rel.r == pytest.approx(scipy.stats.pearsonr(G1[iu], G2[iu])[0], abs=1e-5)
    assert rel.r > 0.3 and rel.p <= 0.01
    unrel = cmp.mantel(G1, cmp.normalized_gram(rng.normal(size=(n, 5))), n_perm=199, seed=0)
    assert abs(unrel.r) < 0.15 and unrel.p > 0.05
    # the same matrix with its items relabelled is unrelated to the original labelling
    perm = rng.permutation(n)
    assert cmp.mantel(G1, G1[np.ix_(perm, perm)], 199, 0).p > 0.05
    # deterministic for a seed
    assert cmp.mantel(G1, G2, 50, seed=3).p == cmp.mantel(G1, G2, 50, seed=3).p


def test_mantel_is_invariant_to_neuron_rotation_of_both_spaces():
    """Feature Grams compare geometry, not bases: rotating the neuron space changes nothing."""
    rng = _rng(7)
    W = rng.normal(size=(40, 6))
    Q = ortho_group.rvs(6, random_state=8)
    G1 = cmp.squeezer_feature_gram(W)
    G2 = cmp.squeezer_feature_gram(3.0 * W @ Q)
    np.testing.assert_allclose(G1, G2, atol=1e-12)
    assert cmp.mantel(G1, G2, 20, 0).r == pytest.approx(1.0, abs=1e-5)


def test_model_feature_gram_uses_loadings_and_subset():
    rng = _rng(9)
    W_dec = rng.normal(size=(30, 8))
    readin = rng.normal(size=(8, 12))
    feats = np.array([0, 3, 7, 11])
    L = W_dec[feats] @ readin
    Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    np.testing.assert_allclose(cmp.model_feature_gram(W_dec, readin, feats), Ln @ Ln.T, atol=1e-12)
    with pytest.raises(ValueError):
        cmp.model_feature_gram(W_dec, readin[:5])
    # zero rows (unrepresented features) stay zero, no NaN
    G = cmp.squeezer_feature_gram(np.vstack([np.zeros(3), np.ones(3)]))
    assert np.isfinite(G).all() and G[0].tolist() == [0.0, 0.0]


def test_select_features_masks_and_seeded_subsample():
    alive = np.array([True] * 8 + [False] * 2)
    rep = np.array([True, False] * 5)
    assert cmp.select_features([alive, rep], 100, 0).tolist() == [0, 2, 4, 6]
    a = cmp.select_features([alive], 3, seed=1)
    assert len(a) == 3 and np.all(np.diff(a) > 0) and set(a) <= set(range(8))
    assert a.tolist() == cmp.select_features([alive], 3, seed=1).tolist()


# ------------------------------------------------------------------------------------------
# Shuffled-feature floor
# ------------------------------------------------------------------------------------------


def test_shuffle_feature_columns_keeps_marginals_breaks_cooccurrence():
    rng = _rng(10)
    N, n_feat = 4000, 6
    dense = np.zeros((N, n_feat), dtype=np.float32)
    on = rng.random(N) < 0.3
    dense[on, 0] = rng.uniform(1, 2, on.sum())  # features 0 and 1 always co-occur
    dense[on, 1] = rng.uniform(1, 2, on.sum())
    dense[:, 2:] = (rng.random((N, 4)) < 0.1) * rng.uniform(0.5, 1, (N, 4))
    feats = SparseFeatures.from_dense(dense, k=3)
    sh = nulls.permute_feature_columns(feats, seed=0)
    d0, d1 = feats.to_dense(), sh.to_dense()
    assert sh.n_features == n_feat and len(sh) == N
    for j in range(n_feat):  # each column's values are kept exactly, only their rows move
        np.testing.assert_array_equal(np.sort(d0[:, j]), np.sort(d1[:, j]))
    both_before = ((d0[:, 0] > 0) & (d0[:, 1] > 0)).mean()
    both_after = ((d1[:, 0] > 0) & (d1[:, 1] > 0)).mean()
    assert both_before == pytest.approx((d0[:, 0] > 0).mean())
    assert both_after == pytest.approx(0.3 * 0.3, abs=0.03)
    assert (sh.val[sh.val > 0] > 0).all() and sh.idx.dtype == np.int32


# ------------------------------------------------------------------------------------------
# Ground truth: a toy model with a privileged ReLU layer, and Squeezers on its true features
# ------------------------------------------------------------------------------------------

N_TRUE, D_MODEL, N_NEURONS = 16, 16, 8


class ToyModel:
    """features -> fixed embedding (d) -> ReLU neurons (m) -> ReLU features, trained briefly."""

    def __init__(self, seed: int, embedding, importance, gen, steps: int = 400):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.E = embedding
        self.W_in = (torch.randn(D_MODEL, N_NEURONS, generator=g) / D_MODEL**0.5).requires_grad_()
        self.b_in = torch.zeros(N_NEURONS, requires_grad=True)
        self.W_out = (torch.randn(N_NEURONS, N_TRUE, generator=g) / N_NEURONS**0.5).requires_grad_()
        self.b_out = torch.zeros(N_TRUE, requires_grad=True)
        params = [self.W_in, self.b_in, self.W_out, self.b_out]
        opt = torch.optim.Adam(params, lr=1e-2)
        torch.manual_seed(seed)
        for _ in range(steps):
            f = gen.sample(256)
            f_hat = torch.relu(self.neurons(f) @ self.W_out + self.b_out)
            loss = (importance * (f_hat - f) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def neurons(self, f):
        return torch_relu((f @ self.E) @ self.W_in + self.b_in)

    def neurons_np(self, f) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.neurons(f).numpy()


def torch_relu(x):
    import torch

    return torch.relu(x)


@pytest.fixture(scope="module")
def toy_world():
    return make_toy_world()


def make_toy_world():
    """True sparse features (SAELens ActivationGenerator), two toy-model seeds, train/held-out."""
    import torch

    torch.set_num_threads(1)  # tiny models: threads only add overhead
    from sae_lens.synthetic import ActivationGenerator

    torch.manual_seed(0)
    gen = ActivationGenerator(
        N_TRUE, firing_probabilities=0.3, std_firing_magnitudes=0.2, mean_firing_magnitudes=1.0
    )
    importance = torch.tensor(0.7 ** np.arange(N_TRUE), dtype=torch.float32)
    E = torch.randn(N_TRUE, D_MODEL, generator=torch.Generator().manual_seed(1))
    E = E / E.norm(dim=1, keepdim=True)
    toy = ToyModel(10, E, importance, gen)
    toy2 = ToyModel(11, E, importance, gen)
    torch.manual_seed(2)
    f_train, f_held = gen.sample(8192), gen.sample(3000)
    return {
        "E": E.numpy(),
        "importance": importance.numpy(),
        "toy": toy,
        "toy2": toy2,
        "train": SparseFeatures.from_dense(f_train.numpy(), k=N_TRUE),
        "heldout": SparseFeatures.from_dense(f_held.numpy(), k=N_TRUE),
        "resid_held": (f_held @ E).numpy(),
        "neurons": toy.neurons_np(f_held),
        "neurons_seed2": toy2.neurons_np(f_held),
        "resid_train": (f_train @ E).numpy(),
        "neurons_train": toy.neurons_np(f_train),
        "neurons_seed2_train": toy2.neurons_np(f_train),
    }


def test_ground_truth_squeezer_matches_toy_neurons_above_floor(toy_world):
    """A Squeezer trained on the toy model's true features, with M = the toy's width, finds
    neurons that fire like the toy's (one-to-one), far above the same Squeezer untrained."""
    from neural_codec.config import SqueezerConfig
    from neural_codec.squeezer.train import neuron_activations, train_squeezer

    w = toy_world
    cfg = SqueezerConfig(
        M=N_NEURONS,
        importance="given",
        importance_given=w["importance"].tolist(),
        lr=1e-2,
        batch_size=256,
        steps=400,
        seed=0,
    )
    sq, _ = train_squeezer(w["train"], cfg)
    H = w["neurons"]
    trained = cmp.compare_populations(cmp.moments(neuron_activations(sq, w["heldout"]), H)).metrics
    untrained = cmp.compare_populations(
        cmp.moments(neuron_activations(nulls.untrained_squeezer(N_TRUE, cfg), w["heldout"]), H)
    ).metrics
    ceiling = cmp.compare_populations(cmp.moments(w["neurons_seed2"], H)).metrics
    print(
        {
            k: (round(trained[k], 3), round(untrained[k], 3), round(ceiling[k], 3))
            for k in ("hungarian_mean_r", "mean_best_abs_r", "cka", "svcca")
        }
    )
    assert trained["hungarian_mean_r"] > untrained["hungarian_mean_r"] + 0.15
    assert trained["mean_best_abs_r"] > untrained["mean_best_abs_r"] + 0.15
    assert trained["cka"] > untrained["cka"] + 0.15
    assert trained["svcca"] > untrained["svcca"] + 0.2


# ------------------------------------------------------------------------------------------
# The stage, end to end on a tiny synthetic world (a "perfect" SAE: latents = true features)
# ------------------------------------------------------------------------------------------

COMPARE_PARAMS = {
    "n_mantel_permutations": 49,
    "max_features_for_mantel": 12,
    "svcca_keep": 0.99,
    "seed": 0,
    "retrain_steps": 200,
    "batch_size": 700,
    "plot_max_neurons": 6,
    "predict_epochs": 3,
    "predict_batch_size": 256,
    "n_bootstrap": 200,
}


def _write_world(root, w) -> None:
    import torch
    import yaml
    from sae_lens import StandardSAE, StandardSAEConfig

    from neural_codec import storage
    from neural_codec.config import SqueezerConfig
    from neural_codec.squeezer.checkpoint import save_squeezer
    from neural_codec.squeezer.train import neuron_activations, train_squeezer

    data = root / "data"
    n_held = len(w["heldout"])
    wr = storage.ShardWriter(
        data / "activations/heldout", rows_per_shard=1000, d_model=D_MODEL, n_neurons=N_NEURONS
    )
    wr.append(resid=w["resid_held"], neurons=w["neurons"], neurons_seed2=w["neurons_seed2"])
    wr.close()
    wr = storage.ShardWriter(
        data / "activations/train", rows_per_shard=4096, d_model=D_MODEL, n_neurons=N_NEURONS
    )
    wr.append(resid=w["resid_train"], neurons=w["neurons_train"], neurons_seed2=w["neurons_seed2_train"])
    wr.close()
    np.save(data / "activations/neuron_readin.npy", w["toy"].W_in.detach().numpy())
    (data / "source").mkdir(parents=True)
    torch.save({"state_dict": {"W_in": w["toy2"].W_in.detach().clone()}}, data / "source/model_seed2.pt")
    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=N_TRUE))
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(w["E"]))
    sae.save_model(data / "sae")
    storage.write_sparse(data / "features/train", w["train"], rows_per_shard=4096)
    storage.write_sparse(data / "features/heldout", w["heldout"], rows_per_shard=1000)
    np.save(data / "features/firing_freq.npy", w["train"].firing_frequency())
    cfg = SqueezerConfig(
        M=N_NEURONS,
        importance="given",
        importance_given=w["importance"].tolist(),
        lr=1e-2,
        batch_size=256,
        steps=400,
        seed=0,
    )
    sq, _ = train_squeezer(w["train"], cfg)
    save_squeezer(data / "squeeze/squeezer.pt", sq, cfg)
    np.save(data / "squeeze/heldout_neurons.npy", neuron_activations(sq, w["heldout"]))
    assert n_held == len(w["neurons"])
    (root / "params.yaml").write_text(yaml.safe_dump({"compare": COMPARE_PARAMS}))


def _run_stage(root, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.chdir(root)
    path = Path(__file__).resolve().parents[2] / "stages" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare_stage", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main()


@pytest.fixture(scope="module")
def stage_root(toy_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_stage")
    _write_world(root, toy_world)
    return root


def test_stage_end_to_end(stage_root, monkeypatch):
    from neural_codec.storage import read_json

    _run_stage(stage_root, monkeypatch)
    m = read_json(stage_root / "metrics/compare.json")
    keys = {
        "mean_best_abs_r",
        "hungarian_mean_r",
        "frac_matched_above_0_5",
        "cka",
        "svcca",
        "interference_mantel_r",
        "interference_mantel_p",
    }
    conds = [
        "squeezer_vs_model",
        "floor_untrained",
        "floor_permuted",
        "squeezer_seed2_vs_model",
        "ceiling_squeezer_vs_seed2",
        "ceiling_model_vs_model_seed2",
    ]
    for c in conds:
        assert keys <= set(m[c]), c
        assert 0 <= m[c]["hungarian_mean_r"] <= 1 and 0 <= m[c]["interference_mantel_p"] <= 1
    main, floor = m["squeezer_vs_model"], m["floor_untrained"]
    assert main["hungarian_mean_r"] > floor["hungarian_mean_r"] + 0.15
    assert main["cka"] > floor["cka"] + 0.15
    assert m["interference_features"]["n_used"] <= COMPARE_PARAMS["max_features_for_mantel"]
    assert -1 <= m["interference_features"]["model_vs_sae_decoder_geometry_r"] <= 1
    csv = (stage_root / "plots/compare/matched_r.csv").read_text().splitlines()
    assert csv[0] == "rank," + ",".join(conds)
    assert len(csv) == 1 + N_NEURONS
    first = [float(v) for v in csv[1].split(",")[1:]]
    last = [float(v) for v in csv[-1].split(",")[1:]]
    assert all(a >= b for a, b in zip(first, last, strict=False))  # sorted best first
    png = (stage_root / "plots/compare/correlation_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # soft matching and predictivity: every condition has them; predictivity (a linear read-out
    # of all the synthetic neurons) is at least what the one-to-one Hungarian pairs show
    for c in conds:
        assert 0 <= m[c]["mean_best_abs_r_b"] <= 1 and m[c]["predictivity_r2"] <= 1
    assert main["predictivity_r2"] > floor["predictivity_r2"] + 0.1
    assert main["predictivity_r2"] > main["hungarian_mean_r"] ** 2
    # the direct test: these neurons ARE ReLU(W f + b) of the (perfect) SAE's latents, so F
    # predicts them as well as the dense input does, far above both floors
    p = m["neuron_predictability"]
    assert p["features"]["ci_low"] > 0.97 and p["ceiling_dense"]["mean_r2"] > 0.97
    assert abs(p["floor_shuffled"]["mean_r2"]) < 0.05
    assert p["features"]["mean_r2"] > p["floor_random_code"]["mean_r2"] + 0.2
    assert p["features"]["ci_low"] <= p["features"]["mean_r2"] <= p["features"]["ci_high"]
    # the fitted readout's loadings are the model's own (E W_in): same co-loading geometry
    assert p["sharing"]["model_loadings"]["mantel_r"] > 0.9
    rows = (stage_root / "plots/compare/predictability.csv").read_text().splitlines()
    assert rows[0] == "neuron,features,floor_shuffled,floor_random_code,ceiling_dense"
    assert len(rows) == 1 + N_NEURONS
    assert (stage_root / "plots/compare/predictability.png").read_bytes()[:4] == b"\x89PNG"


def test_stage_streams_a_train_split_bigger_than_the_buffer(stage_root, monkeypatch, tmp_path):
    """The seed-2 ceiling and the permuted floor retrain from shards when the Squeezer's
    `buffer_rows` (3,000) is below the 8,192 train rows (the floor on its first 3,000 rows)."""
    import shutil

    import torch

    from neural_codec.storage import read_json

    root = tmp_path / "streamed"
    shutil.copytree(stage_root, root, ignore=shutil.ignore_patterns("metrics", "plots"))
    state = torch.load(root / "data/squeeze/squeezer.pt", weights_only=False)
    state["config"]["buffer_rows"] = 3000
    torch.save(state, root / "data/squeeze/squeezer.pt")
    _run_stage(root, monkeypatch)
    got = read_json(root / "metrics/compare.json")
    if not (stage_root / "metrics/compare.json").exists():
        _run_stage(stage_root, monkeypatch)
    whole = read_json(stage_root / "metrics/compare.json")
    assert got["squeezer_vs_model"] == whole["squeezer_vs_model"]  # the main Squeezer is read, not retrained
    # this world's features are independent, so the permuted floor is as good as the trained
    # Squeezer; streamed retrains land where the in-memory ones do, above the untrained floor
    for cond in ("squeezer_seed2_vs_model", "floor_permuted"):
        for key in ("cka", "hungarian_mean_r"):
            assert abs(got[cond][key] - whole[cond][key]) < 0.05, (cond, key)
        assert got[cond]["cka"] > got["floor_untrained"]["cka"] + 0.15, cond


def test_stage_rejects_bad_params_before_work(stage_root, monkeypatch, tmp_path):
    import shutil

    import yaml

    from neural_codec.errors import ParamError

    root = tmp_path / "bad"
    shutil.copytree(stage_root, root)
    shutil.rmtree(root / "metrics", ignore_errors=True)
    for key, value in [
        ("svcca_keep", 1.5),
        ("n_mantel_permutations", 0),
        ("retrain_steps", -3),
        ("bogus", 1),
    ]:
        (root / "params.yaml").write_text(yaml.safe_dump({"compare": {**COMPARE_PARAMS, key: value}}))
        with pytest.raises(ParamError, match=f"compare.{key}"):
            _run_stage(root, monkeypatch)
    assert not (root / "metrics").exists()
    (root / "params.yaml").write_text(yaml.safe_dump({"compare": COMPARE_PARAMS}))
    (root / "data/squeeze/squeezer.pt").unlink()
    with pytest.raises(ParamError, match="squeezer.pt"):
        _run_stage(root, monkeypatch)


def test_spectrum_summary_flags_one_dominant_shared_component():
    """Neurons that all rise with one common signal: top PC share near 1, effective rank near 1;
    independent neurons: share 1/d, effective rank d."""
    rng = np.random.default_rng(0)
    common = rng.normal(size=(20000, 1))
    shared = common @ np.ones((1, 8)) * 3 + 0.3 * rng.normal(size=(20000, 8))
    s = cmp.spectrum_summary(np.cov(shared, rowvar=False), "a")
    assert s["top_pc_share_a"] > 0.95 and s["effective_rank_a"] < 1.2
    i = cmp.spectrum_summary(np.cov(rng.normal(size=(20000, 8)), rowvar=False), "b")
    assert i["top_pc_share_b"] < 0.2 and i["effective_rank_b"] > 7.5
    m = cmp.compare_populations(cmp.moments(shared, rng.normal(size=(20000, 8)))).metrics
    assert m["top_pc_share_a"] > 0.95 and m["effective_rank_b"] > 7.5


def test_mantel_filter_uses_heldout_gain_not_weight_norm(stage_root, monkeypatch):
    """compare's Mantel features are `features_represented` (held-out self-gain > 0.5), not
    `feature_gain() > 0.5`: an untrained Squeezer's xavier rows pass the weight criterion for
    most features, but it represents none of them on data."""
    from neural_codec.codec import SqueezerCodec, batches_from_arrays, represented_features
    from neural_codec.config import SqueezerConfig
    from neural_codec.squeezer.checkpoint import load_squeezer
    from neural_codec.storage import load_sparse, read_json

    n, M = 512, 128
    rng = np.random.default_rng(0)
    dense = (rng.random((3000, n)) < 0.01) * rng.uniform(0.5, 1.5, (3000, n))
    feats = SparseFeatures.from_dense(dense.astype(np.float32), k=16)
    un = nulls.untrained_squeezer(n, SqueezerConfig(M=M))
    assert (un.feature_gain() > 0.5).mean() > 0.5  # the old criterion: most features "represented"
    assert represented_features(SqueezerCodec(un), batches_from_arrays(feats)).mean() < 0.05

    _run_stage(stage_root, monkeypatch)
    m = read_json(stage_root / "metrics/compare.json")["interference_features"]
    sq = load_squeezer(stage_root / "data/squeeze/squeezer.pt")
    held = load_sparse(stage_root / "data/features/heldout")
    rep = represented_features(SqueezerCodec(sq), batches_from_arrays(held))
    alive = np.load(stage_root / "data/features/firing_freq.npy") > 0
    assert m["n_represented"] == int((alive & rep).sum())
