"""Training curves through dvclive's writer: values, byte-identical reruns, `dvc plots show`."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from neural_codec.curves import read_curve, write_curves

CURVE = [{"step": s, "loss": 1.0 / (3 + s) + 1e-9 * s} for s in range(1, 40, 7)]

#: the venv's dvc, found beside this Python: CI runs `.venv/bin/python -m pytest` without activating
DVC = str(Path(sys.executable).parent / "dvc")


def test_tsv_holds_the_logged_steps_and_losses(tmp_path: Path) -> None:
    write_curves(tmp_path / "c", {"loss": CURVE, "loss_seed2": CURVE[:2], "empty": []})
    tsv = tmp_path / "c/plots/metrics/loss.tsv"
    assert tsv.read_text().splitlines()[0] == "step\tloss"
    steps, values = read_curve(tsv)
    assert steps == [c["step"] for c in CURVE] and values == [c["loss"] for c in CURVE]  # exact
    assert read_curve(tmp_path / "c/plots/metrics/loss_seed2.tsv")[0] == [1, 8]
    assert (tmp_path / "c/plots/metrics/empty.tsv").read_text() == "step\tempty\n"
    # only the curves: no dvc.yaml, metrics.json, report or .dvc left behind by dvclive
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "c/plots/metrics/empty.tsv",
        "c/plots/metrics/loss.tsv",
        "c/plots/metrics/loss_seed2.tsv",
    ]


def test_rewrite_is_byte_identical_and_replaces_old_curves(tmp_path: Path) -> None:
    d = tmp_path / "c"
    write_curves(d, {"loss": CURVE, "old": CURVE})
    first = (d / "plots/metrics/loss.tsv").read_bytes()
    write_curves(d, {"loss": CURVE})
    assert (d / "plots/metrics/loss.tsv").read_bytes() == first
    assert not (d / "plots/metrics/old.tsv").exists()  # atomic replace, not append


def test_dvc_plots_show_renders_the_curve(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    write_curves(tmp_path / "plots/squeeze/curves", {"loss": CURVE})
    (tmp_path / "dvc.yaml").write_text(
        "plots:\n  - plots/squeeze/curves/plots/metrics/loss.tsv:\n      x: step\n      y: loss\n"
    )
    out = subprocess.run(
        [DVC, "plots", "show", "--json"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    (plot,) = json.loads(out)["data"]["plots/squeeze/curves/plots/metrics/loss.tsv"]
    assert plot["content"]["encoding"]["x"]["field"] == "step"
    rows = plot["content"]["data"]["values"]
    assert [int(r["step"]) for r in rows] == [c["step"] for c in CURVE]
    assert [float(r["loss"]) for r in rows] == [c["loss"] for c in CURVE]


def test_curve_loggers_close_every_quantity_on_the_same_steps() -> None:
    """Interval means: 10 steps at ~5 points close every 2 steps, each quantity its own mean."""
    from neural_codec.curves import CurveLoggers

    log = CurveLoggers(("loss", "l0"), n_steps=10, points=5)
    for step in range(10):
        log.add(step, loss=float(step), l0=torch.tensor(2.0 * step))
    c = log.curves
    assert [p["step"] for p in c["loss"]] == [2, 4, 6, 8, 10] == [p["step"] for p in c["l0"]]
    assert [p["loss"] for p in c["loss"]] == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert [p["loss"] for p in c["l0"]] == [1.0, 5.0, 9.0, 13.0, 17.0]


def test_the_repositorys_dvc_yaml_renders_the_new_curves(tmp_path: Path) -> None:
    """dvc.yaml's declarations of the baselines' and the SAE's curves, and the overlay of the
    Squeezer's and the trained baselines' losses, render the files write_curves writes."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    write_curves(tmp_path / "plots/baselines/curves", {"random_encoder": CURVE, "model_neurons": CURVE[:2]})
    write_curves(tmp_path / "plots/squeeze/curves", {"loss": CURVE[:3]})
    write_curves(tmp_path / "plots/sae/curves", {"loss": CURVE, "mse": CURVE[:4], "l0": CURVE[:1]})
    # the other stages' plots are missing here: dvc reports them as errors, the rest still renders
    out = subprocess.run(
        [DVC, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True
    ).stdout
    data = json.loads(out)["data"]
    for path, name, n in [
        ("plots/baselines/curves/plots/metrics/random_encoder.tsv", "random_encoder", len(CURVE)),
        ("plots/baselines/curves/plots/metrics/model_neurons.tsv", "model_neurons", 2),
        ("plots/sae/curves/plots/metrics/loss.tsv", "loss", len(CURVE)),
        ("plots/sae/curves/plots/metrics/mse.tsv", "mse", 4),
        ("plots/sae/curves/plots/metrics/l0.tsv", "l0", 1),
    ]:
        (plot,) = data[path]
        assert plot["content"]["encoding"]["x"]["field"] == "step", path
        rows = plot["content"]["data"]["values"]
        assert [float(r[name]) for r in rows] == [c["loss"] for c in CURVE[:n]], path
    (overlay,) = next(v for k, v in data.items() if k.startswith("Training loss: the Squeezer"))
    assert len(overlay["content"]["data"]["values"]) == len(CURVE) + 2 + 3  # all three files
