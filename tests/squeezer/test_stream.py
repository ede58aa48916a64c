"""Streaming the train split shard by shard (`squeezer.stream`): every row once per epoch in a
seeded order, today's exact path when the split fits the buffer, sane training when it does not,
baselines (PCA, moments) equal either way, and a bad `buffer_rows` refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neural_codec import storage
from neural_codec.baselines import feature_moments, fit_pca
from neural_codec.codec import SqueezerCodec, batches_from_arrays, evaluate_codec
from neural_codec.config import BaselinesConfig, SqueezerConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict, squeezer_bytes
from neural_codec.squeezer.stream import SparseShards, open_train, rows_in_memory
from neural_codec.squeezer.train import train_squeezer
from neural_codec.storage import SparseFeatures

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(N: int, n: int = 24, n_active: int = 6, p: float = 0.3, seed: int = 0) -> SparseFeatures:
    """n features of which only the first n_active fire (independently, with probability p)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((N, n), np.float32)
    on = rng.random((N, n_active)) < p
    dense[:, :n_active] = np.where(on, rng.uniform(0.5, 1.5, (N, n_active)), 0)
    return SparseFeatures.from_dense(dense, n_active)


def write_split(tmp_path, feats: SparseFeatures, rows_per_shard: int):
    d = tmp_path / "train"
    storage.write_sparse(d, feats, rows_per_shard)
    return d


def tagged(N: int, k: int = 3) -> SparseFeatures:
    """Rows whose first value is the row number + 1: which row a batch row came from."""
    idx = np.tile(np.arange(k, dtype=np.int32), (N, 1))
    val = np.ones((N, k), np.float32)
    val[:, 0] = np.arange(1, N + 1)
    return SparseFeatures(idx, val, k)


