"""The sae stage's training curves: SAELens' SAETrainer through a `step` subclass (same weights as
the plain trainer) and the transcoder's Adam loop, both as loss / mse / l0 per logging interval."""

from pathlib import Path

import numpy as np
import pytest
import torch

from neural_codec import sae as sae_mod
from neural_codec import storage
from neural_codec.config import SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def write_split(directory: Path, n: int = 2000, d: int = 8) -> Path:
    """resid from 12 sparse planted directions, neurons = ReLU(resid R)."""
    rng = np.random.default_rng(0)
    D = rng.normal(size=(12, d))
    codes = (rng.random((n, 12)) < 0.2) * rng.uniform(0.5, 1.5, (n, 12))
    resid = (codes @ D).astype(np.float32)
    neurons = np.maximum(resid @ rng.normal(size=(d, d)), 0).astype(np.float32)
    w = storage.ShardWriter(directory, 700, d_model=d, n_neurons=d)
    w.append(resid=resid, neurons=neurons)
    w.close()
    return directory


CFG = SAEConfig(architecture="topk", d_sae=24, k=2, training_samples=100 * 256, batch_size=256, lr=3e-3)


def test_sae_curves_leave_the_trained_weights_unchanged(tmp_path, monkeypatch):
    train = write_split(tmp_path / "train")
    sae, curves = sae_mod.train_sae(CFG, train)
    assert list(curves) == ["loss", "mse", "l0"]
    steps = [p["step"] for p in curves["loss"]]
    assert steps == [p["step"] for p in curves["mse"]] == [p["step"] for p in curves["l0"]]
    assert steps[-1] == 100 and len(steps) == 50  # every 2 steps, ending on the last
    mse, loss, l0 = ([p["loss"] for p in curves[k]] for k in ("mse", "loss", "l0"))
    assert all(m <= t + 1e-12 for m, t in zip(mse, loss, strict=True))  # loss = mse + aux >= 0
    assert mse[-1] < 0.75 * mse[0]  # it learns
    assert all(0 < v <= CFG.k for v in l0)  # TopK: at most k latents fire per row
    # the plain SAETrainer (no curve subclass) trains exactly the same SAE
    monkeypatch.setattr(sae_mod, "_curve_trainer", lambda base, log: base)
    plain, empty = sae_mod.train_sae(CFG, train)
    assert all(c == [] for c in empty.values())
    for name, p in sae.state_dict().items():
        assert torch.equal(p, plain.state_dict()[name]), name


def test_transcoder_curve_loss_is_mse_plus_the_l1_term(tmp_path):
    train = write_split(tmp_path / "train")
    rng = np.random.default_rng(1)
    W = torch.from_numpy(rng.normal(size=(8, 5)).astype(np.float32))

    def mlp_out(h: torch.Tensor) -> torch.Tensor:
        return h @ W

    cfg = SAEConfig(kind="transcoder", d_sae=24, training_samples=60 * 256, batch_size=256, lr=1e-2)
    _, free = sae_mod.train_transcoder(SAEConfig(**{**cfg.__dict__, "l1_coefficient": 0.0}), train, mlp_out)
    assert free["loss"] == free["mse"]  # no L1 term: the loss is the MSE, point for point
    _, curves = sae_mod.train_transcoder(SAEConfig(**{**cfg.__dict__, "l1_coefficient": 0.1}), train, mlp_out)
    steps = [p["step"] for p in curves["loss"]]
    assert steps[-1] == 60 and len(steps) == 60  # 60 steps < 50 points x 2: every step
    mse, loss, l0 = ([p["loss"] for p in curves[k]] for k in ("mse", "loss", "l0"))
    assert all(t > m for m, t in zip(mse, loss, strict=True))
    assert mse[-1] < 0.75 * mse[0]
    assert all(0 <= v <= 24 for v in l0)
    assert l0[-1] < free["l0"][-1]["loss"]  # the L1 term sparsifies
