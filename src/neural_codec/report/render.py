"""Rendering the page: REPORT.md (figures linked from report/figures/) and index.html
(self-contained: every figure an embedded base64 PNG; every number a
`<span data-metric="<file>:<key>">`, so a test or a reader can check it against the metrics).
`write_report` builds the page and writes the report directory atomically.
"""

from __future__ import annotations

import base64
import html
import sys
from pathlib import Path

from neural_codec import paths, storage
from neural_codec.errors import ParamError
from neural_codec.report.controls import controls_table, positive_controls
from neural_codec.report.metrics import NA, Metrics, Num
from neural_codec.report.page import Block, Cell, Figure, Report, Table
from neural_codec.report.sections import build
from neural_codec.report.sweep import fvu_at_m

VERDICT_INTRO = (
    "Every number is read from `metrics/*.json` (3 significant digits; n/a = not in this run's "
    "metrics). Floors are nulls, controls and codes without superposition; ceilings are second "
    "seeds and the SAE itself. The outcome compares the shown numbers: a measure with a direction "
    "holds when the Squeezer beats every floor."
)


def plain(cell: Cell) -> str:
    """A cell as plain text (for the console)."""
    if isinstance(cell, Num):
        return cell.text
    if isinstance(cell, list):
        return "".join(plain(c) for c in cell)
    return cell


def summary(r: Report) -> str:
    """The verdict table as console lines: measure: value -> outcome."""
    return "\n".join(f"{plain(row[1])}: {plain(row[2])} -> {plain(row[5])}" for row in r.verdict.rows)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Num):
        return cell.text
    if isinstance(cell, list):
        return "".join(_md_cell(c) for c in cell)
    return cell.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _md_block(b: Block) -> str:
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Figure):
        return f"![{b.caption}](figures/{b.name})\n\n*{b.caption}*"
    return _md_cell(b)


CONTROLS_INTRO = (
    "Each analysis run on what the synthetic source planted, in this run (`metrics/controls.json`): "
    "a negative in the verdict below is only read against a pipeline that demonstrably sees. "
    "`expected` says whether this source plants the effect (the toy model plants no codec, so its "
    "compare row is the experiment's own negative, not a control)."
)
CONTROLS_INTRO_LM = (
    "A real model plants nothing in its features, so the rows here are the controls that hold on "
    "any source, from this run (`metrics/controls.json`): the TMS reproduction (planted truth "
    "through the same geometry code) and the predictability readout's dense ceiling (the neurons "
    "are an exact function of the input it reads, so it must fit them). The synthetic source's "
    "controls are the default run's (`git show main:metrics/controls.json`) and the planted "
    "codec's (docs/RESULTS-planted-codec.md)."
)


def render_markdown(r: Report) -> str:
    out = [f"# {r.title}", ""]
    if r.controls is not None:
        out += ["## Positive controls", "", r.controls_intro, "", _md_table(r.controls), ""]
    out += ["## Verdict", "", VERDICT_INTRO, "", _md_table(r.verdict), ""]
    for s in r.sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            out += [_md_block(b), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _inline_md(text: str) -> str:
    """Escape text, then the two inline Markdown marks the sections use: `code`, **bold**."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, Num):
        cls = "num na" if cell.text == NA else "num"
        return (
            f'<span class="{cls}" data-metric="{html.escape(cell.cite)}" '
            f'title="{html.escape(cell.cite)}">{html.escape(cell.text)}</span>'
        )
    if isinstance(cell, list):
        return "".join(_html_cell(c) for c in cell)
    return _inline_md(cell)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_inline_md(h)}</th>" for h in t.header)
    # in the verdict table a non-empty first cell starts a hypothesis: rule a line above it
    body = "".join(
        ('<tr class="start">' if t.css == "verdict" and row[0] else "<tr>")
        + "".join(f"<td>{_html_cell(c)}</td>" for c in row)
        + "</tr>"
        for row in t.rows
    )
    return f'<table class="{t.css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_block(b: Block) -> str:
    if isinstance(b, Table):
        return f'<div class="scroll">{_html_table(b)}</div>'
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline_md(b.caption)}</figcaption></figure>"
        )
    return f"<p>{_html_cell(b)}</p>"


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #333; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 13px; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
table.verdict td:nth-child(1) { max-width: 18em; font-weight: 600; }
table.verdict td:nth-child(3) { font-size: 15px; font-weight: 700; }
table.verdict tr.start td { border-top: 2px solid #666; }
.num { font-variant-numeric: tabular-nums; } .na { color: #b00; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; } nav a { margin-right: 1em; }
code { background: #f4f4f4; padding: 0 2px; }
"""


def render_html(r: Report) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in r.sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(r.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(r.title)}</h1>",
        f'<nav><a href="#verdict">Verdict</a> {nav}</nav>',
    ]
    if r.controls is not None:
        parts += [
            '<h2 id="controls">Positive controls</h2>',
            f"<p>{_inline_md(r.controls_intro)}</p>",
            _html_block(r.controls),
        ]
    parts += [
        '<h2 id="verdict">Verdict</h2>',
        f"<p>{_inline_md(VERDICT_INTRO)}</p>",
        _html_block(r.verdict),
    ]
    for s in r.sections:
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        parts += [_html_block(b) for b in s.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Writing the report directory
# --------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path = paths.REPORT,
    metrics_dir: str | Path = paths.METRICS,
    plots_dir: str | Path = paths.PLOTS,
    truth_tables: str | Path = paths.TRUTH_TABLES,
) -> Report:
    """Build the report and write out_dir/{REPORT.md, index.html, figures/*.png} atomically,
    with out_dir/fvu_at_m.csv (this run's M and FVUs, for `dvc plots diff` across experiments).

    A missing input file is warned about on stderr and named on the page; its numbers show as n/a.
    """
    if not Path(metrics_dir).is_dir():
        raise ParamError(f"missing upstream output {metrics_dir}/: run `dvc repro` from the repository root")
    m = Metrics.load(metrics_dir, truth_tables)
    for p in m.missing:
        print(f"report: warning: {p} not found; its numbers show as n/a", file=sys.stderr)
    r = build(m, plots_dir)
    controls = positive_controls(m)
    if controls:
        r.controls = controls_table(controls)
        r.controls_intro = CONTROLS_INTRO if m.get("source.json:kind") == "synthetic" else CONTROLS_INTRO_LM
    storage.write_json(Path(metrics_dir) / "controls.json", controls)
    with storage.atomic_dir(out_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the report is meant to be read
        (tmp / "figures").mkdir()
        for f in r.figures:
            (tmp / "figures" / f.name).write_bytes(f.png)
        (tmp / "REPORT.md").write_text(render_markdown(r))
        header, row = fvu_at_m(m)
        storage.write_csv(tmp / "fvu_at_m.csv", header, [row])
        (tmp / "index.html").write_text(render_html(r))
    return r
