"""The report: one page (report/index.html, report/REPORT.md) that says whether the hypotheses held.

Why a library and not a template: every number on the page must be traceable to a metrics file.
The page is built from `Num`s (`report.metrics`), each of which carries its citation
(`squeeze.json:squeezer.fvu`) and the value read from that file; a missing file or key renders as
"n/a", never as a guess. Numbers are shown with 3 significant digits (`fmt`).

- `metrics`: reading the metrics files, citations, the number format
- `page`: the page model (sections of paragraphs, tables and figures)
- `verdicts`: the verdict table, one block per hypothesis (H1-H4), each measure beside its floors
  and ceilings; its outcome column is a comparison of the shown numbers
- `figures`: figures drawn from the stages' plot CSVs
- `sections`: the page's sections, and `build` (the whole page)
- `render`: Markdown and HTML, and `write_report` (the report stage's one call)
- `sweep`: FVU against M across experiments (`dvc exp show --json`, scripts/sweep_m.py)
"""
