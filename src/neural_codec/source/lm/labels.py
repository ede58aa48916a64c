"""Labels for SAE latents on an `lm` source: top-activating tokens and contexts per latent, and
the weekday/month families found from them (the cyclic families the circle analysis reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from neural_codec import storage
from neural_codec.config import LMSourceConfig
from neural_codec.source.lm.clusters import cluster_families
from neural_codec.source.lm.load import load_model
from neural_codec.source.lm.names import (  # noqa: F401  (re-exported: the family names)
    AMBIGUOUS_UNCASED,
    CYCLIC_FAMILIES,
    MONTHS,
    WEEKDAYS,
    _clean_token,
    _matches,
    is_cased,
)
from neural_codec.source.lm.settings import config_for_activations


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


def find_cyclic_families(
    labels: list[dict[str, Any]],
    min_score: float = 0.5,
    min_members: int | None = None,
    cased: bool = True,
) -> list[dict[str, Any]]:
    """Weekday and month families in latent space, from labels (families.json format).

    score(latent, member) = share of the latent's top-example activation mass on tokens naming
    that member (full name, plural, or a title-case abbreviation). One latent per member, chosen
    by a maximum-weight assignment (a latent serves one member); members scoring below
    `min_score` are left out; a family needs `min_members` (default: more than half) members.
    `cased=False` (an uncased vocabulary): see `_matches`.
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
                    if _matches(tok, m, cased):
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


def write_labels_and_families(
    sae: Any,
    cfg: LMSourceConfig,
    activations_dir: str | Path,
    out_dir: str | Path,
    top_n: int = 10,
) -> dict[str, Any]:
    """Stage `labels` for lm: `latent_labels.json` (top tokens and contexts per latent) and
    `families.json` (weekday/month families: one latent per member from the labels where that
    exists, else a cluster of shared latents, `clusters.cluster_families`).

    Checks first that the SAE reads what was extracted (hook from SAELens metadata, d_in).
    Returns metrics for metrics/labels.json.
    """
    activations_dir, out_dir = Path(activations_dir), Path(out_dir)
    cfg = config_for_activations(sae, cfg, activations_dir)
    tokenizer = load_model(cfg).tokenizer
    labels = feature_labels(sae, activations_dir / "train", tokenizer, top_n=top_n)
    cased = is_cased(tokenizer)
    families = find_cyclic_families(labels, cased=cased)
    clustered, cluster_stats = cluster_families(sae, activations_dir / "train", tokenizer, cased)
    by_label = {f["name"] for f in families}
    families += [f for f in clustered if f["name"] not in by_label]
    storage.write_json(out_dir / "latent_labels.json", labels)
    storage.write_json(out_dir / "families.json", families)
    return {
        "families": {f["name"]: len(f.get("labels") or f["members"]) for f in families},
        "family_finder": {f["name"]: f.get("finder", "labels") for f in families},
        "cluster_families": cluster_stats,
        "labelled_latents": sum(1 for lab in labels if lab["top_tokens"]),
    }
