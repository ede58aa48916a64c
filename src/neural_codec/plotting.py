"""The one matplotlib set-up: a headless (Agg) pyplot and an atomic PNG writer.

Plots are drawn by the analysis modules' `*_plots` companions; none of them touches matplotlib's
backend on its own.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from neural_codec.storage import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on the machines this runs on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: no Software/date metadata: the same data give byte-identical PNGs (plots and the report are in git)
PNG_METADATA = {"Software": None}


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write `fig` to `path` atomically (no half-written PNG on a crash) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata=PNG_METADATA)
    pyplot().close(fig)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """`fig` as PNG bytes (for embedding in the report), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=PNG_METADATA)
    pyplot().close(fig)
    return buf.getvalue()
