"""Typed, validated stage parameters read from `params.yaml`.

Every stage reads only its own sections into dataclasses before doing any work, so a typo or
an out-of-range value fails at once with a message naming the key, the value and what is
allowed (and `dvc exp run -S section.key=...` gets the same checks).
"""

from __future__ import annotations

import dataclasses
import math
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
    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path} not found: run stages from the repository root")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    check(isinstance(data, dict), str(path), type(data).__name__, "a mapping of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:  # a misspelt section would otherwise leave its stage silently on code defaults
        fail(unknown[0], data[unknown[0]], "one of the sections " + ", ".join(SECTIONS))
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
