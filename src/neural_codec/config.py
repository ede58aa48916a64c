"""Every stage's parameters: one typed dataclass per `params.yaml` section.

A leaf module (it imports nothing of the project's but `errors` and the leaf `runtime`), so any module can take a config
without import cycles. `params.load_params` reads a file into these; each `__post_init__` checks
ranges and names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from neural_codec.errors import check
from neural_codec.runtime import AUTOCASTS, check_device_name, resolve_device

#: TransformerLens hook names the lm source accepts, and the MLP-neuron hook of layer L
HOOK_RE = re.compile(r"^(blocks\.(\d+)\.[A-Za-z0-9_.]*hook_[A-Za-z0-9_]+|hook_embed|hook_pos_embed)$")
NEURON_HOOK_RE = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")

Importance = Literal["none", "frequency", "given"]
Init = Literal["xavier", "orthogonal"]
Hidden = Literal["relu", "linear"]
BiasInit = Literal["zero", "mean"]

#: the baselines, all fitted at the Squeezer's M on the same data and scored by the same metric
BASELINE_METHODS: tuple[str, ...] = ("pca", "no_superposition", "random_encoder", "model_neurons")

#: the polytope fractions D_i sits on (Elhage et al. 2022): lines are tested at these
DEFAULT_FRACTIONS = ("1", "3/4", "2/3", "1/2", "2/5", "3/8", "1/3")


def hook_layer(hook: str) -> int | None:
    """The block index a TransformerLens hook lives in (None for embeddings)."""
    m = re.match(r"^blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def parse_fraction(text: str) -> float:
    """'2/5' -> 0.4 (raises ValueError on anything else)."""
    return float(Fraction(str(text)))


@dataclass
class SyntheticConfig:
    """`source.synthetic` in params.yaml.

    - model: "toy" (default) trains the toy model as before: it reads the residual stream and sits
      in a near-linear regime (most neurons on), a negative case for `compare`. "codec" plants a
      known positive: the original model IS a sparse, importance-weighted ReLU codec of the true
      features (TMS's objective, the Squeezer's architecture: xavier start in feature space, an
      untied decoder at the same start), trained in the superposition regime. Its neurons should
      engage their ReLU and pack n_features > n_neurons; it is only a codec *of the features*
      when the residual stream can carry them all (d_model >= n_features), which is checked.
    """

    model: Literal["toy", "codec"] = "toy"
    codec_l1: float = 0.0  # model: codec only: an L1 penalty on the neurons (a sparse codec)
    # model: codec only: the form of codec_l1's penalty. "l1": sum_j h_j (rescaling a neuron's
    # input by c and its read-out row by 1/c shrinks it, so it fixes no neuron identity).
    # "l1_decnorm": sum_j h_j ||W_out[j]|| (SAELens's decoder-norm-scaled L1; rescaling cannot
    # dodge it; issue 11: it fixes neuron identity at 80 features in 64 neurons).
    # "encoder_l1": sum_j ||(E W_in)[:, j]||_1 ||W_out[j]|| (connectivity, per step; a neuron on by
    # default is free at rest, so exclusive pairs can sit on it at opposite signs).
    codec_penalty: Literal["l1", "l1_decnorm", "encoder_l1"] = "l1"
    n_features: int = 256
    d_model: int = 64
    n_neurons: int = 128
    zipf_exponent: float = 1.0
    max_prob: float = 0.08
    min_prob: float = 0.004
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.15
    exclusive_families: int = 6
    exclusive_family_size: int = 4
    cyclic_families: list[int] = field(default_factory=lambda: [7, 12])
    cyclic_prob: float = 0.1
    correlated_pairs: int = 8
    pair_correlation: float = 0.8
    importance_decay: float = 1.0
    resid_noise: float = 0.0
    train_steps: int = 2000
    train_batch_size: int = 512
    train_pool: int = 50000
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check(self.n_features >= 2, "n_features", self.n_features, "an integer >= 2")
        check(self.d_model >= 2, "d_model", self.d_model, "an integer >= 2")
        check(self.n_neurons >= 1, "n_neurons", self.n_neurons, "an integer >= 1")
        check(self.zipf_exponent > 0, "zipf_exponent", self.zipf_exponent, "a number > 0")
        check(
            0 < self.min_prob < self.max_prob <= 1,
            "max_prob",
            (self.min_prob, self.max_prob),
            "0 < min_prob < max_prob <= 1",
        )
        check(self.magnitude_mean > 0, "magnitude_mean", self.magnitude_mean, "> 0")
        check(self.magnitude_std >= 0, "magnitude_std", self.magnitude_std, ">= 0")
        check(self.exclusive_families >= 0, "exclusive_families", self.exclusive_families, ">= 0")
        check(
            self.exclusive_family_size >= 2,
            "exclusive_family_size",
            self.exclusive_family_size,
            "an integer >= 2",
        )
        for i, size in enumerate(self.cyclic_families):
            check(size >= 3, f"cyclic_families[{i}]", size, "an integer >= 3")
        check(0 < self.cyclic_prob <= 1, "cyclic_prob", self.cyclic_prob, "in (0, 1]")
        check(self.correlated_pairs >= 0, "correlated_pairs", self.correlated_pairs, ">= 0")
        check(
            -1 < self.pair_correlation < 1,
            "pair_correlation",
            self.pair_correlation,
            "in (-1, 1)",
        )
        check(
            0 < self.importance_decay <= 1,
            "importance_decay",
            self.importance_decay,
            "in (0, 1]",
        )
        check(self.resid_noise >= 0, "resid_noise", self.resid_noise, ">= 0")
        check(self.train_steps >= 1, "train_steps", self.train_steps, ">= 1")
        check(self.train_batch_size >= 1, "train_batch_size", self.train_batch_size, ">= 1")
        check(
            self.train_pool >= self.train_batch_size,
            "train_pool",
            self.train_pool,
            f">= train_batch_size ({self.train_batch_size})",
        )
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(self.model in ("toy", "codec"), "model", self.model, "'toy' or 'codec'")
        check(self.codec_l1 >= 0, "codec_l1", self.codec_l1, ">= 0")
        check(
            self.codec_penalty in ("l1", "l1_decnorm", "encoder_l1"),
            "codec_penalty",
            self.codec_penalty,
            "'l1', 'l1_decnorm' or 'encoder_l1'",
        )
        if self.model == "codec":
            check(
                self.d_model >= self.n_features > self.n_neurons,
                "d_model",
                (self.d_model, self.n_features, self.n_neurons),
                "d_model >= n_features > n_neurons for model: codec (a codec of the features in superposition)",
            )
        planted = (
            self.exclusive_families * self.exclusive_family_size
            + sum(self.cyclic_families)
            + 2 * self.correlated_pairs
        )
        check(
            planted <= self.n_features,
            "n_features",
            self.n_features,
            f">= the {planted} features the planted families and pairs use",
        )


@dataclass
class LMSourceConfig:
    """`source.lm` in params.yaml. None means: take it from the SAE's metadata, else the default."""

    model_name: str = "gpt2"
    model_from_pretrained_kwargs: dict = field(default_factory=dict)
    dataset: str = ""
    dataset_split: str = "train"
    text_column: str = "text"
    # the MLP input of the neuron layer (what the neurons read); null: the SAE's own hook
    sae_hook: str | None = "blocks.8.ln2.hook_normalized"
    neuron_hook: str = "blocks.8.mlp.hook_post"
    context_size: int | None = 128
    prepend_bos: bool | None = True
    doc_separator: Literal["eos", "newline"] = "eos"
    n_tokens_train: int = 200_000
    n_tokens_heldout: int = 50_000
    heldout_every: int = 10
    batch_size: int = 8
    exclude_special_tokens: bool = True
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        check(
            bool(self.model_name),
            "model_name",
            self.model_name,
            "a TransformerLens model name, 'local:<dir>', 'local-hf:<dir>', 'glassllm' or 'minilm'",
        )
        check(
            self.sae_hook is None or bool(HOOK_RE.match(self.sae_hook)),
            "sae_hook",
            self.sae_hook,
            "a TransformerLens hook name such as blocks.8.ln2.hook_normalized (or null: the SAE's own)",
        )
        check(
            bool(NEURON_HOOK_RE.match(self.neuron_hook)),
            "neuron_hook",
            self.neuron_hook,
            "blocks.L.mlp.hook_post (the MLP neurons of layer L)",
        )
        check(
            self.context_size is None or 2 <= self.context_size <= 1_000_000,
            "context_size",
            self.context_size,
            "an integer >= 2 (or null: the SAE's own)",
        )
        check(self.n_tokens_train >= 1, "n_tokens_train", self.n_tokens_train, "an integer >= 1")
        check(self.n_tokens_heldout >= 1, "n_tokens_heldout", self.n_tokens_heldout, "an integer >= 1")
        check(
            self.heldout_every >= 2,
            "heldout_every",
            self.heldout_every,
            "an integer >= 2 (every n-th context window goes to heldout)",
        )
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(bool(self.text_column), "text_column", self.text_column, "a column name")
        if self.device != "cpu":  # resolved here: TransformerLens, SAELens and torch take the name
            self.device = str(resolve_device(self.device, "source.lm.device"))

    @property
    def hooks(self) -> list[str]:
        return [h for h in dict.fromkeys([self.sae_hook, self.neuron_hook]) if h]

    @property
    def stop_at_layer(self) -> int | None:
        """Run blocks up to and including the last needed one (None: the whole model)."""
        layers = [hook_layer(h) for h in self.hooks]
        if any(h.startswith(("ln_final", "unembed")) for h in self.hooks):
            return None
        return max((l for l in layers if l is not None), default=-1) + 1

    @property
    def neuron_layer(self) -> int:
        return int(NEURON_HOOK_RE.match(self.neuron_hook).group(1))  # type: ignore[union-attr]

    def resolved(self) -> LMSourceConfig:
        """Fill the fields left null without an SAE (defaults; the hook: the neuron layer's MLP
        input in a pre-norm decoder; an encoder's is ln1's, see `extract.mlp_input_hooks`)."""
        return dataclasses.replace(
            self,
            sae_hook=self.sae_hook or f"blocks.{self.neuron_layer}.ln2.hook_normalized",
            context_size=self.context_size or 128,
            prepend_bos=True if self.prepend_bos is None else self.prepend_bos,
        )


