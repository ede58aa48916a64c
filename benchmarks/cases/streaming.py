"""streaming: peak RSS of Squeezer training at two train-split sizes 4x apart, streamed from shards
(`squeezer.buffer_rows` below the split) against the in-memory path (the whole split loaded).

Sparse feature shards (n, k of the sizes; Zipf-like firing frequencies, `harness.topk_features`
per 65,536-row shard, each shard its own seed) are written once to a temporary directory; each
training run is a fresh child process (`python -m benchmarks.cases.streaming <mode> <dir> ...`)
that opens the split as the squeeze stage does (`stream.open_train`), trains `steps` steps with
the sampled loss and prints its peak RSS (VmHWM, and `resource.getrusage` ru_maxrss).
Expected: streaming flat in the split size (a batch, the buffer and one shard), in-memory growing
linearly (the split, plus its int64/float32 training copies).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import ROOT, Sizes, topk_features, vm_hwm
from neural_codec import storage
from neural_codec.config import SqueezerConfig
from neural_codec.squeezer.stream import SparseShards, open_train
from neural_codec.squeezer.train import train_squeezer

MODULE = "benchmarks.cases.streaming"
SHARD_ROWS = 65_536


def write_split(directory: Path, n_rows: int, n: int, k: int) -> None:
    """A sparse split of `n_rows` rows in 65,536-row shards, generated a shard at a time."""
    w = storage.sparse_writer(directory, n, k, SHARD_ROWS)
    for i, s in enumerate(range(0, n_rows, SHARD_ROWS)):
        f = topk_features(min(SHARD_ROWS, n_rows - s), n, k, seed=i)
        w.append(idx=f.idx, val=f.val)
    w.close()


def child(mode: str, directory: str, steps: int, buffer_rows: int, sz: Sizes) -> dict[str, Any]:
    """In a fresh process: open the split (streamed or whole), train, report the peak RSS."""
    torch.set_num_threads(1)
    n_rows = int(storage.read_meta(directory)["n_rows"])
    buffer = buffer_rows if mode == "stream" else n_rows
    cfg = SqueezerConfig(
        M=sz.M, batch_size=sz.batch, steps=steps, loss_sample=sz.loss_sample, device="cpu", buffer_rows=buffer
    )
    t0 = time.perf_counter()
    train = open_train(directory, cfg.buffer_rows)
    streamed = isinstance(train, SparseShards)
    if streamed != (mode == "stream"):
        raise RuntimeError(f"{mode}: open_train gave {'shards' if streamed else 'the whole split'}")
    model, _ = train_squeezer(train, cfg, desc=f"{mode} {n_rows}")
    return {
        "mode": mode,
        "n_rows": n_rows,
        "buffer_rows": buffer,
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "samples_per_s": model.samples_per_s,
        "vm_hwm_bytes": vm_hwm(),
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_child(mode: str, directory: Path, steps: int, buffer_rows: int, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", MODULE, mode, str(directory), "--steps", str(steps)]
    cmd += ["--buffer-rows", str(buffer_rows)] + (["--quick"] if quick else [])
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"streaming child {mode} {directory} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_streaming(
    sz: Sizes, quick: bool, rows: tuple[int, int] | None = None, steps: int | None = None
) -> dict[str, Any]:
    small = rows[0] if rows else (25_000 if quick else 250_000)
    large = rows[1] if rows else 4 * small
    steps = steps or (50 if quick else 300)
    buffer_rows = min(small // 2, 131_072)
    out: dict[str, Any] = {
        "sizes": {"n": sz.n, "k": sz.k, "M": sz.M, "batch": sz.batch, "loss_sample": sz.loss_sample},
        "rows": [small, large],
        "buffer_rows": buffer_rows,
        "shard_rows": SHARD_ROWS,
        "steps": steps,
        "method": (
            "peak RSS (VmHWM; ru_maxrss beside it) of a fresh child process that opens the train split "
            "as the squeeze stage does (stream.open_train) and trains `steps` Squeezer steps (sampled loss, "
            "1 torch thread): 'stream' with squeezer.buffer_rows below the split (shard-order shuffle + "
            "shuffle buffer), 'in_memory' with buffer_rows = the split (loaded whole); rows 4x apart"
        ),
    }
    with tempfile.TemporaryDirectory(prefix="nc-streaming-") as tmp:
        for n_rows in (small, large):
            d = Path(tmp) / f"rows_{n_rows}"
            write_split(d, n_rows, sz.n, sz.k)
            for mode in ("stream", "in_memory"):
                r = run_child(mode, d, steps, buffer_rows, quick)
                out.setdefault(mode, {})[str(n_rows)] = r
                print(
                    f"# streaming {mode} {n_rows:,} rows: peak RSS {r['vm_hwm_bytes'] / 2**20:.0f} MB",
                    flush=True,
                )
    for mode in ("stream", "in_memory"):
        a, b = (out[mode][str(x)]["vm_hwm_bytes"] for x in (small, large))
        out[mode]["peak_ratio_large_vs_small"] = b / a
        out[mode]["peak_growth_bytes"] = b - a
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one streaming child: train on a split, print its peak RSS")
    ap.add_argument("mode", choices=("stream", "in_memory"))
    ap.add_argument("directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--buffer-rows", type=int, default=131_072)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from benchmarks.harness import sizes

    print(json.dumps(child(args.mode, args.directory, args.steps, args.buffer_rows, sizes(args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
