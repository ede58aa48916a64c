"""`device` and `autocast`: validated by key before any work, honoured by every training loop
(the model, the importance weights and every minibatch live on the resolved device, checked on
torch's `meta` device, which needs no GPU), bit-identical on the CPU, and quiet progress bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neural_codec import runtime
from neural_codec.baselines import fit_model_neurons
from neural_codec.config import (
    BaselinesConfig,
    CompareConfig,
    GeometryConfig,
    LMSourceConfig,
    SAEConfig,
    SqueezerConfig,
)
from neural_codec.errors import ParamError
from neural_codec.squeezer import train as train_mod
from neural_codec.squeezer.train import CurveLogger, train_squeezer
from neural_codec.storage import SparseFeatures

META = torch.device("meta")


class Stop(Exception):
    """Raised by a recorder once it has seen what it needs (meta tensors hold no numbers)."""


def feats(N=256, n=40, k=3, seed=0) -> SparseFeatures:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(n, k, replace=False) for _ in range(N)]).astype(np.int32)
    val = rng.uniform(0.1, 1.0, (N, k)).astype(np.float32)
    val[rng.random((N, k)) < 0.3] = 0.0  # padding
    return SparseFeatures(idx, val, n)


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda v: SqueezerConfig(device=v), "squeezer.device"),
        (lambda v: BaselinesConfig(device=v), "baselines.device"),
        (lambda v: CompareConfig(device=v), "compare.device"),
        (lambda v: GeometryConfig(device=v), "geometry.device"),
        (lambda v: SAEConfig(device=v), "sae.device"),
        (lambda v: LMSourceConfig(device=v), "source.lm.device"),
    ],
)
def test_bad_device_names_key_value_and_allowed(make, key):
    with pytest.raises(ParamError) as err:
        make("gpu")
    msg = str(err.value)
    assert f"{key} = 'gpu'" in msg and "auto" in msg and "cuda" in msg and "cpu" in msg
    make("cpu")  # the same section accepts cpu and auto
    make("auto")


def test_cuda_without_a_gpu_is_a_param_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamError) as err:
        runtime.resolve_device("cuda", "squeezer.device")
    assert "squeezer.device = 'cuda'" in str(err.value) and "is_available() is False" in str(err.value)
    with pytest.raises(ParamError, match="source.lm.device = 'cuda:1'"):
        LMSourceConfig(device="cuda:1")
    assert runtime.resolve_device("auto", "k") == torch.device("cpu")
    assert LMSourceConfig(device="auto").device == "cpu"  # resolved: TransformerLens takes the name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runtime.resolve_device("auto", "k") == torch.device("cuda")
    with pytest.raises(ParamError, match="1 device"):
        runtime.resolve_device("cuda:1", "k")


def test_every_stage_refuses_a_missing_gpu_before_any_work(monkeypatch, tmp_path):
    """No data in the working directory: a stage that did any work would fail on missing
    inputs instead; the error must be the device's, naming the stage's own key."""
    from neural_codec.pipeline import baselines, compare, geometry, squeeze
    from neural_codec.sae import train_sae

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    runs = {
        "squeezer.device": lambda: squeeze.run({"squeezer": {"device": "cuda"}}),
        "baselines.device": lambda: baselines.run({"baselines": {"device": "cuda"}}),
        "compare.device": lambda: compare.run(CompareConfig(device="cuda")),
        "geometry.device": lambda: geometry.run(GeometryConfig(device="cuda"), SqueezerConfig()),
        "sae.device": lambda: train_sae(SAEConfig(device="cuda"), tmp_path / "missing"),
    }
    for key, call in runs.items():
        with pytest.raises(ParamError, match=f"{key} = 'cuda'"):
            call()


def test_autocast_is_validated_by_key(monkeypatch):
    with pytest.raises(ParamError, match="squeezer.autocast = 'fp16'"):
        SqueezerConfig(device="cpu", autocast="fp16")
    with pytest.raises(ParamError, match="squeezer.autocast = 'fp8'"):
        SqueezerConfig(autocast="fp8")  # type: ignore[arg-type]
    # auto on a machine without a GPU resolves to the CPU, where fp16 is refused before training
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamError, match="fp16 needs cuda"):
        train_squeezer(feats(), SqueezerConfig(M=4, steps=2, autocast="fp16"))


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32():
    f = feats(N=512)
    base = dict(M=8, steps=150, batch_size=128, lr=1e-2, device="cpu")
    _, c32 = train_squeezer(f, SqueezerConfig(**base))
    m16, c16 = train_squeezer(f, SqueezerConfig(**base, autocast="bf16"))
    assert m16.W_enc.dtype == torch.float32  # weights stay fp32; only the steps' matmuls are bf16
    assert np.isfinite(c16[-1]["loss"]) and c16[-1]["loss"] < 0.5 * c16[0]["loss"]
    assert c16[-1]["loss"] == pytest.approx(c32[-1]["loss"], rel=0.1)
    assert c16 != c32  # the autocast really ran in lower precision


@pytest.mark.parametrize("loss_sample", [0, 10])
def test_squeezer_trains_every_tensor_on_the_resolved_device(monkeypatch, loss_sample):
    """The issue's check: `device: cuda` moves every model and batch it should. With the device
    resolved to `meta`, the parameters, the importance weights, each minibatch, the loss (both
    exact and sampled paths, run for real) and the gradients after a step are all on it."""
    seen: list[dict] = []
    real_loss = train_mod.squeezer_loss

    def recorder(model, idx, val, weights, sample, gen, l1=0.0, penalty="l1_decnorm"):
        if seen:  # second step: the first one went through backward and the optimiser on meta
            seen[0]["grads"] = {p.grad.device for p in model.parameters() if p.grad is not None}
            raise Stop
        loss = real_loss(model, idx, val, weights, sample, gen, l1, penalty)
        seen.append(
            {
                "params": {p.device for p in model.parameters()},
                "batch": {idx.device, val.device},
                "weights": weights.device,
                "loss": loss.device,
            }
        )
        return loss

    monkeypatch.setattr(train_mod, "resolve_device", lambda name, key: META)
    monkeypatch.setattr(train_mod, "squeezer_loss", recorder)
    # fused AdamW has no meta kernel (it exists on cpu and cuda): the plain one on meta
    monkeypatch.setattr(train_mod, "make_optimizer", lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr))
    with pytest.raises(Stop):
        train_squeezer(feats(), SqueezerConfig(M=4, steps=100, batch_size=32, loss_sample=loss_sample))
    got = seen[0]
    assert got["params"] == {META} and got["batch"] == {META}
    assert got["weights"] == META and got["loss"] == META and got["grads"] == {META}


def test_model_neuron_readout_trains_on_the_resolved_device(monkeypatch):
    import neural_codec.baselines as bl

    seen: list[set] = []

    def recorder(h, W, b, idx, val, w, sample, gen):
        seen.append({t.device for t in (h, W, b, idx, val, w)})
        raise Stop

    f = feats()
    neurons = np.random.default_rng(0).normal(size=(len(f), 6)).astype(np.float32)
    monkeypatch.setattr(bl, "resolve_device", lambda name, key: META)
    monkeypatch.setattr(bl, "reconstruction_loss", recorder)
    with pytest.raises(Stop):
        fit_model_neurons(iter([(neurons[:128], f[:128])] * 3), f.n_features, BaselinesConfig(steps=3))
    assert seen == [{META}]


def test_sae_training_hands_the_device_to_saelens(monkeypatch, tmp_path):
    """SAELens' trainer takes its own `device` (it moves the SAE and every batch there)."""
    import sae_lens.training.sae_trainer as trainer

    from neural_codec import sae, storage

    class Recorder:
        def __init__(self, cfg, sae, data_provider):
            raise Stop(cfg.device)

    w = storage.ShardWriter(tmp_path / "train", 1024, d_model=8)
    w.append(resid=np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32))
    w.close()
    monkeypatch.setattr(trainer, "SAETrainer", Recorder)
    monkeypatch.setattr(sae, "resolve_device", lambda name, key: torch.device("cuda"))
    with pytest.raises(Stop) as err:
        sae.train_sae(SAEConfig(d_sae=16, k=2, training_samples=1024, batch_size=256), tmp_path / "train")
    assert err.value.args == ("cuda",)


