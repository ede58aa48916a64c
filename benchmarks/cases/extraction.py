"""extraction: `run_with_cache(names_filter=<2 hooks>, stop_at_layer=...)` as in
`neural_codec.source.lm.extract.extract_activations` against `naive.naive_extract` (every hook over the whole
model); tokens/s, on glassllm (real weights, if installed) and, at real scale, a GPT-2-small
shaped model with random weights."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.harness import Sizes, interleaved, med
from benchmarks.naive import naive_extract
from neural_codec.config import LMSourceConfig
from neural_codec.source.lm.load import load_model
from neural_codec.source.lm.offline import GLASSLLM_SOURCE


def _extract_case(
    name: str, model: Any, cfg: Any, batch: int, ctx: int, n_batches: int, reps: int
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(0, model.cfg.d_vocab, (batch, ctx), generator=g) for _ in range(n_batches)]
    hooks, stop = cfg.hooks, cfg.stop_at_layer

    def ours():
        for t in toks:
            with torch.no_grad():
                _, cache = model.run_with_cache(t, names_filter=hooks, stop_at_layer=stop)
            [cache[h].float().cpu().numpy() for h in hooks]
            del cache

    def naive():
        naive_extract(model, toks, hooks)

    # same activations either way
    with torch.no_grad():
        _, c1 = model.run_with_cache(toks[0], names_filter=hooks, stop_at_layer=stop)
        _, c2 = model.run_with_cache(toks[0])
    for h in hooks:
        torch.testing.assert_close(c1[h], c2[h])
    del c1, c2
    times = interleaved({"ours": ours, "naive": naive}, reps)
    n_tok = batch * ctx * n_batches
    return {
        "model": name,
        "hooks": hooks,
        "stop_at_layer": stop,
        "n_layers": model.cfg.n_layers,
        "tokens_per_rep": n_tok,
        "ours_tokens_per_s": n_tok / med(times["ours"]),
        "naive_tokens_per_s": n_tok / med(times["naive"]),
        "ratio_ours_vs_naive": med(times["naive"]) / med(times["ours"]),
        "ratio_ours_vs_naive_best": min(times["naive"]) / min(times["ours"]),
        "seconds_ours": times["ours"],
        "seconds_naive": times["naive"],
    }


def bench_extraction(sz: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cases": [],
        "method": (
            "forward passes of random token batches; ours = run_with_cache(names_filter=2 hooks, "
            "stop_at_layer) as in lm.extract_activations, naive = run_with_cache() of every hook over "
            "the whole model; both copy the 2 hooks to numpy; interleaved reps, medians"
        ),
    }
    cfg = LMSourceConfig(**{**GLASSLLM_SOURCE, "dataset": "unused"})
    try:
        model = load_model(cfg)
        out["cases"].append(
            _extract_case(
                "glassllm (real weights, 4 layers, d_model 128)",
                model,
                cfg,
                4,
                128,
                sz.extract_batches,
                2 * sz.reps,
            )
        )
    except Exception as err:  # glassllm not installed: say so, go on
        out["cases"].append({"model": "glassllm", "skipped": f"{type(err).__name__}: {err}"})
    if sz.gpt2_shaped:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        torch.manual_seed(0)
        from neural_codec.source.lm.offline import RANDOM_SHAPES

        gcfg = HookedTransformerConfig(**{**RANDOM_SHAPES["gpt2"], "n_ctx": 128})  # GPT-2 small's shape
        model = HookedTransformer(gcfg).eval()
        cfg = LMSourceConfig(model_name="gpt2", dataset="unused")  # blocks.8 hooks (default)
        out["cases"].append(
            _extract_case(
                "gpt2-small shape (random weights, 12 layers, d_model 768)", model, cfg, 1, 64, 1, sz.reps + 2
            )
        )
        del model
    return out
