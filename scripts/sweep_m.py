"""FVU against M across DVC experiments: plots/sweep/fvu_vs_m.{csv,png}.

Run after a sweep, e.g.
    dvc exp run --queue -S 'squeezer.M=32,64,128,256' && dvc queue start   # then wait
    python scripts/sweep_m.py          # reads `dvc exp show --json`
    dvc plots show plots/sweep/fvu_vs_m.csv
Each finished experiment contributes one row: its squeezer.M and the held-out FVU of the Squeezer
and of every baseline (metrics/squeeze.json squeezer.fvu, metrics/baselines.json <method>.fvu). `--json FILE` reads a saved
`dvc exp show --json` instead of running dvc; `-A` passes --all-commits to dvc.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from neural_codec.report.sweep import parse_exp_show, write_sweep


def exp_show_json(all_commits: bool) -> list:
    cmd = ["dvc", "exp", "show", "--json", "--no-pager"] + (["--all-commits"] if all_commits else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="a saved `dvc exp show --json` output")
    ap.add_argument("-A", "--all-commits", action="store_true")
    ap.add_argument("--include-workspace", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("plots/sweep/fvu_vs_m.csv"))
    ap.add_argument("--png", type=Path, default=Path("plots/sweep/fvu_vs_m.png"))
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text()) if args.json else exp_show_json(args.all_commits)
    rows = parse_exp_show(data, include_workspace=args.include_workspace)
    if not rows:
        print("sweep_m: no finished experiment with squeezer.M and FVU metrics", file=sys.stderr)
        return 1
    write_sweep(rows, args.out, args.png)
    for r in rows:
        print(f"M={r['M']:<6} {r['experiment']:<24} squeezer FVU {r['squeezer']}  pca FVU {r['pca']}")
    print(f"sweep_m: wrote {args.out} and {args.png} ({len(rows)} experiments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
