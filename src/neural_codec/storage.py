"""Atomic outputs, sharded arrays and the sparse feature format shared by all stages.

Why atomic: DVC caches whatever a stage leaves behind, so an interrupted stage must never leave a
half-written output. Files are written to a temporary sibling and renamed; directories are built
under a temporary name and swapped in at the end.

Why shards: memory is bounded by a batch, not by the dataset. Arrays stream in and out in shards
of `rows_per_shard` rows.

Sparse features (the SAE's top-k output) are stored as fixed-width pairs `idx` (N, k) int32 and
`val` (N, k) float32; a slot with `val == 0` is padding. This is what an embedding-bag consumes
directly, and `SparseFeatures.to_csr()` gives a scipy CSR matrix for statistics.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy.sparse as sp

SHARD_GLOB = "shard_*.npz"


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN; DVC metrics would choke on it
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            np.savez(fh, **cast(dict[str, Any], arrays))


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    """A small CSV for `dvc plots` (one header row, then numbers)."""
    lines = [",".join(header)]
    lines += [",".join(_fmt(v) for v in row) for row in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


# --------------------------------------------------------------------------------------------
# Sharded arrays
# --------------------------------------------------------------------------------------------


class ShardWriter:
    """Append row batches of named arrays; flush a shard file every `rows_per_shard` rows.

    Write into a directory you own (e.g. one from `atomic_dir`). `close()` writes the last
    partial shard and a `meta.json` with the row count, shard count and any extra metadata.
    """

    def __init__(self, directory: str | Path, rows_per_shard: int = 65536, **meta: Any):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.meta = meta
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered_rows = 0
        self.n_rows = 0
        self.n_shards = 0

    def append(self, **arrays: np.ndarray) -> None:
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays in one append must have the same number of rows: {lengths}")
        if self._buffer and set(arrays) != set(self._buffer):
            raise ValueError(f"keys changed: {sorted(arrays)} vs {sorted(self._buffer)}")
        for k, a in arrays.items():
            self._buffer.setdefault(k, []).append(np.asarray(a))
        self._buffered_rows += lengths.pop()
        while self._buffered_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n: int) -> None:
        joined = {k: np.concatenate(v) for k, v in self._buffer.items()}
        out = {k: a[:n] for k, a in joined.items()}
        rest = {k: a[n:] for k, a in joined.items()}
        np.savez(self.directory / f"shard_{self.n_shards:05d}.npz", **cast(dict[str, Any], out))
        self.n_shards += 1
        self.n_rows += n
        self._buffer = {k: [a] for k, a in rest.items()}
        self._buffered_rows -= n

    def close(self) -> dict[str, Any]:
        if self._buffered_rows:
            self._flush(self._buffered_rows)
        meta = {"n_rows": self.n_rows, "n_shards": self.n_shards, **self.meta}
        write_json(self.directory / "meta.json", meta)
        return meta


def shard_paths(directory: str | Path) -> list[Path]:
    paths = sorted(Path(directory).glob(SHARD_GLOB))
    if not paths:
        raise FileNotFoundError(f"no shards in {directory}: run the stage that writes it first")
    return paths


def read_meta(directory: str | Path) -> dict[str, Any]:
    return read_json(Path(directory) / "meta.json")


def iter_shards(directory: str | Path, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    for p in shard_paths(directory):
        with np.load(p) as z:
            yield {k: z[k] for k in (keys or z.files)}


def iter_batches(
    directory: str | Path, batch_size: int, keys: list[str] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Stream fixed-size row batches across shard boundaries (the last batch may be short)."""
    pending: dict[str, list[np.ndarray]] = {}
    n_pending = 0
    for shard in iter_shards(directory, keys):
        for k, a in shard.items():
            pending.setdefault(k, []).append(a)
        n_pending += len(next(iter(shard.values())))
        while n_pending >= batch_size:
            joined = {k: np.concatenate(v) for k, v in pending.items()}
            yield {k: a[:batch_size] for k, a in joined.items()}
            pending = {k: [a[batch_size:]] for k, a in joined.items()}
            n_pending -= batch_size
    if n_pending:
        yield {k: np.concatenate(v) for k, v in pending.items()}


def load_array(directory: str | Path, key: str) -> np.ndarray:
    """Concatenate one array over all shards (for held-out sets and small data only)."""
    return np.concatenate([s[key] for s in iter_shards(directory, [key])])


