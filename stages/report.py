"""Stage `report`: one page that says whether the hypotheses held, every number cited.

Reads metrics/*.json and plots/<stage>/*.{csv,png} of every upstream stage (no params of its
own); writes report/REPORT.md, report/index.html (self-contained: figures embedded as base64
PNGs) and report/figures/*.png, all at once (the report/ directory is swapped in atomically).
A missing metrics file or key shows as "n/a". See neural_codec.report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from neural_codec.errors import ParamError
from neural_codec.report import STAGES, summary, write_report

METRICS = Path("metrics")
PLOTS = Path("plots")
OUT = Path("report")


def main() -> None:
    if not METRICS.is_dir():
        raise ParamError(f"missing upstream output {METRICS}/: run `dvc repro` from the repository root")
    for stage in STAGES:
        if not (METRICS / f"{stage}.json").exists():
            print(
                f"report: warning: {METRICS / stage}.json not found; its numbers show as n/a", file=sys.stderr
            )
    r = write_report(OUT, METRICS, PLOTS)
    print(summary(r))


if __name__ == "__main__":
    from neural_codec.stage import run

    run("report", main)
