"""Training curves through dvclive's writer: values, byte-identical reruns, `dvc plots show`."""

import json
import subprocess
import sys
from pathlib import Path

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
