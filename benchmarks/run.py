"""Throughput, memory and scaling of the Neural Codec's hot paths, against naive implementations.

Run from the repository root:

    python benchmarks/run.py            # real scale: n = 24,576, k = 32, M = 768, batch 1024
    python benchmarks/run.py --quick    # CI size (seconds), same code paths

Prints a markdown table and writes `benchmarks/results/latest.json` (every figure, the machine,
torch threads and load average), `benchmarks/results/scaling_*.csv` and `scaling.png` (`--quick`:
`latest_quick.json`, `scaling_*_quick.csv`, `scaling_quick.png`, so a CI-size run never overwrites
the real-scale results). `--only squeezer,sampled,...` runs a subset of the sections.

Why ratios: the machine may be shared, so absolute numbers are noisy. Every "ours vs naive"
figure is measured in the same process, interleaved (ours, naive, naive, ours, ...) and reported
as the ratio of medians (and, beside it, of the best repetitions: the least disturbed by bursts). What is timed is stated next to each figure in the JSON (`method`).

Sections
- peak: float32 torch.mm of 2048^3, GFLOP/s (the machine's practical matmul peak).
- squeezer: one training step (forward, backward, AdamW) at batch B. Ours: embedding-bag encoder
  on the (B, k) pairs, `squeezer_loss` (exact or sampled), fused AdamW (`make_optimizer`). Naive:
  the straightforward dense PyTorch model (densified (B, n) input, nn.Linear encoder and decoder,
  dense (B, n) loss, torch.optim.AdamW defaults). FLOPs per sample (ours, exact):
  3 x (2 k M + 2 M n) (encoder gather-sum + decoder matmul; backward ~ 2 x forward).
- sampled: the unbiased sampled-output loss (`SqueezerConfig.loss_sample`): speed-up against the
  exact loss, and its loss / gradient error against the exact loss on the same batch.
- cooccurrence: `neural_codec.logic.cooccurrence` (sparse B_U^T B_U per batch) over N rows for
  the number of pairs the logic stage asks for at this scale; naive: a per-pair loop over dense
  boolean columns (affine in rows from two subset sizes) and a dense B^T B accumulated per batch
  (one batch timed), each checked equal to ours. Peak memory by
  tracemalloc (numpy / scipy allocations).
- extraction: `run_with_cache(names_filter=<2 hooks>, stop_at_layer=...)` as in
  `neural_codec.lm.extract_activations` against a naive `run_with_cache` of every hook over the
  whole model; tokens/s.
- memory: peak RSS (VmHWM) of fresh child processes doing two Squeezer steps, ours vs naive,
  against a child that only builds the inputs.
- scaling: Squeezer step time against n (epoch time = steps x median step time) and measured
  time per epoch against N.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from neural_codec import storage  # noqa: E402
from neural_codec.config import SqueezerConfig  # noqa: E402
from neural_codec.squeezer import Squeezer, make_optimizer, squeezer_loss, train_squeezer  # noqa: E402
from neural_codec.storage import SparseFeatures  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    n: int = 24_576
    k: int = 32
    M: int = 768
    batch: int = 1024
    loss_sample: int = 2048
    reps: int = 4  # interleaved repetitions per timed variant (after one warm-up each)
    sample_draws: int = 8  # sampled-loss draws for the error figures
    cooc_rows: int = 1_000_000
    cooc_batch: int = 65_536
    cooc_pairs: int = 1_105_920  # M * 2 signs * C(16, 2) shared pairs * (1 + 5 controls)
    naive_pair_subset: int = 2_000  # pairs timed by the naive per-pair loop
    naive_pair_rows: int = 8_192  # rows of the dense boolean matrix it scans
    naive_gram_rows: int = 2048  # rows of one batch of the naive dense B^T B
    extract_batches: int = 1
    gpt2_shaped: bool = True
    scale_n: tuple[int, ...] = (2048, 4096, 8192, 16384, 24576, 32768)
    scale_N: tuple[int, ...] = (2048, 4096, 8192, 16384)
    scale_reps: int = 2
    epoch_rows: int = 1_000_000  # the N that epoch time against n is quoted for


QUICK = Sizes(
    n=4096,
    k=32,
    M=128,
    batch=256,
    loss_sample=512,
    reps=3,
    sample_draws=8,
    cooc_rows=131_072,
    cooc_batch=32_768,
    cooc_pairs=50_000,
    naive_pair_subset=500,
    naive_pair_rows=4096,
    naive_gram_rows=1024,
    extract_batches=1,
    gpt2_shaped=False,
    scale_n=(1024, 2048, 4096),
    scale_N=(1024, 2048, 4096),
    scale_reps=1,
    epoch_rows=100_000,
)


# --------------------------------------------------------------------------------------------
# Machine and timing helpers
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import scipy

    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall time of each callable, alternating between them (the order reverses every round, so
    neither side always runs first); `warmup` untimed rounds first."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def matmul_peak(size: int = 2048, reps: int = 7) -> dict[str, Any]:
    a, b = torch.randn(size, size), torch.randn(size, size)
    t = interleaved({"mm": lambda: torch.mm(a, b)}, reps, warmup=2)["mm"]
    flops = 2.0 * size**3
    return {
        "size": size,
        "gflops_median": flops / med(t) / 1e9,
        "gflops_best": flops / min(t) / 1e9,
        "method": f"float32 torch.mm {size}^3, {reps} reps, median and best",
    }


# --------------------------------------------------------------------------------------------
# Synthetic top-k features (heavy-tailed firing frequencies, like a real SAE)
# --------------------------------------------------------------------------------------------


def topk_features(N: int, n: int, k: int, seed: int = 0, zipf: float = 0.9) -> SparseFeatures:
    """N rows of <= k distinct features drawn with Zipf-like frequencies p_i ~ rank^-zipf
    (feature ids shuffled); repeated draws in a row become padding (val = 0)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1) ** zipf
    cdf = np.cumsum(p[rng.permutation(n)])
    cdf /= cdf[-1]
    idx = np.empty((N, k), np.int32)
    val = np.empty((N, k), np.float32)
    step = 1 << 16
    for s in range(0, N, step):
        e = min(N, s + step)
        block = np.minimum(np.searchsorted(cdf, rng.random((e - s, k)), side="right"), n - 1).astype(np.int32)
        block.sort(axis=1)
        v = rng.gamma(2.0, 0.5, (e - s, k)).astype(np.float32) + 1e-3
        v[:, 1:][block[:, 1:] == block[:, :-1]] = 0.0
        idx[s:e], val[s:e] = block, v
    return SparseFeatures(idx, val, n)


