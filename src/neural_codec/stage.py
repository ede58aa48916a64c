"""What every stage script shares: a timed, memory-reported `main` with clean errors.

Bad params raise `ParamError` before any work; `run` turns it into one line on stderr and exit
code 2 (no traceback to scroll through), and reports wall time and peak memory on success.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable

from neural_codec.errors import ParamError


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(name: str, main: Callable[[], None]) -> None:
    import torch

    # Our tensors are small: more intra-op threads than cores only adds contention.
    torch.set_num_threads(int(os.environ.get("NEURAL_CODEC_THREADS", "1")))
    start = time.perf_counter()
    try:
        main()
    except ParamError as err:
        print(f"[{name}] error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"[{name}] done in {time.perf_counter() - start:.1f} s, peak memory {peak_rss_mb():.0f} MB")
