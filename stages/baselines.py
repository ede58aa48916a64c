"""Stage `baselines`: the Squeezer's baselines on the same data, the same M and the same metrics.

(a) pca: the linear optimum; (b) no_superposition: the M most important features get a neuron
each; (c) random_encoder: a fixed random encoder with a trained decoder; (d) model_neurons: a
ReLU readout from the original model's neurons to F (see neural_codec.baselines).
M, importance, init and bias_init come from the `squeezer` section, so a sweep over squeezer.M moves the
baselines with it; the decoders' training params come from `baselines`.
Writes metrics/baselines.json ({method: metrics with the keys of metrics/squeeze.json}) and
plots/baselines/fvu.csv (method,fvu).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neural_codec import storage
from neural_codec.baselines import disk_batches, run_baselines
from neural_codec.config import BaselinesConfig, SqueezerConfig
from neural_codec.errors import ParamError
from neural_codec.params import from_dict, load_params
from neural_codec.squeezer import (
    check_upstream,
    eval_batch_size,
    iter_eval_batches,
    load_sae_decoder,
    resolve_importance,
)

FEATURES = Path("data/features")
ACTIVATIONS = Path("data/activations")
SAE_DIR = Path("data/sae")
METRICS = Path("metrics/baselines.json")
FVU_CSV = Path("plots/baselines/fvu.csv")


def main() -> int:
    params = load_params()
    cfg = from_dict(BaselinesConfig, params.get("baselines"), "baselines")
    sq = from_dict(SqueezerConfig, params.get("squeezer"), "squeezer")
    neurons = "model_neurons" in cfg.methods
    info = check_upstream(params, sq, FEATURES, ACTIVATIONS, SAE_DIR, need_train_activations=neurons)
    n = info["n_features"]
    if neurons:
        for split in ("train", "heldout"):
            with np.load(storage.shard_paths(ACTIVATIONS / split)[0]) as z:
                if "neurons" not in z.files:
                    raise ParamError(
                        f"{ACTIVATIONS / split} has no 'neurons' array: drop model_neurons from baselines.methods"
                    )
    sae_decode = load_sae_decoder(SAE_DIR)
    if sae_decode.n_features != n:
        raise ParamError(
            f"{SAE_DIR} has {sae_decode.n_features} latents but the features have {n}: re-run features"
        )
    weights = resolve_importance(sq, n, info["firing_freq"])
    train = storage.load_sparse(FEATURES / "train")
    bs = eval_batch_size(n)

    def eval_batches(with_neurons: bool):
        keys = ("resid", "neurons") if with_neurons else ("resid",)
        return iter_eval_batches(FEATURES / "heldout", ACTIVATIONS / "heldout", bs, keys)

    results = run_baselines(
        cfg.methods,
        train,
        sq.M,
        cfg,
        eval_batches,
        weights,
        neuron_batches=lambda: disk_batches(
            str(ACTIVATIONS / "train"), str(FEATURES / "train"), cfg.batch_size, cfg.seed
        ),
        sae_decode=sae_decode,
        init=sq.init,
        bias_init=sq.bias_init,
    )
    storage.write_json(METRICS, results)
    storage.write_csv(FVU_CSV, ["method", "fvu"], [[m, r["fvu"]] for m, r in results.items()])
    for m, r in results.items():
        print(f"[baselines] {m}: M={r['M']} fvu={r['fvu']:.4f} recovery={r['recovery_mean']:.3f}")
    return 0


if __name__ == "__main__":
    from neural_codec.stage import run

    run("baselines", main)
