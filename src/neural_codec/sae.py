"""SAEs: the one SAELens loader (a local folder or the pretrained registry), training on the
cached activations, quality on held-out activations, and recovery of a synthetic ground truth.

Training uses SAELens's own `SAETrainer` fed by a streaming iterator over the activation shards
(memory bounded by a batch); a subclass of it records the loss, MSE and L0 per step
(`curves.CurveLoggers`, no wandb). The result is saved in SAELens's inference format so that
`SAE.load_from_disk(path)` loads it. On the synthetic source the SAE is also scored against the
truth: per true feature the best cosine with an SAE decoder row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.config import SAEConfig
from neural_codec.curves import CurveLoggers
from neural_codec.errors import (
    OFFLINE_SAES,
    RESTORE,
    LMUnavailable,
    ParamError,
    check,
    data_error,
    first_line,
)
from neural_codec.runtime import library_bars, resolve_device


def _training_sae(cfg: SAEConfig, d_in: int):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    torch.manual_seed(cfg.seed)
    if cfg.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k))
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k))
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, l0_coefficient=cfg.l1_coefficient)
        )
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, l1_coefficient=cfg.l1_coefficient)
    )


def _cycle_batches(directory: Path, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless stream of `resid` batches: shards in a seeded order, rows shuffled within a shard."""
    rng = np.random.default_rng(seed)
    paths = storage.shard_paths(directory)
    while True:
        for p in rng.permutation(len(paths)):
            x = storage.load_shard(paths[p], ["resid"])["resid"].astype(np.float32)
            x = x[rng.permutation(len(x))]
            for i in range(0, len(x) - batch_size + 1, batch_size):
                yield torch.from_numpy(x[i : i + batch_size])


#: the SAE stage's curves (SAE and transcoder alike): total loss, reconstruction MSE
#: (squared error summed over dims, mean over rows) and L0, each averaged per logging interval
SAE_CURVES = ("loss", "mse", "l0")


def _l0(feature_acts: torch.Tensor) -> torch.Tensor:
    """Mean number of firing latents per row (as SAELens logs `metrics/l0`)."""
    return feature_acts.bool().float().sum(-1).to_dense().mean()


def _curve_trainer(base: type, log: CurveLoggers) -> type:
    """`base` (SAELens' SAETrainer, looked up at call time) whose `step` also adds the step's
    loss, MSE and L0 to `log`, read under no_grad after the optimiser step."""

    class CurveTrainer(base):  # type: ignore[misc,valid-type]
        def step(self, batch: torch.Tensor) -> Any:
            out = super().step(batch)
            with torch.no_grad():
                l0 = _l0(out.feature_acts)
                log.add(self.n_training_steps, loss=out.loss, mse=out.losses["mse_loss"], l0=l0)
            return out

    return CurveTrainer


