"""peak: float32 torch.mm of 2048^3, GFLOP/s (the machine's practical matmul peak)."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.harness import interleaved, med


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
