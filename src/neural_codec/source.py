"""The `source` params section: which features we decompress, and the stages of the decompress half.

`source.kind` selects the synthetic ground-truth source (the offline default) or a real language
model (`lm`, see `neural_codec.lm`). Only the selected kind's sub-section is validated, so a
synthetic run never needs the LM settings to make sense and vice versa.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.config import ActivationsConfig, SourceConfig, SyntheticConfig
from neural_codec.synthetic import (
    build_generator,
    load_toy_model,
    make_embedding,
    save_toy_model,
    toy_model_metrics,
    train_toy_model,
)

# ---------------------------------------------------------------------------------------------
# Stage `source` (synthetic)
# ---------------------------------------------------------------------------------------------


def build_synthetic_source(cfg: SourceConfig, out_dir: Path) -> dict[str, Any]:
    """Plant the true features, train the toy model (and a second seed), save truth and weights."""
    scfg: SyntheticConfig = cfg.synthetic
    gen, families = build_generator(scfg, cfg.seed)
    embedding = make_embedding(scfg, cfg.seed)
    model, curve = train_toy_model(scfg, gen, embedding, cfg.seed)
    model2, curve2 = train_toy_model(scfg, gen, embedding, cfg.seed + 1)
    save_toy_model(out_dir / "model.pt", model, scfg, cfg.seed)
    save_toy_model(out_dir / "model_seed2.pt", model2, scfg, cfg.seed + 1)
    storage.save_npz(
        out_dir / "truth.npz",
        directions=embedding.numpy(),
        firing_prob=gen.firing_probabilities.numpy(),
        importance=(scfg.importance_decay ** np.arange(scfg.n_features)).astype(np.float32),
    )
    storage.write_json(
        out_dir / "truth.json",
        {"n_true": scfg.n_features, "d_model": scfg.d_model, "n_neurons": scfg.n_neurons,
         "families": families},
    )  # fmt: skip
    torch.manual_seed(cfg.seed + 12345)
    m1, m2 = toy_model_metrics(model, gen), toy_model_metrics(model2, gen)
    metrics = {"kind": "synthetic", "n_true_features": scfg.n_features, "d_model": scfg.d_model,
               "n_neurons": scfg.n_neurons, "toy_model": m1, "toy_model_seed2": m2,
               "planted": {k: sum(f["kind"] == k for f in families)
                           for k in ("cyclic", "exclusive", "correlated")}}  # fmt: skip
    return {
        "metrics": metrics,
        "curve": [[c["step"], c["loss"], c2["loss"]] for c, c2 in zip(curve, curve2, strict=False)],
    }


# ---------------------------------------------------------------------------------------------
# Stage `activations` (synthetic)
# ---------------------------------------------------------------------------------------------


def extract_synthetic(
    src: SourceConfig, acfg: ActivationsConfig, source_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Sample true features, run both toy models, stream residual/neuron activations into shards."""
    scfg: SyntheticConfig = src.synthetic
    gen, _ = build_generator(scfg, src.seed)
    model = load_toy_model(source_dir / "model.pt")
    model2 = load_toy_model(source_dir / "model_seed2.pt")
    dtype = np.float16 if acfg.dtype == "float16" else np.float32
    stats: dict[str, Any] = {}
    for split_no, (split, n_rows) in enumerate([("train", acfg.n_train), ("heldout", acfg.n_heldout)]):
        torch.manual_seed(acfg.seed * 1000 + split_no)  # distinct, reproducible streams per split
        writer = storage.ShardWriter(
            out_dir / split, acfg.rows_per_shard, d_model=scfg.d_model, n_neurons=scfg.n_neurons,
            n_true=scfg.n_features, source="synthetic",
        )  # fmt: skip
        truncated = 0
        l0_sum = 0
        done = 0
        with torch.no_grad():
            while done < n_rows:
                b = min(acfg.batch_size, n_rows - done)
                f = gen.sample(b)
                x = model.resid(f)
                if scfg.resid_noise > 0:
                    x = x + scfg.resid_noise * torch.randn_like(x)
                l0 = (f > 0).sum(1)
                truncated += int((l0 > acfg.true_top_k).sum())
                l0_sum += int(l0.sum())
                true = storage.SparseFeatures.from_dense(f.numpy(), acfg.true_top_k)
                writer.append(
                    resid=x.numpy().astype(dtype),
                    neurons=model.neurons(x).numpy().astype(dtype),
                    neurons_seed2=model2.neurons(x).numpy().astype(dtype),
                    true_idx=true.idx,
                    true_val=true.val,
                )
                done += b
        writer.close()
        stats[split] = {"rows": n_rows, "mean_true_l0": l0_sum / n_rows,
                        "rows_truncated_true_top_k": truncated}  # fmt: skip
    np.save(out_dir / "neuron_readin.npy", model.W_in.detach().numpy())
    return stats
