"""Stage `logic`: do features that share a synthetic neuron co-occur less (TMS) or more (BOWS)?

Reads the Squeezer's encoder, the SAE features and the held-out neuron activations; the method
and its conventions are in `neural_codec.analysis.logic`. Truth tables (how each chosen neuron
fires on A alone, B alone, both) are a data output, not metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neural_codec import paths, storage
from neural_codec.analysis import logic_plots
from neural_codec.analysis.logic import analyse_sharing, lift_histogram, truth_table_requests, truth_tables
from neural_codec.config import LogicConfig
from neural_codec.errors import check
from neural_codec.params import require_inputs
from neural_codec.squeezer.checkpoint import load_squeezer


def neuron_mass(neurons: np.ndarray, batch: int) -> np.ndarray:
    """Each neuron's summed positive activation (which neurons the truth tables show)."""
    mass = np.zeros(neurons.shape[1], dtype=np.float64)
    for s in range(0, len(neurons), batch):
        mass += np.maximum(np.asarray(neurons[s : s + batch], dtype=np.float64), 0).sum(axis=0)
    return mass


def cooccurrence_split(requested: str, features: Any) -> str:
    """The split the co-occurrence statistics read: "cooc" falls back to "heldout" where no
    co-occurrence split was written (lm sources, `activations.n_cooc: 0`)."""
    if requested == "cooc" and not (features / "cooc" / "meta.json").exists():
        return "heldout"
    return requested


@dataclass
class LogicRun:
    metrics: dict[str, Any]
    lifts: dict[str, np.ndarray]
    truth_tables: list[dict[str, Any]]


def run(cfg: LogicConfig) -> LogicRun:
    features = paths.FEATURES
    require_inputs(
        paths.SQUEEZER, paths.HELDOUT_NEURONS, features / "train", features / "heldout", paths.FAMILIES
    )
    model = load_squeezer(paths.SQUEEZER)
    w_enc = model.W_enc.detach().numpy().astype(np.float64)
    # each neuron's resting output ReLU(b_enc): its activation when no feature is active
    rest = np.maximum(model.b_enc.detach().numpy().astype(np.float64).reshape(model.M), 0.0)
    neurons = storage.load_npy(paths.HELDOUT_NEURONS, mmap=True)
    held_meta = storage.read_meta(features / "heldout")
    check(
        neurons.shape == (held_meta["n_rows"], w_enc.shape[1]),
        str(paths.HELDOUT_NEURONS),
        neurons.shape,
        f"shape ({held_meta['n_rows']}, {w_enc.shape[1]}) (held-out rows, M)",
    )
    check(
        int(held_meta["n_features"]) == w_enc.shape[0],
        "squeezer W_enc rows",
        w_enc.shape[0],
        f"n_features = {held_meta['n_features']} of {features}",
    )
    families = storage.read_json(paths.FAMILIES)
    split = cooccurrence_split(cfg.cooccurrence_split, features)
    split_dir = features / split
    result, members = analyse_sharing(
        w_enc, lambda: storage.iter_sparse(split_dir, cfg.batch_size), cfg, families
    )
    reqs = truth_table_requests(
        members,
        w_enc,
        neuron_mass(neurons, cfg.batch_size),
        cfg.n_truth_table_neurons,
        cfg.n_truth_table_pairs,
    )
    tables = truth_tables(storage.iter_sparse(features / "heldout", cfg.batch_size), neurons, reqs, rest=rest)
    for t in tables:
        t["weight_a"] = float(w_enc[t["feature_a"], t["neuron"]])
        t["weight_b"] = float(w_enc[t["feature_b"], t["neuron"]])
    metrics = dict(result.metrics)
    metrics["split"] = split
    return LogicRun(metrics, result.lifts, tables)


def write(r: LogicRun) -> None:
    plot_dir = paths.plot_dir("logic")
    header, rows = lift_histogram(r.lifts)
    storage.write_csv(plot_dir / "lift.csv", header, rows)
    logic_plots.plot_lifts(plot_dir / "lift.png", r.lifts, r.metrics)
    # a group with no (or one) neuron-sharing pair has no lift statistics: null, said on stderr
    why = "statistics of an empty group of pairs are undefined"
    storage.write_json(
        paths.TRUTH_TABLES, r.truth_tables, missing_ok="a truth-table cell with no rows has no mean"
    )
    storage.write_json(paths.metrics_file("logic"), r.metrics, missing_ok=why)


def summary(m: dict[str, Any]) -> str:
    s = m["same_sign"]
    return (
        f"logic: verdict={m['verdict']} (same-sign: median lift shared "
        f"{s['median_lift_shared']} vs control {s['median_lift_control']}, "
        f"Cliff's delta {s['cliffs_delta']}, p {s['p_value']})"
    )
