"""The synthetic ground-truth source: known sparse features through a toy transformer-like layer.

Why: every later stage can be checked against known answers. True features have Zipfian firing
probabilities (SAELens `zipfian_firing_probabilities`), planted mutually exclusive families
(SAELens `HierarchyNode` with `mutually_exclusive_children`), correlated pairs (SAELens's Gaussian
copula via a correlation matrix) and cyclic families ("weekdays", "months"). A cyclic family holds
one latent phase per sample: the two members nearest the phase fire, weighted by proximity, so
neighbours co-occur and nothing else in the family does (the structure a circle encodes).

The features are embedded linearly into a `d_model`-dim "residual stream" by a SAELens
`FeatureDictionary` (a superposition with no privileged basis; this is what the SAE reads), then
pass through `n_neurons` ReLU neurons (the "original model's neurons", a privileged basis) trained
to reconstruct the features with importance weighting, as in Toy Models of Superposition.

`source.synthetic.model` picks the original model: "toy" (above; it sits in a near-linear regime,
most neurons on, so it is no codec of the features: a negative case) or "codec", the planted
positive control: the same layer, started as the Squeezer starts (a xavier-normal encoder in
*feature* space, `W_in = pinv(E) A`, exact since d_model >= n_features, and an untied decoder at
the same start) and trained on the same importance-weighted objective with more features than
neurons, so its neurons engage their ReLU and pack features in superposition (`codec_init`).

`build_synthetic_source` (stage `source`) plants the features and trains the toy model and a
second seed; `extract_synthetic` (stage `activations`) streams their activations into shards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens.synthetic import (
    ActivationGenerator,
    FeatureDictionary,
    HierarchyNode,
    create_correlation_matrix_from_correlations,
    hierarchy_modifier,
    orthogonal_initializer,
    zipfian_firing_probabilities,
)
from torch import nn

from neural_codec import storage
from neural_codec.config import ActivationsConfig, SourceConfig, SyntheticConfig
from neural_codec.penalties import decoder_norm_l1, encoder_l1
from neural_codec.runtime import progress

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Ground truth: which feature belongs to which family
# ---------------------------------------------------------------------------------------------


def plant_families(cfg: SyntheticConfig) -> list[dict[str, Any]]:
    """Assign feature indices to planted families: cyclic first, then exclusive, then pairs.

    Returns families in the `truth.json` format (members in cyclic order for cyclic families).
    The rest of the features are independent.
    """
    families: list[dict[str, Any]] = []
    nxt = 0
    for size in cfg.cyclic_families:
        names = {7: WEEKDAYS, 12: MONTHS}.get(size, [f"phase{j}" for j in range(size)])
        name = {7: "weekdays", 12: "months"}.get(size, f"cycle{size}")
        if any(f["name"] == name for f in families):
            name = f"{name}_{len(families)}"
        families.append(
            {"name": name, "kind": "cyclic", "members": list(range(nxt, nxt + size)), "labels": names}
        )
        nxt += size
    for i in range(cfg.exclusive_families):
        members = list(range(nxt, nxt + cfg.exclusive_family_size))
        families.append(
            {"name": f"exclusive{i}", "kind": "exclusive", "members": members,
             "labels": [f"exclusive{i}.{j}" for j in range(len(members))]}
        )  # fmt: skip
        nxt += cfg.exclusive_family_size
    for i in range(cfg.correlated_pairs):
        families.append(
            {"name": f"pair{i}", "kind": "correlated", "members": [nxt, nxt + 1],
             "labels": [f"pair{i}.a", f"pair{i}.b"]}
        )  # fmt: skip
        nxt += 2
    return families


def firing_probabilities(
    cfg: SyntheticConfig, seed: int, families: list[dict[str, Any]] | None = None
) -> torch.Tensor:
    """Zipfian probabilities in random order, except that the members of exclusive families and
    correlated pairs draw (in random order) from the frequent end of the curve.

    Why: a planted exclusion or correlation is only measurable when the pair's expected
    co-occurrence under independence, p_a p_b N, is several counts; at the curve's typical
    p ~ 0.005 it is 2.5 in 100k rows, and `logic` (rightly) drops such pairs. Cyclic members'
    probabilities are set by `cyclic_prob` instead."""
    p = zipfian_firing_probabilities(cfg.n_features, cfg.zipf_exponent, cfg.max_prob, cfg.min_prob)
    p = torch.sort(p, descending=True).values
    gen = torch.Generator().manual_seed(seed)
    planted = [m for f in (families or []) if f["kind"] in ("exclusive", "correlated") for m in f["members"]]
    others = sorted(set(range(cfg.n_features)) - set(planted))
    order = torch.tensor(planted + others, dtype=torch.long)
    ranks = torch.cat(
        [
            torch.randperm(len(planted), generator=gen),
            len(planted) + torch.randperm(len(others), generator=gen),
        ]
    )
    out = torch.empty_like(p)
    out[order] = p[ranks]
    return out


def importance(cfg: SyntheticConfig) -> torch.Tensor:
    return cfg.importance_decay ** torch.arange(cfg.n_features, dtype=torch.float32)


def _cyclic_modifier(families: list[dict[str, Any]], prob: float, cfg: SyntheticConfig):
    """Overwrite each cyclic family: with probability `prob` a phase in [0, K) fires the two
    members nearest it, weighted (1 - frac, frac) by proximity, times a random magnitude."""
    cyclic = [torch.tensor(f["members"]) for f in families if f["kind"] == "cyclic"]

    def modify(acts: torch.Tensor) -> torch.Tensor:
        n = acts.shape[0]
        for members in cyclic:
            k = len(members)
            acts[:, members] = 0.0
            on = torch.rand(n) < prob
            rows = on.nonzero(as_tuple=True)[0]
            phase = torch.rand(len(rows)) * k
            lo = phase.floor().long() % k
            hi = (lo + 1) % k
            frac = phase - phase.floor()
            mag = (cfg.magnitude_mean + cfg.magnitude_std * torch.randn(len(rows))).clamp(min=0.1)
            acts[rows, members[lo]] = (1 - frac) * mag
            acts[rows, members[hi]] = frac * mag
        return acts

    return modify


def build_generator(cfg: SyntheticConfig, seed: int) -> tuple[ActivationGenerator, list[dict[str, Any]]]:
    """The SAELens ActivationGenerator for the true features, with every planted structure."""
    families = plant_families(cfg)
    probs = firing_probabilities(cfg, seed, families)
    correlations = {tuple(f["members"]): cfg.pair_correlation for f in families if f["kind"] == "correlated"}
    corr = create_correlation_matrix_from_correlations(cfg.n_features, correlations) if correlations else None
    roots = [
        HierarchyNode(
            feature_index=None,
            children=[HierarchyNode(feature_index=m) for m in f["members"]],
            mutually_exclusive_children=True,
            feature_id=f["name"],
        )
        for f in families
        if f["kind"] == "exclusive"
    ]
    modifiers = [hierarchy_modifier(roots)] if roots else []
    if any(f["kind"] == "cyclic" for f in families):
        modifiers.append(_cyclic_modifier(families, cfg.cyclic_prob, cfg))
    gen = ActivationGenerator(
        cfg.n_features,
        firing_probabilities=probs,
        std_firing_magnitudes=cfg.magnitude_std,
        mean_firing_magnitudes=cfg.magnitude_mean,
        modify_activations=modifiers or None,
        correlation_matrix=corr,
    )
    return gen, families


# ---------------------------------------------------------------------------------------------
# The toy model: features -> residual stream (superposition) -> ReLU neurons -> features
# ---------------------------------------------------------------------------------------------


class ToyModel(nn.Module):
    """x = f E (no privileged basis); h = ReLU(x W_in + b_in) (the neurons); f_hat = ReLU(h W_out + b_out)."""

    embedding: torch.Tensor

    def __init__(self, embedding: torch.Tensor, n_neurons: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n, d = embedding.shape
        self.register_buffer("embedding", embedding.clone())  # fixed: the true feature directions
        self.W_in = nn.Parameter(torch.randn(d, n_neurons, generator=g) / math.sqrt(d))
        self.b_in = nn.Parameter(torch.zeros(n_neurons))
        # A small read-out keeps the output ReLUs alive early on (at unit scale most die at once).
        self.W_out = nn.Parameter(0.1 * torch.randn(n_neurons, n, generator=g) / math.sqrt(n_neurons))
        self.b_out = nn.Parameter(torch.zeros(n))

    def resid(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.embedding

    def neurons(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_in + self.b_in)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.neurons(self.resid(f)) @ self.W_out + self.b_out)


def make_embedding(cfg: SyntheticConfig, seed: int) -> torch.Tensor:
    """True feature directions: unit vectors spread apart by SAELens's orthogonalizer."""
    fd = FeatureDictionary(
        cfg.n_features, cfg.d_model, initializer=orthogonal_initializer(num_steps=200), seed=seed
    )
    return fd.feature_vectors.detach().clone()