# --------------------------------------------------------------------------------------------
# Sparse features
# --------------------------------------------------------------------------------------------


@dataclass
class SparseFeatures:
    """Top-k feature activations: `idx[r, s]` is a feature index, `val[r, s]` its activation.

    Slots with `val == 0` are padding (their `idx` is meaningless). Rows hold at most k
    non-zeros; a feature index appears at most once per row.
    """

    idx: np.ndarray  # (N, k) int32
    val: np.ndarray  # (N, k) float32
    n_features: int

    def __post_init__(self) -> None:
        if self.idx.shape != self.val.shape or self.idx.ndim != 2:
            raise ValueError(f"idx {self.idx.shape} and val {self.val.shape} must be equal (N, k)")

    def __len__(self) -> int:
        return self.idx.shape[0]

    @property
    def k(self) -> int:
        return self.idx.shape[1]

    def __getitem__(self, rows: Any) -> SparseFeatures:
        return SparseFeatures(self.idx[rows], self.val[rows], self.n_features)

    def to_csr(self) -> sp.csr_matrix:
        n, k = self.idx.shape
        indptr = np.arange(0, n * k + 1, k)
        m = sp.csr_matrix(
            (self.val.ravel().astype(np.float32), self.idx.ravel().copy(), indptr),
            shape=(n, self.n_features),
        )
        m.eliminate_zeros()
        return m

    def to_dense(self) -> np.ndarray:
        out = np.zeros((len(self), self.n_features), dtype=np.float32)
        rows = np.repeat(np.arange(len(self)), self.k)
        np.add.at(out, (rows, self.idx.ravel()), self.val.ravel())
        return out

    @classmethod
    def from_dense(cls, dense: np.ndarray, k: int) -> SparseFeatures:
        """Keep the k largest entries per row (ties broken by index); zeros become padding."""
        dense = np.asarray(dense, dtype=np.float32)
        k = min(k, dense.shape[1])
        idx = (
            np.argpartition(-dense, k - 1, axis=1)[:, :k]
            if k < dense.shape[1]
            else np.tile(np.arange(dense.shape[1]), (len(dense), 1))
        )
        val = np.take_along_axis(dense, idx, axis=1)
        val = np.where(val > 0, val, 0).astype(np.float32)
        idx = np.where(val > 0, idx, 0).astype(np.int32)
        return cls(idx, val, dense.shape[1])

    def firing_frequency(self) -> np.ndarray:
        counts = np.bincount(self.idx[self.val > 0], minlength=self.n_features)
        return counts / max(len(self), 1)


def write_sparse(directory: str | Path, feats: SparseFeatures, rows_per_shard: int = 65536) -> None:
    w = ShardWriter(directory, rows_per_shard, n_features=feats.n_features, k=feats.k)
    w.append(idx=feats.idx, val=feats.val)
    w.close()


def sparse_writer(directory: str | Path, n_features: int, k: int, rows_per_shard: int = 65536) -> ShardWriter:
    """A ShardWriter for streaming SparseFeatures batches: call `.append(idx=..., val=...)`."""
    return ShardWriter(directory, rows_per_shard, n_features=n_features, k=k)


def iter_sparse(directory: str | Path, batch_size: int) -> Iterator[SparseFeatures]:
    n_features = int(read_meta(directory)["n_features"])
    for b in iter_batches(directory, batch_size, ["idx", "val"]):
        yield SparseFeatures(b["idx"], b["val"], n_features)


def load_sparse(directory: str | Path) -> SparseFeatures:
    n_features = int(read_meta(directory)["n_features"])
    shards = list(iter_shards(directory, ["idx", "val"]))
    return SparseFeatures(
        np.concatenate([s["idx"] for s in shards]), np.concatenate([s["val"] for s in shards]), n_features
    )


def read_first_rows(directory: str | Path, n_rows: int) -> SparseFeatures:
    """The first `n_rows` rows of a sparse split (streamed: memory ~ n_rows, not the split)."""
    parts = []
    got = 0
    for b in iter_sparse(directory, min(n_rows, 65536)):
        parts.append(b[: n_rows - got])
        got += len(parts[-1])
        if got >= n_rows:
            break
    return SparseFeatures(
        np.concatenate([p.idx for p in parts]), np.concatenate([p.val for p in parts]), parts[0].n_features
    )
