"""The TMS reproduction (stage `tms`): TMS's data generator, the pentagon found by the TMS model
in most seeds and not by an untrained or shuffled control, and the stage end to end on tiny
settings (metrics shape, plots, the report section)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from neural_codec import storage
from neural_codec.analysis import tms
from neural_codec.config import GeometryConfig, TMSConfig
from neural_codec.pipeline import tms as stage_tms

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from pipeline_helpers import TINY_TMS  # noqa: E402

G = GeometryConfig(n_permutations=20)


def test_tms_features_follow_the_generator():
    f = tms.tms_features(10, 0.2, 20000, seed=0)
    dense = np.zeros((len(f), 10))
    np.add.at(dense, (np.arange(len(f))[:, None], f.idx.astype(int)), f.val)
    on = dense > 0
    assert on.mean() == pytest.approx(0.2, abs=0.01)
    assert dense[on].min() >= 0 and dense[on].max() <= 1
    assert dense[on].mean() == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(tms.importance(4, 0.7), [1, 0.7, 0.49, 0.343], rtol=1e-6)


@pytest.fixture(scope="module")
def pentagon_runs():
    cfg = TMSConfig(steps=1200)
    out = {}
    for model in ("tms", "untrained"):
        out[model] = [stage_tms.train_one(cfg, model, 5, 2, 0.05, 1.0, seed) for seed in range(4)]
    return out


def test_tms_model_forms_the_pentagon_in_most_seeds(pentagon_runs):
    found = [tms.summarise(stage_tms.parts(sq)["encoder"], G) for sq in pentagon_runs["tms"]]
    assert sum(r["pentagon_found"] for r in found) >= 3
    ok = [r for r in found if r["pentagon_found"]]
    assert all(r["best_gram_error_5"] < 0.05 for r in ok)
    assert all(abs(r["mean_D"] - 0.4) < 0.03 for r in ok)


def test_untrained_and_shuffled_controls_form_no_pentagon(pentagon_runs):
    for sq in pentagon_runs["untrained"]:
        assert not tms.summarise(stage_tms.parts(sq)["encoder"], G)["pentagon_found"]
    rng = np.random.default_rng(0)
    for sq in pentagon_runs["tms"]:
        W = stage_tms.parts(sq)["encoder"]
        # each hidden coordinate shuffled across features independently: norms and marginals
        # kept, the frame destroyed
        shuffled = np.stack([rng.permutation(W[:, j]) for j in range(W.shape[1])], 1)
        assert not tms.summarise(shuffled, G)["pentagon_found"]


def test_importance_sweep_finds_the_half_line_for_the_tms_model_only():
    """n = 20, m = 5, I_i = 0.7^i, 1 - S = 0.03: the TMS model (best of 2 seeds by held-out loss)
    packs its features into digons and the stage's line test finds 1/2; the untrained model does
    not. Each digon is an exact antipodal pair of unequal norms: its two D_i sum to 1, spread
    around 1/2 (why the stage's window is +-0.025, not the geometry section's +-0.01)."""
    cfg = TMSConfig()
    g = stage_tms.line_geometry(cfg, G)
    assert (g.line_half_width, g.line_flank_width) == (cfg.line_half_width, cfg.line_flank_width)
    sq, seed, loss = stage_tms.best_of_seeds(cfg, "tms", 20, 5, 0.03, 0.7, 2)
    assert seed in (0, 1) and loss == pytest.approx(stage_tms.heldout_loss(cfg, sq, 20, 0.03, 0.7))
    r = tms.summarise(stage_tms.parts(sq)["encoder"], g)
    assert "1/2" in r["lines_found"] and r["polytopes_found"].get("digon", 0) >= 3
    D = np.sort(r["_D"][(r["_D"] > 0.45) & (r["_D"] < 0.55)])
    np.testing.assert_allclose(D + D[::-1], 1.0, atol=0.01)  # pairs: a^2/(a^2+b^2) + b^2/(a^2+b^2)
    ctrl, _, _ = stage_tms.best_of_seeds(cfg, "untrained", 20, 5, 0.03, 0.7, 2)
    assert tms.summarise(stage_tms.parts(ctrl)["encoder"], g)["lines_found"] == []


def planted_frames(rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    """n = 80 in m = 20 as the TMS model packs them at 1 - S ~ 0.24: seven pentagons (35
    features at D = 2/5, each in its own plane), three digons (6 at 1/2, on their own axes), the
    other 39 features unrepresented (zero rows); every vector jittered by `noise`."""
    W = np.zeros((80, 20))
    angles = 2 * np.pi * np.arange(5) / 5
    for k in range(7):
        W[5 * k : 5 * k + 5, 2 * k] = np.cos(angles)
        W[5 * k : 5 * k + 5, 2 * k + 1] = np.sin(angles)
    for k in range(3):
        W[35 + 2 * k, 14 + k], W[36 + 2 * k, 14 + k] = 1.0, -1.0
    W[:41] += noise * rng.standard_normal((41, 20))
    return W


def test_line_test_finds_planted_pentagons_at_two_fifths_and_no_shuffle_or_untrained_model_does():
    """The stage's line test (its +-0.025 window) on planted frames: 35 features at D = 2/5 make
    the 2/5 line (and the six digon members the 1/2 line), the pentagons are found; the same
    rows with each hidden coordinate shuffled across features (the marginals kept, the frames
    destroyed) show no 2/5 line (their sparse rows can pair up on one axis: 1/2 by chance), and
    the untrained TMS model at n = 80, m = 20 shows neither line."""
    rng = np.random.default_rng(0)
    cfg = TMSConfig()
    g = stage_tms.line_geometry(cfg, G)
    W = planted_frames(rng)
    r = tms.summarise(W, g)
    assert "2/5" in r["lines_found"] and "1/2" in r["lines_found"], r["lines_found"]
    assert r["polytopes_found"].get("pentagon") == 7
    assert np.sum(np.abs(r["_D"] - 0.4) < 0.025) == 35
    for _ in range(5):
        shuffled = np.stack([rng.permutation(W[:, j]) for j in range(W.shape[1])], 1)
        assert "2/5" not in tms.summarise(shuffled, g)["lines_found"]
    for seed in range(3):
        ctrl = stage_tms.train_one(cfg, "untrained", 80, 20, 0.24, 1.0, seed)
        lines = tms.summarise(stage_tms.parts(ctrl)["encoder"], g)["lines_found"]
        assert "2/5" not in lines and "1/2" not in lines, lines


def test_trained_tms_model_sits_on_two_fifths_between_the_half_and_three_eighths_plateaus():
    """n = 80, m = 20, uniform importance, the stage's training (seed 0): at 1 - S = 0.3 the TMS
    model's features form digons (the 1/2 line), at 0.24 pentagons (the 2/5 line, D* ~ 0.4):
    the second of TMS's sticky plateaus, found by the same line test."""
    cfg = TMSConfig()
    g = stage_tms.line_geometry(cfg, G)
    at = {}
    for p in (0.3, 0.24):
        sq = stage_tms.train_one(cfg, "tms", 80, 20, p, 1.0, 0)
        at[p] = tms.summarise(stage_tms.parts(sq)["encoder"], g)
    assert at[0.3]["lines_found"] == ["1/2"] and at[0.3]["polytopes_found"].get("digon", 0) >= 15
    assert "2/5" in at[0.24]["lines_found"] and "1/2" not in at[0.24]["lines_found"]
    assert at[0.24]["polytopes_found"].get("pentagon", 0) >= 3
    assert abs(at[0.24]["D_star"] - 0.4) < 0.02