def test_retrained_nulls_train_on_their_own_sections_device(monkeypatch):
    """compare's and geometry's retrained Squeezers take `compare.device` / `geometry.device`,
    not the device stored with the main Squeezer."""
    from neural_codec import nulls

    cfg = SqueezerConfig(device="cuda", seed=3)
    assert nulls.retrain_config(cfg, steps=5, device="cpu").device == "cpu"
    assert nulls.retrain_config(cfg, steps=5).device == "cuda"
    assert BaselinesConfig(device="cpu").decoder_config(8).device == "cpu"


def test_cpu_path_is_bit_identical_to_a_plain_loop():
    """device cpu (and auto without a GPU) changes no number: the curve and weights equal a
    hand-written CPU loop of the same steps (float losses summed as Python floats)."""
    from neural_codec.squeezer.loss import squeezer_loss
    from neural_codec.squeezer.model import Squeezer

    f = feats(N=300)
    cfg = SqueezerConfig(M=5, steps=60, batch_size=64, loss_sample=7, device="cpu")
    model, curve = train_squeezer(f, cfg, np.ones(f.n_features, np.float32))

    gen = torch.Generator().manual_seed(cfg.seed)
    ref = Squeezer(f.n_features, cfg.M, generator=gen)
    opt = train_mod.make_optimizer(list(ref.parameters()), cfg.lr, cfg.weight_decay)
    idx, val, w = torch.from_numpy(f.idx.astype(np.int64)), torch.from_numpy(f.val), torch.ones(f.n_features)
    batches, s, c, ref_curve = train_mod.minibatches(len(f), cfg.batch_size, gen), 0.0, 0, []
    for step in range(cfg.steps):
        rows = next(batches)
        loss = squeezer_loss(ref, idx[rows], val[rows], w, cfg.loss_sample, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        s, c = s + loss.item(), c + 1
        if (step + 1) % max(1, cfg.steps // 50) == 0:
            ref_curve.append({"step": step + 1, "loss": s / c})
            s, c = 0.0, 0
    assert curve == ref_curve
    assert torch.equal(model.W_enc, ref.W_enc) and torch.equal(model.W_dec, ref.W_dec)


def test_curve_logger_sums_tensors_as_floats():
    a, b = CurveLogger(10, points=5), CurveLogger(10, points=5)
    xs = np.random.default_rng(1).random(10).astype(np.float32)
    for i, x in enumerate(xs):
        assert a.add(i, torch.tensor(x)) == b.add(i, float(x))
    assert a.curve == b.curve and len(a.curve) == 5


def test_progress_is_quiet_without_a_terminal_or_in_ci(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    assert runtime.quiet()  # pytest captures stderr: not a terminal
    assert list(runtime.progress(range(3), "x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""

    class TTY:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stderr", TTY())
    assert not runtime.quiet()
    for on in ("true", "1"):
        monkeypatch.setenv("CI", on)
        assert runtime.quiet()
    monkeypatch.setenv("CI", "false")
    assert not runtime.quiet()


def test_saelens_trainer_bar_follows_quiet(monkeypatch):
    import sae_lens.training.sae_trainer as trainer

    original = trainer.tqdm
    monkeypatch.setenv("CI", "true")
    with runtime.library_bars(trainer):
        assert trainer.tqdm(range(2)).disable
    assert trainer.tqdm is original
    monkeypatch.setattr(runtime, "quiet", lambda: False)
    with runtime.library_bars(trainer):
        assert trainer.tqdm is original


def test_training_bar_shows_the_steps_and_the_current_loss(monkeypatch):
    """On a terminal the Squeezer's bar counts steps and shows the latest logged loss."""
    import functools
    import io

    err = io.StringIO()
    monkeypatch.setattr(runtime, "quiet", lambda: False)
    monkeypatch.setattr("sys.stderr", err)
    eager = functools.partial(runtime.progress, mininterval=0, miniters=1, leave=True)
    monkeypatch.setattr(train_mod, "progress", eager)
    _, curve = train_squeezer(
        feats(), SqueezerConfig(M=4, steps=20, batch_size=64, device="cpu"), desc="demo"
    )
    out = err.getvalue()
    assert "demo" in out and "20/20" in out and "step" in out
    assert f"loss={curve[-2]['loss']:.4g}" in out  # the postfix tracks the curve
