"""Tiny configs and a stage runner shared by the stage-level and end-to-end tests."""

from __future__ import annotations

import copy
import os
import runpy
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_SYNTHETIC = {
    "n_features": 64,
    "d_model": 32,
    "n_neurons": 32,
    "max_prob": 0.1,
    "min_prob": 0.01,
    "exclusive_families": 2,
    "exclusive_family_size": 3,
    "cyclic_families": [7],
    "cyclic_prob": 0.15,
    "correlated_pairs": 2,
    "train_steps": 300,
    "train_batch_size": 256,
    "train_pool": 5000,
}

# the tms stage on small settings (~5 s, not ~80 s): every setting kind and model still runs
TINY_TMS = {
    "pentagon_seeds": 2,
    "importance_densities": [0.1],
    "uniform_n": 16,
    "uniform_m": 4,
    "uniform_densities": [1.0, 0.1],
    "uniform_seeds": 2,
    "n_rows": 3000,
    "steps": 300,
}

TINY_PARAMS: dict[str, Any] = {
    "source": {"kind": "synthetic", "seed": 0, "synthetic": TINY_SYNTHETIC},
    "activations": {"n_train": 20000, "n_heldout": 4000, "n_cooc": 20000, "batch_size": 2048,
                    "rows_per_shard": 8192},
    "sae": {"architecture": "topk", "d_sae": 128, "k": 3, "training_samples": 400_000,
            "batch_size": 512, "lr": 0.003},
    "features": {"top_k": 3, "min_value": 0.05},
    "tms": TINY_TMS,
}  # fmt: skip


#: the stages after features at test size (few steps, permutations and seeds): the e2e tests
TINY_DOWNSTREAM = {
    "squeezer": {"M": 16, "steps": 300, "batch_size": 512},
    "baselines": {"steps": 200, "batch_size": 512},
    "geometry": {"n_permutations": 200, "null_rows": 10000, "null_steps": 150},
    "logic": {"min_expected": 2.0},
    "compare": {"n_mantel_permutations": 99, "retrain_steps": 150, "max_features_for_mantel": 200},
    "seeds": {"n_seeds": 3, "steps": 150, "n_permutations": 49},
}


def tiny_params(**overrides: dict[str, Any]) -> dict[str, Any]:
    params = copy.deepcopy(TINY_PARAMS)
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    return params


def write_params(workdir: Path, params: dict[str, Any]) -> None:
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(workdir: Path, name: str) -> None:
    """Run stages/<name>.py as `python stages/<name>.py` would, with `workdir` as the repo root."""
    old = Path.cwd()
    os.chdir(workdir)
    try:
        runpy.run_path(str(REPO / "stages" / f"{name}.py"), run_name="__main__")
    finally:
        os.chdir(old)


def copy_repo(dest: Path) -> Path:
    """Copy the tracked project (no data, no venv, no recorded outputs) into dest for an
    isolated pipeline run. Outputs are skipped at the top level only (src/neural_codec/report is code)."""
    everywhere = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    top_level = {"data", "metrics", "plots", "report", "timings", "dvc.lock"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in everywhere or n.endswith(".egg-info")}
        if Path(directory).resolve() == REPO:
            skip |= top_level & set(names)
        return skip

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest
