"""memory: peak RSS (VmHWM) of fresh child processes doing two Squeezer steps, ours (exact and
sampled loss) vs `naive.NaiveSqueezer`, against a child that only builds the inputs.

Each child is this module run on its own (`python -m benchmarks.cases.memory <kind> [--quick]`),
so it imports only what a Squeezer step needs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from benchmarks.harness import Sizes, child_peak_rss, make_batch, print_child_peak, sizes, train_step
from benchmarks.naive import NaiveSqueezer, naive_loss
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer
from neural_codec.squeezer.train import make_optimizer

MODULE = "benchmarks.cases.memory"  # what a child runs: `python -m MODULE <kind> [--quick]`
KINDS = ("inputs", "ours_exact", "ours_sampled", "naive")


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
            train_step(lambda: naive_loss(naive, idx, val, w), opt)
    elif kind in ("ours_exact", "ours_sampled"):
        model = Squeezer(sz.n, sz.M, generator=torch.Generator().manual_seed(0))
        opt = make_optimizer(list(model.parameters()), 1e-4, 0.0)
        s = sz.loss_sample if kind == "ours_sampled" else 0
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            train_step(lambda: squeezer_loss(model, idx, val, w, s, gen), opt)
    elif kind != "inputs":
        raise ValueError(f"unknown child kind {kind!r}")
    print_child_peak(kind)


def peak_rss(kind: str, quick: bool) -> int:
    """Peak RSS (bytes) of a fresh child process running `child(kind)`."""
    return child_peak_rss(MODULE, [kind] + (["--quick"] if quick else []))


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one memory child: two Squeezer steps, then its peak RSS")
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    child(args.kind, sizes(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
