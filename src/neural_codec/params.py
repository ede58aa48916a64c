"""Typed, validated stage parameters read from `params.yaml`.

Every stage reads only its own sections into dataclasses before doing any work, so a typo or
an out-of-range value fails at once with a message naming the key, the value and what is
allowed (and `dvc exp run -S section.key=...` gets the same checks).

`python -m neural_codec.params` (the README runs it before `dvc repro`) checks the whole file up
front: every section, unknown sections and keys, types and ranges, the cross-section rules the
stages would check later (features.top_k <= sae.d_sae, ...), and sizes that cannot fit in memory.
One line and exit code 2 on the first problem; so a bad `compare` key fails in a second, not
after minutes of upstream stages. (Not a DVC stage: it would have to depend on all of
params.yaml, and then any param change would re-run every stage.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args, get_origin

import yaml

T = TypeVar("T")


#: the sections of params.yaml, one per stage that has knobs (the report stage has none)
SECTIONS = (
    "source",
    "activations",
    "sae",
    "features",
    "squeezer",
    "baselines",
    "geometry",
    "logic",
    "compare",
    "tms",
    "seeds",
)


from neural_codec.config import (  # noqa: E402
    ActivationsConfig,
    BaselinesConfig,
    CompareConfig,
    FeaturesConfig,
    GeometryConfig,
    LogicConfig,
    SAEConfig,
    SeedsConfig,
    SourceConfig,
    SqueezerConfig,
    TMSConfig,
)
from neural_codec.errors import ParamError, check, fail  # noqa: E402  (re-used by the loader)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert ints to floats where a float is wanted."""
    origin = get_origin(tp)
    if origin is Literal:
        check(value in get_args(tp), key, value, _type_name(tp))
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(arg, value, key)
            except ParamError:
                continue
        fail(key, value, _type_name(tp))
    if origin in (list, tuple):
        check(isinstance(value, (list, tuple)), key, value, _type_name(tp))
        (arg,) = get_args(tp)[:1] or (Any,)
        return [_coerce(arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is type(None):
        check(value is None, key, value, "null")
        return None
    if tp is bool:
        check(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        check(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            key,
            value,
            "a finite number",
        )
        return float(value)
    if tp is str:
        check(isinstance(value, str), key, value, "a string")
        return value
    if tp is dict or origin is dict:
        check(isinstance(value, dict), key, value, "a mapping")
        return value
    return value


def from_dict(cls: type[T], data: Any, section: str) -> T:
    """Build dataclass `cls` from a params mapping; unknown keys and wrong types fail by name.

    The dataclass's own `__post_init__` does range checks with `check(...)`; it can use
    `self._section` to name keys (set before `__post_init__` runs via the `section` field).
    """
    if data is None:
        data = {}
    check(isinstance(data, dict), section, data, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = unknown[0]
        fail(f"{section}.{key}", data[key], "one of the keys " + ", ".join(sorted(fields)))
    kwargs = {name: _coerce(hints[name], data[name], f"{section}.{name}") for name in data}
    try:
        return cls(**kwargs)
    except ParamError as err:
        # __post_init__ checks name keys without the section; add it.
        msg = str(err)
        if msg.startswith("params.yaml: ") and not msg.startswith(f"params.yaml: {section}."):
            msg = msg.replace("params.yaml: ", f"params.yaml: {section}.", 1)
        raise ParamError(msg) from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The parsed file. Invalid YAML, an empty file, a non-mapping, an unknown section or an
    empty (null) section each fail in one line: none of them may silently mean code defaults."""
    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path} not found: run stages from the repository root")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ParamError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ParamError(f"{path} is empty: expected a mapping of the sections {', '.join(SECTIONS)}")
    check(isinstance(data, dict), str(path), type(data).__name__, "a mapping of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:  # a misspelt section would otherwise leave its stage silently on code defaults
        fail(unknown[0], data[unknown[0]], "one of the sections " + ", ".join(SECTIONS))
    for section, value in data.items():
        check(
            value is not None, section, value, "a mapping of keys (delete the section to use code defaults)"
        )
    return data


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Read and validate one section of params.yaml into `cls`."""
    return from_dict(cls, load_params(path).get(section), section)


def require_inputs(*paths: str | Path) -> None:
    """Fail before any work if an upstream output is missing, naming the stage that makes it."""
    for p in paths:
        if not Path(p).exists():
            raise ParamError(
                f"missing upstream output {p}: run `dvc repro` (or the stage that writes it) first"
            )


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# The whole-file check: `python -m neural_codec.params [params.yaml]`
# --------------------------------------------------------------------------------------------


def section_classes() -> dict[str, type]:
    """Each params.yaml section and the dataclass that reads it (all of config.py's sections)."""
    return {
        "source": SourceConfig,
        "activations": ActivationsConfig,
        "sae": SAEConfig,
        "features": FeaturesConfig,
        "squeezer": SqueezerConfig,
        "baselines": BaselinesConfig,
        "geometry": GeometryConfig,
        "logic": LogicConfig,
        "compare": CompareConfig,
        "tms": TMSConfig,
        "seeds": SeedsConfig,
    }


def ram_bytes() -> int:
    """Physical memory of this machine (0 if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_fits(key: str, value: Any, need: float, detail: str, ram: int | None = None) -> None:
    """Fail on `key` unless `need` bytes (estimated) fit in this machine's RAM."""
    ram = ram_bytes() if ram is None else ram
    check(
        not ram or need <= ram,
        key,
        value,
        f"a size that fits in memory: ~{_gb(need)} needed ({detail}), {_gb(ram)} of RAM",
    )


#: bytes per (row, slot) of the squeeze train split in memory: numpy idx int32 + val float32
#: (4 + 4) plus training_batches' torch idx int64 + val float32 copies (8 + 4); measured 22 B by RSS
#: at 12.8 M slots (the rest is allocator slack)
IN_MEMORY_SLOT_BYTES = 20
#: bytes per slot of the streamed shuffle buffer and shard (numpy int32 + float32)
STREAMED_SLOT_BYTES = 8


def squeezer_bytes(
    n_features: int, cfg: SqueezerConfig, n_train: int, top_k: int, shard_rows: int = 65536
) -> float:
    """Estimated peak bytes of the squeeze stage: W_enc + W_dec with their gradients and two Adam
    moments (4 copies of 2 n M float32), a dense (batch, n) reconstruction, target and gradient
    (3 copies, exact loss), and the training features in memory. A split that fits
    `cfg.buffer_rows` is held twice (`IN_MEMORY_SLOT_BYTES` per slot): load_sparse's int32 idx +
    float32 val, and beside them training_batches' int64 / float32 torch copies. A bigger split
    streams: the shuffle buffer plus one shard as int32 + float32 (`STREAMED_SLOT_BYTES`)."""
    weights = 4 * 2 * n_features * cfg.M * 4
    cols = n_features if cfg.loss_sample == 0 else min(n_features, cfg.loss_sample + top_k)
    dense = 3 * cfg.batch_size * cols * 4
    if n_train <= cfg.buffer_rows:
        resident = n_train * top_k * IN_MEMORY_SLOT_BYTES
    else:
        resident = (cfg.buffer_rows + shard_rows) * top_k * STREAMED_SLOT_BYTES
    return float(weights + dense + resident)


def _sae_latents(sae: SAEConfig) -> int | None:
    """The SAE's number of latents: sae.d_sae when trained, else from an existing cfg.json."""
    if not sae.pretrained:
        return sae.d_sae
    for folder in (sae.path, "data/sae"):
        cfg_json = Path(folder) / "cfg.json" if folder else None
        if cfg_json is not None and cfg_json.exists():
            try:
                return int(json.loads(cfg_json.read_text())["d_sae"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def check_params(path: str | Path = "params.yaml", ram: int | None = None) -> dict[str, Any]:
    """Validate every section of `path` and the rules between sections; returns the configs.

    Raises ParamError (one line) on: invalid or empty YAML, an unknown or empty section, an
    unknown key, a wrong type or range (each dataclass's own checks), features.top_k or
    squeezer.importance_given that do not fit sae.d_sae, sae.batch_size above
    activations.n_train, and a squeeze or SAE size that cannot fit in `ram` bytes."""
    data = load_params(path)
    configs: dict[str, Any] = {n: from_dict(c, data.get(n), n) for n, c in section_classes().items()}
    src: SourceConfig = configs["source"]
    acts: ActivationsConfig = configs["activations"]
    sae: SAEConfig = configs["sae"]
    feats: FeaturesConfig = configs["features"]
    sq: SqueezerConfig = configs["squeezer"]
    n_train = src.lm.n_tokens_train if src.kind == "lm" else acts.n_train
    if not sae.pretrained:
        check(sae.batch_size <= n_train, "sae.batch_size", sae.batch_size,
              f"<= the number of training rows ({n_train})")  # fmt: skip
    n = _sae_latents(sae)
    if n is not None:
        check(feats.top_k <= n, "features.top_k", feats.top_k, f"<= the SAE's number of latents ({n})")
        if sq.importance_given is not None:
            check(len(sq.importance_given) == n, "squeezer.importance_given",
                  f"<list of length {len(sq.importance_given)}>", f"a list of length n_features = {n}")  # fmt: skip
        need = squeezer_bytes(n, sq, n_train, feats.top_k, feats.rows_per_shard)
        check_fits("squeezer.M", sq.M, need, f"n_features {n} x M {sq.M}, batch {sq.batch_size}", ram)
    if not sae.pretrained and src.kind == "synthetic":
        d_in = src.synthetic.d_model
        sae_need = 4 * 2 * d_in * sae.d_sae * 4 + 3 * sae.batch_size * max(d_in, sae.d_sae) * 4
        check_fits("sae.d_sae", sae.d_sae, sae_need, f"d_model {d_in} x d_sae {sae.d_sae}", ram)
        acts_need = (acts.rows_per_shard + acts.batch_size) * (d_in + src.synthetic.n_neurons) * 4 * 4
        check_fits("activations.rows_per_shard", acts.rows_per_shard, acts_need, "one shard in memory", ram)
    return configs


def main(argv: list[str] | None = None) -> int:
    """`python -m neural_codec.params [params.yaml]`: one line, exit 0 (ok) or 2 (the problem)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path("params.yaml")
    try:
        configs = check_params(path)
    except ParamError as err:
        print(f"[check-params] error: {err}", file=sys.stderr)
        return 2
    print(f"[check-params] {path}: ok ({len(configs)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
