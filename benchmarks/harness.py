"""What every benchmark case shares: sizes, synthetic inputs, interleaved timing, memory
measurement (tracemalloc, a child process's peak RSS), the machine description and the results
file (`latest.json`, a subset run merged into the last full one) with its markdown table."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.storage import SparseFeatures

ROOT = Path(__file__).resolve().parents[1]
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
    # convergence: held-out FVU against wall-clock (planted code: top-k of z @ D, z hidden_k of hidden)
    conv_train_rows: int = 262_144
    conv_heldout_rows: int = 4096
    conv_hidden: int = 256
    conv_hidden_k: int = 8
    conv_steps: int = 200  # lockstep steps of all three (the exact run's length: it sets the target)
    conv_extra_steps: int = 400  # at most this many more for a run that has not reached the target
    conv_eval_every: int = 10
    conv_lr: float = 0.003  # params.yaml's squeezer.lr
    conv_target_margin: float = 0.05  # target = exact's final FVU x (1 + margin)


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
    conv_train_rows=16_384,
    conv_heldout_rows=1024,
    conv_hidden=64,
    conv_hidden_k=4,
    conv_steps=40,
    conv_extra_steps=80,
    conv_eval_every=5,
)


def sizes(quick: bool) -> Sizes:
    """The CI-size (`--quick`) or the real-scale sizes."""
    return QUICK if quick else Sizes()


# --------------------------------------------------------------------------------------------
# Synthetic inputs: top-k features (heavy-tailed firing frequencies, like a real SAE)
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


def make_batch(sz: Sizes, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One Squeezer batch (batch, k) of feature ids (int64) and values, from `topk_features`."""
    f = topk_features(sz.batch, sz.n, sz.k, seed)
    return torch.from_numpy(f.idx.astype(np.int64)), torch.from_numpy(f.val)


def random_pairs(n: int, P: int, seed: int = 0) -> np.ndarray:
    """P random feature pairs (a, b), a < b, as a (P, 2) array."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, P)
    b = (a + rng.integers(1, n, P)) % n  # b != a
    return np.stack([np.minimum(a, b), np.maximum(a, b)], 1)


def train_step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> float:
    """One optimisation step on `loss_fn()` (forward, backward, `opt.step`); the loss value."""
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().item()


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


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


def traced(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak traced bytes above the start) of `fn()` under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    res = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return res, secs, peak


def vm_hwm() -> int:
    """This process's peak resident set (VmHWM, bytes). Unlike ru_maxrss it is per address space,
    so a freshly exec'd child does not inherit its (possibly large) parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def print_child_peak(kind: str) -> None:
    """The last line a memory child prints: its kind and `vm_hwm()`, as JSON."""
    print(json.dumps({"kind": kind, "vm_hwm_bytes": vm_hwm()}))


def child_peak_rss(module: str, args: list[str]) -> int:
    """Peak RSS (bytes) of a fresh `python -m <module> <args>` process (run from the repository
    root) whose last line of output is `print_child_peak`'s."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {args!r} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["vm_hwm_bytes"])


# --------------------------------------------------------------------------------------------
# Machine
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


# --------------------------------------------------------------------------------------------
# Results: the markdown table and latest.json
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
    """The markdown summary of a results dict (the sections it has)."""
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
    st = r.get("streaming")
    if st:
        small, large = st["rows"]
        ours = " / ".join(_mb(st["stream"][str(x)]["vm_hwm_bytes"]) for x in (small, large))
        whole = " / ".join(_mb(st["in_memory"][str(x)]["vm_hwm_bytes"]) for x in (small, large))
        lines.append(
            f"| Squeezer training peak RSS, {small:,} / {large:,} train rows (buffer {st['buffer_rows']:,}) | "
            f"{ours} streamed | {whole} in memory | growth {_mb(st['stream']['peak_growth_bytes'])} vs "
            f"{_mb(st['in_memory']['peak_growth_bytes'])} |"
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
    cv = r.get("convergence")
    if cv:
        s = cv["sizes"]

        def _t(x: float | None) -> str:
            return "not reached" if x is None else _dur(x)

        def _x(x: float | None) -> str:
            return "n/a" if x is None else f"**{x:.2f}x**"

        lines.append(
            f"| time to held-out FVU {cv['target_fvu']:.3g} (n={s['n']:,}, M={s['M']}), exact loss | "
            f"{_t(cv['ours_exact']['time_to_target_s'])} | {_t(cv['naive_dense']['time_to_target_s'])} | "
            f"{_x(cv['ratio_time_to_target_exact_vs_naive'])} |"
        )
        lines.append(
            f"| time to held-out FVU {cv['target_fvu']:.3g}, sampled loss (s={s['loss_sample']}) | "
            f"{_t(cv['ours_sampled']['time_to_target_s'])} | | {_x(cv['ratio_time_to_target_sampled_vs_naive'])} "
            f"(vs exact {_x(cv['ratio_time_to_target_sampled_vs_exact'])}) |"
        )
    m = r["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} threads; "
        f"load average {m['load_average_start'][0]:.1f} at start, {m.get('load_average_end', [float('nan')])[0]:.1f} at end; "
        f"total {r.get('total_s', float('nan')):.0f} s."
    )
    return "\n".join(lines)


def results_file(out_dir: Path, quick: bool) -> Path:
    """`latest.json`, or `latest_quick.json` for a CI-size run (never replaces the real-scale one)."""
    return out_dir / ("latest_quick.json" if quick else "latest.json")


def write_results(
    out_file: Path, r: dict[str, Any], only: Iterable[str], all_sections: Iterable[str]
) -> dict[str, Any]:
    """Add the markdown table to `r` and write it to `out_file`; a subset run (`only` is not every
    section) updates its sections of the existing file, keeping the others. Returns what was written."""
    only = list(only)
    r["table_markdown"] = table(r)
    if set(only) != set(all_sections) and out_file.exists():
        # a subset run updates its sections of the last full results, keeping the others
        old = storage.read_json(out_file)
        merged = {**old, **{name: r[name] for name in only}}
        merged.setdefault("section_machine", {}).update({name: r["machine"] for name in only})
        r = {**merged, "table_markdown": table(merged)}
    storage.write_json(out_file, r)
    return r
