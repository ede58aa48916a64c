"""Stages `source` and `activations` for either kind of source (`source.kind`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neural_codec.config import ActivationsConfig, SourceConfig
from neural_codec.source.lm.extract import extract_activations, prepare_source
from neural_codec.source.lm.settings import config_for_sae
from neural_codec.source.synthetic import build_synthetic_source, extract_synthetic


def build_source(cfg: SourceConfig, out_dir: Path) -> dict[str, Any]:
    """Stage `source`: {"metrics", "curve"}. Synthetic: plant the features and train the toy
    models. lm: the model is loaded by name in `activations`; check and record the config here."""
    if cfg.kind == "synthetic":
        return build_synthetic_source(cfg, out_dir)
    return prepare_source(cfg.lm, out_dir)


def extract_source_activations(
    src: SourceConfig,
    cfg: ActivationsConfig,
    sae_params: dict[str, Any] | None,
    source_dir: Path,
    out_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage `activations`: (metrics, timings). lm: a pretrained SAE's own hook, BOS, context and
    model kwargs (SAELens metadata, `sae_params`) win; the model's hooks stream into the same
    shard format as the synthetic source's."""
    if src.kind == "synthetic":
        return {"kind": src.kind, **extract_synthetic(src, cfg, source_dir, out_dir)}, {}
    stats = extract_activations(config_for_sae(src.lm, sae_params), out_dir, cfg)
    timings = stats.pop("timings")
    return {"kind": src.kind, **stats}, timings
