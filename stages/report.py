"""Stage `report`: one page that says whether the hypotheses held, every number cited.

Reads metrics/*.json, data/logic/truth_tables.json and plots/<stage>/*.{csv,png} of every upstream
stage (no params of its own); writes report/REPORT.md, report/index.html (self-contained: figures
embedded as base64 PNGs), report/figures/*.png and report/fvu_at_m.csv, all at once (the report/
directory is swapped in atomically). A missing metrics file or key shows as "n/a".
See neural_codec.report.
"""

from __future__ import annotations

from neural_codec import paths
from neural_codec.report.render import summary, write_report


def main() -> None:
    r = write_report(paths.REPORT, paths.METRICS, paths.PLOTS, paths.TRUTH_TABLES)
    print(summary(r))


if __name__ == "__main__":
    from neural_codec.stage import run

    run("report", main)