@dataclass
class SourceConfig:
    """`source` in params.yaml: which features to decompress, with one typed block per kind."""

    kind: Literal["synthetic", "lm"] = "synthetic"
    seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig())
    lm: LMSourceConfig = field(default_factory=lambda: LMSourceConfig())

    def __post_init__(self) -> None:
        check(self.seed >= 0, "source.seed", self.seed, "an integer >= 0")


@dataclass
class ActivationsConfig:
    """`activations` in params.yaml: how many samples to cache, in what shards."""

    n_train: int = 200_000
    n_heldout: int = 10_000
    # synthetic: a third split never seen by the Squeezer, for co-occurrence statistics
    # (logic.cooccurrence_split: cooc); ~200k rows give planted exclusions (p ~ 0.007) >= 5
    # expected co-occurrences. Only `resid` and the true features are stored. 0: none.
    n_cooc: int = 200_000
    batch_size: int = 4096
    rows_per_shard: int = 65536
    dtype: Literal["float32", "float16"] = "float32"
    true_top_k: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.n_train >= 1, "activations.n_train", self.n_train, "an integer >= 1")
        check(self.n_heldout >= 1, "activations.n_heldout", self.n_heldout, "an integer >= 1")
        check(self.n_cooc >= 0, "activations.n_cooc", self.n_cooc, "an integer >= 0")
        check(self.batch_size >= 1, "activations.batch_size", self.batch_size, "an integer >= 1")
        check(self.rows_per_shard >= 1, "activations.rows_per_shard", self.rows_per_shard, ">= 1")
        check(self.true_top_k >= 1, "activations.true_top_k", self.true_top_k, "an integer >= 1")
        check(self.seed >= 0, "activations.seed", self.seed, "an integer >= 0")


