"""Where the work runs and what it shows while it runs: the one device resolver and the one
progress bar every stage uses. A leaf module (it imports only `errors`; torch and tqdm lazily),
so `config` can validate a `device` key with it without importing torch.

- `device` keys (squeezer, baselines, compare, geometry, sae, source.lm): `auto` (cuda when
  torch sees a GPU, else cpu), `cpu`, `cuda`, `cuda:N` or `mps`. A GPU that is not there is a
  ParamError naming the key, raised when the stage starts, before any work.
- `progress`: a tqdm bar on stderr, silent when stderr is not a terminal or the CI environment
  variable is set, so logs captured by DVC or CI hold no bar redraws. `library_bars` makes the
  bar of a library we call (SAELens' trainer) follow the same rule.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from neural_codec.errors import check

DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
DEVICES = "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps"
AUTOCASTS = ("none", "bf16", "fp16")


def check_device_name(name: Any, key: str) -> None:
    """The spelling of a `device` value (no torch import: config validation stays cheap)."""
    check(isinstance(name, str) and bool(DEVICE_RE.match(name)), key, name, DEVICES)


def resolve_device(name: str, key: str) -> Any:
    """The torch.device a `device` key names; `auto` is cuda when available, else cpu. A GPU
    torch cannot see is a ParamError naming `key` (call it when a stage starts, before work)."""
    import torch

    check_device_name(name, key)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        check(
            index < n,
            key,
            name,
            f"a GPU torch can see (torch.cuda.is_available() is {torch.cuda.is_available()}, "
            f"{n} device(s)); use auto or cpu",
        )
    if name == "mps":
        check(torch.backends.mps.is_available(), key, name, "mps only where torch.backends.mps is available")
    return torch.device(name)


def autocast_dtype(name: str, device: Any, key: str) -> Any:
    """The torch dtype of an `autocast` key (None for `none`); fp16 only on cuda (on the CPU
    torch has no fp16 autocast worth using, and fp16 needs the GradScaler cuda provides)."""
    import torch

    check(name in AUTOCASTS, key, name, "none, bf16 or fp16")
    if name == "none":
        return None
    check(name != "fp16" or device.type == "cuda", key, name, f"none or bf16 on {device} (fp16 needs cuda)")
    return torch.bfloat16 if name == "bf16" else torch.float16


def full_precision(device: Any) -> Any:
    """Autocast off for the block when it is on for `device` (else nothing: the plain fp32 path
    is untouched). For sums of many squares and penalties that bf16/fp16 would round or overflow."""
    import torch

    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def quiet() -> bool:
    """No progress bars: stderr is not a terminal (DVC's and CI's logs), or CI is set."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or not sys.stderr.isatty()


@contextlib.contextmanager
def library_bars(module: Any) -> Iterator[None]:
    """While the block runs, the `tqdm` a library module calls follows `quiet()` (silent in DVC's
    and CI's logs). tqdm reads its TQDM_DISABLE variable once, at import, so it cannot do this."""
    original = module.tqdm
    if quiet():
        module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


def progress(
    iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None, **kw: Any
) -> Any:
    """A tqdm bar over `iterable` (or a manual one: `.update(n)`), or a silent pass-through
    when `quiet()`. Redraws at most once a second; the bar is removed when it ends."""
    from tqdm import tqdm

    kw.setdefault("mininterval", 1.0)
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, desc=desc, total=total, disable=quiet(), file=sys.stderr, **kw)
