"""The stage chain source -> activations -> sae -> features with `source.kind: lm` on the tiny
offline model (a local model folder), run as the real stage scripts in a scratch directory."""

from __future__ import annotations

import contextlib
import io as io_
import os
import runpy
import subprocess
import traceback
from pathlib import Path

import lm_fixtures as fx
import numpy as np
import pytest
import yaml

from neural_codec import storage

REPO = Path(__file__).resolve().parents[2]
STAGES = ["source", "activations", "sae", "labels", "features"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run stages/<name>.py as `__main__` in `cwd` (in-process: one import of torch/SAELens
    for the whole chain instead of one per stage)."""
    err, out = io_.StringIO(), io_.StringIO()
    old = Path.cwd()
    code = 0
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            runpy.run_path(str(REPO / "stages" / f"{name}.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except Exception:
        code = 1
        err.write(traceback.format_exc())
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess([name], code, out.getvalue(), err.getvalue())


def params(root: Path) -> dict:
    return {
        "source": {
            "kind": "lm",
            "seed": 0,
            "lm": {
                "model_name": f"local:{root / 'model'}",
                "dataset": str(root / "text"),
                "sae_hook": "blocks.1.hook_resid_pre",
                "neuron_hook": "blocks.1.mlp.hook_post",
                "context_size": 32,
                "n_tokens_train": 3000,
                "n_tokens_heldout": 480,
                "batch_size": 8,
            },
        },
        "activations": {
            "n_train": 3000,
            "n_heldout": 480,
            "batch_size": 256,
            "rows_per_shard": 1000,
            "dtype": "float32",
        },
        "sae": {
            "architecture": "topk",
            "d_sae": 64,
            "k": 4,
            "training_samples": 20480,
            "batch_size": 256,
            "lr": 0.003,
            "seed": 0,
        },
        "features": {"top_k": 4, "batch_size": 256, "rows_per_shard": 1000},
    }


def run_chain(root: Path, p: dict, stages: list[str]) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The tiny offline model in `root`, `p` as root/work/params.yaml, and `stages` run there in
    order until one fails; (work dir, results by stage)."""
    fx.make_model(root)
    work = root / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    results = {}
    for stage in stages:
        results[stage] = run_stage(stage, work)
        if results[stage].returncode:
            break
    return work, results


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("lmpipe")
    work, results = run_chain(root, params(root), STAGES)
    return root, work, results


def test_stage_chain_runs_with_lm_source(chain):
    root, work, results = chain
    for stage in STAGES:
        r = results.get(stage)
        assert r is not None and r.returncode == 0, f"{stage} failed:\n{r.stderr[-3000:] if r else 'not run'}"
    act = storage.read_meta(work / "data/activations/train")
    assert (act["d_model"], act["n_neurons"], act["sae_hook"]) == (32, 64, "blocks.1.hook_resid_pre")
    assert np.load(work / "data/activations/neuron_readin.npy").shape == (32, 64)
    # blocks.1.hook_resid_pre is not layer 1's MLP input: recorded for compare_readout_ceiling
    assert storage.read_json(work / "metrics/activations.json")["sae_reads_neuron_input"] is False
    feats = storage.read_meta(work / "data/features/train")
    assert feats["n_rows"] == act["n_rows"] and feats["n_features"] == 64
    labels = storage.read_json(work / "data/labels/latent_labels.json")
    assert len(labels) == 64 and any(lab["top_tokens"] for lab in labels)
    assert isinstance(storage.read_json(work / "data/labels/families.json"), list)
    metrics = storage.read_json(work / "metrics/sae.json")
    assert 0 < metrics["l0"] <= 4 + 1e-6
    ce = metrics["lm"]["ce"]
    assert ce["ce_zero_ablation"] > ce["ce_clean"] and np.isfinite(ce["ce_loss_score_sae"])


def test_bad_lm_params_fail_at_once_by_key(chain, tmp_path):
    root, _, _ = chain
    p = params(root)
    p["source"]["lm"]["neuron_hook"] = "blocks.1.mlp.hook_pre"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    r = run_stage("source", tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.returncode != 0 and "source.lm.neuron_hook" in r.stderr
    assert not (tmp_path / "data" / "source").exists()


def test_pretrained_sae_from_disk_sets_the_hook(chain, tmp_path):
    """sae.path: the activations stage reads the SAE's own hook (source.lm.sae_hook: null)."""
    root, _, _ = chain
    fx.random_sae(root / "sae0", 32, 48, "blocks.0.hook_resid_pre")
    p = params(root)
    p["source"]["lm"]["sae_hook"] = None
    p["sae"] = {"path": str(root / "sae0")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    for stage in ["source", "activations", "sae", "labels"]:
        r = run_stage(stage, tmp_path)
        assert r.returncode == 0, f"{stage}:\n{r.stderr[-3000:]}"
    assert storage.read_meta(tmp_path / "data/activations/train")["sae_hook"] == "blocks.0.hook_resid_pre"
    assert storage.read_json(tmp_path / "data/sae/cfg.json")["d_sae"] == 48
    assert len(storage.read_json(tmp_path / "data/labels/latent_labels.json")) == 48
