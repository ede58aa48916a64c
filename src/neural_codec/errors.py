"""The project's errors: a bad parameter or a bad input, each said in one line that names the
key (or file), the value and what is allowed. A leaf module: it imports nothing of the project's."""

from __future__ import annotations

from typing import Any


class ParamError(ValueError):
    """A bad value in params.yaml (or a missing upstream output): the message says how to fix it."""


def fail(key: str, value: Any, allowed: str) -> None:
    raise ParamError(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ParamError naming key, value and what is allowed unless `ok`."""
    if not ok:
        fail(key, value, allowed)
