"""Correctness of the fast paths the benchmark measures, beyond tests/test_squeezer.py (which checks
sparse == dense loss and gradients through `squeezer_loss` and the unbiasedness of the sampled loss):

- the fused exact loss (`_DecoderSquaredError`) against finite differences in float64, with a
  non-unit upstream gradient, clipped outputs, padding, and a decoder-only (no h gradient) call;
- the sampled loss draw by draw against a brute-force reference (which columns are skipped in
  which row), for both active-output branches;
- the benchmark's naive implementations compute the same thing as ours (so its ratios compare
  like with like), and its synthetic data honour the SparseFeatures contract.
No timings are asserted anywhere.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from benchmarks.harness import QUICK, random_pairs, topk_features, traced
from benchmarks.naive import NaiveSqueezer, naive_gram_step, naive_loss, naive_pair_counts
from benchmarks.run import main as run_benchmarks
from neural_codec import storage
from neural_codec.analysis.logic import cooccurrence
from neural_codec.squeezer.loss import _DecoderSquaredError, reconstruction_loss, squeezer_loss
from neural_codec.squeezer.model import Squeezer
from neural_codec.squeezer.train import make_optimizer, minibatches
from neural_codec.storage import SparseFeatures

pytestmark = pytest.mark.usefixtures("one_thread")


def distinct_rows(B, n, k, seed, pad_frac=0.25):
    """(B, k) distinct indices per row, values in [0.2, 1.5], ~pad_frac padding slots (val 0)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(B)])
    val = torch.rand(B, k, generator=g, dtype=torch.float64) * 1.3 + 0.2
    val[torch.rand(B, k, generator=g) < pad_frac] = 0.0
    return idx, val


def brute_force_loss(h, W_dec, b_dec, idx, val, w, cols=None):
    """Row by row, feature by feature: exact loss, or the sampled estimator for given columns
    (`cols[r]`: row r's drawn columns)."""
    B, n = h.shape[0], W_dec.shape[1]
    f_hat = torch.relu(h @ W_dec + b_dec)
    total = 0.0
    for r in range(B):
        act = {int(i): float(v) for i, v in zip(idx[r], val[r], strict=False) if v > 0}
        row = sum(w[i] * (v - f_hat[r, i]) ** 2 for i, v in act.items())
        if cols is None:
            row = row + sum(w[i] * f_hat[r, i] ** 2 for i in range(n) if i not in act)
        else:
            row = row + n / len(cols[r]) * sum(
                w[int(c)] * f_hat[r, int(c)] ** 2 for c in cols[r] if int(c) not in act
            )
        total = total + row
    return total / B


# --------------------------------------------------------------------------------------------
# Fused exact loss
# --------------------------------------------------------------------------------------------


