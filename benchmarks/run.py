"""Throughput, memory and scaling of the Neural Codec's hot paths, against naive implementations.

Run from the repository root, as a module (so `benchmarks` is importable; `neural_codec` is the
installed package):

    python -m benchmarks.run            # real scale: n = 24,576, k = 32, M = 768, batch 1024
    python -m benchmarks.run --quick    # CI size (seconds), same code paths

Prints a markdown table and writes `benchmarks/results/latest.json` (every figure, the machine,
torch threads and load average), `benchmarks/results/scaling_*.csv` and `scaling.png` (`--quick`:
`latest_quick.json`, `scaling_*_quick.csv`, `scaling_quick.png`, so a CI-size run never overwrites
the real-scale results). `--only squeezer,sampled,...` runs a subset of the sections and merges
them into the existing results file.

Why ratios: the machine may be shared, so absolute numbers are noisy. Every "ours vs naive"
figure is measured in the same process, interleaved (ours, naive, naive, ours, ...) and reported
as the ratio of medians (and, beside it, of the best repetitions: the least disturbed by bursts).
What is timed is stated next to each figure in the JSON (`method`).

Layout: `benchmarks/harness.py` (sizes, synthetic inputs, timing, memory, results file and table),
`benchmarks/naive.py` (the naive reference implementations), `benchmarks/cases/<section>.py` (one
per section below), this file (the command line only).

Sections
- peak: float32 torch.mm of 2048^3, GFLOP/s (the machine's practical matmul peak; always run).
- squeezer: one training step (forward, backward, AdamW) at batch B. Ours: embedding-bag encoder
  on the (B, k) pairs, `squeezer_loss` (exact or sampled), fused AdamW (`make_optimizer`). Naive:
  the straightforward dense PyTorch model (densified (B, n) input, nn.Linear encoder and decoder,
  dense (B, n) loss, torch.optim.AdamW defaults). FLOPs per sample (ours, exact):
  3 x (2 k M + 2 M n) (encoder gather-sum + decoder matmul; backward ~ 2 x forward).
- sampled: the unbiased sampled-output loss (`SqueezerConfig.loss_sample`): speed-up against the
  exact loss, and its loss / gradient error against the exact loss on the same batch.
- cooccurrence: `neural_codec.analysis.logic.cooccurrence` (sparse B_U^T B_U per batch) over N rows for
  the number of pairs the logic stage asks for at this scale; naive: a per-pair loop over dense
  boolean columns (affine in rows from two subset sizes) and a dense B^T B accumulated per batch
  (one batch timed), each checked equal to ours. Peak memory by
  tracemalloc (numpy / scipy allocations).
- extraction: `run_with_cache(names_filter=<2 hooks>, stop_at_layer=...)` as in
  `neural_codec.source.lm.extract.extract_activations` against a naive `run_with_cache` of every hook over the
  whole model; tokens/s.
- memory: peak RSS (VmHWM) of fresh child processes doing two Squeezer steps, ours vs naive,
  against a child that only builds the inputs.
- streaming: peak RSS of Squeezer training (fresh child processes) on train splits 4x apart in
  rows, streamed shard by shard through the shuffle buffer (`squeezer.buffer_rows`) against the
  in-memory path (the whole split loaded): flat against linear.
- convergence: held-out FVU against training wall-clock (evaluation off the clock) for ours
  exact, ours sampled and the naive dense Squeezer, stepped in lockstep from the same init on
  the same minibatches, on a planted code (top-k of z @ D); time to a target FVU (the exact run's
  final FVU + 5%) and its ratios. Writes `convergence.csv` / `convergence.png`.
- scaling: Squeezer step time against n (epoch time = steps x median step time) and measured
  time per epoch against N.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.cases.convergence import bench_convergence, write_convergence
from benchmarks.cases.cooccurrence import bench_cooccurrence
from benchmarks.cases.extraction import bench_extraction
from benchmarks.cases.memory import bench_memory
from benchmarks.cases.peak import matmul_peak
from benchmarks.cases.sampled import bench_sampled_accuracy
from benchmarks.cases.scaling import bench_scaling, write_scaling
from benchmarks.cases.squeezer import bench_squeezer
from benchmarks.cases.streaming import bench_streaming
from benchmarks.harness import RESULTS, machine, results_file, sizes, write_results

SECTIONS = (
    "squeezer",
    "sampled",
    "memory",
    "streaming",
    "cooccurrence",
    "extraction",
    "scaling",
    "convergence",
)
#: what a plain run measures: convergence trains three Squeezers for ~15-30 min, so only on request
DEFAULT = tuple(s for s in SECTIONS if s != "convergence")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: small n, M and rows (seconds)")
    ap.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but convergence)",
    )
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    args = ap.parse_args(argv)
    sz = sizes(args.quick)
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
        ("streaming", lambda: bench_streaming(sz, args.quick)),
        ("cooccurrence", lambda: bench_cooccurrence(sz)),
        ("extraction", lambda: bench_extraction(sz)),
        ("scaling", lambda: bench_scaling(sz)),
        ("convergence", lambda: bench_convergence(sz)),
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
    if "convergence" in r:
        write_convergence(r["convergence"], out_dir, "_quick" if args.quick else "")
    r["machine"]["load_average_end"] = list(os.getloadavg())
    r["total_s"] = time.perf_counter() - t_all
    r = write_results(results_file(out_dir, args.quick), r, only, SECTIONS)
    print(r["table_markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
