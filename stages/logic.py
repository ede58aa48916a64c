"""Stage `logic`: do features that share a synthetic neuron co-occur less (TMS) or more (BOWS)?

Reads the Squeezer's encoder, the SAE features and the held-out neuron activations; writes
metrics/logic.json, plots/logic/lift.csv (log2-lift histograms, shared vs matched control) and
plots/logic/lift.png. See neural_codec.logic for the method and its conventions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neural_codec import storage
from neural_codec.config import LogicConfig
from neural_codec.errors import ParamError, check
from neural_codec.logic import analyze, lift_histogram, truth_table_requests, truth_tables
from neural_codec.params import load_section, require_inputs

SQUEEZER = Path("data/squeeze/squeezer.pt")
HELDOUT_NEURONS = Path("data/squeeze/heldout_neurons.npy")
FEATURES = Path("data/features")
FAMILIES = Path("data/sae/families.json")
METRICS = Path("metrics/logic.json")
PLOT_DIR = Path("plots/logic")


def load_encoder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """W_enc (n_features, M) and each neuron's resting output ReLU(b_enc) (M,), its activation
    when no feature is active (0 without b_enc), from one read of the squeezer checkpoint
    (`save_squeezer` dict, a state_dict or a module)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    holders = (
        [obj, obj.get("state_dict", {})] if isinstance(obj, dict) else [obj.__dict__.get("_parameters", {})]
    )

    def array(name: str) -> np.ndarray | None:
        for holder in holders:
            if isinstance(holder, dict) and name in holder:
                w = holder[name]
                return (w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)).astype(
                    np.float64
                )
        return None

    w_enc, b_enc = array("W_enc"), array("b_enc")
    if w_enc is None:
        raise ParamError(f"{path} holds no 'W_enc': re-run the squeeze stage")
    M = w_enc.shape[1]
    return w_enc, np.zeros(M) if b_enc is None else np.maximum(b_enc.reshape(M), 0.0)


def neuron_mass(neurons: np.ndarray, batch: int) -> np.ndarray:
    mass = np.zeros(neurons.shape[1], dtype=np.float64)
    for s in range(0, len(neurons), batch):
        mass += np.maximum(np.asarray(neurons[s : s + batch], dtype=np.float64), 0).sum(axis=0)
    return mass


def plot_lifts(path: Path, lifts: dict[str, np.ndarray], metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neural_codec.logic import LIFT_BIN_EDGES

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, g in zip(axes, ("same_sign", "opposite_sign"), strict=False):
        for kind, color in (("shared", "C3"), ("control", "C0")):
            x = lifts[f"{kind}_{g}"]
            if len(x):
                lx = np.clip(np.log2(np.maximum(x, 1e-300)), LIFT_BIN_EDGES[0], LIFT_BIN_EDGES[-1] - 1e-9)
                ax.hist(
                    lx,
                    bins=LIFT_BIN_EDGES,
                    density=True,
                    histtype="step",
                    color=color,
                    label=f"{kind} (n={len(x)})",
                )
        ax.axvline(0.0, color="k", lw=0.8, ls=":")
        m = metrics[g]
        d = m["cliffs_delta"]
        ax.set_title(
            f"{g}: {m['verdict']}\nCliff's delta={d:.3f}, p={m['p_value']:.2g}" if d is not None else g,
            fontsize=9,
        )
        ax.set_xlabel("log2 lift = log2 P(i,j)/(P(i)P(j))  (clipped to [-6, 6])")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel("density")
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> dict:
    cfg = load_section(LogicConfig, "logic")
    split_dir = FEATURES / cfg.cooccurrence_split
    require_inputs(SQUEEZER, HELDOUT_NEURONS, FEATURES / "train", FEATURES / "heldout", FAMILIES)

    w_enc, rest = load_encoder(SQUEEZER)
    neurons = np.load(HELDOUT_NEURONS, mmap_mode="r")
    held_meta = storage.read_meta(FEATURES / "heldout")
    check(
        neurons.shape == (held_meta["n_rows"], w_enc.shape[1]),
        str(HELDOUT_NEURONS),
        neurons.shape,
        f"shape ({held_meta['n_rows']}, {w_enc.shape[1]}) (held-out rows, M)",
    )
    check(
        int(held_meta["n_features"]) == w_enc.shape[0],
        "squeezer W_enc rows",
        w_enc.shape[0],
        f"n_features = {held_meta['n_features']} of {FEATURES}",
    )
    families = storage.read_json(FAMILIES)

    result, members = analyze(w_enc, lambda: storage.iter_sparse(split_dir, cfg.batch_size), cfg, families)
    reqs = truth_table_requests(
        members,
        w_enc,
        neuron_mass(neurons, cfg.batch_size),
        cfg.n_truth_table_neurons,
        cfg.n_truth_table_pairs,
    )
    tables = truth_tables(storage.iter_sparse(FEATURES / "heldout", cfg.batch_size), neurons, reqs, rest=rest)
    for t in tables:
        t["weight_a"] = float(w_enc[t["feature_a"], t["neuron"]])
        t["weight_b"] = float(w_enc[t["feature_b"], t["neuron"]])
    metrics = dict(result.metrics)
    metrics["truth_tables"] = tables

    header, rows = lift_histogram(result.lifts)
    storage.write_csv(PLOT_DIR / "lift.csv", header, rows)
    plot_lifts(PLOT_DIR / "lift.png", result.lifts, metrics)
    storage.write_json(METRICS, metrics)
    return metrics


def _main_and_summary() -> None:
    m = main()
    s = m["same_sign"]
    print(
        f"logic: verdict={m['verdict']} (same-sign: median lift shared "
        f"{s['median_lift_shared']} vs control {s['median_lift_control']}, "
        f"Cliff's delta {s['cliffs_delta']}, p {s['p_value']})"
    )


if __name__ == "__main__":
    from neural_codec.stage import run

    run("logic", _main_and_summary)