def _load_stage():
    spec = importlib.util.spec_from_file_location("stage_tms", ROOT / "stages" / "tms.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_end_to_end_and_report_section(tmp_path, monkeypatch):
    import yaml

    tiny = dict(TINY_TMS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tms": tiny, "geometry": {"n_permutations": 20}}))
    monkeypatch.chdir(tmp_path)
    _load_stage().main()
    m = storage.read_json("metrics/tms.json")
    assert set(m) == {
        "pentagon_n5_m2_p0_05",
        "importance_n20_m5_p0_1",
        "uniform_n16_m4_p1",
        "uniform_n16_m4_p0_1",
    }
    pent = m["pentagon_n5_m2_p0_05"]
    assert set(pent) == {"tms", "tied", "untied", "untied_decoder", "untrained"}
    for st in pent.values():
        assert {"D_star", "lines_found", "polytopes_found", "pentagon_found_frac"} <= set(st)
    uni = m["uniform_n16_m4_p1"]
    assert set(uni) == {"tms", "tied", "untied", "untied_decoder", "untrained"}
    # the TMS model and its untrained start over uniform_seeds, the others from one seed
    assert uni["tms"]["n_seeds"] == uni["untrained"]["n_seeds"] == tiny["uniform_seeds"] == 2
    assert "lines_found_frac" in uni["tms"] and uni["tied"]["n_seeds"] == 1
    header = Path("plots/tms/dstar.csv").read_text().splitlines()
    assert header[0] == "inv_density,tms,tied,untied,untied_decoder" and len(header) == 3
    for png in ("dstar.png", "pentagon.png"):
        assert Path("plots/tms", png).stat().st_size > 1000

    from neural_codec.report.metrics import Metrics
    from neural_codec.report.page import Figure, Table
    from neural_codec.report.render import plain
    from neural_codec.report.sections import tms_section

    sec = tms_section(Metrics({"tms": m}), Path("plots"))
    (table,) = [b for b in sec.blocks if isinstance(b, Table)]
    assert len(table.rows) == sum(len(v) for v in m.values())
    row = next(r for r in table.rows if plain(r[0]) == "`pentagon_n5_m2_p0_05`" and r[1] == "tms")
    assert plain(row[2]) == f"{pent['tms']['D_star']:.3g}"
    assert sum(isinstance(b, Figure) for b in sec.blocks) == 2