@dataclass
class SAEConfig:
    """`sae` in params.yaml."""

    architecture: Literal["topk", "batchtopk", "standard", "jumprelu"] = "topk"
    d_sae: int = 512
    k: int = 3
    l1_coefficient: float = 5.0
    training_samples: int = 3_000_000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    recovery_threshold: float = 0.9
    # Use a pretrained SAE instead of training one (lm source): a SAELens registry entry or a folder.
    pretrained_release: str | None = None
    pretrained_sae_id: str | None = None
    path: str | None = None
    device: str = "auto"  # SAELens training: auto (cuda if available, else cpu) | cpu | cuda
    # sae: an SAE on `resid`; transcoder: a SAELens Transcoder from `resid` (the MLP input) to the
    # MLP output (the neurons' hook_post W_out + b_out), whose latents are then F
    kind: str = "sae"

    def __post_init__(self) -> None:
        check_device_name(self.device, "sae.device")
        check(self.kind in ("sae", "transcoder"), "sae.kind", self.kind, "sae | transcoder")
        check(self.kind == "sae" or not self.pretrained, "sae.kind", self.kind,
              "sae when sae.path / sae.pretrained_release is set (a trained transcoder only)")  # fmt: skip
        check(self.d_sae >= 1, "sae.d_sae", self.d_sae, "an integer >= 1")
        check(self.k >= 1, "sae.k", self.k, "an integer >= 1")
        check(self.k <= self.d_sae, "sae.k", self.k, f"<= sae.d_sae ({self.d_sae})")
        check(self.l1_coefficient >= 0, "sae.l1_coefficient", self.l1_coefficient, ">= 0")
        check(self.training_samples >= self.batch_size, "sae.training_samples",
              self.training_samples, f">= sae.batch_size ({self.batch_size})")  # fmt: skip
        check(self.batch_size >= 1, "sae.batch_size", self.batch_size, "an integer >= 1")
        check(self.lr > 0, "sae.lr", self.lr, "a number > 0")
        check(0 < self.recovery_threshold <= 1, "sae.recovery_threshold", self.recovery_threshold,
              "in (0, 1]")  # fmt: skip
        check((self.pretrained_release is None) == (self.pretrained_sae_id is None),
              "sae.pretrained_sae_id", self.pretrained_sae_id,
              "set together with sae.pretrained_release (both or neither)")  # fmt: skip
        check(not (self.path and self.pretrained_release), "sae.path", self.path,
              "null when sae.pretrained_release is set (choose one source of SAE)")  # fmt: skip

    @property
    def pretrained(self) -> bool:
        return bool(self.pretrained_release or self.path)


@dataclass
class FeaturesConfig:
    """`features` in params.yaml."""

    top_k: int = 3
    # TopK SAEs always fire k latents; on rows with fewer true features the extras are filler
    # (a latent off its true feature) that every co-occurrence downstream would count.
    # Activations <= min_value are dropped (0 keeps everything). 0.4 (was 0.05): set from the
    # filler distribution on the default synthetic source (TopK k = 3, d_sae = 512): filler
    # activations have median 0.15 and 90% quantile 0.33, real ones a 5% quantile of 0.49; at
    # 0.05 39% of F's nonzeros were filler, at 0.4 5%, keeping 80% of the true events (83%).
    min_value: float = 0.4
    batch_size: int = 4096
    rows_per_shard: int = 65536

    def __post_init__(self) -> None:
        check(self.top_k >= 1, "features.top_k", self.top_k, "an integer >= 1")
        check(self.min_value >= 0, "features.min_value", self.min_value, "a number >= 0")
        check(self.batch_size >= 1, "features.batch_size", self.batch_size, "an integer >= 1")
        check(self.rows_per_shard >= 1, "features.rows_per_shard", self.rows_per_shard, ">= 1")


def check_buffer_rows(buffer_rows: Any, batch_size: int, section: str) -> None:
    """`<section>.buffer_rows`: an integer >= the section's batch_size (a batch must fit)."""
    check(
        isinstance(buffer_rows, int) and not isinstance(buffer_rows, bool) and buffer_rows >= batch_size,
        f"{section}.buffer_rows",
        buffer_rows,
        f"an integer >= {section}.batch_size = {batch_size} (rows held in memory while training)",
    )