# --------------------------------------------------------------------------------------------
# Squeezer: ours vs naive dense PyTorch
# --------------------------------------------------------------------------------------------


class NaiveSqueezer(nn.Module):
    """What one would write first: dense input, nn.Linear encoder and decoder."""

    def __init__(self, n: int, M: int):
        super().__init__()
        self.enc = nn.Linear(n, M)
        self.dec = nn.Linear(M, n)

    @classmethod
    def like(cls, model: Squeezer) -> NaiveSqueezer:
        """The same function as an (untied) `Squeezer`, for like-for-like comparisons."""
        out = cls(model.n_features, model.M)
        with torch.no_grad():
            out.enc.weight.copy_(model.W_enc.T)
            out.enc.bias.copy_(model.b_enc)
            out.dec.weight.copy_(model.W_dec.T)
            out.dec.bias.copy_(model.b_dec)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dec(torch.relu(self.enc(x))))


def naive_loss(
    model: NaiveSqueezer, idx: torch.Tensor, val: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    x = torch.zeros(idx.shape[0], model.enc.in_features).scatter_add_(
        1, idx.long(), val
    )  # densify (padding adds 0)
    return (weights * (x - model(x)) ** 2).sum(1).mean()


def squeezer_flops_per_sample(n: int, M: int, k: int, decoded: int | None = None) -> float:
    """3 x forward: encoder gather-sum 2kM, decoder 2M x (outputs decoded)."""
    return 3.0 * (2 * k * M + 2 * M * (n if decoded is None else decoded))


def _train_step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> float:
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().item()


def make_batch(sz: Sizes, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    f = topk_features(sz.batch, sz.n, sz.k, seed)
    return torch.from_numpy(f.idx.astype(np.int64)), torch.from_numpy(f.val)


def bench_squeezer(sz: Sizes, peak: float) -> dict[str, Any]:
    idx, val = make_batch(sz)
    w = torch.ones(sz.n)
    gen = torch.Generator().manual_seed(0)
    ours = Squeezer(sz.n, sz.M, generator=gen)
    naive = NaiveSqueezer.like(ours)
    ours_s = Squeezer(sz.n, sz.M, generator=torch.Generator().manual_seed(0))
    opt_o = make_optimizer(list(ours.parameters()), 1e-4, 0.0)
    opt_s = make_optimizer(list(ours_s.parameters()), 1e-4, 0.0)
    opt_n = torch.optim.AdamW(naive.parameters(), lr=1e-4, weight_decay=0.0)
    sgen = torch.Generator().manual_seed(1)
    fns = {
        "ours_exact": lambda: _train_step(lambda: squeezer_loss(ours, idx, val, w), opt_o),
        "naive_dense": lambda: _train_step(lambda: naive_loss(naive, idx, val, w), opt_n),
        "ours_sampled": lambda: _train_step(
            lambda: squeezer_loss(ours_s, idx, val, w, sz.loss_sample, sgen), opt_s
        ),
    }
    times = interleaved(fns, sz.reps)
    B = sz.batch
    fl = squeezer_flops_per_sample(sz.n, sz.M, sz.k)
    fl_s = squeezer_flops_per_sample(sz.n, sz.M, sz.k, decoded=sz.loss_sample + sz.k)
    out: dict[str, Any] = {
        "sizes": {"n": sz.n, "k": sz.k, "M": sz.M, "batch": B, "loss_sample": sz.loss_sample},
        "flops_per_sample_exact": fl,
        "flops_per_sample_sampled": fl_s,
    }
    for name, t in times.items():
        sps = B / med(t)
        useful = fl_s if name == "ours_sampled" else fl
        out[name] = {
            "step_s_median": med(t),
            "step_s_all": t,
            "samples_per_s": sps,
            "gflops": sps * useful / 1e9,
            "frac_of_matmul_peak": sps * useful / 1e9 / peak,
        }
    out["ratio_ours_exact_vs_naive"] = med(times["naive_dense"]) / med(times["ours_exact"])
    out["ratio_ours_sampled_vs_naive"] = med(times["naive_dense"]) / med(times["ours_sampled"])
    out["speedup_sampled_vs_exact"] = med(times["ours_exact"]) / med(times["ours_sampled"])
    # best-of ratios: the least-disturbed repetition of each (robust to bursts on a shared machine)
    out["ratio_ours_exact_vs_naive_best"] = min(times["naive_dense"]) / min(times["ours_exact"])
    out["ratio_ours_sampled_vs_naive_best"] = min(times["naive_dense"]) / min(times["ours_sampled"])
    out["speedup_sampled_vs_exact_best"] = min(times["ours_exact"]) / min(times["ours_sampled"])
    out["method"] = (
        "one training step (forward+backward+optimizer) on the same batch, "
        f"{sz.reps} interleaved reps after 1 warm-up, medians; GFLOP/s counts useful FLOPs "
        "3*(2kM+2Mn) per sample (sampled: n -> loss_sample + k)"
    )
    return out


def _grads(model: Squeezer, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def bench_sampled_accuracy(sz: Sizes) -> dict[str, Any]:
    """Sampled vs exact loss and gradient on one batch, at initialisation (b_dec = 0, so about
    half the inactive outputs are > 0 and carry most of the loss: the hard case for sampling)."""
    idx, val = make_batch(sz, seed=1)
    w = torch.ones(sz.n)
    model = Squeezer(sz.n, sz.M, generator=torch.Generator().manual_seed(0))
    exact = squeezer_loss(model, idx, val, w)
    g_exact = _grads(model, exact)
    sgen = torch.Generator().manual_seed(2)
    losses, rel_g, cos = [], [], []
    g_sum = torch.zeros_like(g_exact)
    for _ in range(sz.sample_draws):
        ls = squeezer_loss(model, idx, val, w, sz.loss_sample, sgen)
        g = _grads(model, ls)
        ls = ls.detach()
        g_sum += g
        losses.append(ls.item())
        rel_g.append(float((g - g_exact).norm() / g_exact.norm()))
        cos.append(float(F.cosine_similarity(g, g_exact, dim=0)))
    L = exact.item()
    g_mean = g_sum / sz.sample_draws
    rel_l = [abs(x - L) / L for x in losses]
    return {
        "exact_loss": L,
        "sampled_loss_mean": float(np.mean(losses)),
        "draws": sz.sample_draws,
        "loss_rel_error_single_draw_median": med(rel_l),
        "loss_rel_error_of_mean": abs(float(np.mean(losses)) - L) / L,
        "loss_rel_std_single_draw": float(np.std(losses)) / L,
        "grad_rel_error_single_draw_median": med(rel_g),
        "grad_cosine_single_draw_median": med(cos),
        "grad_rel_error_of_mean": float((g_mean - g_exact).norm() / g_exact.norm()),
        "method": "same model and batch; relative errors |L_s - L| / L and ||g_s - g|| / ||g|| over all "
        "parameters; 'of_mean' averages the draws (shrinks like 1/sqrt(draws) if unbiased)",
    }


# --------------------------------------------------------------------------------------------
# Co-occurrence
# --------------------------------------------------------------------------------------------


def random_pairs(n: int, P: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, P)
    b = (a + rng.integers(1, n, P)) % n  # b != a
    return np.stack([np.minimum(a, b), np.maximum(a, b)], 1)


def naive_pair_counts(dense_cols: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per-pair loop over dense boolean columns (Fortran order: a column is contiguous)."""
    out = np.empty(len(pairs), np.int64)
    for p, (a, b) in enumerate(pairs):
        out[p] = np.count_nonzero(dense_cols[:, a] & dense_cols[:, b])
    return out


def naive_gram_step(acc: np.ndarray, feats: SparseFeatures) -> None:
    """One batch of the dense co-occurrence Gram: acc += B^T B (float32 BLAS) of the binarized batch."""
    dense = (feats.to_dense() > 0).astype(np.float32)
    acc += dense.T @ dense


def _traced(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak traced bytes above the start)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    res = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return res, secs, peak


def bench_cooccurrence(sz: Sizes) -> dict[str, Any]:
    from neural_codec.logic import cooccurrence

    t0 = time.perf_counter()
    feats = topk_features(sz.cooc_rows, sz.n, sz.k, seed=3)
    gen_s = time.perf_counter() - t0
    pairs = random_pairs(sz.n, sz.cooc_pairs)

    def stream(rows: int):
        return (feats[s : min(rows, s + sz.cooc_batch)] for s in range(0, rows, sz.cooc_batch))

    # ours over all rows, untraced (timing), then traced over 1 and 3 batches (memory is per batch)
    t0 = time.perf_counter()
    res = cooccurrence(stream(sz.cooc_rows), pairs)
    ours_s = time.perf_counter() - t0
    _, _, peak1 = _traced(lambda: cooccurrence(stream(sz.cooc_batch), pairs))
    _, _, peak3 = _traced(lambda: cooccurrence(stream(3 * sz.cooc_batch), pairs))

    # naive per-pair loop on a subset of pairs over R and 4R rows, extrapolated to all rows by the
    # affine fit through the two (a per-call cost must not be multiplied by the row count)
    sub_pairs = pairs[: sz.naive_pair_subset]
    loop_s = {}
    for rows in (sz.naive_pair_rows, 4 * sz.naive_pair_rows):
        sub = feats[:rows]
        dense_cols = np.asfortranarray(sub.to_dense() > 0)
        t0 = time.perf_counter()
        naive_counts = naive_pair_counts(dense_cols, sub_pairs)
        loop_s[rows] = time.perf_counter() - t0
        del dense_cols
        assert np.array_equal(cooccurrence([sub], sub_pairs).counts, naive_counts), (
            "naive and sparse co-occurrence disagree"
        )
    (r1, t1), (r2, t2) = sorted(loop_s.items())
    per_row = max((t2 - t1) / (r2 - r1), 0.0)
    pair_loop_extrap = (t1 + per_row * (sz.cooc_rows - r1)) * (sz.cooc_pairs / sz.naive_pair_subset)

    # naive dense B^T B accumulated batch by batch (acc += D^T D, BLAS): time one batch step,
    # times the number of batches; the n x n accumulator is allocated once, outside the timing
    gsub = feats[: sz.naive_gram_rows]
    acc = np.zeros((sz.n, sz.n), np.float32)
    _, gram_s, gram_peak = _traced(lambda acc=acc: naive_gram_step(acc, gsub))
    a, b = pairs[:1000].T
    assert np.array_equal(np.rint(acc[a, b]).astype(np.int64), cooccurrence([gsub], pairs[:1000]).counts)
    acc_bytes = acc.nbytes
    del acc
    gram_extrap = gram_s * sz.cooc_rows / sz.naive_gram_rows
    return {
        "sizes": {
            "n": sz.n,
            "k": sz.k,
            "rows": sz.cooc_rows,
            "pairs": sz.cooc_pairs,
            "batch_rows": sz.cooc_batch,
        },
        "mean_active_per_row": float((feats.val > 0).sum(1).mean()),
        "pairs_found_cooccurring": int((res.counts > 0).sum()),
        "data_generation_s": gen_s,
        "ours_s": ours_s,
        "ours_rows_per_s": sz.cooc_rows / ours_s,
        "ours_peak_traced_bytes_1_batch": peak1,
        "ours_peak_traced_bytes_3_batches": peak3,
        "naive_pair_loop_s_subset": {str(r): t for r, t in loop_s.items()},
        "naive_pair_loop_subset": {"rows": [r1, r2], "pairs": sz.naive_pair_subset},
        "naive_pair_loop_s_extrapolated": pair_loop_extrap,
        "naive_dense_gram_s_one_batch": gram_s,
        "naive_dense_gram_batch_rows": sz.naive_gram_rows,
        "naive_dense_gram_s_extrapolated": gram_extrap,
        "naive_dense_gram_peak_traced_bytes": gram_peak + acc_bytes,
        "ratio_vs_naive_pair_loop": pair_loop_extrap / ours_s,
        "ratio_vs_naive_dense_gram": gram_extrap / ours_s,
        "method": "ours: logic.cooccurrence streamed in batches over all rows (data pre-generated, not "
        "timed); naive: (a) a per-pair loop over dense boolean columns, timed on a subset of "
        "pairs at R and 4R rows and extrapolated to all rows by the affine fit through the "
        "two, then linearly in pairs; (b) dense float32 B^T B accumulated batch by batch "
        "(numpy BLAS), one batch step timed, times the number of batches; both checked "
        "equal to ours on their subset; memory: tracemalloc peak (numpy/scipy buffers) "
        "above the start, data excluded (the dense accumulator counted for (b))",
    }


# --------------------------------------------------------------------------------------------
# Activation extraction
# --------------------------------------------------------------------------------------------


def _extract_case(
    name: str, model: Any, cfg: Any, batch: int, ctx: int, n_batches: int, reps: int
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(0, model.cfg.d_vocab, (batch, ctx), generator=g) for _ in range(n_batches)]
    hooks, stop = cfg.hooks, cfg.stop_at_layer

    def ours():
        for t in toks:
            with torch.no_grad():
                _, cache = model.run_with_cache(t, names_filter=hooks, stop_at_layer=stop)
            [cache[h].float().cpu().numpy() for h in hooks]
            del cache

    def naive():
        for t in toks:
            with torch.no_grad():
                _, cache = model.run_with_cache(t)
            [cache[h].float().cpu().numpy() for h in hooks]
            del cache

    # same activations either way
    with torch.no_grad():
        _, c1 = model.run_with_cache(toks[0], names_filter=hooks, stop_at_layer=stop)
        _, c2 = model.run_with_cache(toks[0])
    for h in hooks:
        torch.testing.assert_close(c1[h], c2[h])
    del c1, c2
    times = interleaved({"ours": ours, "naive": naive}, reps)
    n_tok = batch * ctx * n_batches
    return {
        "model": name,
        "hooks": hooks,
        "stop_at_layer": stop,
        "n_layers": model.cfg.n_layers,
        "tokens_per_rep": n_tok,
        "ours_tokens_per_s": n_tok / med(times["ours"]),
        "naive_tokens_per_s": n_tok / med(times["naive"]),
        "ratio_ours_vs_naive": med(times["naive"]) / med(times["ours"]),
        "ratio_ours_vs_naive_best": min(times["naive"]) / min(times["ours"]),
        "seconds_ours": times["ours"],
        "seconds_naive": times["naive"],
    }


def bench_extraction(sz: Sizes) -> dict[str, Any]:
    from neural_codec.config import LMSourceConfig
    from neural_codec.lm import load_model
    from neural_codec.offline_models import GLASSLLM_SOURCE

    out: dict[str, Any] = {
        "cases": [],
        "method": (
            "forward passes of random token batches; ours = run_with_cache(names_filter=2 hooks, "
            "stop_at_layer) as in lm.extract_activations, naive = run_with_cache() of every hook over "
            "the whole model; both copy the 2 hooks to numpy; interleaved reps, medians"
        ),
    }
    cfg = LMSourceConfig(**{**GLASSLLM_SOURCE, "dataset": "unused"})
    try:
        model = load_model(cfg)
        out["cases"].append(
            _extract_case(
                "glassllm (real weights, 4 layers, d_model 128)",
                model,
                cfg,
                4,
                128,
                sz.extract_batches,
                2 * sz.reps,
            )
        )
    except Exception as err:  # glassllm not installed: say so, go on
        out["cases"].append({"model": "glassllm", "skipped": f"{type(err).__name__}: {err}"})
    if sz.gpt2_shaped:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        torch.manual_seed(0)
        gcfg = HookedTransformerConfig(
            n_layers=12,
            d_model=768,
            n_heads=12,
            d_head=64,
            d_mlp=3072,
            d_vocab=50257,
            n_ctx=128,
            act_fn="gelu_new",
            normalization_type="LN",
        )
        model = HookedTransformer(gcfg).eval()
        cfg = LMSourceConfig(model_name="gpt2", dataset="unused")  # blocks.8 hooks (default)
        out["cases"].append(
            _extract_case(
                "gpt2-small shape (random weights, 12 layers, d_model 768)", model, cfg, 1, 64, 1, sz.reps + 2
            )
        )
        del model
    return out


# --------------------------------------------------------------------------------------------
# Peak memory of child processes (RSS)
# --------------------------------------------------------------------------------------------


def vm_hwm() -> int:
    """This process's peak resident set (VmHWM, bytes). Unlike ru_maxrss it is per address space,
    so a freshly exec'd child does not inherit its (possibly large) parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(kind: str, sz: Sizes) -> None:
    """Run in a fresh process: build the batch (and model), do two steps, print the peak RSS."""
    idx, val = make_batch(sz)
    w = torch.ones(sz.n)
    if kind == "naive":
        model = Squeezer(sz.n, sz.M, generator=torch.Generator().manual_seed(0))
        naive = NaiveSqueezer.like(model)
        del model
        opt = torch.optim.AdamW(naive.parameters(), lr=1e-4)
        for _ in range(2):
            _train_step(lambda: naive_loss(naive, idx, val, w), opt)
    elif kind in ("ours_exact", "ours_sampled"):
        model = Squeezer(sz.n, sz.M, generator=torch.Generator().manual_seed(0))
        opt = make_optimizer(list(model.parameters()), 1e-4, 0.0)
        s = sz.loss_sample if kind == "ours_sampled" else 0
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            _train_step(lambda: squeezer_loss(model, idx, val, w, s, gen), opt)
    elif kind != "inputs":
        raise ValueError(f"unknown child kind {kind!r}")
    print(json.dumps({"kind": kind, "vm_hwm_bytes": vm_hwm()}))


def peak_rss(kind: str, quick: bool) -> int:
    """Peak RSS (bytes) of a fresh child process running `child(kind)`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {kind!r} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["vm_hwm_bytes"])


def bench_memory(sz: Sizes, quick: bool) -> dict[str, Any]:
    base = peak_rss("inputs", quick)
    out: dict[str, Any] = {
        "inputs_only_peak_rss_bytes": base,
        "method": "peak RSS (VmHWM from /proc/self/status) of a fresh child process building "
        "the model and doing two training steps; 'above_inputs' subtracts a child that "
        "only imports and builds the batch",
    }
    for kind in ("ours_exact", "ours_sampled", "naive"):
        rss = peak_rss(kind, quick)
        out[kind] = {"peak_rss_bytes": rss, "above_inputs_bytes": rss - base}
    out["ratio_ours_exact_vs_naive_above_inputs"] = out["ours_exact"]["above_inputs_bytes"] / max(
        out["naive"]["above_inputs_bytes"], 1
    )
    return out


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def bench_scaling(sz: Sizes) -> dict[str, Any]:
    rows_n = []
    for n in sz.scale_n:
        s = min(sz.loss_sample, n // 2)
        szn = dataclasses.replace(sz, n=n, loss_sample=s)
        idx, val = make_batch(szn)
        w = torch.ones(n)
        m_e = Squeezer(n, sz.M, generator=torch.Generator().manual_seed(0))
        m_s = Squeezer(n, sz.M, generator=torch.Generator().manual_seed(0))
        o_e, o_s = (
            make_optimizer(list(m_e.parameters()), 1e-4, 0.0),
            make_optimizer(list(m_s.parameters()), 1e-4, 0.0),
        )
        g = torch.Generator().manual_seed(0)
        t = interleaved(
            {
                "exact": lambda m_e=m_e, o_e=o_e, idx=idx, val=val, w=w: _train_step(
                    lambda: squeezer_loss(m_e, idx, val, w), o_e
                ),
                "sampled": lambda m_s=m_s, o_s=o_s, idx=idx, val=val, w=w, s=s, g=g: _train_step(
                    lambda: squeezer_loss(m_s, idx, val, w, s, g), o_s
                ),
            },
            sz.scale_reps,
        )
        steps = math.ceil(sz.epoch_rows / sz.batch)
        rows_n.append(
            [n, s, med(t["exact"]), med(t["sampled"]), steps * med(t["exact"]), steps * med(t["sampled"])]
        )
        del m_e, m_s, o_e, o_s
    rows_N = []
    big = topk_features(max(sz.scale_N), sz.n, sz.k, seed=5)
    for N in sz.scale_N:
        cfg = SqueezerConfig(
            M=sz.M, batch_size=sz.batch, epochs=1.0, loss_sample=sz.loss_sample, lr=1e-4, seed=0
        )
        t0 = time.perf_counter()
        train_squeezer(big[:N], cfg)
        rows_N.append([N, cfg.n_steps(N), time.perf_counter() - t0])
    head_n = [
        "n_features",
        "loss_sample",
        "step_s_exact",
        "step_s_sampled",
        f"epoch_s_exact_N{sz.epoch_rows}",
        f"epoch_s_sampled_N{sz.epoch_rows}",
    ]
    head_N = ["n_samples", "steps", "epoch_s_sampled"]
    return {
        "vs_features": {"header": head_n, "rows": rows_n},
        "vs_samples": {
            "header": head_N,
            "rows": rows_N,
            "config": {"n": sz.n, "M": sz.M, "batch": sz.batch, "loss_sample": sz.loss_sample},
        },
        "method": f"vs n: median step time ({sz.scale_reps} reps after a warm-up), epoch = "
        f"ceil({sz.epoch_rows}/batch) steps; vs N: wall time of train_squeezer(epochs=1) "
        "including setup, sampled loss",
    }


def write_scaling(sc: dict[str, Any], out_dir: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vf, vs = sc["vs_features"], sc["vs_samples"]
    storage.write_csv(out_dir / f"scaling_features{suffix}.csv", vf["header"], vf["rows"])
    storage.write_csv(out_dir / f"scaling_samples{suffix}.csv", vs["header"], vs["rows"])
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    nf = [r[0] for r in vf["rows"]]
    ax[0].loglog(nf, [r[4] for r in vf["rows"]], "o-", label="exact loss")
    ax[0].loglog(nf, [r[5] for r in vf["rows"]], "s-", label="sampled loss")
    ax[0].set_xlabel("number of features n")
    ax[0].set_ylabel(f"seconds per epoch ({vf['header'][4].split('_N')[1]} samples)")
    ax[0].set_title("Squeezer epoch time vs features")
    ax[0].legend()
    ns = [r[0] for r in vs["rows"]]
    ax[1].loglog(ns, [r[2] for r in vs["rows"]], "o-", label="sampled loss (measured)")
    ax[1].set_xlabel("number of samples N")
    ax[1].set_ylabel("seconds per epoch")
    c = vs["config"]
    ax[1].set_title(f"Squeezer epoch time vs samples (n={c['n']}, M={c['M']})")
    ax[1].legend()
    for a in ax:
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with storage.atomic_path(out_dir / f"scaling{suffix}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def table(r: dict[str, Any]) -> str:
    lines = ["| benchmark | ours | naive | ours / naive |", "| --- | --- | --- | --- |"]
    sq = r.get("squeezer")
    if sq:
        s = sq["sizes"]
        lines.append(
            f"| Squeezer train, exact loss (n={s['n']:,}, k={s['k']}, M={s['M']}, batch {s['batch']}) | "
            f"{sq['ours_exact']['samples_per_s']:,.0f} samples/s | {sq['naive_dense']['samples_per_s']:,.0f} samples/s | "
            f"**{sq['ratio_ours_exact_vs_naive']:.2f}x** (best-of {sq['ratio_ours_exact_vs_naive_best']:.2f}x) |"
        )
        lines.append(
            f"| Squeezer train, sampled loss (s={s['loss_sample']}) | {sq['ours_sampled']['samples_per_s']:,.0f} samples/s | "
            f"{sq['naive_dense']['samples_per_s']:,.0f} samples/s | **{sq['ratio_ours_sampled_vs_naive']:.2f}x** (best-of {sq['ratio_ours_sampled_vs_naive_best']:.2f}x) |"
        )
        pk = r["peak"]["gflops_median"]
        lines.append(
            f"| achieved GFLOP/s, exact (matmul peak {pk:.0f}) | {sq['ours_exact']['gflops']:.1f} "
            f"({100 * sq['ours_exact']['frac_of_matmul_peak']:.0f}% of peak) | {sq['naive_dense']['gflops']:.1f} "
            f"({100 * sq['naive_dense']['frac_of_matmul_peak']:.0f}%) | |"
        )
    sa = r.get("sampled")
    if sa and sq:
        lines.append(
            f"| sampled vs exact loss: speed-up / loss error / grad error (1 draw; mean of {sa['draws']}) | "
            f"{sq['speedup_sampled_vs_exact']:.2f}x (best-of {sq['speedup_sampled_vs_exact_best']:.2f}x) / {100 * sa['loss_rel_error_single_draw_median']:.2g}% / "
            f"{100 * sa['grad_rel_error_single_draw_median']:.2g}% (cos {sa['grad_cosine_single_draw_median']:.3f}); "
            f"{100 * sa['loss_rel_error_of_mean']:.2g}% / {100 * sa['grad_rel_error_of_mean']:.2g}% | | |"
        )
    me = r.get("memory")
    if me:
        lines.append(
            f"| Squeezer step peak RSS above inputs | {_mb(me['ours_exact']['above_inputs_bytes'])} exact, "
            f"{_mb(me['ours_sampled']['above_inputs_bytes'])} sampled | {_mb(me['naive']['above_inputs_bytes'])} | "
            f"{me['ratio_ours_exact_vs_naive_above_inputs']:.2f}x memory |"
        )
    co = r.get("cooccurrence")
    if co:
        s = co["sizes"]
        lines.append(
            f"| co-occurrence, {s['pairs']:,} pairs over {s['rows']:,} rows (n={s['n']:,}, k={s['k']}) | "
            f"{_dur(co['ours_s'])} | per-pair loop {_dur(co['naive_pair_loop_s_extrapolated'])} (extrap.) | "
            f"**{co['ratio_vs_naive_pair_loop']:.0f}x** |"
        )
        lines.append(
            f"| co-occurrence vs dense B^T B | | {_dur(co['naive_dense_gram_s_extrapolated'])} (extrap.) | "
            f"**{co['ratio_vs_naive_dense_gram']:.0f}x** |"
        )
        lines.append(
            f"| co-occurrence peak traced memory | {_mb(co['ours_peak_traced_bytes_1_batch'])} (1 batch), "
            f"{_mb(co['ours_peak_traced_bytes_3_batches'])} (3 batches) | dense B^T B {_mb(co['naive_dense_gram_peak_traced_bytes'])} | |"
        )
    ex = r.get("extraction")
    if ex:
        for c in ex["cases"]:
            if "skipped" in c:
                lines.append(f"| extraction, {c['model']} | skipped | | |")
                continue
            lines.append(
                f"| activation extraction, {c['model']}, hooks to layer {c['stop_at_layer'] - 1} | "
                f"{c['ours_tokens_per_s']:,.0f} tokens/s | {c['naive_tokens_per_s']:,.0f} tokens/s | "
                f"**{c['ratio_ours_vs_naive']:.2f}x** (best-of {c['ratio_ours_vs_naive_best']:.2f}x) |"
            )
    sc = r.get("scaling")
    if sc:
        rows = sc["vs_features"]["rows"]
        last = rows[-1]
        lines.append(
            f"| epoch of {r['sizes']['epoch_rows']:,} samples at n={last[0]:,} (exact / sampled) | "
            f"{_dur(last[4])} / {_dur(last[5])} | | |"
        )
    m = r["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} threads; "
        f"load average {m['load_average_start'][0]:.1f} at start, {m.get('load_average_end', [float('nan')])[0]:.1f} at end; "
        f"total {r.get('total_s', float('nan')):.0f} s."
    )
    return "\n".join(lines)


SECTIONS = ("squeezer", "sampled", "memory", "cooccurrence", "extraction", "scaling")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: small n, M and rows (seconds)")
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sz = QUICK if args.quick else Sizes()
    if args.child:
        child(args.child, sz)
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; allowed: {', '.join(SECTIONS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    r: dict[str, Any] = {"machine": machine(), "quick": args.quick, "sizes": dataclasses.asdict(sz)}
    print(f"# machine: {r['machine']}", flush=True)
    r["peak"] = matmul_peak()
    print(f"# matmul peak {r['peak']['gflops_median']:.1f} GFLOP/s", flush=True)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("squeezer", lambda: bench_squeezer(sz, r["peak"]["gflops_median"])),
        ("sampled", lambda: bench_sampled_accuracy(sz)),
        ("memory", lambda: bench_memory(sz, args.quick)),
        ("cooccurrence", lambda: bench_cooccurrence(sz)),
        ("extraction", lambda: bench_extraction(sz)),
        ("scaling", lambda: bench_scaling(sz)),
    ]
    for name, fn in steps:
        if name not in only:
            continue
        t0 = time.perf_counter()
        r[name] = fn()
        r[name]["section_s"] = time.perf_counter() - t0
        print(f"# {name}: {r[name]['section_s']:.1f} s", flush=True)
        gc.collect()
    if "scaling" in r:
        write_scaling(r["scaling"], out_dir, "_quick" if args.quick else "")
    r["machine"]["load_average_end"] = list(os.getloadavg())
    r["total_s"] = time.perf_counter() - t_all
    r["table_markdown"] = table(r)
    out_file = out_dir / ("latest_quick.json" if args.quick else "latest.json")
    if set(only) != set(SECTIONS) and out_file.exists():
        # a subset run updates its sections of the last full results, keeping the others
        old = storage.read_json(out_file)
        merged = {**old, **{name: r[name] for name in only}}
        merged.setdefault("section_machine", {}).update({name: r["machine"] for name in only})
        r = {**merged, "table_markdown": table(merged)}
    storage.write_json(out_file, r)
    print(r["table_markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
