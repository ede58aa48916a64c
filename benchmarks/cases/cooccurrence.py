"""cooccurrence: `neural_codec.analysis.logic.cooccurrence` (sparse B_U^T B_U per batch) over N rows for
the number of pairs the logic stage asks for at this scale, against `naive.naive_pair_counts`
(a per-pair loop, affine in rows from two subset sizes) and `naive.naive_gram_step` (a dense
B^T B accumulated per batch, one batch timed), each checked equal to ours; peak memory by
tracemalloc (numpy / scipy allocations)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from benchmarks.harness import Sizes, random_pairs, topk_features, traced
from benchmarks.naive import naive_gram_step, naive_pair_counts
from neural_codec.analysis.logic import cooccurrence


def bench_cooccurrence(sz: Sizes) -> dict[str, Any]:
    t0 = time.perf_counter()
    feats = topk_features(sz.cooc_rows, sz.n, sz.k, seed=3)
    gen_s = time.perf_counter() - t0
    pairs = random_pairs(sz.n, sz.cooc_pairs)

    def stream(rows: int):
        return (feats[s : min(rows, s + sz.cooc_batch)] for s in range(0, rows, sz.cooc_batch))

    # ours over all rows, untraced (timing), then traced over 1 and 3 batches (memory is per batch)
    t0 = time.perf_counter()
    res = cooccurrence(stream(sz.cooc_rows), pairs)
    ours_s = time.perf_counter() - t0
    _, _, peak1 = traced(lambda: cooccurrence(stream(sz.cooc_batch), pairs))
    _, _, peak3 = traced(lambda: cooccurrence(stream(3 * sz.cooc_batch), pairs))

    # naive per-pair loop on a subset of pairs over R and 4R rows, extrapolated to all rows by the
    # affine fit through the two (a per-call cost must not be multiplied by the row count)
    sub_pairs = pairs[: sz.naive_pair_subset]
    loop_s = {}
    for rows in (sz.naive_pair_rows, 4 * sz.naive_pair_rows):
        sub = feats[:rows]
        dense_cols = np.asfortranarray(sub.to_dense() > 0)
        t0 = time.perf_counter()
        naive_counts = naive_pair_counts(dense_cols, sub_pairs)
        loop_s[rows] = time.perf_counter() - t0
        del dense_cols
        assert np.array_equal(cooccurrence([sub], sub_pairs).counts, naive_counts), (
            "naive and sparse co-occurrence disagree"
        )
    (r1, t1), (r2, t2) = sorted(loop_s.items())
    per_row = max((t2 - t1) / (r2 - r1), 0.0)
    pair_loop_extrap = (t1 + per_row * (sz.cooc_rows - r1)) * (sz.cooc_pairs / sz.naive_pair_subset)

    # naive dense B^T B accumulated batch by batch (acc += D^T D, BLAS): time one batch step,
    # times the number of batches; the n x n accumulator is allocated once, outside the timing
    gsub = feats[: sz.naive_gram_rows]
    acc = np.zeros((sz.n, sz.n), np.float32)
    _, gram_s, gram_peak = traced(partial(naive_gram_step, acc, gsub))
    a, b = pairs[:1000].T
    assert np.array_equal(np.rint(acc[a, b]).astype(np.int64), cooccurrence([gsub], pairs[:1000]).counts)
    acc_bytes = acc.nbytes
    del acc
    gram_extrap = gram_s * sz.cooc_rows / sz.naive_gram_rows
    return {
        "sizes": {
            "n": sz.n,
            "k": sz.k,
            "rows": sz.cooc_rows,
            "pairs": sz.cooc_pairs,
            "batch_rows": sz.cooc_batch,
        },
        "mean_active_per_row": float((feats.val > 0).sum(1).mean()),
        "pairs_found_cooccurring": int((res.counts > 0).sum()),
        "data_generation_s": gen_s,
        "ours_s": ours_s,
        "ours_rows_per_s": sz.cooc_rows / ours_s,
        "ours_peak_traced_bytes_1_batch": peak1,
        "ours_peak_traced_bytes_3_batches": peak3,
        "naive_pair_loop_s_subset": {str(r): t for r, t in loop_s.items()},
        "naive_pair_loop_subset": {"rows": [r1, r2], "pairs": sz.naive_pair_subset},
        "naive_pair_loop_s_extrapolated": pair_loop_extrap,
        "naive_dense_gram_s_one_batch": gram_s,
        "naive_dense_gram_batch_rows": sz.naive_gram_rows,
        "naive_dense_gram_s_extrapolated": gram_extrap,
        "naive_dense_gram_peak_traced_bytes": gram_peak + acc_bytes,
        "ratio_vs_naive_pair_loop": pair_loop_extrap / ours_s,
        "ratio_vs_naive_dense_gram": gram_extrap / ours_s,
        "method": "ours: logic.cooccurrence streamed in batches over all rows (data pre-generated, not "
        "timed); naive: (a) a per-pair loop over dense boolean columns, timed on a subset of "
        "pairs at R and 4R rows and extrapolated to all rows by the affine fit through the "
        "two, then linearly in pairs; (b) dense float32 B^T B accumulated batch by batch "
        "(numpy BLAS), one batch step timed, times the number of batches; both checked "
        "equal to ours on their subset; memory: tracemalloc peak (numpy/scipy buffers) "
        "above the start, data excluded (the dense accumulator counted for (b))",
    }