def train_sae(cfg: SAEConfig, train_dir: Path) -> tuple[Any, dict[str, list[dict[str, float]]]]:
    """Train with SAELens's SAETrainer on the cached residual activations; returns (SAE, curves).

    SAETrainer has no callback and logs only to wandb (`fit` calls `_log_train_step` under
    `logger.log_to_wandb`), but `step(batch)` is its public per-step seam returning the
    `TrainStepOutput` (loss, losses["mse_loss"], feature_acts): the subclass below reads those
    under no_grad after the optimiser step, so the trained weights are unchanged."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training import sae_trainer

    device = str(resolve_device(cfg.device, "sae.device"))  # a missing GPU fails here, before work
    d_in = int(storage.read_meta(train_dir)["d_model"])
    sae = _training_sae(cfg, d_in)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_samples,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=cfg.training_samples // cfg.batch_size // 5,
        device=device,  # SAELens moves the SAE and each batch there
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
    )
    rows = int(storage.read_meta(train_dir)["n_rows"])
    # every shard readable and finite before any training: a NaN would train a NaN SAE silently
    storage.check_shards(train_dir, ["resid"])
    check(rows >= cfg.batch_size, "sae.batch_size", cfg.batch_size,
          f"<= the number of training rows ({rows})")  # fmt: skip
    n_steps = -(-cfg.training_samples // cfg.batch_size)  # fit() runs until the samples are seen
    log = CurveLoggers(SAE_CURVES, n_steps)

    torch.manual_seed(cfg.seed)
    trainer = _curve_trainer(sae_trainer.SAETrainer, log)(
        cfg=trainer_cfg, sae=sae, data_provider=_cycle_batches(train_dir, cfg.batch_size, cfg.seed)
    )
    with library_bars(sae_trainer):  # its bar, silent in DVC's and CI's logs
        sae = trainer.fit()
    return (sae if device == "cpu" else sae.to("cpu")), log.curves  # saved and scored on the CPU


def train_transcoder(
    cfg: SAEConfig, train_dir: Path, mlp_out, metadata: dict[str, Any] | None = None
) -> tuple[Any, dict[str, list[dict[str, float]]]]:
    """A SAELens `Transcoder` (resid -> MLP output; ReLU latents) trained by a short Adam loop on
    MSE + l1_coefficient * L1(latents * ||W_dec row||): SAELens 6 can load and run transcoders
    but its SAETrainer trains only SAEs, so the loop optimises the SAELens module's parameters.
    `metadata` (lm: the hooks it reads and writes) goes into its SAELens config.
    Returns (transcoder, curves): `SAE_CURVES`, ~50 points."""
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = storage.read_meta(train_dir)
    storage.check_shards(train_dir, ["resid", "neurons"])
    rows = int(meta["n_rows"])
    check(rows >= cfg.batch_size, "sae.batch_size", cfg.batch_size,
          f"<= the number of training rows ({rows})")  # fmt: skip
    first = next(storage.iter_batches(train_dir, 2, ["neurons"]))["neurons"].astype(np.float32)
    d_out = int(mlp_out(torch.from_numpy(first)).shape[1])
    torch.manual_seed(cfg.seed)
    tc_cfg = TranscoderConfig(
        d_in=int(meta["d_model"]), d_sae=cfg.d_sae, d_out=d_out, apply_b_dec_to_input=False
    )
    if metadata:
        tc_cfg.metadata = SAEMetadata(**metadata)
    tc = Transcoder(tc_cfg)
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr)
    steps = cfg.training_samples // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=cfg.lr / 10)
    rng = np.random.default_rng(cfg.seed)
    paths = storage.shard_paths(train_dir)
    log = CurveLoggers(SAE_CURVES, steps)
    step = 0
    while step < steps:
        for p in rng.permutation(len(paths)):
            sh = storage.load_shard(paths[p], ["resid", "neurons"])
            order = rng.permutation(len(sh["resid"]))
            x_all = torch.from_numpy(sh["resid"].astype(np.float32)[order])
            y_all = mlp_out(torch.from_numpy(sh["neurons"].astype(np.float32)[order]))
            for i in range(0, len(x_all) - cfg.batch_size + 1, cfg.batch_size):
                x, y = x_all[i : i + cfg.batch_size], y_all[i : i + cfg.batch_size]
                f = tc.encode(x)
                mse = ((tc.decode(f) - y) ** 2).sum(1).mean()
                loss = mse + cfg.l1_coefficient * (f * tc.W_dec.norm(dim=1)).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    log.add(step, loss=loss, mse=mse, l0=_l0(f))
                step += 1
                if step >= steps:
                    return tc.eval(), log.curves
    return tc.eval(), log.curves


def held_out_fit(
    rows: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], d_sae: int, where: str | Path
) -> dict[str, float]:
    """Streamed over (target, latents, reconstruction) batches: L0, the explained variance of the
    target (1 - FVU), the zero predictor's, and the dead-latent fraction. One accumulator for the
    SAE (target = its input) and the transcoder (target = the MLP output)."""
    fired = torch.zeros(d_sae, dtype=torch.bool)
    l0_sum = sse = sq_sum = 0.0
    y_sum = None
    n = 0
    for y, f, y_hat in rows:
        fired |= (f > 0).any(0).cpu()
        l0_sum += float((f > 0).sum())
        sse += float(((y - y_hat) ** 2).sum())
        sq_sum += float((y**2).sum())
        y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
        n += len(y)
    assert y_sum is not None, f"no activations in {where}"
    total_var = sq_sum - float((y_sum**2).sum()) / n
    return {
        "l0": l0_sum / n,
        "explained_variance": 1 - sse / total_var,
        "fvu": sse / total_var,
        "zero_predictor_explained_variance": 1 - sq_sum / total_var,
        "dead_latent_fraction": float((~fired).float().mean()),
    }


@torch.no_grad()
def transcoder_quality(tc: Any, heldout_dir: str | Path, mlp_out, batch_size: int = 4096) -> dict[str, float]:
    """L0, dead fraction and the explained variance of the MLP output (1 - FVU) on held-out rows,
    beside the zero predictor's (the mean predictor's is 0 by definition)."""

    def rows() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in storage.iter_batches(heldout_dir, batch_size, ["resid", "neurons"]):
            f = tc.encode(torch.from_numpy(b["resid"].astype(np.float32)))
            yield mlp_out(torch.from_numpy(b["neurons"].astype(np.float32))), f, tc.decode(f)

    fit = held_out_fit(rows(), tc.cfg.d_sae, heldout_dir)
    return {
        "l0": fit["l0"],
        "explained_variance": fit["explained_variance"],
        "fvu": fit["fvu"],
        "zero_predictor_explained_variance": fit["zero_predictor_explained_variance"],
        "dead_latent_fraction": fit["dead_latent_fraction"],
        "d_sae": tc.cfg.d_sae,
    }


def load_sae(
    path: str | Path | None = None,
    device: str = "cpu",
    *,
    release: str | None = None,
    sae_id: str | None = None,
) -> Any:
    """A SAELens SAE: from a local SAELens folder (`SAE.load_from_disk`, the one place it is
    called), or else from the pretrained registry (release, sae_id)."""
    from sae_lens import SAE

    if path is not None:
        path = Path(path)
        if not (path / "cfg.json").exists():
            raise LMUnavailable(
                f"{path} is not a SAELens SAE folder (no cfg.json); write one with sae.save_model(path), "
                f"or for {path} made by the sae stage: {RESTORE}"
            )
        storage.read_json(path / "cfg.json")  # a corrupt cfg.json: one line naming it
        try:
            return SAE.load_from_disk(str(path), device=device)
        except Exception as err:
            raise data_error(path, f"not a loadable SAELens SAE ({first_line(err)})") from None
    if not (release and sae_id):
        raise ParamError(
            "params.yaml: sae.pretrained_release / sae.pretrained_sae_id = "
            f"{release!r} / {sae_id!r} is not allowed; expected both set, or sae.path set"
        )
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release in directory and sae_id not in directory[release].saes_map:
        ids = list(directory[release].saes_map)
        raise ParamError(
            f"params.yaml: sae.pretrained_sae_id = {sae_id!r} is not allowed; expected one of "
            f"{', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''} (release {release})"
        )
    if release not in directory and "/" not in release:
        raise ParamError(
            f"params.yaml: sae.pretrained_release = {release!r} is not allowed; expected a release "
            "of the SAELens registry (e.g. gpt2-small-res-jb) or a Hugging Face repo id"
        )
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:
        raise LMUnavailable(
            f"cannot load SAE {release}/{sae_id} from the Hugging Face hub ({first_line(err)}); "
            f"offline alternatives: {OFFLINE_SAES}"
        ) from err


@torch.no_grad()
def sae_quality(sae: Any, heldout_dir: str | Path, batch_size: int = 4096) -> dict[str, float]:
    """L0, explained variance and dead-latent fraction on the held-out activations (streamed)."""

    def rows() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in storage.iter_batches(heldout_dir, batch_size, ["resid"]):
            x = torch.from_numpy(b["resid"].astype(np.float32)).to(sae.device)
            f = sae.encode(x)
            yield x, f, sae.decode(f)

    d_sae = sae.cfg.d_sae
    fit = held_out_fit(rows(), d_sae, heldout_dir)
    return {
        "l0": fit["l0"],
        "explained_variance": fit["explained_variance"],
        "dead_latent_fraction": fit["dead_latent_fraction"],
        "d_sae": d_sae,
    }


@torch.no_grad()
def synthetic_sae_metrics(
    sae: Any, heldout_dir: str | Path, directions: np.ndarray, batch_size: int = 4096
) -> dict[str, Any]:
    """SAELens' synthetic-data metrics (`sae_lens.synthetic.evals`, as `eval_sae_on_synthetic_data`
    computes them) on the held-out rows and their true features:

    - f1 / precision / recall: each latent as a detector of its best-matching (by decoder
      cosine) true feature, averaged over *all* latents (filler latents that fire on the wrong
      rows pull it down), and `f1_matched` over the latents that are some true feature's best match;
    - uniqueness: the fraction of latents tracking a distinct true feature (1 = all unique);
    - mcc: mean correlation coefficient between decoder rows and true directions;
    - shrinkage: mean ||x_hat|| / ||x|| (1 = none; < 1 = the SAE shrinks its reconstructions).
    """
    from sae_lens.synthetic.evals import (
        ClassificationMetricsCalculator,
        ShrinkageCalculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    W = sae.W_dec.detach().float().cpu()
    gt = torch.from_numpy(np.asarray(directions, dtype=np.float32))
    cls = ClassificationMetricsCalculator(W, gt)
    shrink = ShrinkageCalculator()
    n_true = gt.shape[0]
    for b in storage.iter_batches(heldout_dir, batch_size, ["resid", "true_idx", "true_val"]):
        x = torch.from_numpy(b["resid"].astype(np.float32)).to(sae.device)
        lat = sae.encode(x)
        shrink.add_batch(sae.decode(lat).cpu(), x.cpu())
        dense = torch.zeros(len(x), n_true)
        idx = torch.from_numpy(b["true_idx"].astype(np.int64))
        dense.scatter_add_(1, idx, torch.from_numpy(b["true_val"].astype(np.float32)))
        cls.add_batch(lat.cpu(), dense)
    tp, fp, fn = cls.tp, cls.fp, cls.fn
    prec = tp / (tp + fp).clamp(min=1)
    rec = tp / (tp + fn).clamp(min=1)
    f1 = 2 * prec * rec / (prec + rec).clamp(min=1e-12)
    cos = torch.nn.functional.normalize(gt, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    matched = torch.zeros(W.shape[0], dtype=torch.bool)
    matched[cos.argmax(1)] = True
    return {
        "f1": float(f1.mean()),
        "precision": float(prec.mean()),
        "recall": float(rec.mean()),
        "f1_matched": float(f1[matched].mean()),
        "n_matched_latents": int(matched.sum()),
        "uniqueness": float(feature_uniqueness(W, gt)),
        "mcc": float(mean_correlation_coefficient(W, gt)),
        "shrinkage": float(shrink.compute()),
    }


def resid_directions(sae: Any) -> torch.Tensor:
    """(d_sae, d_in) each latent's direction in the residual stream: an SAE's decoder rows; a
    transcoder's encoder columns (its decoder writes the MLP output, another space)."""
    from sae_lens import Transcoder

    W = sae.W_enc.T if isinstance(sae, Transcoder) else sae.W_dec
    return W.detach().float().cpu()


