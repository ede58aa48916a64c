"""Stage `tms`: the Toy Models of Superposition reproduction (see `neural_codec.analysis.tms`).

Trains the TMS model and the project's tied and untied Squeezers on TMS's synthetic features
(no SAE, no other stage) in three settings (the pentagon over seeds; importance-weighted
features over a sparsity sweep, each model the best of `importance_seeds` by held-out loss;
the uniform D*-vs-1/(1-S) sweep, the TMS model and its untrained start over `uniform_seeds`)
and analyses each with the geometry stage's statistics on balanced weights, with this stage's
line window (`TMSConfig.line_half_width`: the measured spread of a trained digon's D_i, see
`TMSConfig`). Writes metrics/tms.json
({setting: {model: summary}}), plots/tms/{dstar.csv, dstar.png, pentagon.png}.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neural_codec import nulls, paths, storage
from neural_codec.analysis import tms, tms_plots
from neural_codec.config import GeometryConfig, SqueezerConfig, TMSConfig
from neural_codec.squeezer.loss import squeezer_loss
from neural_codec.squeezer.model import Squeezer
from neural_codec.squeezer.train import train_squeezer

# model name -> (tied, hidden)
MODELS: dict[str, tuple[bool, str]] = {
    "tms": (True, "linear"),
    "tied": (True, "relu"),
    "untied": (False, "relu"),
}
CONTROL = "untrained"  # the TMS model at its initialisation


def squeezer_config(cfg: TMSConfig, model: str, m: int, seed: int) -> SqueezerConfig:
    tied, hidden = MODELS[model]
    return SqueezerConfig(
        M=m,
        tied=tied,
        hidden=hidden,  # type: ignore[arg-type]
        importance="none",
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        seed=seed,
    )


def train_one(
    cfg: TMSConfig, model: str, n: int, m: int, density: float, decay: float, seed: int
) -> Squeezer:
    """One codec on its own TMS data (seeded by cfg.seed and `seed`), importance decay^i;
    `CONTROL` is the TMS model's initial weights for that seed."""
    if model == CONTROL:
        return nulls.untrained_squeezer(n, squeezer_config(cfg, "tms", m, seed))
    feats = tms.tms_features(n, density, cfg.n_rows, cfg.seed + 1000 * seed + 7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: thread hand-off costs more than the work
    try:
        trained, _ = train_squeezer(feats, squeezer_config(cfg, model, m, seed), tms.importance(n, decay), n)
    finally:
        torch.set_num_threads(threads)
    return trained


@torch.no_grad()
def heldout_loss(cfg: TMSConfig, model: Squeezer, n: int, density: float, decay: float) -> float:
    """The importance-weighted loss on fresh TMS data (rows no codec was trained on)."""
    feats = tms.tms_features(n, density, cfg.n_rows, cfg.seed + 999_983)
    idx, val = torch.from_numpy(feats.idx.astype(np.int64)), torch.from_numpy(feats.val)
    weights = torch.from_numpy(tms.importance(n, decay))
    return float(squeezer_loss(model, idx, val, weights, 0, torch.Generator().manual_seed(0)))


def best_of_seeds(
    cfg: TMSConfig, model: str, n: int, m: int, density: float, decay: float, n_seeds: int
) -> tuple[Squeezer, int, float]:
    """(codec, seed, held-out loss) of the lowest-loss codec over seeds 0..n_seeds-1, as TMS keeps
    the best of several instances (single runs at high sparsity can stall in a local minimum)."""
    best: tuple[Squeezer, int, float] | None = None
    for seed in range(n_seeds):
        sq = train_one(cfg, model, n, m, density, decay, seed)
        loss = heldout_loss(cfg, sq, n, density, decay)
        if best is None or loss < best[2]:
            best = (sq, seed, loss)
    assert best is not None
    return best


def line_geometry(cfg: TMSConfig, gcfg: GeometryConfig) -> GeometryConfig:
    """The geometry section with this stage's line windows (see TMSConfig)."""
    return dataclasses.replace(
        gcfg, line_half_width=cfg.line_half_width, line_flank_width=cfg.line_flank_width
    )


def parts(model: Squeezer) -> dict[str, np.ndarray]:
    E, D = model.balanced_weights()
    return tms.parts_of(E, D, model.tied)


def setting_key(kind: str, n: int, m: int, density: float) -> str:
    """e.g. "pentagon_n5_m2_p0_05" (p = 1 - S; no dots, so report citations can address it)."""
    return f"{kind}_n{n}_m{m}_p{density:g}".replace(".", "_")


def part_name(model: str, part: str) -> str:
    return model if part == "encoder" else f"{model}_{part}"


@dataclass
class TMSRun:
    metrics: dict[str, Any]  # setting -> model -> summary (+ "settings": what each key means)
    sweep: list[dict[str, Any]]  # the uniform sweep: density, model, D_star, D (represented D_i)
    pentagons: dict[str, np.ndarray]  # model -> seed-0 pentagon-setting weights (rows = features)
    seconds: float


def run(cfg: TMSConfig, gcfg: GeometryConfig) -> TMSRun:
    t0 = time.perf_counter()
    gcfg = line_geometry(cfg, gcfg)
    metrics: dict[str, Any] = {}
    pentagons: dict[str, np.ndarray] = {}
    pent: dict[str, Any] = {}
    for model in [*cfg.models, CONTROL]:
        per_part: dict[str, list[dict[str, Any]]] = {}
        for seed in range(cfg.pentagon_seeds):
            sq = train_one(cfg, model, cfg.pentagon_n, cfg.pentagon_m, cfg.pentagon_density, 1.0, seed)
            for part, W in parts(sq).items():
                per_part.setdefault(part, []).append(tms.summarise(W, gcfg))
                if seed == 0 and part == "encoder":
                    pentagons[model] = W
        for part, runs in per_part.items():
            pent[part_name(model, part)] = tms.over_seeds(runs)
    metrics[setting_key("pentagon", cfg.pentagon_n, cfg.pentagon_m, cfg.pentagon_density)] = pent
    sweep: list[dict[str, Any]] = []
    for p in cfg.importance_densities:
        n, m, decay = cfg.importance_n, cfg.importance_m, cfg.importance_decay
        setting: dict[str, Any] = {}
        for model in cfg.models:
            sq, seed, loss = best_of_seeds(cfg, model, n, m, p, decay, cfg.importance_seeds)
            for part, W in parts(sq).items():
                s = tms.summarise(W, gcfg)
                setting[part_name(model, part)] = one_run(s, seed, loss, cfg.importance_seeds)
        metrics[setting_key("importance", n, m, p)] = setting
    for p in cfg.uniform_densities:
        key = setting_key("uniform", cfg.uniform_n, cfg.uniform_m, p)
        metrics[key] = uniform_setting(cfg, gcfg, p, sweep)
    return TMSRun(metrics, sweep, pentagons, time.perf_counter() - t0)


def one_run(s: dict[str, Any], seed: int, loss: float, n_seeds: int) -> dict[str, Any]:
    """A `summarise` result of the kept codec, with its seed and held-out loss."""
    return {
        **{k: v for k, v in s.items() if not k.startswith("_")},
        "seed": seed,
        "heldout_loss": loss,
        "n_seeds": n_seeds,
    }


def uniform_seeds_of(cfg: TMSConfig, model: str) -> int:
    """Seeds per codec in the uniform sweep: `uniform_seeds` for the TMS model and its untrained
    start (the pair the line control reads), one for the other codecs (run time)."""
    return cfg.uniform_seeds if model in ("tms", CONTROL) else 1


def uniform_setting(
    cfg: TMSConfig, gcfg: GeometryConfig, p: float, sweep: list[dict[str, Any]]
) -> dict[str, Any]:
    """One density of the uniform sweep: every model (and the untrained control, not plotted).
    One seed: that run's summary (as the importance sweep's); several: `tms.over_seeds` (the
    fraction of seeds each line is found in) with the held-out loss averaged. The plot gets
    the mean D* and every seed's represented D_i."""
    n, m = cfg.uniform_n, cfg.uniform_m
    setting: dict[str, Any] = {}
    for model in [*cfg.models, CONTROL]:
        n_seeds = uniform_seeds_of(cfg, model)
        runs: dict[str, list[tuple[dict[str, Any], int, float]]] = {}
        for seed in range(n_seeds):
            sq = train_one(cfg, model, n, m, p, 1.0, seed)
            loss = heldout_loss(cfg, sq, n, p, 1.0)
            for part, W in parts(sq).items():
                runs.setdefault(part_name(model, part), []).append((tms.summarise(W, gcfg), seed, loss))
        for name, rs in runs.items():
            if n_seeds == 1:
                setting[name] = one_run(*rs[0], n_seeds)
            else:
                setting[name] = {
                    **tms.over_seeds([r for r, _, _ in rs]),
                    "heldout_loss": float(np.mean([loss for _, _, loss in rs])),
                }
            if model != CONTROL:
                sweep.append(
                    {
                        "density": p,
                        "model": name,
                        "D_star": setting[name]["D_star"],
                        "D": np.concatenate([r["_D"] for r, _, _ in rs]),
                    }
                )
    return setting


def write(r: TMSRun, gcfg: GeometryConfig) -> None:
    plot_dir = paths.plot_dir("tms")
    header, rows = tms.sweep_table(r.sweep)
    storage.write_csv(plot_dir / "dstar.csv", header, rows)
    tms_plots.plot_dstar(plot_dir / "dstar.png", r.sweep, gcfg.fractions)
    tms_plots.plot_pentagons(plot_dir / "pentagon.png", r.pentagons)
    # a gram error over pentagons when a model formed none in any seed has no value: null, said on stderr
    storage.write_json(
        paths.metrics_file("tms"),
        r.metrics,
        missing_ok="no 5-feature component formed",
        where="*gram_error_5",
    )


def summary(r: TMSRun) -> str:
    out = []
    for setting, models in r.metrics.items():
        for model, s in models.items():
            extra = f" pentagon_frac={s['pentagon_found_frac']:.2f}" if "pentagon_found_frac" in s else ""
            out.append(
                f"tms {setting} {model}: D*={s['D_star']:.3f} lines={s['lines_found']} "
                f"polytopes={s['polytopes_found']}{extra}"
            )
    out.append(f"tms: {r.seconds:.1f} s")
    return "\n".join(out)
