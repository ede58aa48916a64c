"""Stage `sae` for either kind of source: get the SAE (trained, or a pretrained one re-saved in
SAELens format) and score it (synthetic: against the ground truth; lm: its CE-loss score).

Latent labels and families are the `labels` stage's (`pipeline.labels`), so that editing the
labeller re-runs neither the SAE nor the features. Kept apart from `sae` so that the `features`
stage, which only loads the SAE, does not depend on the scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.analysis.stats import bootstrap_interval
from neural_codec.config import NEURON_HOOK_RE, SAEConfig, SourceConfig, hook_layer
from neural_codec.errors import check, data_error
from neural_codec.sae import (
    SAE_CURVES,
    ground_truth_recovery,
    load_sae,
    sae_quality,
    synthetic_sae_metrics,
    train_sae,
    train_transcoder,
    transcoder_quality,
)
from neural_codec.source.lm.ce import sae_faithfulness
from neural_codec.source.synthetic import load_toy_model

Curves = dict[str, list[dict[str, float]]]


def build_sae(
    src: SourceConfig, cfg: SAEConfig, activations_dir: Path, source_dir: Path, out_dir: Path
) -> tuple[dict[str, Any], list[list[Any]], Curves]:
    """(metrics for metrics/sae.json, rows of the recovery histogram: header-only for lm, the
    training curves `SAE_CURVES`: empty for a pretrained SAE, which trains nothing here)."""
    if cfg.kind == "transcoder":
        return _build_transcoder(src, cfg, activations_dir, source_dir, out_dir)
    curves: Curves = {name: [] for name in SAE_CURVES}
    if cfg.pretrained:  # lm: a SAELens registry SAE or a folder, re-saved in SAELens format
        load_sae(cfg.path, release=cfg.pretrained_release, sae_id=cfg.pretrained_sae_id).save_model(out_dir)
    else:
        trained, curves = train_sae(cfg, activations_dir / "train")
        trained.save_inference_model(out_dir)
    storage.write_json_sorted(out_dir / "cfg.json")  # SAELens' key order varies between runs
    sae = load_sae(out_dir)  # what downstream stages will see
    # the loaded SAE's own architecture (a pretrained SAE need not be the sae.architecture param)
    metrics: dict[str, Any] = {
        "architecture": sae.cfg.architecture(),
        **sae_quality(sae, activations_dir / "heldout"),
    }
    if src.kind != "synthetic":  # lm: the CE-loss score (an encoder's: the hidden-state score)
        metrics["lm"] = sae_faithfulness(sae, src.lm, activations_dir)
        return metrics, [], curves
    truth = np.load(source_dir / "truth.npz")
    rec = ground_truth_recovery(sae, truth["directions"], cfg.recovery_threshold)
    metrics["ground_truth"] = {k: rec[k] for k in ("mean_best_cosine", "frac_recovered", "threshold")}
    # one SAE: a bootstrap over the true features (percentile, 1000 resamples)
    best = np.asarray(rec["best_cosine"], dtype=np.float64)
    metrics["ground_truth"]["frac_recovered_interval"] = bootstrap_interval(best >= rec["threshold"])
    metrics["ground_truth"]["mean_best_cosine_interval"] = bootstrap_interval(best)
    # SAELens' synthetic metrics: F1 over all latents shows filler latents the cosines hide
    metrics["synthetic"] = synthetic_sae_metrics(sae, activations_dir / "heldout", truth["directions"])
    hist = np.histogram(rec["best_cosine"], bins=20, range=(0, 1))[0]
    return metrics, [[round(0.025 + 0.05 * i, 3), int(c)] for i, c in enumerate(hist)], curves


def synthetic_mlp_out(source_dir: Path):
    """The toy model's MLP output as a function of its stored neurons: h W_out + b_out (the
    neuron layer's output before the read-out ReLU, the synthetic `hook_mlp_out`). Computed from
    the `neurons` the shards already hold, so the activation shards stay unchanged."""
    model = load_toy_model(source_dir / "model.pt")
    W, b = model.W_out.detach().float(), model.b_out.detach().float()
    return lambda h: h @ W + b


def lm_mlp_out(activations_dir: Path):
    """An lm's MLP output as a function of its stored neurons: hook_post W_out + b_out of the
    neuron layer (`extract.neuron_readout`), which is the model's `blocks.L.hook_mlp_out` exactly
    (SwiGLU and BERT MLPs included). Only `blocks.L.mlp.hook_post` neurons have that map."""
    meta = storage.read_meta(activations_dir / "train")
    hook = str(meta.get("neuron_hook"))
    check(bool(NEURON_HOOK_RE.match(hook)), "source.lm.neuron_hook", hook,
          "blocks.L.mlp.hook_post for sae.kind transcoder (its target is hook_post W_out + b_out)")  # fmt: skip
    path = activations_dir / "neuron_readout.npz"
    if not path.exists():
        raise data_error(path, "missing (activations extracted before lm transcoders)",
                         "re-run `dvc repro -f activations`")  # fmt: skip
    with np.load(path, allow_pickle=False) as z:
        W, b = (torch.from_numpy(z[k].astype(np.float32)) for k in ("W_out", "b_out"))
    for k, arr in (("W_out", W), ("b_out", b)):
        storage.check_finite(arr.numpy(), path, k)
    if W.shape[0] != meta["n_neurons"] or b.shape != (W.shape[1],):
        raise data_error(path, f"W_out {tuple(W.shape)} / b_out {tuple(b.shape)} do not fit "
                         f"{meta['n_neurons']} neurons", "re-run `dvc repro -f activations`")  # fmt: skip
    return lambda h: h @ W + b


def lm_transcoder_hooks(activations_dir: Path) -> dict[str, str]:
    """The hooks an lm transcoder reads and writes (SAELens metadata `hook_name`, `hook_name_out`),
    after checking that it reads something the forward pass computes before the MLP output."""
    meta = storage.read_meta(activations_dir / "train")
    layer = int(NEURON_HOOK_RE.match(meta["neuron_hook"]).group(1))  # type: ignore[union-attr]
    out = f"blocks.{layer}.hook_mlp_out"
    hook = str(meta["sae_hook"])
    at = hook_layer(hook)
    check(at is None or at < layer or (at == layer and hook not in (out, f"blocks.{layer}.hook_resid_post")),
          "source.lm.sae_hook", hook,
          f"a hook before {out} for sae.kind transcoder (e.g. blocks.{layer}.ln2.hook_normalized)")  # fmt: skip
    return {"hook_name": hook, "hook_name_out": out}


def _build_transcoder(
    src: SourceConfig, cfg: SAEConfig, activations_dir: Path, source_dir: Path, out_dir: Path
) -> tuple[dict[str, Any], list[list[Any]], Curves]:
    """A transcoder (resid -> MLP output) saved as a SAELens folder; scored by its explained
    variance of the MLP output (lm: also by the CE loss with it spliced in for the MLP).
    Ground-truth recovery is an SAE's (decoder rows in resid space): not computed for a
    transcoder, whose decoder writes the MLP output."""
    if src.kind == "synthetic":
        mlp_out, metadata = synthetic_mlp_out(source_dir), None
    else:
        mlp_out, metadata = lm_mlp_out(activations_dir), lm_transcoder_hooks(activations_dir)
    trained, curves = train_transcoder(cfg, activations_dir / "train", mlp_out, metadata)
    trained.save_model(out_dir)
    storage.write_json_sorted(out_dir / "cfg.json")
    tc = load_sae(out_dir)
    metrics: dict[str, Any] = {
        "architecture": tc.cfg.architecture(),
        **transcoder_quality(tc, activations_dir / "heldout", mlp_out),
    }
    if src.kind != "synthetic":
        metrics["lm"] = sae_faithfulness(tc, src.lm, activations_dir)
    return metrics, [], curves