def codec_init(model: ToyModel, seed: int) -> ToyModel:
    """Start `model` as a Squeezer starts: A = xavier-normal (n, M) in feature space,
    W_in = pinv(E) A (so resid @ W_in = f @ A exactly when E has full row rank), W_out = A^T."""
    n, m = model.embedding.shape[0], model.W_in.shape[1]
    g = torch.Generator().manual_seed(seed)
    A = torch.empty(n, m)
    nn.init.xavier_normal_(A, generator=g)
    with torch.no_grad():
        model.W_in.copy_(torch.linalg.pinv(model.embedding) @ A)
        model.W_out.copy_(A.T)
        model.b_in.zero_()
        model.b_out.zero_()
    return model


def codec_penalty(model: ToyModel, h: torch.Tensor, kind: str) -> torch.Tensor:
    """The codec's sparsity penalty (before the `codec_l1` factor), mean over rows.

    "l1": sum_j h_j. "l1_decnorm": sum_j h_j ||W_out[j]||, the decoder-norm-scaled L1 of
    SAELens's standard SAE (scale_sparsity_penalty_by_decoder_norm): scaling a neuron's input
    weights and bias by c and its read-out row by 1/c leaves it unchanged, so the codec cannot
    shrink the penalty by rescaling; at 80 features in 64 neurons that fixes its neurons'
    identity (issue 11: seed 0 vs seed 1 Hungarian |r| 0.75 against 0.34 untrained).
    "encoder_l1": `penalties.encoder_l1` of the feature-space encoder E W_in (connectivity,
    not activity: a neuron on by default costs nothing at rest).
    """
    if kind == "l1":
        return h.sum(1).mean()
    if kind == "l1_decnorm":
        return decoder_norm_l1(h, model.W_out)
    if kind == "encoder_l1":  # on the encoder in feature space (what the Squeezer's W_enc is)
        return encoder_l1(model.embedding @ model.W_in, model.W_out)
    raise ValueError(f"codec_penalty: unknown kind {kind!r} (allowed: 'l1', 'l1_decnorm', 'encoder_l1')")


