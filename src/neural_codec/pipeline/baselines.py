"""Stage `baselines`: the Squeezer's baselines on the same data, the same M and the same metrics.

(a) pca: the linear optimum; (b) no_superposition: the M most important features get a neuron
each; (c) random_encoder: a fixed random encoder with a trained decoder; (d) model_neurons: a
ReLU readout from the original model's neurons to F (see `neural_codec.baselines`). M,
importance, init and bias_init come from the `squeezer` section, so a sweep over squeezer.M
moves the baselines with it; the decoders' training params come from `baselines`. The trained
decoders' loss curves go to plots/baselines/curves (one dvclive TSV per `TRAINED_METHODS` entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neural_codec import paths, storage
from neural_codec.baselines import TRAINED_METHODS, disk_batches, run_baselines
from neural_codec.codec import eval_batch_size, iter_eval_batches
from neural_codec.config import BaselinesConfig, SqueezerConfig
from neural_codec.curves import write_curves
from neural_codec.errors import ParamError
from neural_codec.params import from_dict
from neural_codec.runtime import resolve_device
from neural_codec.sae import load_sae_decoder
from neural_codec.squeezer.inputs import check_upstream
from neural_codec.squeezer.model import resolve_importance
from neural_codec.squeezer.stream import open_train


@dataclass
class BaselinesRun:
    metrics: dict[str, dict[str, Any]]  # {method: codec metrics}
    timings: dict[str, dict[str, float]]  # {method: fit seconds, samples/s}
    curves: dict[str, list[dict[str, float]]]  # {trained method: loss curve}


def run(params: dict[str, Any]) -> BaselinesRun:
    cfg = from_dict(BaselinesConfig, params.get("baselines"), "baselines")
    sq = from_dict(SqueezerConfig, params.get("squeezer"), "squeezer")
    resolve_device(cfg.device, "baselines.device")  # a missing GPU fails here, before work
    features, activations = paths.FEATURES, paths.ACTIVATIONS
    neurons = "model_neurons" in cfg.methods
    info = check_upstream(params, sq, features, activations, paths.SAE, need_train_activations=neurons)
    n = info["n_features"]
    if neurons:
        for split in ("train", "heldout"):
            with np.load(storage.shard_paths(activations / split)[0]) as z:
                if "neurons" not in z.files:
                    raise ParamError(
                        f"{activations / split} has no 'neurons' array: drop model_neurons from baselines.methods"
                    )
    sae_decode = load_sae_decoder(paths.SAE)
    if sae_decode.n_features != n:
        raise ParamError(
            f"{paths.SAE} has {sae_decode.n_features} latents but the features have {n}: re-run features"
        )
    weights = resolve_importance(sq, n, info["firing_freq"])
    train = open_train(features / "train", cfg.buffer_rows)  # in memory if it fits, else shards
    bs = eval_batch_size(n)

    def eval_batches(with_neurons: bool):
        keys = ("resid", "neurons") if with_neurons else ("resid",)
        return iter_eval_batches(features / "heldout", activations / "heldout", bs, keys)

    metrics, timings, curves = run_baselines(
        cfg.methods,
        train,
        sq.M,
        cfg,
        eval_batches,
        weights,
        neuron_batches=lambda: disk_batches(
            str(activations / "train"), str(features / "train"), cfg.batch_size, cfg.seed
        ),
        sae_decode=sae_decode,
        init=sq.init,
        bias_init=sq.bias_init,
    )
    return BaselinesRun(metrics, timings, curves)


def write(r: BaselinesRun) -> None:
    storage.write_json(paths.metrics_file("baselines"), r.metrics)
    fvu = [[m, res["fvu"]] for m, res in r.metrics.items()]
    storage.write_csv(paths.plot_dir("baselines") / "fvu.csv", ["method", "fvu"], fvu)
    # every trained method's file always (declared DVC plots): header-only when not in methods
    write_curves(paths.curve_dir("baselines"), {m: r.curves.get(m, []) for m in TRAINED_METHODS})


def summary(r: BaselinesRun) -> str:
    return "\n".join(
        f"[baselines] {m}: M={res['M']} fvu={res['fvu']:.4f} recovery={res['recovery_mean']:.3f}"
        for m, res in r.metrics.items()
    )