def ground_truth_recovery(sae, directions: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per true feature, the best cosine between its direction and any latent's residual
    direction (`resid_directions`)."""
    W = resid_directions(sae).numpy()
    W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    D = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    cos = D @ W.T  # (n_true, d_sae)
    best_latent = cos.argmax(1)
    best_cos = cos.max(1)
    return {
        "mean_best_cosine": float(best_cos.mean()),
        "frac_recovered": float((best_cos >= threshold).mean()),
        "threshold": threshold,
        "best_latent": best_latent,
        "best_cosine": best_cos,
    }


def families_in_latent_space(families: list[dict[str, Any]], best_latent: np.ndarray,
                             best_cos: np.ndarray, threshold: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Map each planted family's true members to their best-matching SAE latents. With
    `threshold` (sae.recovery_threshold), `recovered` says per member whether its latent is a
    recovery (best cosine >= threshold): an unrecovered member's "best" latent is some other
    feature's (a tiny run mapped January onto Thursday's latent and April and May onto one),
    which the circle statistics must leave out (`geometry.circle_family`)."""
    out = []
    for fam in families:
        true_members = fam["members"]
        entry = {
            "name": fam["name"], "kind": fam["kind"],
            "members": [int(best_latent[m]) for m in true_members],
            "true_members": true_members, "labels": fam.get("labels", []),
            "cosines": [float(best_cos[m]) for m in true_members],
        }  # fmt: skip
        if threshold is not None:
            entry["recovered"] = [bool(best_cos[m] >= threshold) for m in true_members]
        out.append(entry)
    return out


def latent_labels(families: list[dict[str, Any]], best_latent: np.ndarray, best_cos: np.ndarray,
                  d_sae: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per latent: the true feature it matches best (if any) and its family label."""
    label_of = {}
    for fam in families:
        for m, lab in zip(fam["members"], fam.get("labels", []), strict=False):
            label_of[m] = lab
    labels = [{"latent": i, "label": None, "true_feature": None, "cosine": 0.0} for i in range(d_sae)]
    for t, (lat, c) in enumerate(zip(best_latent, best_cos, strict=False)):
        entry = labels[int(lat)]
        if c > entry["cosine"]:
            entry.update(true_feature=t, cosine=float(c), label=label_of.get(t, f"true{t}"))
    return labels


class SAEDecoder:
    """The SAE's decoder as a function of features, F W_dec + b_dec (SAELens `SAE.decode`), with
    the SAE's width: what the codec metrics use to score reconstructions in activation space."""

    def __init__(self, sae: Any):
        self.sae = sae.eval()
        self.W_dec = sae.W_dec.detach()
        self.n_features = int(sae.W_dec.shape[0])
        self.writes_resid = sae.cfg.architecture() != "transcoder"  # else it writes the MLP output

    @torch.no_grad()
    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(f.to(self.W_dec.dtype))


def load_sae_decoder(sae_dir: str | Path) -> SAEDecoder:
    """The decoder of the SAELens SAE saved in `sae_dir`."""
    return SAEDecoder(load_sae(sae_dir))
