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
import fnmatch
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from neural_codec.errors import data_error

SHARD_GLOB = "shard_*.npz"


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


#: temporary names are `.<name>.<pid>.<random>.tmp`: the pid says whose they are, so a stage can
#: sweep what a killed run (SIGKILL, power loss) left behind without touching a live run's files
TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` only on success.

    The file gets the umask's permissions (mkstemp alone would make every output 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
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
    """Yield an empty temporary directory; it replaces `path` only if the block succeeds.

    The directory gets the umask's permissions (mkdtemp alone would make it 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(*directories: str | Path) -> list[Path]:
    """Delete `.<name>.<pid>.*.tmp` files and dirs (directly inside `directories` and their
    sub-directories) whose writing process is gone; returns what was removed. Temp names without a
    pid (older runs) are removed too. Run at stage start (`stage.run`)."""
    removed = []
    for d in directories:
        d = Path(d)
        if not d.is_dir():
            continue
        parents = [d] + [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for parent in parents:
            for p in parent.glob(".*" + TMP_SUFFIX):
                parts = p.name.split(".")
                pids = [int(x) for x in parts[2:-2] if x.isdigit()]
                if pids and _pid_alive(pids[-1]):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _non_finite(obj: Any, key: str = "") -> Iterator[str]:
    """The dotted keys of every NaN/inf float in a JSON-like object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _non_finite(v, f"{key}[{i}]")
    elif isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        yield key or "<value>"


def _jsonable(obj: Any) -> Any:
    """Plain JSON types. A NaN/inf float becomes null here, but `write_json` only lets that happen
    when the caller said why (`missing_ok`); otherwise it is an error (never a silent null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN; DVC metrics would choke on it
    return obj


def write_json(path: str | Path, obj: Any, missing_ok: str | None = None, where: str = "*") -> None:
    """Write `obj` as JSON, atomically.

    A NaN or inf anywhere in `obj` (a metric that could not be computed, or one poisoned by bad
    data) is a `DataError` naming the file, the keys and the count, and nothing is written: JSON
    has no NaN, and a silent `null` reads like a result. A caller for whom some values are
    legitimately undefined (e.g. a statistic over an empty group) passes `missing_ok="<why>"`:
    those values are written as null and a one-line note on stderr gives the count, keys and reason.
    `where` (an fnmatch pattern of dotted keys) limits which keys may be null; others still fail.
    """
    bad = list(_non_finite(_numpy_free(obj)))
    if missing_ok is not None and any(not fnmatch.fnmatchcase(k, where) for k in bad):
        missing_ok, bad = None, [k for k in bad if not fnmatch.fnmatchcase(k, where)]
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        if missing_ok is None:
            raise data_error(
                path,
                f"{len(bad)} non-finite (NaN/inf) values to write at {shown}",
                "the inputs of this stage are bad or training diverged: check them and re-run `dvc repro`",
            )
        print(f"note: {path}: {len(bad)} values written as null ({missing_ok}): {shown}", file=sys.stderr)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def _numpy_free(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _numpy_free(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_numpy_free(v) for v in obj]
    return obj


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or corrupt one is a one-line `DataError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise data_error(path, "missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise data_error(path, f"not valid JSON ({err})") from None


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """`np.load` of one .npy array, refusing a missing, truncated or non-finite file in one line."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise data_error(path, "missing") from None
    except (ValueError, OSError, EOFError) as err:
        raise data_error(path, f"unreadable or truncated ({err})") from None
    check_finite(arr, path)
    return arr


def check_finite(arr: np.ndarray, path: str | Path, key: str | None = None, row_offset: int = 0) -> None:
    """Raise a DataError naming the file, the array, the first bad rows and the count unless
    every value of a float array is finite (scanned in chunks: fine on a memory map)."""
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return
    n_bad = 0
    rows: list[int] = []
    step = max(1, (1 << 22) // max(1, int(np.prod(arr.shape[1:], dtype=np.int64))))
    for start in range(0, len(arr), step):
        bad = ~np.isfinite(np.asarray(arr[start : start + step]))
        if bad.any():
            n_bad += int(bad.sum())
            per_row = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim > 1 else bad
            if len(rows) < 5:
                rows += (np.flatnonzero(per_row)[: 5 - len(rows)] + start + row_offset).tolist()
    if n_bad:
        what = f"`{key}` has" if key else "has"
        shown = ", ".join(map(str, rows)) + (", ..." if len(rows) == 5 else "")
        raise data_error(path, f"{what} {n_bad} non-finite values (NaN/inf), in rows {shown}")


def torch_save(path: str | Path, obj: Any) -> None:
    """`torch.save` atomically and byte-stably: into an open file object, so the archive's record
    names do not carry the random temporary file name (same object -> same bytes)."""
    import torch

    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            torch.save(obj, fh)


def torch_load(path: str | Path) -> Any:
    """`torch.load` on CPU; a missing, truncated or corrupt file is a one-line DataError naming it."""
    import torch

    path = Path(path)
    if not path.exists():
        raise data_error(path, "missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on bad bytes
        text = str(err).strip().splitlines()
        raise data_error(
            path, f"truncated or corrupt ({type(err).__name__}: {text[0] if text else ''})"
        ) from None


def write_json_sorted(path: str | Path) -> None:
    """Rewrite a JSON file written by a library (SAELens' cfg.json) with sorted keys, so that its
    bytes do not depend on dict ordering from run to run."""
    obj = read_json(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


#: the timestamp of every member of our .npz files: np.savez stamps the wall clock, so the same
#: arrays written a second later would differ in bytes (and in DVC hash)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(file: Any, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` (uncompressed, `np.load` reads it) with fixed member timestamps: byte-stable."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH), "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            write_npz(fh, arrays)


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
        write_npz(self.directory / f"shard_{self.n_shards:05d}.npz", out)
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
        raise data_error(directory, "no shards (shard_*.npz)")
    return paths


def read_meta(directory: str | Path) -> dict[str, Any]:
    return read_json(Path(directory) / "meta.json")


def load_shard(path: str | Path, keys: list[str] | None = None, row_offset: int = 0) -> dict[str, np.ndarray]:
    """One shard's arrays, refusing a truncated or corrupt file, a missing key, or a NaN/inf value
    with one line naming the file (and for NaN: the array, rows and count)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted(set(keys or []) - set(z.files))
            if missing:
                raise data_error(path, f"has no array {missing[0]!r} (it has {', '.join(z.files)})")
            out = {k: z[k] for k in (keys or z.files)}
    except FileNotFoundError:
        raise data_error(path, "missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise data_error(path, f"truncated or corrupt ({type(err).__name__}: {err})") from None
    for k, a in out.items():
        check_finite(a, path, k, row_offset)
    return out


def iter_shards(directory: str | Path, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Each shard's arrays in order, validated by `load_shard` (rows in errors count from the
    shard's first row)."""
    for p in shard_paths(directory):
        yield load_shard(p, keys)


def check_shards(directory: str | Path, keys: list[str] | None = None) -> int:
    """Read every shard once (readable, keys present, all finite) before any work; returns rows."""
    return sum(len(next(iter(s.values()))) for s in iter_shards(directory, keys))


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
