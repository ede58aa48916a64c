"""The train split's sparse features, read shard by shard: memory bounded by a buffer, not the split.

`open_train(directory, buffer_rows)` is what every trainer reads. When the split fits in the
buffer (`n_rows <= buffer_rows`, the default run) it is today's exact path: the whole split in
memory as a `SparseFeatures`, minibatches from one seeded `torch.randperm` per epoch, so results
are bit-identical to before. Only a split bigger than the buffer comes back as `SparseShards`:

- passes (firing frequency, the mean, input checks, PCA moments) read it in order, a batch at a
  time (`row_batches`);
- training minibatches (`SparseShards.minibatches`) come from a shard-order shuffle per epoch
  plus a seeded in-memory shuffle buffer: shards are appended until the buffer holds
  `buffer_rows` rows, the buffer is permuted, batches are taken until half of it is left, and
  the rest is mixed with the next shards. Every row is yielded exactly once per epoch; the order
  depends only on the generator's seed. Memory: the buffer plus one shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from neural_codec.storage import (
    SparseFeatures,
    iter_sparse,
    load_shard,
    load_sparse,
    read_first_rows,
    read_meta,
    shard_paths,
)

#: the batch of the in-order passes (checks, frequencies, means, moments)
PASS_ROWS = 65536


class SparseShards:
    """A sparse split on disk (`storage.write_sparse` format), read a shard at a time."""

    def __init__(self, directory: str | Path, buffer_rows: int):
        self.directory = Path(directory)
        self.paths = shard_paths(self.directory)
        meta = read_meta(self.directory)
        self.n_features = int(meta["n_features"])
        self.k = int(meta["k"])
        self.n_rows = int(meta["n_rows"])
        self.buffer_rows = int(buffer_rows)

    def __len__(self) -> int:
        return self.n_rows

    def batches(self, batch_size: int = PASS_ROWS) -> Iterator[SparseFeatures]:
        """The rows in order, `batch_size` at a time (one pass)."""
        return iter_sparse(self.directory, batch_size)

    def firing_frequency(self) -> np.ndarray:
        counts = np.zeros(self.n_features, dtype=np.int64)
        for b in self.batches():
            counts += np.bincount(b.idx[b.val > 0], minlength=self.n_features)
        return counts / max(self.n_rows, 1)

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = load_shard(self.paths[i], ["idx", "val"])
        return s["idx"], s["val"]

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of shuffled (idx, val) batches: every row exactly once (the last batch may
        be short). Shard order and buffer permutations are drawn from `generator`."""
        order = torch.randperm(len(self.paths), generator=generator).tolist()
        keep = max(self.buffer_rows // 2, 0)
        idx_buf = np.empty((0, self.k), np.int32)
        val_buf = np.empty((0, self.k), np.float32)
        while order or len(idx_buf):
            while order and len(idx_buf) < max(self.buffer_rows, batch_size):
                i, v = self._shard(order.pop(0))
                idx_buf, val_buf = np.concatenate([idx_buf, i]), np.concatenate([val_buf, v])
            perm = torch.randperm(len(idx_buf), generator=generator).numpy()
            idx_buf, val_buf = idx_buf[perm], val_buf[perm]
            # last fill: everything goes; otherwise keep half the buffer to mix with what comes next
            n_out = len(idx_buf)
            if order:  # at least one batch, so the loop always moves on
                n_out = min(n_out, max(batch_size, n_out - keep) // batch_size * batch_size)
            for s in range(0, n_out, batch_size):
                e = min(s + batch_size, n_out)
                yield idx_buf[s:e], val_buf[s:e]
            idx_buf, val_buf = idx_buf[n_out:], val_buf[n_out:]

    def minibatches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless full-size training batches, epoch after epoch (a short last batch is dropped,
        as `train.minibatches` drops the tail of each permutation)."""
        batch_size = min(batch_size, self.n_rows)
        while True:
            for i, v in self.epoch(batch_size, generator):
                if len(i) == batch_size:
                    yield i, v


#: what a trainer reads: the whole split in memory, or its shards
TrainRows = SparseFeatures | SparseShards


def open_train(directory: str | Path, buffer_rows: int) -> TrainRows:
    """The split in memory when it fits the buffer (today's exact path), else its shards."""
    n_rows = int(read_meta(directory)["n_rows"])
    if n_rows <= buffer_rows:
        return load_sparse(directory)
    return SparseShards(directory, buffer_rows)


def row_batches(rows: TrainRows, batch_size: int = PASS_ROWS) -> Iterator[SparseFeatures]:
    """One in-order pass over `rows`, `batch_size` rows at a time (the same batches either way)."""
    if isinstance(rows, SparseShards):
        yield from rows.batches(batch_size)
        return
    for s in range(0, len(rows), batch_size):
        yield rows[s : s + batch_size]


def rows_in_memory(rows: TrainRows) -> SparseFeatures:
    """`rows` as one in-memory array, for what needs every row at once (the permuted null shuffles
    each feature's column across all rows): the split itself when it fit the buffer, else its
    first `buffer_rows` rows (bounded, like the geometry stage's `null_rows` sample)."""
    if isinstance(rows, SparseFeatures):
        return rows
    return read_first_rows(rows.directory, rows.buffer_rows)
