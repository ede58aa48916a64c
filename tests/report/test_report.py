"""The report stage: rendered from a tiny metrics/plots tree in the real key layout.

Checks that every figure the page refers to exists (HTML: embedded PNGs; Markdown: files in
report/figures), that every number on the page equals the metric it cites (formatted the same
way, 3 significant digits), that the verdict rows cite the right metrics and decide from them,
that a missing metrics file shows as n/a (never a made-up number), and the FVU-vs-M sweep
parser on a real `dvc exp show --json` sample.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import run_stage

from neural_codec.curves import write_curves
from neural_codec.report.metrics import BASELINES
from neural_codec.report.sweep import parse_exp_show, write_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# A tiny, consistent metrics/plots tree (the keys the producing stages write)
# --------------------------------------------------------------------------------------------


def codec(fvu: float, ev: float, represented: int, extra: float) -> dict:
    return {
        "fvu": fvu,
        "recovery_mean": 0.5 + extra,
        "recovery_frac_above_0_5": 0.4 + extra,
        "features_represented": represented,
        "dead_neurons": 0.0,
        "relu_engagement": extra,
        "linear_regime": extra == 0.0,
        "sae_explained_variance": ev,
        "sae_explained_variance_ceiling": 0.9613,
        "n_features_firing": 60,
        "n_heldout_rows": 4000,
        "M": 16,
        "n_features": 64,
    }


def geo(d_star: float, n_lines: int, digons: int, corr: float, wrap: float) -> dict:
    return {
        "n_features": 64,
        "M": 16,
        "D_star": d_star,
        "D_star_represented": d_star * 1.1,
        "frac_features_represented": 0.9,
        "mean_D": 0.4321,
        "median_D": 0.3987,
        "lines": {
            "1": {
                "count": 3,
                "flank_count": 2,
                "expected": 1.0,
                "enrichment": 3.0,
                "p_value": 0.2,
                "is_line": False,
            },
            "1/2": {
                "count": 9 * n_lines,
                "flank_count": 1,
                "expected": 0.5,
                "enrichment": 18.0,
                "p_value": 1.3e-7,
                "is_line": n_lines > 0,
            },
        },
        "n_lines": n_lines,
        "polytopes": {
            "digon": digons,
            "triangle": 1,
            "tetrahedron": 0,
            "pentagon": 2,
            "square_antiprism": 0,
            "other": 3,
            "isolated": 17,
        },
        "polytope_mean_error": {"digon": 0.01},
        "n_components": 7,
        "largest_component": 5,
        "circles": {
            "weekdays": {
                "circular_corr": corr,
                "neighbour_frac": 0.857,
                "wrap_ratio": wrap,
                "p_value": 0.002,
                "harmonic_frac": corr * 0.6,
                "harmonic_p_value": 0.004,
                "pc2_var_frac": 0.71,
                "n_members": 7,
            }
        },
    }


def cmp_block(r: float, cka: float, mantel: float | None) -> dict:
    return {
        "mean_best_abs_r": r + 0.05,
        "hungarian_mean_r": r,
        "hungarian_mean_signed_r": r - 0.1,
        "frac_matched_above_0_5": r / 2,
        "cka": cka,
        "svcca": cka - 0.03,
        "n_neurons_a": 16,
        "n_neurons_b": 32,
        "n_dead_a": 0,
        "n_dead_b": 1,
        "interference_mantel_r": mantel,
        "interference_mantel_p": None if mantel is None else 0.001,
    }


def logic_group(median_shared: float, verdict: str, p: float, delta: float) -> dict:
    return {
        "n_shared": 41,
        "n_control": 205,
        "median_lift_shared": median_shared,
        "median_lift_control": 0.9876,
        "mean_log2_lift_shared": -0.7,
        "mean_log2_lift_control": -0.1,
        "frac_lift_below_1_shared": 0.8,
        "frac_lift_below_1_control": 0.55,
        "mannwhitney_u": 1234.5,
        "p_value": p,
        "cliffs_delta": delta,
        "verdict": verdict,
        "n_pairs": 300,
        "n_pairs_multi_neuron": 4,
        "n_dropped_low_expected": 12,
        "n_control_sampled": 1500,
        "n_control_dropped_low_expected": 80,
        "median_phi_shared": -0.01,
        "median_phi_control": 0.0,
        "phi_p_value": 0.03,
        "phi_cliffs_delta": -0.2,
        "frac_never_cooccur_shared": 0.3,
        "frac_never_cooccur_control": 0.1,
    }


METRICS = {
    "source": {
        "kind": "synthetic",
        "n_true_features": 64,
        "d_model": 32,
        "n_neurons": 32,
        "toy_model": {
            "fvu": 0.4012,
            "mean_l0_true_features": 1.7,
            "dead_neuron_fraction": 0.0,
            "neuron_l0": 27.3,
        },
        "toy_model_seed2": {
            "fvu": 0.3888,
            "mean_l0_true_features": 1.7,
            "dead_neuron_fraction": 0.0,
            "neuron_l0": 26.9,
        },
        "planted": {"cyclic": 1, "exclusive": 2, "correlated": 2},
    },
    "activations": {
        "kind": "synthetic",
        "train": {"rows": 20000, "mean_true_l0": 1.72, "rows_truncated_true_top_k": 0},
        "heldout": {"rows": 4000, "mean_true_l0": 1.71, "rows_truncated_true_top_k": 0},
    },
    "sae": {
        "architecture": "topk",
        "l0": 3.0,
        "explained_variance": 0.9377,
        "dead_latent_fraction": 0.0625,
        "d_sae": 128,
        "ground_truth": {"mean_best_cosine": 0.9912, "frac_recovered": 0.984375, "threshold": 0.9},
    },
    "features": {
        "top_k": 3,
        "n_features": 128,
        "alive_features": 101,
        "max_firing_freq": 0.11,
        "train": {"rows": 20000, "mean_l0": 2.2},
        "heldout": {"rows": 4000, "mean_l0": 2.21},
    },
    "squeeze": {
        "squeezer": {
            **codec(0.01234, 0.9456, 64, 0.0712),
            "k": 3,
            "tied": False,
            "importance": "none",
            "final_loss": 0.0041,
        }
    },
    "baselines": {
        "pca": codec(0.3456, 0.7123, 20, 0.0),
        "no_superposition": codec(0.3789, 0.6012, 16, 0.0),
        "random_encoder": codec(0.04567, 0.9011, 64, 0.39),
        "model_neurons": codec(0.6543, 0.3654, 40, 0.115),
    },
    "geometry": {
        "trained": {
            "encoder": geo(0.2345, 1, 4, 0.9812, 1.234),
            "decoder": geo(0.2222, 0, 3, 0.9711, 1.111),
        },
        "untrained": {
            "encoder": geo(0.5123, 0, 0, 0.4321, 4.567),
            "decoder": geo(0.5012, 0, 0, 0.3999, 4.444),
        },
        "permuted": {
            "encoder": geo(0.2456, 0, 1, 0.6543, 3.21),
            "decoder": geo(0.2411, 0, 2, 0.6111, 3.33),
        },
        "n_firing_latents_analysed": 101,
        "permuted_training": {"rows": 5000, "max_row_nnz": 9, "steps": 300, "final_loss": 0.02},
    },
    "logic": {
        "n_features": 128,
        "n_neurons": 16,
        "n_rows": 20000,
        "split": "train",
        "same_sign": logic_group(0.4567, "anticorrelated_share", 3.2e-6, -0.4123),
        "opposite_sign": logic_group(0.8765, "no_difference", 0.4321, -0.0456),
        "verdict": "anticorrelated_share",
        "verdict_opposite_sign": "no_difference",
        "families": {
            "cyclic": {
                "n_pairs": 21,
                "lift_all_pairs": {"n": 21, "median": 0.1, "mean": 2.0},
                "same_sign": {
                    "n_sharing": 3,
                    "frac_sharing": 0.1429,
                    "frac_sharing_chance": 0.05,
                    "enrichment": 2.86,
                    "lift_sharing_pairs": {"n": 3, "median": 1.7, "mean": 5.0},
                    "frac_lift_below_1_sharing": 0.33,
                },
                "opposite_sign": {
                    "n_sharing": 0,
                    "frac_sharing": 0.0,
                    "frac_sharing_chance": 0.04,
                    "enrichment": 0.0,
                    "lift_sharing_pairs": {"n": 0, "median": None, "mean": None},
                    "frac_lift_below_1_sharing": None,
                },
            }
        },
    },
    "compare": {
        "squeezer_vs_model": cmp_block(0.5432, 0.3123, 0.2109),
        "floor_untrained": cmp_block(0.1234, 0.0812, 0.0123),
        "floor_permuted": cmp_block(0.2345, 0.4012, 0.0456),  # CKA floor above the Squeezer
        "squeezer_seed2_vs_model": cmp_block(0.5301, 0.3012, 0.1987),
        "ceiling_squeezer_vs_seed2": cmp_block(0.8765, 0.9123, 0.8111),
        "ceiling_model_vs_model_seed2": cmp_block(0.7654, 0.8012, 0.6543),
        "interference_features": {"n_alive": 101, "n_represented": 90, "n_used": 90, "n_permutations": 99},
        "n_heldout_rows": 4000,
    },
    # not a metrics file: data/logic/truth_tables.json (paths.TRUTH_TABLES), cited as truth_tables.json:<i>.<key>
    "truth_tables": [
        {
            "neuron": 5,
            "feature_a": 12,
            "feature_b": 40,
            "n_neither": 3900,
            "fires_neither": 3700,
            "p_fire_neither": 0.9487,
            "n_a_only": 50,
            "fires_a_only": 49,
            "p_fire_a_only": 0.98,
            "n_b_only": 50,
            "fires_b_only": 45,
            "p_fire_b_only": 0.9,
            "n_both": 0,
            "fires_both": 0,
            "p_fire_both": None,
            "weight_a": 0.41,
            "weight_b": 0.33,
        }
    ],
}


def tiny_png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot(np.random.default_rng(seed).normal(size=10))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=40)
    plt.close(fig)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")


PNG_PLOTS = [
    "geometry/dimensionality_hist.png",
    "geometry/polytopes.png",
    "geometry/circles.png",
    "logic/lift.png",
    "compare/correlation_matrix.png",
]


def make_tree(root: Path, metrics: dict = METRICS) -> Path:
    for stage, data in metrics.items():
        p = root / ("data/logic" if stage == "truth_tables" else "metrics") / f"{stage}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2))
    plots = root / "plots"
    steps = range(0, 300, 50)
    write_curves(
        plots / "source/curves",
        {
            "loss": [{"step": s, "loss": 1.0 / (1 + s)} for s in steps],
            "loss_seed2": [{"step": s, "loss": 1.1 / (1 + s)} for s in steps],
        },
    )
    write_csv(
        plots / "sae/recovery_hist.csv",
        ["cosine", "true_features"],
        [[round(0.05 * i + 0.025, 3), i * (i > 15)] for i in range(20)],
    )
    write_curves(plots / "squeeze/curves", {"loss": [{"step": s, "loss": 0.3 / s} for s in range(60, 600, 60)]})
    write_csv(
        plots / "baselines/fvu.csv",
        ["method", "fvu"],
        [[b, metrics["baselines"][b]["fvu"]] for b in BASELINES],
    )
    names = [k for k in METRICS["compare"] if k.startswith(("squeezer_", "floor_", "ceiling_"))]
    write_csv(
        plots / "compare/matched_r.csv",
        ["rank"] + names,
        [[i] + [0.9 - 0.05 * i] * len(names) for i in range(16)],
    )
    for i, p in enumerate(PNG_PLOTS):
        tiny_png(plots / p, i)
    return root


# --------------------------------------------------------------------------------------------
# Reading the rendered page back
# --------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Collects <img> sources, data-metric spans, and the verdict table's rows (as cell lists)."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.spans: list[tuple[str, str]] = []  # (cite, text)
        self.verdict_rows: list[list[tuple[str, str]]] = []  # spans per verdict row
        self._span: str | None = None
        self._text = ""
        self._table_css: list[str] = []
        self._tbody = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "table":
            self._table_css.append(a.get("class") or "")
        elif tag == "tbody":
            self._tbody = True
        elif tag == "tr" and self._tbody and self._table_css and self._table_css[-1] == "verdict":
            self.verdict_rows.append([])
        elif tag == "span" and "data-metric" in a:
            self._span, self._text = a["data-metric"], ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table_css.pop()
        elif tag == "tbody":
            self._tbody = False
        elif tag == "span" and self._span is not None:
            self.spans.append((self._span, self._text))
            if self._table_css and self._table_css[-1] == "verdict" and self.verdict_rows:
                self.verdict_rows[-1].append((self._span, self._text))
            self._span = None

    def handle_data(self, data):
        if self._span is not None:
            self._text += data


def resolve(tree: dict, cite: str):
    """The citation format `<stage>.json:<dotted.key>` ('+' joins keys to a sum), read directly."""
    stage, key = cite.split(":", 1)
    data = tree.get(stage.removesuffix(".json"))
    if "+" in key:
        terms = [resolve(tree, f"{stage}:{k}") for k in key.split("+")]
        return None if any(t is None for t in terms) else sum(terms)
    for part in key.split("."):
        if isinstance(data, list):
            data = data[int(part)] if part.isdigit() and int(part) < len(data) else None
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def expected_text(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def render(tmp_path: Path, metrics: dict = METRICS) -> tuple[Path, Page, str]:
    root = make_tree(tmp_path / "run", metrics)
    run_stage(root, "report")
    html_text = (root / "report/index.html").read_text()
    page = Page()
    page.feed(html_text)
    return root, page, (root / "report/REPORT.md").read_text()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(tmp_path_factory.mktemp("report"))


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_every_figure_exists(rendered):
    root, page, md = rendered
    # HTML: self-contained, every image an embedded, decodable PNG
    assert len(page.imgs) == len(PNG_PLOTS) + 5  # + sae, source curve, fvu bars, squeeze curve, matched r
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    # the embedded copies of the stages' PNGs are byte-identical to the stages' files
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in page.imgs}
    for p in PNG_PLOTS:
        assert (root / "plots" / p).read_bytes() in embedded
    # Markdown: every image link resolves to a PNG under report/, and every figure is linked
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(page.imgs)
    for link in links:
        f = root / "report" / link
        assert f.exists(), link
        assert f.read_bytes().startswith(PNG_MAGIC)
    assert sorted(Path(link).name for link in links) == sorted(
        p.name for p in (root / "report/figures").iterdir()
    )
    # this run's point of the FVU-against-M plot
    assert (root / "report/fvu_at_m.csv").read_text().splitlines() == [
        "M,squeezer,pca,no_superposition,random_encoder,model_neurons",
        "16,0.01234,0.3456,0.3789,0.04567,0.6543",
    ]
    # no temporary directory left behind by the atomic write
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_every_number_equals_its_metric(rendered):
    _, page, _ = rendered
    assert len(page.spans) > 200
    for cite, text in page.spans:
        assert text == expected_text(resolve(METRICS, cite)), cite
    # with every metrics file present, no verdict number is missing
    verdict = [s for row in page.verdict_rows for s in row]
    assert len(verdict) > 60
    assert all(text != "n/a" for _, text in verdict), [c for c, t in verdict if t == "n/a"]


def verdict_row(page: Page, first_cite: str) -> list[str]:
    rows = [r for r in page.verdict_rows if r and r[0][0] == first_cite]
    assert rows, first_cite
    return [c for c, _ in rows[0]]


def test_verdict_rows_cite_the_right_metrics(rendered):
    _, page, md = rendered
    fvu = verdict_row(page, "squeeze.json:squeezer.fvu")
    assert fvu[1:4] == [
        "baselines.json:pca.fvu",
        "baselines.json:no_superposition.fvu",
        "baselines.json:random_encoder.fvu",
    ]
    ev = verdict_row(page, "squeeze.json:squeezer.sae_explained_variance")
    assert ev[1:3] == [
        "baselines.json:pca.sae_explained_variance",
        "squeeze.json:squeezer.sae_explained_variance_ceiling",
    ]
    cka = verdict_row(page, "compare.json:squeezer_vs_model.cka")
    assert cka[1:5] == [
        "compare.json:floor_untrained.cka",
        "compare.json:floor_permuted.cka",
        "compare.json:ceiling_squeezer_vs_seed2.cka",
        "compare.json:ceiling_model_vs_model_seed2.cka",
    ]
    corr = [
        r
        for r in page.verdict_rows
        if any(c == "geometry.json:trained.encoder.circles.weekdays.circular_corr" for c, _ in r)
    ][0]
    cites = [c for c, _ in corr]
    at = cites.index("geometry.json:trained.encoder.circles.weekdays.circular_corr")
    assert cites[at - 1] == "geometry.json:trained.encoder.circles.weekdays.p_value"  # in the measure
    assert cites[at + 1 : at + 3] == [
        "geometry.json:untrained.encoder.circles.weekdays.circular_corr",
        "geometry.json:permuted.encoder.circles.weekdays.circular_corr",
    ]
    logic = [r for r in page.verdict_rows if ("logic.json:same_sign.verdict", "anticorrelated_share") in r]
    assert logic and ("logic.json:same_sign.p_value", "3.2e-06") in logic[0]
    # outcomes follow the numbers: FVU 0.0123 < 0.0457 (random encoder, the best floor) holds;
    # CKA 0.312 is below the permuted floor 0.401 -> not above every floor
    assert "below every floor: 0.0123 < 0.0457 (random encoder" in md
    assert "not above every floor: 0.312 <= 0.401 (permuted-feature Squeezer)" in md
    # the truth tables are read from data/logic/truth_tables.json
    assert ("truth_tables.json:0.neuron", "5") in page.spans


def test_markdown_verdict_matches_html(rendered):
    """The Markdown verdict rows show the same numbers, in the same order, as the HTML rows."""
    _, page, md = rendered
    table = md.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(page.verdict_rows)
    for line, spans in zip(rows, page.verdict_rows, strict=False):
        pos = 0
        for _, text in spans:
            pos = line.find(text, pos)
            assert pos >= 0, (text, line)
            pos += len(text)


def test_missing_metrics_show_na_and_stage_is_deterministic(tmp_path, rendered):
    metrics = copy.deepcopy(METRICS)
    del metrics["compare"]
    del metrics["geometry"]["trained"]["encoder"]["circles"]
    metrics["sae"]["lm"] = {
        "ce": {
            "ce_clean": 3.21,
            "ce_zero_ablation": 7.65,
            "ce_sae": 3.54,
            "ce_loss_score_sae": 0.9257,
            "n_tokens": 2048,
        },
        "families": {"weekdays": 7},
        "labelled_latents": 100,
    }
    root, page, md = render(tmp_path, metrics)
    for cite, text in page.spans:
        assert text == expected_text(resolve(metrics, cite)), cite
    compare_spans = [t for c, t in page.spans if c.startswith("compare.json:")]
    assert compare_spans and set(compare_spans) == {"n/a"}
    assert ("sae.json:lm.ce.ce_loss_score_sae", "0.926") in page.spans
    assert not any("circles" in c for c, _ in sum(page.verdict_rows, []))  # no circle rows
    assert "`metrics/compare.json`" in md  # named as missing
    # a second run over the same inputs writes byte-identical files (the report lives in git)
    before = {p.name: p.read_bytes() for p in (root / "report").rglob("*") if p.is_file()}
    run_stage(root, "report")
    after = {p.name: p.read_bytes() for p in (root / "report").rglob("*") if p.is_file()}
    assert before == after


# A real `dvc exp show --json` (DVC 3.67, trimmed): the workspace, the baseline commit and two
# experiments, plus a queued one (no data yet) and a failed one, which must be skipped.
EXP_SHOW = json.loads("""
[{"rev": "workspace", "name": null, "data": {"rev": "workspace", "timestamp": null,
  "params": {"params.yaml": {"data": {"squeezer": {"M": 64, "tied": false}}}},
  "metrics": {"metrics/squeeze.json": {"data": {"squeezer": {"fvu": 0.015625, "M": 64}}},
              "metrics/baselines.json": {"data": {"pca": {"fvu": 0.03125}}}},
  "deps": {}, "outs": {}, "meta": {}}, "error": null, "experiments": null},
 {"rev": "058552ed7e25e5119e4c0df3306a920a4d1c0ef0", "name": "main",
  "data": {"rev": "058552ed7e25e5119e4c0df3306a920a4d1c0ef0", "timestamp": "2026-11-25T17:42:35",
   "params": {"params.yaml": {"data": {"squeezer": {"M": 128, "tied": false}}}},
   "metrics": {"metrics/squeeze.json": {"data": {"squeezer": {"fvu": 0.0078125, "M": 128}}},
               "metrics/baselines.json": {"data": {"pca": {"fvu": 0.015625},
                                                   "no_superposition": {"fvu": 0.0234375}}}},
   "deps": {}, "outs": {}, "meta": {}}, "error": null,
  "experiments": [
   {"revs": [{"rev": "ed8c31d67e31e6814bf1de421ac034d410c34e63", "name": "dolce-kefs",
     "data": {"rev": "ed8c31d67e31e6814bf1de421ac034d410c34e63", "timestamp": "2026-11-25T17:42:43",
      "params": {"params.yaml": {"data": {"squeezer": {"M": 64, "tied": false}}}},
      "metrics": {"metrics/squeeze.json": {"data": {"squeezer": {"fvu": 0.015625, "M": 64}}},
                  "metrics/baselines.json": {"data": {"pca": {"fvu": 0.03125},
                                                      "no_superposition": {"fvu": 0.046875}}}},
      "deps": {}, "outs": {}, "meta": {}}, "error": null, "experiments": null}],
    "executor": null, "name": "dolce-kefs"},
   {"revs": [{"rev": "3339b13b36acf3f5a4a25ef465041b86c0bdc561", "name": "m32",
     "data": {"rev": "3339b13b36acf3f5a4a25ef465041b86c0bdc561", "timestamp": "2026-11-25T17:42:39",
      "params": {"params.yaml": {"data": {"squeezer": {"M": 32, "tied": false}}}},
      "metrics": {"metrics/squeeze.json": {"data": {"squeezer": {"fvu": 0.03125, "M": 32}}},
                  "metrics/baselines.json": {"data": {"pca": {"fvu": 0.0625},
                                                      "no_superposition": {"fvu": 0.09375}}}},
      "deps": {}, "outs": {}, "meta": {}}, "error": null, "experiments": null}],
    "executor": null, "name": "m32"},
   {"revs": [{"rev": "aaaa000000000000000000000000000000000000", "name": "queued-256",
     "data": {"rev": "aaaa000000000000000000000000000000000000", "timestamp": null,
      "params": {"params.yaml": {"data": {"squeezer": {"M": 256}}}}, "metrics": {},
      "deps": {}, "outs": {}, "meta": {}}, "error": null, "experiments": null}],
    "executor": "dvc-task", "name": "queued-256"},
   {"revs": [{"rev": "bbbb000000000000000000000000000000000000", "name": "failed-512",
     "data": null, "error": {"type": "CheckpointError", "msg": "failed"}, "experiments": null}],
    "executor": null, "name": "failed-512"}]}]