@dataclass
class SqueezerConfig:
    """params.yaml section `squeezer`.

    - M: number of synthetic neurons (>= 1).
    - tied: W_dec = W_enc^T (Toy Models of Superposition); otherwise a separate decoder
      (initialised to W_enc^T, i.e. training starts from the tied solution).
    - importance: per-feature loss weights. "none": all 1; "frequency": w_i = p_i / mean(p),
      p = firing frequency on train (frequent features matter more); "given": importance_given
      (length n_features, checked at train time; non-negative, not all zero).
    - lr, batch_size, weight_decay: AdamW (decay on the weight matrices only, not the biases).
    - steps: optimiser steps; epochs > 0 overrides it with ceil(epochs * N / batch_size).
    - init: "xavier" (xavier-normal W_enc, as TMS) or "orthogonal" (orthonormal columns of
      W_enc); biases start at 0.
    - bias_init: "zero" (default; `Squeezer(...)` with the same seed reproduces the start
      exactly) or "mean": b_dec = the train mean of F and b_enc = -mean @ W_enc, i.e. the code
      starts centred. Needed when features are dense with large means: there the zero start
      converges very slowly (n=30 dense features, M=5: FVU 18.8 after 3000 steps at lr 1e-2
      vs 0.64 with "mean" at lr 3e-3, PCA 0.62). Sparse SAE features have small means.
    - seed: makes init, minibatch order and loss sampling deterministic.
    - loss_sample: 0 = exact loss over all n outputs. > 0 = unbiased sampled loss: exact on the
      active outputs of each row, plus `loss_sample` output columns per row drawn uniformly without
      replacement standing in for the inactive outputs, each reweighted by n / loss_sample (a
      drawn column that is active in a row is skipped for that row, as it is already counted
      exactly). Stratified: the batch's rows are cut into min(n // loss_sample, batch) groups,
      each with its own block of loss_sample contiguous columns (cyclically, from one uniform
      offset per step), so every column is drawn in every step (one draw shared by the batch
      did not converge under Adam). For n ~ 25k features.
    - hidden: "relu" (default: h = ReLU(W_enc f + b_enc), a privileged neuron basis) or "linear"
      (h = W_enc f + b_enc; with tied = true this is the TMS model x' = ReLU(W^T W x + b)).
    - device: where it trains and is scored: auto (cuda if available, else cpu), cpu, cuda,
      cuda:N, mps; the init and the minibatch/sample draws use a CPU generator, so a seed draws
      the same numbers everywhere. The trained model comes back to the CPU.
    - autocast: none | bf16 | fp16 mixed precision of the training steps (fp16: cuda only, with
      a gradient scaler).
    - buffer_rows: most train rows held in memory (>= batch_size). A split that fits is loaded
      whole and shuffled by one permutation per epoch (the exact path of earlier runs); a bigger
      one is streamed shard by shard: shard order shuffled per epoch and a seeded shuffle buffer
      of this many rows (`squeezer.stream`), so memory is bounded by the buffer, not the split.
    - l1: weight of a sparsity penalty on the neurons, l1 * mean_rows sum_j h_j ||W_dec[j]||
      (SAELens's decoder-norm-scaled L1; invariant to per-neuron rescaling, so it cannot be dodged
      by shrinking h). 0 (default): the reconstruction loss alone. Without it nothing fixes which
      neurons the Squeezer forms: on a planted codec trained with the same penalty
      (configs/planted-codec-identity.yaml: 80 features, 64 neurons) the Squeezer's Hungarian |r|
      to the codec's neurons is 0.275 at l1 0 against 0.339 for its untrained start, and 0.725 at
      l1 0.1 (docs/RESULTS-planted-codec.md).
    - penalty: what `l1` weighs. "l1_decnorm" (default): the activations, as above.
      "encoder_l1": the input weights, l1 * sum_j ||W_enc[:, j]||_1 ||W_dec[j]|| once per step
      (`penalties.encoder_l1`): sparse connectivity fixes the neurons without taxing a neuron that
      is on by default, the neuron that holds an exclusive pair at opposite signs.
    """

    M: int = 128
    tied: bool = False
    importance: Importance = "none"
    importance_given: list[float] | None = None
    lr: float = 3e-3
    batch_size: int = 1024
    steps: int = 3000
    epochs: float = 0.0
    weight_decay: float = 0.0
    init: Init = "xavier"
    bias_init: Literal["zero", "mean"] = "zero"
    seed: int = 0
    loss_sample: int = 0
    hidden: Hidden = "relu"
    device: str = "auto"
    autocast: Literal["none", "bf16", "fp16"] = "none"
    buffer_rows: int = 1 << 20
    l1: float = 0.0
    penalty: Literal["l1_decnorm", "encoder_l1"] = "l1_decnorm"

    def __post_init__(self) -> None:
        check_device_name(self.device, "squeezer.device")
        check_buffer_rows(self.buffer_rows, self.batch_size, "squeezer")
        check(self.autocast in AUTOCASTS, "squeezer.autocast", self.autocast, "none, bf16 or fp16")
        check(
            self.autocast != "fp16" or self.device not in ("cpu", "mps"),
            "squeezer.autocast",
            self.autocast,
            f"none or bf16 with squeezer.device = {self.device} (fp16 needs cuda)",
        )
        check(self.M >= 1, "M", self.M, "an integer >= 1 (the number of synthetic neurons)")
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.steps >= 1 or self.epochs > 0, "steps", self.steps, "an integer >= 1 (or epochs > 0)")
        check(self.epochs >= 0 and math.isfinite(self.epochs), "epochs", self.epochs, "a number >= 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check(self.l1 >= 0 and math.isfinite(self.l1), "l1", self.l1, "a finite number >= 0 (0 = no penalty)")
        check(
            self.penalty in ("l1_decnorm", "encoder_l1"),
            "penalty",
            self.penalty,
            "'l1_decnorm' or 'encoder_l1'",
        )
        check(self.loss_sample >= 0, "loss_sample", self.loss_sample, "an integer >= 0 (0 = exact loss)")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        if self.importance == "given":
            check(
                self.importance_given is not None and len(self.importance_given) > 0,
                "importance_given",
                self.importance_given,
                "a list of n_features non-negative numbers when importance is 'given'",
            )
        if self.importance_given is not None:
            w = np.asarray(self.importance_given, dtype=float)
            check(
                bool(np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0),
                "importance_given",
                self.importance_given,
                "finite non-negative numbers, not all zero",
            )

    def n_steps(self, n_rows: int) -> int:
        if self.epochs > 0:
            return max(1, math.ceil(self.epochs * n_rows / self.batch_size))
        return self.steps


@dataclass
class BaselinesConfig:
    """params.yaml section `baselines` (M, importance come from `squeezer`, so a sweep over
    squeezer.M moves both). steps/lr/batch_size/weight_decay/loss_sample train the decoders of
    random_encoder and model_neurons; pca_dense_limit: largest n for the dense n x n moment
    matrix (above it, eigsh on the sparse operator); pca_exact_max_k: largest M for eigsh (above
    it, a randomized subspace iteration on the same operator); methods: which baselines to run;
    buffer_rows: most train rows in memory (as squeezer.buffer_rows: a split that fits is loaded
    whole, the exact earlier path; a bigger one is streamed shard by shard with a shuffle buffer
    of this many rows, and PCA's moments and products are accumulated a batch at a time)."""

    steps: int = 3000
    lr: float = 3e-3
    batch_size: int = 1024
    weight_decay: float = 0.0
    loss_sample: int = 0
    seed: int = 0
    pca_dense_limit: int = 4096
    pca_exact_max_k: int = 512
    methods: list[str] = field(default_factory=lambda: list(BASELINE_METHODS))
    device: str = "auto"  # the trained decoders: auto (cuda if available, else cpu) | cpu | cuda
    buffer_rows: int = 1 << 20

    def __post_init__(self) -> None:
        check_device_name(self.device, "baselines.device")
        check_buffer_rows(self.buffer_rows, self.batch_size, "baselines")
        check(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check(self.loss_sample >= 0, "loss_sample", self.loss_sample, "an integer >= 0")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(self.pca_dense_limit >= 1, "pca_dense_limit", self.pca_dense_limit, "an integer >= 1")
        check(self.pca_exact_max_k >= 1, "pca_exact_max_k", self.pca_exact_max_k, "an integer >= 1")
        for m in self.methods:
            check(
                m in BASELINE_METHODS,
                "methods",
                self.methods,
                "a list drawn from " + ", ".join(BASELINE_METHODS),
            )
        check(len(set(self.methods)) == len(self.methods), "methods", self.methods, "no repeats")

    def decoder_config(self, M: int) -> SqueezerConfig:
        return SqueezerConfig(
            M=M,
            tied=False,
            lr=self.lr,
            batch_size=self.batch_size,
            steps=self.steps,
            weight_decay=self.weight_decay,
            seed=self.seed,
            loss_sample=self.loss_sample,
            device=self.device,
            buffer_rows=self.buffer_rows,
        )


@dataclass
class GeometryConfig:
    """params.yaml section `geometry` (also the knobs of `analyse`).

    - interference_threshold: edge of the interference graph when |cos(W_i, W_j)| exceeds it.
      Below 1/2 so a triangle's edges (cos -1/2) count; a pentagon is connected by its 0.81
      diagonals, a digon by -1. A tetrahedron's edges (-1/3) need a threshold below 1/3, which
      on hundreds of features in ~100 dimensions links most of them into one component.
    - min_norm_frac: a feature is "represented" (enters the histogram and the graph) when its
      norm is at least this fraction of the largest feature norm. 0.5 (was 0.1): TMS's features
      are either kept (norm ~ 1) or dropped (~ 0), and at 0.1 weak features (18-35% of the top
      norm) joined a clean pentagon's component and made it 'other'. Scale-free; the per-neuron
      ReLU rescaling symmetry of an untied codec is removed before (the geometry stage analyses
      balanced weights, `neural_codec.squeezer.model.balance_neurons`).
    - polytope_tolerance: a component is an ideal polytope when the RMS difference of its
      normalised Gram matrix to the ideal's (best ordering) is at most this.
    - hist_bins: bins of the D histogram on [0, 1].
    - fractions: where lines are tested ("a/b" strings in (0, 1]).
    - line_half_width, line_flank_width: centre window f +- half_width against flanks of this
      width on each side; line_alpha: family-wise level (Tarone-corrected over the fractions that can reach it);
      line_min_count: fewest features in the centre window for a line.
    - n_permutations: label shuffles for the circle p-values; seed: all randomness here.
    - null_rows: train rows (the first ones) used for the column-permuted null Squeezer;
      null_steps: its optimiser steps (null = the Squeezer's own step count).
    - max_plot_polytopes: polytopes drawn in plots/geometry/polytopes.png.
    """

    interference_threshold: float = 0.45
    min_norm_frac: float = 0.5
    polytope_tolerance: float = 0.1
    hist_bins: int = 50
    fractions: list[str] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    line_half_width: float = 0.01
    line_flank_width: float = 0.02
    line_alpha: float = 0.01
    line_min_count: int = 5
    n_permutations: int = 1000
    seed: int = 0
    null_rows: int = 50000
    null_steps: int | None = None
    max_plot_polytopes: int = 12
    device: str = "auto"  # the permuted null's training: auto (cuda if available, else cpu) | cpu | cuda

    def __post_init__(self) -> None:
        check_device_name(self.device, "geometry.device")
        check(
            0.0 < self.interference_threshold < 1.0,
            "interference_threshold",
            self.interference_threshold,
            "a number in (0, 1)",
        )
        check(0.0 <= self.min_norm_frac < 1.0, "min_norm_frac", self.min_norm_frac, "a number in [0, 1)")
        check(
            0.0 < self.polytope_tolerance < 1.0,
            "polytope_tolerance",
            self.polytope_tolerance,
            "a number in (0, 1)",
        )
        check(2 <= self.hist_bins <= 10000, "hist_bins", self.hist_bins, "an integer in [2, 10000]")
        check(len(self.fractions) >= 1, "fractions", self.fractions, "a non-empty list like ['1', '2/5']")
        for f in self.fractions:
            try:
                v = parse_fraction(f)
            except (ValueError, ZeroDivisionError):
                v = float("nan")
            check(0.0 < v <= 1.0, "fractions", f, "fractions 'a/b' in (0, 1], e.g. '2/5'")
        check(
            0.0 < self.line_half_width < 0.25,
            "line_half_width",
            self.line_half_width,
            "a number in (0, 0.25)",
        )
        check(
            0.0 < self.line_flank_width < 0.5,
            "line_flank_width",
            self.line_flank_width,
            "a number in (0, 0.5)",
        )
        check(0.0 < self.line_alpha < 1.0, "line_alpha", self.line_alpha, "a number in (0, 1)")
        check(self.line_min_count >= 1, "line_min_count", self.line_min_count, "an integer >= 1")
        check(
            self.n_permutations >= 19,
            "n_permutations",
            self.n_permutations,
            "an integer >= 19 (so p < 0.05 is reachable)",
        )
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(self.null_rows >= 1, "null_rows", self.null_rows, "an integer >= 1")
        check(
            self.null_steps is None or self.null_steps >= 1,
            "null_steps",
            self.null_steps,
            "null (the Squeezer's steps) or an integer >= 1",
        )
        check(self.max_plot_polytopes >= 0, "max_plot_polytopes", self.max_plot_polytopes, "an integer >= 0")


@dataclass
class LogicConfig:
    """The `logic` section of params.yaml."""

    weight_threshold_frac: float = 0.5  # member if weight > frac * the neuron's max |weight|
    weight_threshold_abs: float = 0.0  # ... and > this absolute floor (guards near-dead neurons)
    top_per_neuron: int = 16  # at most this many members of each sign per neuron
    n_control_per_pair: int = 5  # frequency-matched non-sharing pairs sampled per shared pair
    n_freq_bins: int = 20  # equal-count bins of log firing frequency used for matching
    control_pool: str = "assigned"  # "assigned": controls drawn from features that are members
    # of some neuron (like the shared pairs); "all": from every feature that fires
    min_expected: float = 5.0  # drop pairs whose expected co-occurrence count is below this
    # (one rule for shared and control pairs: controls are drawn under it, for tested pairs only)
    min_control_pairs: int = 20  # fewer controls than this: verdict "too_few_controls"
    pseudo_count: float = 0.5  # added to observed and expected counts in the lift
    alpha: float = 0.01  # significance level of the two-sided Mann-Whitney test
    min_effect: float = 0.147  # |Cliff's delta| below this is negligible (Romano et al. 2006)
    # Rows used for every co-occurrence statistic (lift, phi, the Mann-Whitney test):
    # "cooc" (default): a split of `activations.n_cooc` rows the Squeezer never saw (synthetic;
    # an lm source writes none, so "cooc" falls back to "heldout", recorded in metrics `split`);
    # "heldout": the held-out rows; "train": the Squeezer's own training rows. Train stays an
    # option only to reproduce earlier runs and to measure the bias: the Squeezer fits the
    # finite-sample co-occurrences of the rows it is trained on, so on train the test rejects on
    # fully independent features (10/10 seeds in issue 12) -- never read a train verdict as a finding.
    cooccurrence_split: str = "cooc"
    # relabellings of features within frequency bins for the verdict's p-value (0: Mann-Whitney
    # only, which is anti-conservative with thousands of dependent pairs; see analysis/logic.py)
    n_label_permutations: int = 199
    n_truth_table_neurons: int = 8  # top neurons (by activation mass) given truth tables
    n_truth_table_pairs: int = 3  # top member pairs (by weight product) per such neuron
    batch_size: int = 65536
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            0.0 < self.weight_threshold_frac <= 1.0,
            "weight_threshold_frac",
            self.weight_threshold_frac,
            "a number in (0, 1]",
        )
        check(
            self.weight_threshold_abs >= 0.0,
            "weight_threshold_abs",
            self.weight_threshold_abs,
            "a number >= 0",
        )
        check(self.top_per_neuron >= 2, "top_per_neuron", self.top_per_neuron, "an integer >= 2")
        check(self.n_control_per_pair >= 1, "n_control_per_pair", self.n_control_per_pair, "an integer >= 1")
        check(self.n_freq_bins >= 1, "n_freq_bins", self.n_freq_bins, "an integer >= 1")
        check(
            self.control_pool in ("assigned", "all"),
            "control_pool",
            self.control_pool,
            "one of 'assigned', 'all'",
        )
        check(self.min_expected >= 0.0, "min_expected", self.min_expected, "a number >= 0")
        check(self.min_control_pairs >= 1, "min_control_pairs", self.min_control_pairs, "an integer >= 1")
        check(self.pseudo_count >= 0.0, "pseudo_count", self.pseudo_count, "a number >= 0")
        check(0.0 < self.alpha < 1.0, "alpha", self.alpha, "a number in (0, 1)")
        check(0.0 <= self.min_effect < 1.0, "min_effect", self.min_effect, "a number in [0, 1)")
        check(self.n_label_permutations >= 0, "n_label_permutations", self.n_label_permutations, ">= 0")
        check(
            self.cooccurrence_split in ("cooc", "heldout", "train"),
            "cooccurrence_split",
            self.cooccurrence_split,
            "one of 'cooc', 'heldout', 'train'",
        )
        check(
            self.n_truth_table_neurons >= 0,
            "n_truth_table_neurons",
            self.n_truth_table_neurons,
            "an integer >= 0",
        )
        check(
            self.n_truth_table_pairs >= 1, "n_truth_table_pairs", self.n_truth_table_pairs, "an integer >= 1"
        )
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")


#: neuron nonlinearities a predictability readout can take (TransformerLens `act_fn` names;
#: `analysis.predictability.ACTIVATIONS` implements each), and the `compare.readout` values
READOUT_ACTS = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu")
READOUT_NAMES = ("auto", *READOUT_ACTS, *(f"gated_{a}" for a in READOUT_ACTS))


@dataclass
class CompareConfig:
    """params.yaml section `compare`.

    - n_mantel_permutations: permutations of the Mantel test (p-value resolution 1/(n+1)).
    - max_features_for_mantel: the interference Grams use at most this many features (alive in
      train, represented by the main Squeezer, non-zero loading on the model's neurons), a seeded
      subsample of them; the Mantel test costs O(n_perm * n^2).
    - svcca_keep: fraction of variance each side keeps before CCA (Raghu et al. use 0.99).
    - seed: Mantel permutations, feature subsample, and the column permutation of the permuted floor.
    - floor_untrained / floor_permuted / ceiling_squeezer_seed2 / ceiling_model_seed2: which
      floors and ceilings to compute (the model's second seed only exists for the synthetic
      source; it is skipped silently when the activations hold no `neurons_seed2`).
    - reference_true_features: synthetic source only: also train a Squeezer (same settings) on
      the source's true features instead of the SAE's, and match it to the model
      (`reference_true_features` in compare.json): what the SAE costs the match.
    - retrain_steps: optimiser steps for the retrained Squeezers (permuted floor, second seed);
      null = exactly the main Squeezer's schedule (steps or epochs), the fair comparison.
    - batch_size: rows per batch when computing neuron activations and streaming moments.
    - plot_max_neurons: the correlation-matrix image shows at most this many matched pairs.
    - predictability: fit each model neuron as act(w . F + b) on train rows (the direct test)
      beside its floors (shuffled F, a random top-k code) and ceiling (the dense input).
    - readout: the readouts' form. auto: the neurons' own (ReLU for the synthetic source; a
      real model's act_fn, gated for SwiGLU/GeGLU MLPs, from the activations' meta); or one of
      relu, gelu, gelu_new, silu, ... and gated_<act> (e.g. relu to fit the Squeezer's form).
    - predict_epochs / predict_lr / predict_batch_size: the readouts' Adam passes over the train
      rows, learning rate (decaying linearly to 0) and batch rows.
    - predict_dense_lr: the dense-input ceiling's learning rate (every input column is active in
      every row, so a sparse readout's rate overshoots and strands units; measured on the codec).
    - predict_min_steps: at least this many optimiser steps (more epochs on small train sets).
    - predict_max_train_rows: fit the readouts on at most this many train rows (null: all).
    - predictivity_train_rows: the ridge predictivity (and the readouts' standardisation) reads at
      most this many train rows (null: all); its float64 moments cost O(rows x M^2) per condition.
    - predict_blocks: contiguous held-out row blocks of the R^2 block bootstrap.
    - n_bootstrap: bootstrap resamples of the held-out R^2 interval.
    - predictivity_ridge: ridge penalty (x the mean candidate variance) of the Squeezer -> model
      neuron regression.
    - sharing_threshold_frac: a feature loads on a unit if its weight exceeds this fraction of the
      unit's largest |weight| (logic's rule), for the feature-sharing overlap.
    """

    n_mantel_permutations: int = 999
    max_features_for_mantel: int = 1000
    svcca_keep: float = 0.99
    seed: int = 0
    floor_untrained: bool = True
    floor_permuted: bool = True
    ceiling_squeezer_seed2: bool = True
    ceiling_model_seed2: bool = True
    reference_true_features: bool = True
    retrain_steps: int | None = None
    batch_size: int = 4096
    plot_max_neurons: int = 256
    device: str = "auto"  # retrained floors/ceilings: auto (cuda if available, else cpu) | cpu | cuda
    predictability: bool = True
    readout: str = "auto"
    predict_epochs: int = 2
    predict_lr: float = 0.1
    predict_batch_size: int = 1024
    predict_dense_lr: float = 0.02
    predict_min_steps: int = 300
    predict_max_train_rows: int | None = None
    predict_blocks: int = 100
    n_bootstrap: int = 1000
    predictivity_ridge: float = 1e-3
    predictivity_train_rows: int | None = 50000
    sharing_threshold_frac: float = 0.5

    def __post_init__(self) -> None:
        check_device_name(self.device, "compare.device")

        check(
            self.n_mantel_permutations >= 1,
            "n_mantel_permutations",
            self.n_mantel_permutations,
            "an integer >= 1",
        )
        check(
            self.max_features_for_mantel >= 3,
            "max_features_for_mantel",
            self.max_features_for_mantel,
            "an integer >= 3",
        )
        check(0 < self.svcca_keep <= 1, "svcca_keep", self.svcca_keep, "a number in (0, 1]")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(
            self.retrain_steps is None or self.retrain_steps >= 1,
            "retrain_steps",
            self.retrain_steps,
            "null (same as the squeezer) or an integer >= 1",
        )
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.plot_max_neurons >= 1, "plot_max_neurons", self.plot_max_neurons, "an integer >= 1")
        check(self.readout in READOUT_NAMES, "readout", self.readout, " | ".join(READOUT_NAMES))
        check(self.predict_epochs >= 1, "predict_epochs", self.predict_epochs, "an integer >= 1")
        check(self.predict_lr > 0, "predict_lr", self.predict_lr, "a number > 0")
        check(self.predict_batch_size >= 1, "predict_batch_size", self.predict_batch_size, "an integer >= 1")
        check(self.predict_dense_lr > 0, "predict_dense_lr", self.predict_dense_lr, "a number > 0")
        check(self.predict_min_steps >= 0, "predict_min_steps", self.predict_min_steps, "an integer >= 0")
        check(
            self.predict_max_train_rows is None or self.predict_max_train_rows >= 2,
            "predict_max_train_rows",
            self.predict_max_train_rows,
            "null (all train rows) or an integer >= 2",
        )
        check(self.predict_blocks >= 2, "predict_blocks", self.predict_blocks, "an integer >= 2")
        check(self.n_bootstrap >= 1, "n_bootstrap", self.n_bootstrap, "an integer >= 1")
        check(self.predictivity_ridge >= 0, "predictivity_ridge", self.predictivity_ridge, "a number >= 0")
        check(
            self.predictivity_train_rows is None or self.predictivity_train_rows >= 2,
            "predictivity_train_rows",
            self.predictivity_train_rows,
            "null (all train rows) or an integer >= 2",
        )
        check(
            0 <= self.sharing_threshold_frac < 1,
            "sharing_threshold_frac",
            self.sharing_threshold_frac,
            "a number in [0, 1)",
        )


