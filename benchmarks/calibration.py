"""Calibration of the report's tests at a larger setting than the test suite's.

    python -m benchmarks.calibration                 # LARGE size, alpha 0.01 and 0.05
    python -m benchmarks.calibration --quick         # the tests' TINY size, fewer seeds

Prints | test | false-positive rate at alpha over N seeds on independent features | power on
planted structure | and writes `benchmarks/results/calibration.json` (`calibration_quick.json`).
The logic test also runs on the Squeezer's own training rows (`cooccurrence_split: train`), the
biased option, for contrast. What each trial draws is in `neural_codec.analysis.calibration`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neural_codec.analysis import calibration as cal

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None, help="seeds for the cheap tests (default 200)")
    ap.add_argument("--logic-seeds", type=int, default=None, help="seeds for the logic test (default 20)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = cal.TINY if args.quick else cal.LARGE
    n_cheap = args.seeds or (40 if args.quick else 200)
    n_logic = args.logic_seeds or 20
    rows = [
        ("logic (held-out rows)", cal.logic_trial, n_logic, {}),
        ("logic (train rows: the biased option)", cal.logic_trial, n_logic, {"split": "train"}),
        ("mantel", cal.mantel_trial, n_cheap, {}),
        ("circle permutation", cal.circle_trial, n_cheap, {}),
        ("line test (Holm over fractions)", cal.line_trial, n_cheap, {}),
    ]
    out = {"size": size.__dict__, "tests": {}}
    lines = [
        "| test | seeds | false-positive rate at 0.01 | at 0.05 | power at 0.01 | at 0.05 | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, trial, n, kw in rows:
        t0 = time.perf_counter()
        r = cal.calibrate(trial, n, 0.05, size, **kw)
        fp01 = sum(p < 0.01 for p in r["null_p"]) / n
        pw01 = sum(p < 0.01 for p in r["planted_p"]) / n
        secs = time.perf_counter() - t0
        out["tests"][name] = {**r, "false_positive_rate_0.01": fp01, "power_0.01": pw01, "seconds": secs}
        lines.append(f"| {name} | {n} | {fp01:.3f} | {r['false_positive_rate']:.3f} | "
                     f"{pw01:.3f} | {r['power']:.3f} | {secs:.0f} |")  # fmt: skip
        print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("calibration_quick.json" if args.quick else "calibration.json")
    path.write_text(json.dumps(out, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
