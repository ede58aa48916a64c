"""Where each stage's outputs live, relative to the repository root (stages run from there).

The one place these paths are spelt in Python; `dvc.yaml` declares the same paths as each stage's
deps and outs. A leaf module.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORT = Path("report")
#: wall time, peak memory and throughput per stage: outside DVC's metrics, so diffs show results only
TIMINGS = Path("timings")

SOURCE = DATA / "source"
ACTIVATIONS = DATA / "activations"
SAE = DATA / "sae"
LABELS = DATA / "labels"  # latent labels and families (stage `labels`)
FAMILIES = LABELS / "families.json"
LATENT_LABELS = LABELS / "latent_labels.json"
FEATURES = DATA / "features"
FIRING_FREQ = FEATURES / "firing_freq.npy"
SQUEEZE = DATA / "squeeze"
SQUEEZER = SQUEEZE / "squeezer.pt"
HELDOUT_NEURONS = SQUEEZE / "heldout_neurons.npy"
MODEL_SEED2 = SOURCE / "model_seed2.pt"  # synthetic source only
LOGIC = DATA / "logic"
TRUTH_TABLES = LOGIC / "truth_tables.json"


#: the headlines over seeds, {"mean", "ci_low", "ci_high", "n_seeds"} (stage `seeds`)
INTERVALS = METRICS / "intervals.json"


def metrics_file(stage: str) -> Path:
    return METRICS / f"{stage}.json"


def plot_dir(stage: str) -> Path:
    return PLOTS / stage


def curve_dir(stage: str) -> Path:
    """A stage's training curves, in dvclive's layout (`<dir>/plots/metrics/<name>.tsv`)."""
    return plot_dir(stage) / "curves"


def curve_file(stage: str, name: str) -> Path:
    return curve_dir(stage) / "plots" / "metrics" / f"{name}.tsv"