TMS_MODELS = ("tms", "tied", "untied")


@dataclass
class TMSConfig:
    """params.yaml section `tms`: the Toy Models of Superposition reproduction (stage `tms`,
    `neural_codec.analysis.tms`), trained on TMS's synthetic features, no SAE.

    - models: which codecs ("tms" = tied + linear hidden, TMS's own model; "tied", "untied" =
      the project's ReLU-hidden Squeezers); an untrained TMS model is always added as a control.
    - pentagon_n, pentagon_m, pentagon_density, pentagon_seeds: the pentagon setting (density =
      1 - S, the probability a feature is on), over this many seeds.
    - importance_n, importance_m, importance_decay, importance_densities: I_i = decay^i, swept.
    - uniform_n, uniform_m, uniform_densities: uniform importance, D* against 1 / (1 - S).
    - uniform_seeds: the uniform sweep trains the TMS model (and takes its untrained start) from
      this many seeds, and reports the fraction of seeds each line is found in; the tied and
      untied Squeezers train from one (run time). Each density also carries the untrained
      control (the blind null of the line control).
    - importance_seeds: the importance sweep trains each model from this many seeds and keeps
      the one with the lowest loss on fresh held-out TMS data (TMS keeps the best of several
      instances; a single run can stall in a local minimum).
    - line_half_width, line_flank_width: the line windows of this stage (the geometry section's
      are for SAE features), scaled to the measured spread of trained TMS features around their
      fraction. With I_i = 0.7^i the two members of a digon have unequal importance, so unequal
      norms a > b, and sit at D = a^2 / (a^2 + b^2) and b^2 / (a^2 + b^2): an exact antipodal
      pair (the two D sum to 1 to 0.001) spread over 0.476-0.523 at 1 - S = 0.1. A +-0.01
      window cuts such a digon's members apart; +-0.025 holds them.
    - n_rows: training rows per codec; steps, lr, batch_size: the Squeezer's AdamW; seed: data.
    The other geometry statistics use the `geometry` section, as the geometry stage does.
    """

    models: list[str] = field(default_factory=lambda: list(TMS_MODELS))
    pentagon_n: int = 5
    pentagon_m: int = 2
    pentagon_density: float = 0.05
    pentagon_seeds: int = 5
    importance_n: int = 20
    importance_m: int = 5
    importance_decay: float = 0.7
    importance_densities: list[float] = field(default_factory=lambda: [0.3, 0.1, 0.03, 0.01])
    uniform_n: int = 80
    uniform_m: int = 20
    uniform_densities: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.24, 0.22, 0.1, 0.01])
    uniform_seeds: int = 3
    importance_seeds: int = 2
    line_half_width: float = 0.025
    line_flank_width: float = 0.05
    n_rows: int = 20000
    steps: int = 1500
    lr: float = 0.01
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for mname in self.models:
            check(
                mname in TMS_MODELS, "tms.models", self.models, "a list drawn from " + ", ".join(TMS_MODELS)
            )
        for key in ("pentagon_n", "pentagon_m", "importance_n", "importance_m", "uniform_n", "uniform_m"):
            check(getattr(self, key) >= 1, f"tms.{key}", getattr(self, key), "an integer >= 1")
        check(self.pentagon_seeds >= 1, "tms.pentagon_seeds", self.pentagon_seeds, "an integer >= 1")
        check(self.importance_seeds >= 1, "tms.importance_seeds", self.importance_seeds, "an integer >= 1")
        check(self.uniform_seeds >= 1, "tms.uniform_seeds", self.uniform_seeds, "an integer >= 1")
        check(0 < self.line_half_width < 0.5, "tms.line_half_width", self.line_half_width, "in (0, 0.5)")
        check(0 < self.line_flank_width < 0.5, "tms.line_flank_width", self.line_flank_width, "in (0, 0.5)")
        dens = [self.pentagon_density, *self.importance_densities, *self.uniform_densities]
        check(all(0 < p <= 1 for p in dens), "tms densities", dens, "numbers in (0, 1] (1 - S)")
        check(0 < self.importance_decay <= 1, "tms.importance_decay", self.importance_decay, "in (0, 1]")
        check(self.n_rows >= 1, "tms.n_rows", self.n_rows, "an integer >= 1")
        check(self.steps >= 1, "tms.steps", self.steps, "an integer >= 1")
        check(self.lr > 0 and math.isfinite(self.lr), "tms.lr", self.lr, "a finite number > 0")
        check(self.batch_size >= 1, "tms.batch_size", self.batch_size, "an integer >= 1")
        check(self.seed >= 0, "tms.seed", self.seed, "an integer >= 0")


