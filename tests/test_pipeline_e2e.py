"""The real `dvc repro` in a temporary git repo, on tiny params: the pipeline as researchers run it.

Checks: every stage's outputs and metrics exist; a second `dvc repro` runs nothing; `dvc repro -f`
gives byte-identical metrics;
`dvc exp run -S features.top_k=...` re-runs `features` and what follows, never the extraction or
SAE; `dvc exp run -S squeezer.M=...` re-runs only the Squeezer and what follows, and `dvc metrics
diff` / `dvc plots show` work on the result; an lm-source experiment runs every stage.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import TINY_DOWNSTREAM, copy_repo, tiny_params, write_params

pytestmark = pytest.mark.slow


STAGES = ["source", "activations", "sae", "labels", "features", "squeeze", "baselines", "geometry",
          "logic", "compare", "seeds"]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("NEURAL_CODEC_THREADS", "1")
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "ci"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "ci@example.invalid"
    return env


def sh(cwd: Path, *args: str) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    params = tiny_params(**TINY_DOWNSTREAM)
    import yaml

    full = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for section, values in params.items():  # tiny values over the real file: every key stays declared
        if isinstance(values, dict) and isinstance(full.get(section), dict):
            for k, v in values.items():
                if isinstance(v, dict) and isinstance(full[section].get(k), dict):
                    full[section][k].update(v)
                else:
                    full[section][k] = v
    write_params(root, full)
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny pipeline")
    out = sh(root, "dvc", "repro")
    return root, out


def test_repro_runs_every_stage_and_writes_metrics(repo):
    root, out = repo
    expected = set(STAGES) | ({"report"} if (root / "stages/report.py").exists() else set())
    assert expected <= ran(out)
    for stage in STAGES:
        metrics = json.loads(
            (root / "metrics" / f"{ {'seeds': 'intervals'}.get(stage, stage) }.json").read_text()
        )
        assert metrics, stage
    assert json.loads((root / "metrics/sae.json").read_text())["ground_truth"]["frac_recovered"] > 0.7
    assert (root / "dvc.lock").exists()


def test_second_repro_runs_nothing(repo):
    root, _ = repo
    out = sh(root, "dvc", "repro")
    assert ran(out) == set()
    assert "up to date" in sh(root, "dvc", "status")


def test_forced_repro_gives_identical_metrics(repo):
    """`dvc repro -f` on the same machine, same params: every metrics file (seeds' intervals
    included) is byte-identical to the first run's (timings live apart, in timings/)."""
    root, _ = repo
    first = {p.name: p.read_bytes() for p in sorted((root / "metrics").glob("*.json"))}
    assert "intervals.json" in first
    sh(root, "dvc", "repro", "-f")
    again = {p.name: p.read_bytes() for p in sorted((root / "metrics").glob("*.json"))}
    assert again.keys() == first.keys()
    assert [n for n in first if again[n] != first[n]] == []
    assert "up to date" in sh(root, "dvc", "status")


def test_exp_run_of_features_param_skips_extraction_and_sae(repo):
    root, _ = repo
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "lock")
    out = sh(root, "dvc", "exp", "run", "-S", "features.top_k=2")
    stages = ran(out)
    assert set(STAGES[4:]) | {"report"} <= stages
    assert not stages & {"source", "activations", "sae", "labels"}
    shown = sh(root, "dvc", "exp", "show", "--no-pager", "--md")
    assert "features.top_k" in shown or "top_k" in shown