def epoch_rows(shards: SparseShards, batch_size: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    rows: list[int] = []
    for _, val in shards.epoch(batch_size, gen):
        assert 1 <= len(val) <= batch_size
        rows += (val[:, 0].astype(np.int64) - 1).tolist()
    return rows


def test_every_row_once_per_epoch_in_a_seeded_order(tmp_path):
    N = 1000
    d = write_split(tmp_path, tagged(N), rows_per_shard=70)  # 15 shards, the last one short
    shards = SparseShards(d, buffer_rows=200)
    a, b, c = epoch_rows(shards, 32, 0), epoch_rows(shards, 32, 0), epoch_rows(shards, 32, 1)
    assert sorted(a) == list(range(N)) and sorted(c) == list(range(N))  # each row exactly once
    assert a == b  # same seed, same order
    assert a != c  # another seed, another order
    assert a != sorted(a)
    # rows mix across shards: the first 200 rows out come from more than the first shards read
    assert len({r // 70 for r in a[:200]}) > 3
    # successive epochs of one generator differ (a new shard order and new buffer draws)
    gen = torch.Generator().manual_seed(0)
    e1 = [int(v[0]) for _, vs in shards.epoch(32, gen) for v in vs]
    e2 = [int(v[0]) for _, vs in shards.epoch(32, gen) for v in vs]
    assert sorted(e1) == sorted(e2) and e1 != e2
    # training batches are all full-size
    mb = shards.minibatches(32, torch.Generator().manual_seed(0))
    assert all(len(next(mb)[0]) == 32 for _ in range(100))


def test_buffer_holding_the_split_is_the_in_memory_path_bit_identical(tmp_path):
    feats = planted(900)
    d = write_split(tmp_path, feats, rows_per_shard=128)
    loaded = open_train(d, buffer_rows=900)
    assert isinstance(loaded, SparseFeatures)  # fits: loaded whole, the earlier exact path
    assert rows_in_memory(loaded) is loaded
    cfg = dict(M=4, lr=1e-2, batch_size=64, steps=60, seed=3, bias_init="mean", importance="frequency")
    ref, ref_curve = train_squeezer(feats, SqueezerConfig(**cfg))
    got, got_curve = train_squeezer(
        loaded, from_dict(SqueezerConfig, {**cfg, "buffer_rows": 900}, "squeezer")
    )
    assert got_curve == ref_curve
    for name, p in ref.state_dict().items():
        assert torch.equal(p, got.state_dict()[name]), name
    # the streamed split's passes equal the in-memory ones (same row batches)
    shards = SparseShards(d, buffer_rows=256)
    np.testing.assert_array_equal(shards.firing_frequency(), feats.firing_frequency())
    for a, b in zip(feature_moments(shards, 200), feature_moments(feats, 200), strict=True):
        np.testing.assert_array_equal(a, b)
    dense_s, dense_m = fit_pca(shards, 3, batch_size=200), fit_pca(feats, 3, batch_size=200)
    np.testing.assert_array_equal(dense_s.eigenvalues, dense_m.eigenvalues)
    op_s, op_m = fit_pca(shards, 3, dense_limit=5, batch_size=200), fit_pca(feats, 3, dense_limit=5)
    np.testing.assert_allclose(op_s.eigenvalues, op_m.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(op_s.eigenvalues, dense_m.eigenvalues, rtol=1e-8)
    assert len(rows_in_memory(shards)) == 256  # the permuted null's bounded sample


def test_buffer_smaller_than_the_split_trains_to_a_sane_fvu(tmp_path):
    feats, held = planted(6000, seed=0), planted(2000, seed=1)
    d = write_split(tmp_path, feats, rows_per_shard=500)
    shards = open_train(d, buffer_rows=1000)
    assert isinstance(shards, SparseShards) and len(shards) == 6000
    cfg = SqueezerConfig(M=6, lr=1e-2, batch_size=128, steps=500, seed=0, buffer_rows=1000)
    model, curve = train_squeezer(shards, cfg)
    fvu = evaluate_codec(SqueezerCodec(model), batches_from_arrays(held, batch_size=1000))["fvu"]
    assert fvu < 0.05, fvu  # M = the 6 active features: near-exact reconstruction
    assert curve[-1]["loss"] < 0.2 * curve[0]["loss"]
    # control: 2 neurons cannot carry 6 independent features
    small, _ = train_squeezer(
        shards, SqueezerConfig(M=2, lr=1e-2, batch_size=128, steps=300, buffer_rows=1000)
    )
    assert evaluate_codec(SqueezerCodec(small), batches_from_arrays(held))["fvu"] > 0.3


@pytest.mark.parametrize("value", [0, -5, 100, 2.5, True, "big"])
def test_bad_buffer_rows_is_refused(value):
    with pytest.raises(ParamError, match=rf"squeezer\.buffer_rows = {value!r}.*expected an integer"):
        from_dict(SqueezerConfig, {"batch_size": 128, "buffer_rows": value}, "squeezer")
    with pytest.raises(ParamError, match=r"baselines\.buffer_rows = "):
        from_dict(BaselinesConfig, {"batch_size": 128, "buffer_rows": value}, "baselines")


def test_buffer_below_the_batch_names_the_batch():
    with pytest.raises(ParamError, match=r"squeezer\.buffer_rows = 100 .*>= squeezer\.batch_size = 128"):
        SqueezerConfig(batch_size=128, buffer_rows=100)
    assert SqueezerConfig(batch_size=128, buffer_rows=128).buffer_rows == 128


def test_memory_estimate_counts_the_buffer_not_the_split():
    cfg = SqueezerConfig(M=8, batch_size=64, buffer_rows=10_000)
    small = squeezer_bytes(100, cfg, 5_000, 4)
    big = squeezer_bytes(100, cfg, 5_000_000, 4, shard_rows=1000)
    assert big == squeezer_bytes(100, cfg, 50_000_000, 4, shard_rows=1000)  # flat above the buffer
    # the streamed buffer + shard hold int32 + float32 (8 B a slot); the in-memory split also
    # holds training_batches' int64 + float32 torch copies (20 B a slot)
    assert big - small == 11_000 * 4 * 8 - 5_000 * 4 * 20


def test_stages_stream_a_split_bigger_than_the_buffer(tmp_path, monkeypatch):
    """squeeze and baselines on a 3,000-row train split (5 shards) with a 1,000-row buffer: the
    Squeezer still learns, and PCA / no-superposition match the in-memory run exactly."""
    from test_squeezer import STAGE_PARAMS, run_stage, write_world

    fit = {
        **STAGE_PARAMS,
        "baselines": {**STAGE_PARAMS["baselines"], "methods": ["pca", "no_superposition"]},
    }
    small = {
        **fit,
        "squeezer": {**fit["squeezer"], "buffer_rows": 1000},
        "baselines": {**fit["baselines"], "buffer_rows": 1000},
    }
    got = {}
    for name, params in (("whole", fit), ("streamed", small)):
        root = tmp_path / name
        write_world(root, params)
        assert isinstance(open_train(root / "data/features/train", 1000), SparseShards)
        run_stage("baselines", root, monkeypatch)
        got[name] = storage.read_json(root / "metrics/baselines.json")
    for method in ("pca", "no_superposition"):
        for key in ("fvu", "features_represented", "sae_explained_variance"):
            assert got["streamed"][method][key] == got["whole"][method][key], (method, key)
    run_stage("squeeze", tmp_path / "streamed", monkeypatch)
    m = storage.read_json(tmp_path / "streamed/metrics/squeeze.json")["squeezer"]
    assert 0 <= m["fvu"] < 0.9 and m["sae_explained_variance"] > 0.2
    assert m["fvu"] < got["streamed"]["no_superposition"]["fvu"]


def test_in_memory_slot_bytes_are_what_the_in_memory_path_holds(tmp_path):
    """IN_MEMORY_SLOT_BYTES is the bytes per slot the squeeze stage holds for a split that fits
    its buffer: open_train's numpy arrays plus training_batches' torch copies (read off the
    generator's frame, so a change to either path fails here)."""
    from neural_codec.params import IN_MEMORY_SLOT_BYTES
    from neural_codec.squeezer.train import training_batches

    train = open_train(write_split(tmp_path, planted(600), rows_per_shard=200), buffer_rows=10_000)
    assert isinstance(train, SparseFeatures)  # the in-memory path
    batches = training_batches(train, 64, torch.Generator().manual_seed(0))
    next(batches)
    held = batches.gi_frame.f_locals
    torch_bytes = sum(t.element_size() * t.nelement() for t in (held["idx_all"], held["val_all"]))
    slots = len(train) * train.k
    assert (train.idx.nbytes + train.val.nbytes + torch_bytes) / slots == IN_MEMORY_SLOT_BYTES