def test_fused_exact_loss_gradcheck_float64():
    B, M, n, k = 6, 4, 11, 3
    idx, val = distinct_rows(B, n, k, seed=0)
    g = torch.Generator().manual_seed(1)
    h = torch.rand(B, M, generator=g, dtype=torch.float64).requires_grad_()
    W = (torch.randn(M, n, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    b = (torch.randn(n, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    pre = h @ W + b
    assert (pre < -0.05).any() and (pre > 0.05).any()  # both sides of the ReLU exercised
    assert (val == 0).any()
    fn = lambda h, W, b: 3.0 * _DecoderSquaredError.apply(h, W, b, idx, val, w)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, W, b), eps=1e-6, atol=1e-6)
    ref = brute_force_loss(h, W, b, idx, val, w)
    torch.testing.assert_close(_DecoderSquaredError.apply(h, W, b, idx, val, w), ref)


def test_fused_exact_loss_decoder_only_and_transposed_storage():
    """A frozen input h (the neuron-readout baseline) and W_dec passed as the (M, n) view of an
    (n, M) parameter (the Squeezer's storage): gradients land on the parameter unchanged."""
    B, M, n, k = 8, 5, 13, 4
    idx, val = distinct_rows(B, n, k, seed=2)
    g = torch.Generator().manual_seed(3)
    h = torch.rand(B, M, generator=g, dtype=torch.float64)
    W_T = torch.randn(n, M, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    w = torch.ones(n, dtype=torch.float64)
    loss = reconstruction_loss(h, W_T.T, b, idx, val, w)
    loss.backward()
    W_ref = W_T.detach().clone().requires_grad_()
    b_ref = b.detach().clone().requires_grad_()
    ref = brute_force_loss(h, W_ref.T, b_ref, idx, val, w)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(W_T.grad, W_ref.grad)
    torch.testing.assert_close(b.grad, b_ref.grad)
    assert W_T.grad.is_contiguous()


# --------------------------------------------------------------------------------------------
# Sampled loss, one draw at a time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("B", "n", "s"),
    # per-row gather (n > B*k/8) / matmul over active columns; blocks covering every column or not
    [(5, 12, 5), (64, 12, 5), (7, 15, 5), (64, 15, 3)],
)
@pytest.mark.parametrize("sparse_kernels", [True, False], ids=["csr", "gather"])
def test_sampled_loss_matches_brute_force_draw_by_draw(B, n, s, sparse_kernels, monkeypatch):
    """Loss and gradients (h, W_dec, b_dec) for one draw at a time, against autograd through
    the brute-force estimator for the same per-row columns (blocks that wrap round included).
    The active part by sparse-CSR kernels (CPU, CUDA) and by the gather (other devices)."""
    import neural_codec.squeezer.loss as loss_mod

    if not sparse_kernels:
        monkeypatch.setattr(loss_mod, "_sparse_kernels", lambda h, rows: False)
    M, k = 4, 3
    idx, val = distinct_rows(B, n, k, seed=4, pad_frac=0.2)
    g = torch.Generator().manual_seed(5)
    h = torch.rand(B, M, generator=g, dtype=torch.float64)
    W = torch.randn(M, n, generator=g, dtype=torch.float64)
    b = torch.rand(n, generator=g, dtype=torch.float64) * 0.3
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    skipped_somewhere = wrapped = False
    for seed in range(6):
        ours = [t.clone().requires_grad_() for t in (h, W, b)]
        got = reconstruction_loss(
            *ours, idx, val, w, loss_sample=s, generator=torch.Generator().manual_seed(seed)
        )
        cols = row_draws(n, s, B, seed)
        ref = [t.clone().requires_grad_() for t in (h, W, b)]
        expected = brute_force_loss(*ref, idx, val, w, cols)
        torch.testing.assert_close(got, expected)
        for a, e in zip(
            torch.autograd.grad(2.5 * got, ours), torch.autograd.grad(2.5 * expected, ref), strict=True
        ):
            torch.testing.assert_close(a, e)
        wrapped |= any(bool((c[1:] < c[:-1]).any()) for c in cols)
        active_drawn = torch.stack([torch.isin(idx[r], cols[r]) for r in range(B)]) & (val > 0)
        skipped_somewhere |= bool(active_drawn.any())
        # padding slots whose (meaningless) index was drawn must not be skipped
    assert skipped_somewhere  # the skip rule was exercised
    assert wrapped  # a block running past column n - 1 was exercised


def row_draws(n, s, B, seed):
    """Each row's drawn columns, by the documented rule: the rows in G = min(n // s, B)
    contiguous groups (group g: rows ceil(g B / G) to ceil((g + 1) B / G) - 1), group g drawing
    the s columns from offset + g s on, cyclically, for one offset uniform in [0, n)."""
    offset = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    G = min(n // s, B)
    bounds = [-(-g * B // G) for g in range(G + 1)]
    block = [(offset + g * s + torch.arange(s)) % n for g in range(G)]
    return [block[g] for g in range(G) for _ in range(bounds[g], bounds[g + 1])]


def test_sampled_loss_draws_cover_every_column_once_per_batch():
    """Why the draw is stratified: with n = G s every column is drawn in every step (by one
    group of rows), so Adam never sees a column's push-down gradient in only s/n of the steps.
    With no active features (all padding) and every output positive, the gradient of b_dec is
    non-zero in every column in each draw; one shared draw of s for the whole batch (the old
    rule) left it zero in n - s of them."""
    B, M, n, s = 32, 4, 24, 6
    idx = torch.zeros(B, 2, dtype=torch.long)
    val = torch.zeros(B, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    h = torch.rand(B, M, generator=g, dtype=torch.float64)
    W = torch.rand(M, n, generator=g, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    for seed in range(3):
        b = torch.full((n,), 0.5, dtype=torch.float64, requires_grad=True)
        gen = torch.Generator().manual_seed(seed)
        (gb,) = torch.autograd.grad(reconstruction_loss(h, W, b, idx, val, w, s, gen), b)
        assert (gb > 0).all()  # every column is pushed down, in every draw
        cols = row_draws(n, s, B, seed)
        assert sorted(set(torch.cat(cols).tolist())) == list(range(n))
        # each column's push-down gradient comes from the ~B s / n rows of its group, weighted n/s
        f = torch.relu(h @ W + b.detach())
        ref = torch.zeros(n, dtype=torch.float64)
        for r in range(B):
            ref[cols[r]] += 2 * f[r, cols[r]] * n / s / B
        torch.testing.assert_close(gb, ref)


def test_sampled_loss_trains_to_near_the_exact_fvu_on_a_planted_code():
    """The convergence benchmark's failure, tiny: on a planted code (n 1,024, k 16, M 32, batch
    256, s 64) Adam with the sampled loss tracks the exact loss's held-out FVU. Measured after 150
    steps: exact 0.39, stratified sampled 0.50; one draw shared by the batch (the old rule) 1.00,
    having first risen above 1."""
    from benchmarks.cases.convergence import _sst, heldout_fvu, planted_features

    n, M, k, B, s, steps = 1024, 32, 16, 256, 64, 150
    train = planted_features(16384, n, k, 64, 4, rows_seed=1)
    held = planted_features(1024, n, k, 64, 4, rows_seed=2)
    sst = _sst(held)
    hi, hv = torch.from_numpy(held.idx.astype(np.int64)), torch.from_numpy(held.val)
    ti, tv = torch.from_numpy(train.idx.astype(np.int64)), torch.from_numpy(train.val)
    w = torch.ones(n)
    order = list(itertools.islice(minibatches(len(train), B, torch.Generator().manual_seed(0)), steps))
    fvu = {}
    for sample in (0, s):
        model = Squeezer(n, M, generator=torch.Generator().manual_seed(0))
        opt = make_optimizer(list(model.parameters()), 0.003, 0.0)
        gen = torch.Generator().manual_seed(1)
        worst = 0.0
        for t, rows in enumerate(order):
            loss = squeezer_loss(model, ti[rows], tv[rows], w, sample, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if t % 30 == 29:
                worst = max(worst, heldout_fvu(model, hi, hv, n, sst, 1024))
        fvu[sample] = heldout_fvu(model, hi, hv, n, sst, 1024)
        assert worst < 0.9  # never above its start (~0.97), as the shared draw was
    assert fvu[0] < 0.45
    assert fvu[s] < 1.4 * fvu[0]


def test_sampled_loss_padding_index_is_not_skipped():
    """Padding slots carry index 0; column 0 drawn must still count as inactive for that row."""
    M, n = 3, 9
    idx = torch.tensor([[0, 4], [2, 0]])
    val = torch.tensor([[0.0, 1.0], [0.7, 0.0]], dtype=torch.float64)  # index 0 only as padding
    h = torch.rand(2, M, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W = torch.rand(M, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = torch.full((n,), 0.2, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    for seed in range(20):
        cols = row_draws(n, 3, 2, seed)
        if any(0 in c.tolist() for c in cols):  # both rows have a padding slot with index 0
            break
    got = reconstruction_loss(
        h, W, b, idx, val, w, loss_sample=3, generator=torch.Generator().manual_seed(seed)
    )
    torch.testing.assert_close(got, brute_force_loss(h, W, b, idx, val, w, cols))


# --------------------------------------------------------------------------------------------
# The benchmark compares like with like
# --------------------------------------------------------------------------------------------


def test_benchmark_naive_squeezer_equals_ours():
    n, M, k, B = 60, 8, 6, 40
    f = topk_features(B, n, k, seed=0)
    idx, val = torch.from_numpy(f.idx.astype(np.int64)), torch.from_numpy(f.val)
    model = Squeezer(n, M, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.b_dec.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(1))
    naive = NaiveSqueezer.like(model)
    w = torch.rand(n, generator=torch.Generator().manual_seed(2)) + 0.5
    ours = squeezer_loss(model, idx, val, w)
    reference = naive_loss(naive, idx, val, w)
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(model.W_enc.grad, naive.enc.weight.grad.T)
    torch.testing.assert_close(model.b_enc.grad, naive.enc.bias.grad)
    torch.testing.assert_close(model.W_dec_T.grad, naive.dec.weight.grad)
    torch.testing.assert_close(model.b_dec.grad, naive.dec.bias.grad)


def test_benchmark_data_and_naive_cooccurrence():
    n, k, N = 300, 8, 2000
    f = topk_features(N, n, k, seed=1)
    assert isinstance(f, SparseFeatures) and f.idx.dtype == np.int32 and (f.val >= 0).all()
    for r in range(0, N, 97):  # active indices distinct within a row
        a = f.idx[r][f.val[r] > 0]
        assert len(np.unique(a)) == len(a) and len(a) >= 1
    freq = np.sort(f.firing_frequency())[::-1]
    assert freq[:10].mean() > 10 * np.median(freq)  # heavy-tailed, like a real SAE
    pairs = random_pairs(n, 500, seed=0)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    dense = np.asfortranarray(f.to_dense() > 0)
    expected = cooccurrence([f], pairs).counts
    np.testing.assert_array_equal(naive_pair_counts(dense, pairs), expected)
    gram = np.zeros((n, n), np.float32)
    for s in range(0, N, N // 3 + 1):  # accumulated over batches, as the benchmark's naive does
        naive_gram_step(gram, f[s : s + N // 3 + 1])
    np.testing.assert_array_equal(np.rint(gram[pairs[:, 0], pairs[:, 1]]).astype(np.int64), expected)
    assert expected.sum() > 0


def test_benchmark_quick_sampled_section_writes_json(tmp_path):
    assert run_benchmarks(["--quick", "--only", "sampled", "--out", str(tmp_path)]) == 0
    r = storage.read_json(tmp_path / "latest_quick.json")
    s = r["sampled"]
    assert s["draws"] == QUICK.sample_draws
    # averaging draws shrinks the error against the exact loss and gradient (the JSON's figures
    # are sane; unbiasedness itself is tested against many draws in tests/test_squeezer.py)
    assert s["loss_rel_error_of_mean"] < s["loss_rel_std_single_draw"]
    assert s["grad_rel_error_of_mean"] < s["grad_rel_error_single_draw_median"]
    assert {"cpu_model", "torch_threads", "load_average_start", "load_average_end"} <= set(r["machine"])
    assert "| benchmark |" in r["table_markdown"]


def test_cooccurrence_memory_is_one_batch_not_the_stream():
    """Traced peak over 4 batches stays at the 1-batch peak (the previous batch's product is freed
    before the next one is built); counts still equal a single pass."""
    n, k = 500, 16
    f = topk_features(4 * 4000, n, k, seed=2)
    pairs = random_pairs(n, 20000, seed=1)
    batches = lambda m: (f[s : s + 4000] for s in range(0, m * 4000, 4000))  # noqa: E731
    one, _, peak1 = traced(lambda: cooccurrence(batches(1), pairs))
    four, _, peak4 = traced(lambda: cooccurrence(batches(4), pairs))
    assert peak4 < 1.25 * peak1, (peak1, peak4)
    np.testing.assert_array_equal(four.counts, cooccurrence([f], pairs).counts)
    assert four.counts.sum() > one.counts.sum() > 0