def test_exp_run_of_squeezer_M_reruns_only_the_squeezer_and_what_follows(repo):
    """The sweep researchers run (`dvc exp run -S squeezer.M=...`): never the extraction, the
    SAE or the features; `dvc metrics diff` then shows the change and `dvc plots show` renders
    every plot declared in dvc.yaml."""
    root, _ = repo
    out = sh(root, "dvc", "exp", "run", "-S", "squeezer.M=8")
    stages = ran(out)
    assert set(STAGES[5:]) | {"report"} <= stages
    assert not stages & {"source", "activations", "sae", "labels", "features"}
    assert json.loads((root / "metrics/squeeze.json").read_text())["squeezer"]["M"] == 8
    diff = sh(root, "dvc", "metrics", "diff", "--md")
    assert "metrics/squeeze.json" in diff and "squeezer.M " in diff and "squeezer.fvu" in diff
    assert "samples_per_s" not in diff and "seconds" not in diff  # timings are not DVC metrics
    sh(root, "dvc", "plots", "show", "-o", "rendered")
    html = (root / "rendered" / "index.html").read_text()
    import yaml

    declared = yaml.safe_load((root / "dvc.yaml").read_text())
    titles = [t for p in declared["plots"] for t in p]  # top-level plots: keyed by their title
    for stage in declared["stages"].values():
        for plot in stage.get("plots", []):
            for path, opts in plot.items():
                if path.endswith(".png"):
                    assert "static/workspace_" + path.replace("/", "_") in html, path
                else:
                    titles.append(opts["title"])
    for title in titles:
        assert json.dumps(title)[1:-1] in html, title
    # horizontal bars: the value on x, the category on y (swapped, the bars render as nonsense)
    assert '"x": {"field": "fvu", "type": "quantitative"' in html
    assert '"y": {"field": "method", "type": "nominal"' in html


def test_exp_run_with_lm_source_runs_every_stage(repo, tmp_path):
    """`dvc exp run -S source.kind=lm ...` on a tiny offline HookedTransformer, through compare."""
    import lm_fixtures as fx
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fx.make_model(tmp_path)
    finally:
        torch.set_num_threads(threads)
    root, _ = repo
    settings = {
        "source.kind": "lm",
        "source.lm.model_name": f"local:{tmp_path / 'model'}",
        "source.lm.dataset": str(tmp_path / "text"),
        "source.lm.sae_hook": "blocks.1.hook_resid_pre",
        "source.lm.neuron_hook": "blocks.1.mlp.hook_post",
        "source.lm.context_size": 32,
        "source.lm.n_tokens_train": 3000,
        "source.lm.n_tokens_heldout": 480,
        "sae.d_sae": 64,
        "sae.k": 4,
        "sae.training_samples": 20480,
        "sae.batch_size": 256,
        "features.top_k": 4,
        "features.min_value": 0.0,
        "squeezer.M": 16,
    }
    args = [a for k, v in settings.items() for a in ("-S", f"{k}={v}")]
    out = sh(root, "dvc", "exp", "run", *args)
    expected = set(STAGES) | ({"report"} if (root / "stages/report.py").exists() else set())
    assert expected <= ran(out)
    sae = json.loads((root / "metrics/sae.json").read_text())
    assert "lm" in sae and "ground_truth" not in sae
    squeeze = json.loads((root / "metrics/squeeze.json").read_text())
    ce = squeeze["squeezer"]["lm"]  # the Squeezer's reconstruction patched into the model
    assert ce["ce_zero_ablation"] > ce["ce_clean"]
    assert ce["ce_loss_score_reconstruct"] <= ce["ce_loss_score_sae"] + 0.05
    compare = json.loads((root / "metrics/compare.json").read_text())
    assert "squeezer_vs_model" in compare
    assert "ceiling_model_vs_model_seed2" not in compare  # a real model has no second seed here


def test_byte_stable_artifacts_and_the_run_cache(repo):
    """Forcing a stage again writes the same bytes (nothing downstream changes), and
    `dvc exp run -S squeezer.M=a`, back to the default, then `a` again restores every stage from
    DVC's run cache (report, a git-tracked `cache: false` dir, is the one stage that re-renders)."""
    root, _ = repo
    sh(root, "git", "checkout", "--", "params.yaml")  # the committed tiny params
    sh(root, "dvc", "repro")
    for stage in ("source", "activations", "sae", "labels", "features", "squeeze"):
        sh(root, "dvc", "repro", "-f", "-s", stage)
        status = sh(root, "dvc", "status")
        assert "up to date" in status, (stage, status)
    default_m = TINY_DOWNSTREAM["squeezer"]["M"]
    sh(root, "dvc", "exp", "run", "-S", "squeezer.M=12")
    sh(root, "dvc", "exp", "run", "-S", f"squeezer.M={default_m}")
    out = sh(root, "dvc", "exp", "run", "-S", "squeezer.M=12")
    assert ran(out) <= {"report"}, out
    cached = set(re.findall(r"Stage '([^']+)' is cached", out))
    assert {"squeeze", "baselines", "geometry", "logic", "compare"} <= cached, out
    assert json.loads((root / "metrics/squeeze.json").read_text())["squeezer"]["M"] == 12
