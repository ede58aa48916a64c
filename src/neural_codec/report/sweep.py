"""FVU against M: this run's point (report/fvu_at_m.csv, for `dvc plots diff` across experiments)
and the sweep across experiments read from `dvc exp show --json` (scripts/sweep_m.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from neural_codec import storage
from neural_codec.plotting import png_bytes, pyplot
from neural_codec.report.metrics import BASELINES, Metrics

SWEEP_COLUMNS = ("squeezer", *BASELINES)  # FVU columns of the FVU-against-M plots


def fvu_at_m(m: Metrics) -> tuple[list[str], list[Any]]:
    """This run's point of the FVU-against-M plot: header and the one row (M, one FVU per method)."""
    vals = [m.get("squeeze.json:squeezer.fvu")] + [m.get(f"baselines.json:{b}.fvu") for b in BASELINES]
    M = m.get("squeeze.json:squeezer.M")
    return ["M", *SWEEP_COLUMNS], ["" if M is None else M] + ["" if v is None else v for v in vals]


def _walk_exp_show(entries: Any, baseline: bool = True) -> Iterable[tuple[dict[str, Any], bool]]:
    """Every revision in `dvc exp show --json` output, and whether it is a baseline (a commit such
    as `main`, not an experiment): baselines and their experiments."""
    for e in entries or []:
        if not isinstance(e, dict):
            continue
        yield e, baseline
        for exp in e.get("experiments") or []:
            yield from _walk_exp_show(exp.get("revs") if isinstance(exp, dict) else None, False)


def _dict(d: Any, key: str) -> dict[str, Any]:
    """d[key] if both are dicts, else {} (absent, null and malformed blocks read as empty)."""
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _file_data(data: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
    return _dict(_dict(_dict(data, kind), path), "data")


def parse_exp_show(
    entries: list[dict[str, Any]], include_workspace: bool = False, params_file: str = "params.yaml"
) -> list[dict[str, Any]]:
    """One row per finished experiment: M (params squeezer.M), its name, and the FVU of the
    Squeezer (metrics/squeeze.json squeezer.fvu) and of each baseline (metrics/baselines.json <m>.fvu).

    Revisions with an error, without metrics (queued, running, failed) or without M are skipped;
    a revision listed twice (a branch tip and the same commit as a baseline) counts once; the
    workspace is skipped unless `include_workspace` (it usually repeats HEAD).
    """
    rows: dict[str, dict[str, Any]] = {}
    for e, is_baseline in _walk_exp_show(entries):
        rev = e.get("rev")
        data = e.get("data")
        if not isinstance(data, dict) or e.get("error") or not rev:
            continue
        if rev == "workspace" and not include_workspace:
            continue
        squeezer = _dict(_file_data(data, "metrics", "metrics/squeeze.json"), "squeezer")
        base = _file_data(data, "metrics", "metrics/baselines.json")
        M = _dict(_file_data(data, "params", params_file), "squeezer").get("M", squeezer.get("M"))
        fvu = {"squeezer": squeezer.get("fvu")} | {b: _dict(base, b).get("fvu") for b in BASELINES}
        if not isinstance(M, int) or all(v is None for v in fvu.values()):
            continue
        key = data.get("rev") or rev
        name = e.get("name") or (rev if rev == "workspace" else str(rev)[:7])
        rows.setdefault(
            key, {"M": M, "experiment": name, "baseline": is_baseline and rev != "workspace", **fvu}
        )
    return sorted(rows.values(), key=lambda r: (r["M"], r["experiment"]))


def one_row_per_m(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge rows with the same M (a baseline commit and an experiment at its M, or repeats):
    each FVU is the mean over the merged rows that have it, `experiment` joins their names with
    '+', `n_runs` counts them, `baseline` is true only if every merged row is a baseline."""
    by_m: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_m.setdefault(r["M"], []).append(r)
    out = []
    for M, group in sorted(by_m.items()):
        merged: dict[str, Any] = {
            "M": M,
            "experiment": "+".join(r["experiment"] for r in group),
            "baseline": all(r.get("baseline", False) for r in group),
            "n_runs": len(group),
        }
        for c in SWEEP_COLUMNS:
            vals = [float(r[c]) for r in group if r.get(c) is not None]
            merged[c] = sum(vals) / len(vals) if vals else None
        out.append(merged)
    return out


def write_sweep(rows: list[dict[str, Any]], csv_path: str | Path, png_path: str | Path | None) -> None:
    """plots/sweep/fvu_vs_m.csv (M, experiment, one FVU column per method) and a PNG."""
    header = ["M", "experiment", *SWEEP_COLUMNS]
    table = [
        [r["M"], r["experiment"]] + ["" if r[c] is None else float(r[c]) for c in SWEEP_COLUMNS] for r in rows
    ]
    storage.write_csv(csv_path, header, table)
    if png_path is None:
        return
    fig, ax = pyplot().subplots(figsize=(6.4, 4))
    for j, c in enumerate(SWEEP_COLUMNS):
        pts = sorted((r["M"], r[c]) for r in rows if r[c] is not None)
        if pts:
            ax.plot(
                *zip(*pts, strict=False),
                "o-" if c == "squeezer" else "o--",
                color=f"C{3 if j == 0 else j - 1}",
                lw=2 if c == "squeezer" else 1,
                label=c,
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("M (synthetic neurons)")
    ax.set_ylabel("FVU of F (held-out)")
    ax.set_title("FVU against M across experiments", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = png_bytes(fig)
    with storage.atomic_path(png_path) as tmp:
        tmp.write_bytes(png)