@dataclass
class SeedsConfig:
    """params.yaml section `seeds`: the Squeezer over seeds, every headline as mean [95% CI].

    - n_seeds: Squeezers trained from seeds squeezer.seed + 0 .. n_seeds - 1 (seed + 0 is the
      main Squeezer, reloaded, not retrained), each with its untrained null at the same seed.
      The headlines (FVU, features represented, D*, lines, polytopes, circle correlation, logic
      lift and Cliff's delta, Hungarian |r|, CKA, SVCCA, Mantel r) go to metrics/intervals.json
      as {"mean", "ci_low", "ci_high", "n_seeds"} (Student-t over seeds); >= 3 for an interval.
      Each seed also trains its permuted-feature floor and refits the random-encoder baseline;
      "holds" = the interval clears every floor's (see neural_codec.pipeline.seeds).
    - steps: training steps of the extra seeds and of the permuted floors (null: squeezer.steps,
      the same schedule).
    - n_permutations: circle and Mantel permutations per seed (fewer than the single-seed
      stages': the interval, not the p-value, is what the seeds are for).
    - floor_permuted: train the permuted-feature floor per seed (false: cheap sweeps; the
      verdict then says the floor was not run instead of passing without it).
    - n_bootstrap: resamples of the ceilings that have one fit (the SAE's own explained
      variance, the features that fire): a bootstrap over held-out rows.
    - n_bootstrap_model: resamples of the model against its second seed (each recomputes the
      neuron covariances, a Hungarian matching and SVCCA, ~0.2 s).
    """

    n_seeds: int = 3
    steps: int | None = None
    n_permutations: int = 199
    floor_permuted: bool = True
    n_bootstrap: int = 200
    n_bootstrap_model: int = 50

    def __post_init__(self) -> None:
        check(self.n_seeds >= 1, "n_seeds", self.n_seeds, "an integer >= 1")
        check(self.steps is None or self.steps >= 1, "steps", self.steps, "null or an integer >= 1")
        check(self.n_permutations >= 1, "n_permutations", self.n_permutations, "an integer >= 1")
        check(isinstance(self.floor_permuted, bool), "floor_permuted", self.floor_permuted, "true or false")
        check(self.n_bootstrap >= 10, "n_bootstrap", self.n_bootstrap, "an integer >= 10")
        check(self.n_bootstrap_model >= 10, "n_bootstrap_model", self.n_bootstrap_model, "an integer >= 10")
