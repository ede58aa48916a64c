"""What every stage script shares: a timed, memory-reported `main` with clean errors.

Bad params raise `ParamError` before any work, bad input files `DataError` (missing, truncated,
corrupt, NaN/inf); `run` turns either into one line on stderr and exit code 2 (no traceback to
scroll through), and Ctrl-C into one line and exit code 130. Atomic writes leave nothing behind
on failure, and what a killed run (SIGKILL) left (`.<name>.<pid>.*.tmp`) is swept at stage start.
A failed stage's old outputs may already be gone (DVC removes outputs before running a stage):
the error line says how to get them back (`dvc checkout`). On success it reports wall time and peak memory and
writes them, with whatever the stage passed to `record_timing`, to `timings/<stage>.json`: a file
DVC does not track, so `dvc metrics diff` shows results, never run-to-run timing noise.
Progress bars (`runtime.progress`, and SAELens' trainer bar) draw only on a terminal and never
when CI is set, so the logs DVC and CI capture hold no bar redraws.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from neural_codec import paths, storage
from neural_codec.errors import DataError, ParamError

_TIMINGS: dict[str, Any] = {}

#: where atomic writes put their temporaries (each directory and its sub-directories are swept)
TEMP_HOMES = (paths.DATA, paths.METRICS, paths.PLOTS, paths.REPORT, paths.TIMINGS)
#: DVC deletes a stage's outputs before running it; a failed run leaves them gone until restored
RESTORE_HINT = " (under dvc, `dvc checkout` restores the previous outputs)"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record_timing(key: str, value: Any) -> None:
    """Keep a speed figure (samples/s, seconds) for this stage's timings file, not its metrics."""
    _TIMINGS[key] = value


def run(name: str, main: Callable[[], None]) -> None:
    import torch

    # Our tensors are small: more intra-op threads than cores only adds contention.
    torch.set_num_threads(int(os.environ.get("NEURAL_CODEC_THREADS", "1")))
    _TIMINGS.clear()
    storage.sweep_stale_temps(*TEMP_HOMES)
    start = time.perf_counter()
    try:
        main()
    except DataError as err:  # its message already says what to run
        print(f"[{name}] error: {err}", file=sys.stderr)
        sys.exit(2)
    except ParamError as err:
        print(f"[{name}] error: {err}{RESTORE_HINT}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"[{name}] interrupted (Ctrl-C): no output was written{RESTORE_HINT}", file=sys.stderr)
        sys.exit(130)
    wall = time.perf_counter() - start
    rss = peak_rss_mb()
    storage.write_json(paths.TIMINGS / f"{name}.json", {"wall_seconds": wall, "peak_rss_mb": rss, **_TIMINGS})
    print(f"[{name}] done in {wall:.1f} s, peak memory {rss:.0f} MB")
