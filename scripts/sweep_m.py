"""FVU against M across DVC experiments: plots/sweep/fvu_vs_m.{csv,png}.

Run after a sweep, e.g.
    dvc exp run --queue -S 'squeezer.M=32,64,128,256' && dvc queue start   # then wait
    python scripts/sweep_m.py          # reads `dvc exp show --json`
    dvc plots show plots/sweep/fvu_vs_m.csv
Each value of M contributes one row (runs at the same M, e.g. `main` and an experiment at its M,
are merged: their mean, names joined with '+'): its squeezer.M and the held-out FVU of the Squeezer
and of every baseline (metrics/squeeze.json squeezer.fvu, metrics/baselines.json <method>.fvu). `--json FILE` reads a saved
`dvc exp show --json` instead of running dvc; `-A` passes --all-commits to dvc.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from neural_codec.report.sweep import one_row_per_m, parse_exp_show, write_sweep


class SweepError(Exception):
    """A one-line reason the sweep cannot be read."""


def exp_show_json(all_commits: bool) -> list:
    cmd = ["dvc", "exp", "show", "--json", "--no-pager"] + (["--all-commits"] if all_commits else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise SweepError(
            "dvc is not on PATH: activate the project's venv (. .venv/bin/activate), "
            "or pass --json FILE (a saved `dvc exp show --json`)"
        ) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SweepError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {last}")
    return parse_json(proc.stdout, "`dvc exp show --json` output")


def parse_json(text: str, what: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SweepError(f"{what} is not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise SweepError(f"{what} is not a `dvc exp show --json` list")
    return data


def read_json_file(path: Path) -> list:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SweepError(
            f"--json {path}: no such file (save one with `dvc exp show --json > {path}`)"
        ) from None
    except OSError as err:
        raise SweepError(f"--json {path}: cannot read ({err.strerror})") from None
    return parse_json(text, f"--json {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="a saved `dvc exp show --json` output")
    ap.add_argument("-A", "--all-commits", action="store_true")
    ap.add_argument("--include-workspace", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("plots/sweep/fvu_vs_m.csv"))
    ap.add_argument("--png", type=Path, default=Path("plots/sweep/fvu_vs_m.png"))
    args = ap.parse_args(argv)
    try:
        data = read_json_file(args.json) if args.json else exp_show_json(args.all_commits)
    except SweepError as err:
        print(f"sweep_m: error: {err}", file=sys.stderr)
        return 2
    runs = parse_exp_show(data, include_workspace=args.include_workspace)
    if not runs:
        print("sweep_m: no finished experiment with squeezer.M and FVU metrics", file=sys.stderr)
        return 1
    rows = one_row_per_m(runs)  # a baseline commit and an experiment at the same M: one point
    write_sweep(rows, args.out, args.png)
    for r in rows:
        print(f"M={r['M']:<6} {r['experiment']:<24} squeezer FVU {r['squeezer']}  pca FVU {r['pca']}")
    n_exp = sum(not r.get("baseline") for r in runs)
    print(
        f"sweep_m: wrote {args.out} and {args.png} ({len(rows)} values of M from {n_exp} experiments "
        f"and {len(runs) - n_exp} baseline commits)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