""")


def test_sweep_parser_on_dvc_exp_show(tmp_path):
    rows = parse_exp_show(EXP_SHOW)
    assert [(r["M"], r["experiment"]) for r in rows] == [(32, "m32"), (64, "dolce-kefs"), (128, "main")]
    assert [r["squeezer"] for r in rows] == [0.03125, 0.015625, 0.0078125]
    assert rows[0]["no_superposition"] == 0.09375 and rows[0]["random_encoder"] is None
    with_ws = parse_exp_show(EXP_SHOW, include_workspace=True)
    assert ("workspace", 64) in {(r["experiment"], r["M"]) for r in with_ws}
    csv_path = tmp_path / "plots/sweep/fvu_vs_m.csv"
    write_sweep(rows, csv_path, tmp_path / "plots/sweep/fvu_vs_m.png")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "M,experiment,squeezer,pca,no_superposition,random_encoder,model_neurons"
    assert lines[1] == "32,m32,0.03125,0.0625,0.09375,,"
    assert (tmp_path / "plots/sweep/fvu_vs_m.png").read_bytes().startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------------
# Positive controls (issue 11): metrics/controls.json and the table the page opens with
# --------------------------------------------------------------------------------------------


def _family_sharing(n: int, same: tuple[int, ...], opp: tuple[int, ...]) -> dict:
    """intervals.json family_sharing.<condition>: per-seed counts at chance 0.2 / 0.1."""
    return {"exclusive": {"n_pairs": n,
                          "same_sign": {"n_sharing": list(same), "frac_sharing_chance": [0.2] * len(same)},
                          "opposite_sign": {"n_sharing": list(opp), "frac_sharing_chance": [0.1] * len(opp)}}}  # fmt: skip


def _codec_metrics() -> dict:
    """METRICS as a planted-codec run that sees everything it should."""
    m = copy.deepcopy(METRICS)
    m["source"]["model"] = "codec"
    m["source"]["planted"] = {"cyclic": 1, "exclusive": 2, "correlated": 2}
    m["logic"]["families"] = {
        "exclusive": {
            "lift_all_pairs": {"median": 0.02},
            "n_pairs": 72,
            "same_sign": {"enrichment": 0.5, "n_sharing": 7, "frac_sharing_chance": 0.2},
            "opposite_sign": {"enrichment": 1.94, "n_sharing": 14, "frac_sharing_chance": 0.1},
        },
        "correlated": {"lift_all_pairs": {"median": 20.0}},
    }
    # the seeds stage's 3 Squeezers share the 72 pairs opposite-sign at 2x chance (43 of 21.6),
    # its permuted and untrained ones at chance
    m.setdefault("intervals", {})["family_sharing"] = {
        "trained": _family_sharing(72, (7, 7, 7), (14, 15, 14)),
        "permuted": _family_sharing(72, (14, 15, 14), (7, 7, 7)),
        "untrained": _family_sharing(72, (14, 15, 14), (7, 7, 7)),
    }
    m["geometry"]["trained"]["encoder"]["circles"] = {"weekdays": {"p_value": 0.001, "harmonic_p_value": 0.002}}
    m["geometry"]["trained"]["encoder"]["lines"] = {"1/2": {"is_line": True}, "1/3": {"is_line": False}}
    m["geometry"]["trained"]["encoder"]["polytopes"] = {"digon": 4, "triangle": 1, "other": 3}
    m["source"]["model_geometry"] = {
        "encoder": {"lines": {"1/2": {"is_line": True}}, "polytopes": {"digon": 6, "other": 1}}
    }
    for cond, (r, cka) in {
        "squeezer_vs_model": (0.8, 0.95),
        "floor_untrained": (0.3, 0.5),
        "floor_permuted": (0.35, 0.6),
    }.items():
        m["compare"][cond] = {**m["compare"].get(cond, {}), "hungarian_mean_r": r, "cka": cka}
    m["compare"]["neuron_predictability"] = {
        "features": {"mean_r2": 0.94, "ci_low": 0.93, "ci_high": 0.95},
        "floor_shuffled": {"mean_r2": 0.0, "ci_low": -0.01, "ci_high": 0.01},
        "floor_random_code": {"mean_r2": 0.36, "ci_low": 0.35, "ci_high": 0.37},
        "ceiling_dense": {"mean_r2": 0.999},
    }
    return m


def test_controls_found_on_a_planted_codec_and_not_when_broken():
    from neural_codec.report.controls import positive_controls
    from neural_codec.report.metrics import Metrics

    good = positive_controls(Metrics(_codec_metrics()))
    assert set(good) >= {"sae_recovery", "logic_exclusive_lift", "logic_exclusive_antipodal",
                         "logic_correlated_lift", "geometry_circles", "compare_planted_codec"}  # fmt: skip
    assert all(c["found"] and c["expected_found"] for c in good.values()), good
    # a broken analysis never passes: compare at its floor, logic blind to exclusion, circles missing
    broken = _codec_metrics()
    broken["compare"]["squeezer_vs_model"]["hungarian_mean_r"] = 0.36
    broken["logic"]["families"]["exclusive"]["lift_all_pairs"]["median"] = 1.0
    broken["logic"]["families"]["exclusive"]["opposite_sign"].update(enrichment=0.9, n_sharing=6)
    broken["intervals"]["family_sharing"]["permuted"] = broken["intervals"]["family_sharing"]["trained"]
    del broken["geometry"]["trained"]["encoder"]["circles"]
    broken["geometry"]["trained"]["encoder"]["lines"]["1/2"]["is_line"] = False
    broken["geometry"]["trained"]["encoder"]["polytopes"] = {"triangle": 2, "other": 9}
    broken["compare"]["neuron_predictability"]["features"].update(mean_r2=0.42, ci_low=0.41)
    bad = positive_controls(Metrics(broken))
    for name in (
        "compare_neuron_predictability",
        "compare_planted_codec",
        "logic_exclusive_lift",
        "logic_exclusive_antipodal",
        "geometry_circles",
        "geometry_planted_lines",
        "geometry_planted_polytopes",
    ):
        assert not bad[name]["found"], name
    # a floor the model's own second seed does not clear is no floor for neuron identity: it is
    # listed, not counted; a floor the seed-2 ceiling clears counts, and a Squeezer at it fails
    at_ceiling = _codec_metrics()
    at_ceiling["compare"]["ceiling_model_vs_model_seed2"] = {"hungarian_mean_r": 0.8, "cka": 0.62}
    at_ceiling["compare"]["floor_permuted"]["cka"] = 0.94
    c = positive_controls(Metrics(at_ceiling))["compare_planted_codec"]
    assert c["found"] and c["measured"]["cka_uninformative_floors"] == ["floor_permuted"], c
    assert (
        c["measured"]["cka_best_floor"] == 0.5
        and c["measured"]["hungarian_mean_r_uninformative_floors"] == []
    )
    at_ceiling["compare"]["ceiling_model_vs_model_seed2"]["cka"] = 0.99
    at_ceiling["compare"]["floor_permuted"]["cka"] = 0.85
    c = positive_controls(Metrics(at_ceiling))["compare_planted_codec"]
    assert not c["found"] and c["measured"]["cka_uninformative_floors"] == [], c
    # ... unless co-occurrence does not move the model's own retraining (seed 2 against the same
    # recipe on column-permuted rows): then seed 2's edge over the Squeezer's permuted floor is a
    # difference of recipes, and that floor does not count; where co-occurrence does move it, it
    # counts as before
    at_ceiling["source"]["cooccurrence_identity"] = {"effect": {"hungarian_mean_r": 0.3, "cka": 0.02}}
    c = positive_controls(Metrics(at_ceiling))["compare_planted_codec"]
    assert c["found"] and c["measured"]["cka_uninformative_floors"] == ["floor_permuted"], c
    assert c["measured"]["cka_cooccurrence_effect"] == 0.02 and "0.020" in c["measured"]["uninformative_because"]
    at_ceiling["source"]["cooccurrence_identity"]["effect"]["cka"] = 0.2
    c = positive_controls(Metrics(at_ceiling))["compare_planted_codec"]
    assert not c["found"] and c["measured"]["cka_uninformative_floors"] == [], c
    # the toy model plants no codec: compare is no control there
    toy = _codec_metrics()
    toy["source"]["model"] = "toy"
    assert not positive_controls(Metrics(toy))["compare_planted_codec"]["expected_found"]


def test_circle_control_counts_the_seeds_that_find_the_circle():
    """With the seeds stage, geometry_circles is the harmonic test's found fraction over the
    Squeezer seeds (not seed 0's top-2 PC p-value, a coin toss on the planted codec), and the
    untrained starts must not find it; without it, seed 0's harmonic p-value decides."""
    from neural_codec.report.controls import positive_controls
    from neural_codec.report.metrics import Metrics

    m = _codec_metrics()
    m["geometry"]["trained"]["encoder"]["circles"] = {
        "weekdays": {"p_value": 0.26, "harmonic_p_value": 0.3},  # seed 0 misses it
        "months": {"p_value": 0.001, "harmonic_p_value": 0.001},
    }
    assert not positive_controls(Metrics(m))["geometry_circles"]["found"]  # one seed: not found
    m["intervals"] = {
        "circles": {
            "trained": {
                "weekdays": {"harmonic_p_value": [0.3, 0.01, 0.002], "p_value": [0.26, 0.01, 0.02]},
                "months": {"harmonic_p_value": [0.001, 0.004, 0.2], "p_value": [0.001, 0.3, 0.6]},
            },
            "untrained": {
                "weekdays": {"harmonic_p_value": [0.5, 0.04, 0.7]},
                "months": {"harmonic_p_value": [0.9, 0.3, 0.6]},
            },
        }
    }
    c = positive_controls(Metrics(m))["geometry_circles"]
    assert c["found"] and c["expected_found"], c
    assert c["measured"]["harmonic_found_frac"] == {"weekdays": 2 / 3, "months": 2 / 3}
    assert c["measured"]["top2pc_found_frac"] == {"weekdays": 2 / 3, "months": 1 / 3}
    assert c["cite"].startswith("intervals.json:circles")
    # found in one seed of three: not found; found as often in the untrained starts: no control
    m["intervals"]["circles"]["trained"]["months"]["harmonic_p_value"] = [0.001, 0.3, 0.2]
    assert not positive_controls(Metrics(m))["geometry_circles"]["found"]
    m["intervals"]["circles"]["trained"]["months"]["harmonic_p_value"] = [0.001, 0.004, 0.2]
    m["intervals"]["circles"]["untrained"]["weekdays"]["harmonic_p_value"] = [0.01, 0.04, 0.7]
    assert not positive_controls(Metrics(m))["geometry_circles"]["found"]


def test_circle_control_on_a_codec_follows_the_codecs_own_weights():
    """On a codec source the planted codec's own weights are the truth, part by part: where they
    form none of the circles the row is no verdict (not a failure, not a pass); a circle the
    codec's encoder forms must be found in the Squeezer seeds' encoders, one its decoder forms in
    their decoders, and one it does not form is not required."""
    from neural_codec.report.controls import positive_controls
    from neural_codec.report.metrics import Metrics

    m = _codec_metrics()
    m["intervals"] = {
        "circles": {
            "trained": {"weekdays": {"harmonic_p_value": [0.01, 0.5, 0.3]}},
            "untrained": {"weekdays": {"harmonic_p_value": [0.5, 0.6, 0.7]}},
        }
    }
    mg = m["source"]["model_geometry"]
    mg["encoder"]["circles"] = {"weekdays": {"p_value": 0.3, "harmonic_p_value": 0.4}}
    c = positive_controls(Metrics(m))["geometry_circles"]
    assert c.get("no_verdict") and not c["expected_found"] and not c["found"], c
    assert "weekdays 0.4" in c["not_expected_because"]
    mg["encoder"]["circles"]["weekdays"]["harmonic_p_value"] = 0.01
    c = positive_controls(Metrics(m))["geometry_circles"]
    assert not c.get("no_verdict") and c["expected_found"] and not c["found"], c  # 1 of 3 seeds
    # a circle the codec does not form is not required; one it forms is
    m["intervals"]["circles"]["trained"]["months"] = {"harmonic_p_value": [0.5, 0.6, 0.7]}
    m["intervals"]["circles"]["trained"]["weekdays"]["harmonic_p_value"] = [0.01, 0.02, 0.3]
    mg["encoder"]["circles"]["months"] = {"harmonic_p_value": 0.6}
    c = positive_controls(Metrics(m))["geometry_circles"]
    assert c["found"] and c["planted"]["required_by_codec"] == ["encoder weekdays"], c
    mg["encoder"]["circles"]["months"]["harmonic_p_value"] = 0.01
    assert not positive_controls(Metrics(m))["geometry_circles"]["found"]
    # a circle the codec's decoder forms is required in the Squeezers' decoders
    mg["encoder"]["circles"]["months"]["harmonic_p_value"] = 0.6
    mg["decoder"] = {"circles": {"months": {"harmonic_p_value": 0.02}}}
    assert not positive_controls(Metrics(m))["geometry_circles"]["found"]  # no decoder verdicts
    m["intervals"]["circles"]["trained"]["months"]["decoder_harmonic_p_value"] = [0.01, 0.03, 0.4]
    c = positive_controls(Metrics(m))["geometry_circles"]
    assert c["found"] and c["planted"]["required_by_codec"] == ["encoder weekdays", "decoder months"], c
    assert c["measured"]["decoder_harmonic_found_frac"]["months"] == 2 / 3
    m["intervals"]["circles"]["trained"]["months"]["decoder_harmonic_p_value"] = [0.01, 0.3, 0.4]
    assert not positive_controls(Metrics(m))["geometry_circles"]["found"]
    m["source"]["model"] = "toy"  # no codec: the data's circles are the truth, in the encoder
    mg["encoder"]["circles"]["weekdays"]["harmonic_p_value"] = 0.4
    c = positive_controls(Metrics(m))["geometry_circles"]
    assert c["expected_found"] and not c["found"], c  # months: 0 of 3 encoders


def test_lm_controls_are_the_tms_rows_and_the_readout_ceiling():
    """An lm run plants nothing in its features: no synthetic rows, but the controls that hold on
    any source (TMS from this run's tms stage, the dense ceiling of the neuron-form readout)."""
    from neural_codec.report.controls import positive_controls
    from neural_codec.report.metrics import Metrics

    m = _codec_metrics()
    tms = {"pentagon_n5_m2_p0_05": {"tms": {"pentagon_found_frac": 1.0}}}
    m["tms"] = tms
    m["source"] = {"kind": "lm"}
    m["activations"] = {"sae_hook": "blocks.2.ln2.hook_normalized", "neuron_hook": "blocks.2.mlp.hook_post",
                        "sae_reads_neuron_input": True}  # fmt: skip
    m["compare"]["neuron_predictability"].update(readout_form="gated_silu", readout="SiLU(w_g·x + b_g)·(w_u·x + b_u)")
    c = positive_controls(Metrics(m))
    assert "sae_recovery" not in c and "compare_planted_codec" not in c
    ceiling = c["compare_readout_ceiling"]
    assert ceiling["found"] and ceiling["expected_found"], ceiling
    assert ceiling["measured"]["readout_form"] == "gated_silu"
    # a readout that cannot express the neurons (glassllm's ReLU readout: 0.23) fails the control
    m["compare"]["neuron_predictability"]["ceiling_dense"]["mean_r2"] = 0.226
    ceiling = positive_controls(Metrics(m))["compare_readout_ceiling"]
    assert not ceiling["found"] and ceiling["expected_found"]
    # features read elsewhere than the MLP input: the neurons are no function of it, no control
    m["activations"].update(sae_hook="blocks.2.hook_resid_pre", sae_reads_neuron_input=False)
    assert not positive_controls(Metrics(m))["compare_readout_ceiling"]["expected_found"]
    # and the synthetic run carries the same row (its ReLU neurons read resid exactly)
    assert positive_controls(Metrics(_codec_metrics()))["compare_readout_ceiling"]["found"]


def test_an_underpowered_control_gives_no_verdict_found_or_not():
    """36 planted exclusive pairs in one seed give the test little power: a chance find (p 0.049
    against chance) is no failure, and a miss is none either; a find where nothing is planted
    stays a failure."""
    from neural_codec.report.controls import controls_table, positive_controls
    from neural_codec.report.metrics import Metrics

    m = _codec_metrics()
    fam = m["logic"]["families"]["exclusive"]
    fam["n_pairs"] = 36  # the default run's: 4 same-sign sharing at 2.9x chance, p 0.049
    fam["same_sign"].update(n_sharing=4, frac_sharing_chance=0.0386, enrichment=2.88)
    fam["opposite_sign"].update(n_sharing=1, frac_sharing_chance=0.03, enrichment=0.93)
    m["intervals"]["family_sharing"] = {c: _family_sharing(36, (4,), (1,)) for c in ("trained", "untrained")}
    m["intervals"]["family_sharing"]["permuted"] = _family_sharing(36, (1,), (1,))
    c = positive_controls(Metrics(m))
    row = c["logic_exclusive_antipodal"]
    assert not row["expected_found"] and row["no_verdict"], row
    assert row["not_expected_because"].startswith("underpowered: 36 planted pairs x 1 seeds")
    status = {r[0]: r[-1] for r in controls_table(c).rows}
    assert status["`logic_exclusive_antipodal`"] == "no verdict"
    fake = {"x": {"planted": {}, "measured": {}, "found": True, "expected_found": False}}
    assert controls_table(fake).rows[0][-1] == "CONTROL FAILED"


def test_report_opens_with_the_controls_table_and_writes_controls_json(tmp_path):
    root, page, md = render(tmp_path, _codec_metrics())
    controls = json.loads((root / "metrics/controls.json").read_text())
    assert controls["compare_planted_codec"]["found"] is True
    assert md.index("## Positive controls") < md.index("## Verdict")
    assert "`compare_planted_codec`" in md and "CONTROL FAILED" not in md
    assert "antipodal" in md