def permute_columns(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each column of `x` shuffled across rows on its own: every feature keeps its marginal
    distribution, and which features fire together is destroyed (the dense twin of
    `nulls.permute_feature_columns`)."""
    order = torch.argsort(torch.rand(x.shape, generator=generator), dim=0)
    return x.gather(0, order)


def train_toy_model(
    cfg: SyntheticConfig, gen: ActivationGenerator, embedding: torch.Tensor, seed: int, permuted: bool = False
) -> tuple[ToyModel, list[dict[str, float]]]:
    """Importance-weighted MSE reconstruction of the true features through the neurons.

    Trains on a pool sampled once (sampling correlated features is the slow part), drawing
    minibatches from it with a seeded generator. `permuted=True` trains on the same pool with
    every feature column permuted (`permute_columns`): the same recipe and seed without the
    co-occurrence, the reference that says whether co-occurrence fixes the model's neurons.
    """
    torch.manual_seed(seed)
    pool = gen.sample(cfg.train_pool)
    g = torch.Generator().manual_seed(seed)
    if permuted:
        pool = permute_columns(pool, torch.Generator().manual_seed(seed + 7919))
    model = ToyModel(embedding, cfg.n_neurons, seed)
    if cfg.model == "codec":
        model = codec_init(model, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    imp = importance(cfg)
    curve = []
    log_every = max(1, cfg.train_steps // 50)
    for step in progress(range(cfg.train_steps), "toy model", cfg.train_steps, unit="step"):
        f = pool[torch.randint(0, len(pool), (cfg.train_batch_size,), generator=g)]
        if cfg.model == "codec" and cfg.codec_l1 > 0:
            h = model.neurons(model.resid(f))
            f_hat = torch.relu(h @ model.W_out + model.b_out)
            loss = (imp * (f_hat - f) ** 2).sum(1).mean() + cfg.codec_l1 * codec_penalty(
                model, h, cfg.codec_penalty
            )
        else:
            loss = (imp * (model(f) - f) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == cfg.train_steps - 1:
            curve.append({"step": step, "loss": loss.item()})
    return model.eval(), curve


@torch.no_grad()
def toy_model_metrics(model: ToyModel, gen: ActivationGenerator, n: int = 8192) -> dict[str, float]:
    f = gen.sample(n)
    f_hat = model(f)
    fvu = float(((f - f_hat) ** 2).sum() / ((f - f.mean(0)) ** 2).sum())
    h = model.neurons(model.resid(f))
    return {
        "fvu": fvu,
        "mean_l0_true_features": float((f > 0).sum(1).float().mean()),
        "dead_neuron_fraction": float((h.max(0).values <= 0).float().mean()),
        "neuron_l0": float((h > 0).sum(1).float().mean()),
        # the fraction of neurons on per input: ~1 is a near-linear layer, well below 1 a codec
        "neuron_on_fraction": float((h > 0).float().mean()),
    }


def save_toy_model(path: Any, model: ToyModel, cfg: SyntheticConfig, seed: int) -> None:
    storage.torch_save(path, {"kind": "synthetic", "config": cfg.__dict__, "seed": seed,
                              "state_dict": model.state_dict()})  # fmt: skip


def load_toy_model(path: Any) -> ToyModel:
    blob = storage.torch_load(path)
    sd = blob["state_dict"]
    model = ToyModel(sd["embedding"], sd["W_in"].shape[1], blob["seed"])
    model.load_state_dict(sd)
    return model.eval()


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
    metrics = {"kind": "synthetic", "model": scfg.model, "n_true_features": scfg.n_features, "d_model": scfg.d_model,
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
    splits = [("train", acfg.n_train), ("heldout", acfg.n_heldout), ("cooc", acfg.n_cooc)]
    for split_no, (split, n_rows) in enumerate(splits):
        if n_rows == 0:
            continue
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
                arrays = {"resid": x.numpy().astype(dtype), "true_idx": true.idx, "true_val": true.val}
                if split != "cooc":  # cooc feeds only co-occurrence counts: no neurons stored
                    arrays["neurons"] = model.neurons(x).numpy().astype(dtype)
                    arrays["neurons_seed2"] = model2.neurons(x).numpy().astype(dtype)
                writer.append(**arrays)
                done += b
        writer.close()
        stats[split] = {"rows": n_rows, "mean_true_l0": l0_sum / n_rows,
                        "rows_truncated_true_top_k": truncated}  # fmt: skip
    np.save(out_dir / "neuron_readin.npy", model.W_in.detach().numpy())
    return stats
