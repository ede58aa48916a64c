"""The full-scale recipe's dry run: `configs/dry-run-gpt2-shape.yaml` (a GPT-2-shaped random
model, a 24,576-latent SAE, M = 3,072, a few steps and rows per stage) through the real `dvc
repro` of every stage, in a temporary clone of the repository; per-stage wall time and peak RSS
from the stages' own `timings/<stage>.json`.

    python -m benchmarks.dry_run              # -> benchmarks/results/dry_run.json
    python -m benchmarks.dry_run --keep DIR   # run in DIR (kept) instead of a temporary folder

Why a benchmark and not a test: it takes several minutes on 2 CPU cores (model load per stage,
the SAE and Squeezers at the real widths); a test would be a timed test in disguise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.harness import RESULTS, ROOT, machine
from neural_codec import storage

CONFIG = ROOT / "configs" / "dry-run-gpt2-shape.yaml"
SKIP_TOP = {"data", "metrics", "plots", "report", "timings", "dvc.lock"}
SKIP_ANY = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def apply_config(params: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """`section.key[.sub]: value` entries (a named configuration) written into params.yaml's tree;
    an unknown key fails here, as `dvc exp run -S` would leave it to the params check."""
    for dotted, value in flat.items():
        *path, last = dotted.split(".")
        node = params
        for p in path:
            if not isinstance(node.get(p), dict):
                raise KeyError(f"{CONFIG.name}: {dotted} names no section of params.yaml")
            node = node[p]
        if last not in node:
            raise KeyError(f"{CONFIG.name}: {dotted} is not a key of params.yaml")
        node[last] = value
    return params


def clone(dest: Path) -> None:
    """The tracked project without data, outputs, caches or the venv."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in SKIP_ANY or n.endswith(".egg-info")}
        if Path(directory).resolve() == ROOT:
            skip |= SKIP_TOP & set(names)
        if Path(directory).resolve() == ROOT / ".dvc":
            skip |= {"tmp", "cache"} & set(names)
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore)


def sh(cwd: Path, *args: str) -> str:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("GIT_AUTHOR_NAME", "dry-run")
    env.setdefault("GIT_COMMITTER_NAME", "dry-run")
    env.setdefault("GIT_AUTHOR_EMAIL", "dry-run@example.invalid")
    env.setdefault("GIT_COMMITTER_EMAIL", "dry-run@example.invalid")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


def dry_run(work: Path) -> dict[str, Any]:
    clone(work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    flat = yaml.safe_load(CONFIG.read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(apply_config(params, flat), sort_keys=False))
    sh(work, "git", "init", "-q")
    sh(work, "git", "add", "-A")
    sh(work, "git", "commit", "-qm", "dry run")
    sh(work, sys.executable, "-m", "neural_codec.params")
    t0 = time.perf_counter()
    log = sh(work, "dvc", "repro")
    wall = time.perf_counter() - t0
    stages = {}
    for f in sorted((work / "timings").glob("*.json")):
        stages[f.stem] = json.loads(f.read_text())
    sq = json.loads((work / "metrics" / "squeeze.json").read_text())
    sae = json.loads((work / "metrics" / "sae.json").read_text())
    return {
        "machine": machine(),
        "config": flat,
        "dvc_repro_wall_s": wall,
        "stages": stages,
        "stage_order": re.findall(r"Running stage '([^']+)'", log),
        "widths": {"d_model": 768, "d_sae": flat["sae.d_sae"], "M": flat["squeezer.M"]},
        "squeeze_metrics_keys": sorted(sq),
        "sae_metrics": {k: v for k, v in sae.items() if isinstance(v, (int, float))},
        "method": "dvc repro of every stage in a temporary clone with configs/dry-run-gpt2-shape.yaml "
        "applied to params.yaml; per stage wall_seconds and peak_rss_mb (ru_maxrss) from "
        "timings/<stage>.json written by neural_codec.stage",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--keep", default=None, help="run in this folder (kept) instead of a temporary one")
    ap.add_argument("--out", default=str(RESULTS / "dry_run.json"))
    args = ap.parse_args(argv)
    if args.keep:
        r = dry_run(Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp:
            r = dry_run(Path(tmp) / "repo")
    storage.write_json(args.out, r)
    print(f"dvc repro: {r['dvc_repro_wall_s']:.0f} s")
    for name in r["stage_order"]:
        s = r["stages"].get(name, {})
        print(
            f"  {name:12s} {s.get('wall_seconds', float('nan')):8.1f} s  {s.get('peak_rss_mb', float('nan')):8.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
