"""Cyclic families (weekdays, months) as clusters of SAE latents, in the style of Engels et al.
2024 ("Not all language model features are linear"): when the members share latents (MiniLM's
months sit in a few "month" latents, not one latent per month), the family is the cluster of
latents that fire on the members' tokens, and each member is placed by its mean activation over
that cluster.

Why beside the label finder (`labels.find_cyclic_families`, one latent per member at a label
share >= 0.5): a shared representation is still a family the circle analysis can read. Engels
et al. cluster decoder directions and project each token's reconstruction from the cluster's
latents onto its top principal components; here the cluster comes from the tokens (supervised:
the latents that carry most of their activation mass on the family's tokens) and the point of
member m is `member_weights[m] @ W[cluster]`: its mean reconstruction from the cluster, through
the SAE decoder (`W = W_dec`) or through the Squeezer's balanced weights (the geometry stage;
`analysis.geometry.family_points`).

A family counts as found when (1) some latents are selective for the family's tokens: the share
of a latent's activation mass (over all train rows) that falls on them is at least `min_share`,
or at least `min_lift` times the share of rows they are (a month token is ~0.1% of Wikipedia's
tokens: a latent with 15% of its mass there is 100x over its base rate, while an absolute share
of 0.5 admits only latents dedicated to the family), and it fires on at least `min_rows` of them; (2) more than
half the members have `min_member_rows` token rows; and (3) the members are told apart by the
cluster: the between-member share of the cluster activations' variance (eta^2) beats member
labels shuffled across the family's rows (permutation p <= `alpha`). With token labels shuffled
across rows no latent is selective (lift ~1), so nothing is found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_codec import storage
from neural_codec.source.lm.names import CYCLIC_FAMILIES, _clean_token, _matches


@dataclass(frozen=True)
class ClusterRule:
    """The thresholds of the cluster finder (see the module docstring)."""

    min_share: float = 0.5  # a cluster latent carries half its activation mass on the family's tokens,
    min_lift: float = 20.0  # ... or this many times their share of the rows (rare tokens)
    min_rows: int = 5  # ... and it fires on at least this many of them
    min_member_rows: int = 3  # a member needs this many token rows to be placed
    n_permutations: int = 500
    alpha: float = 0.01
    seed: int = 0


def member_token_ids(tokenizer: Any, members: list[str], cased: bool = True) -> dict[int, int]:
    """{token id: member index} for the vocabulary's single tokens naming a member (`_matches`:
    capitalised full names, plurals and abbreviations; uncased: full names without may/march)."""
    out: dict[int, int] = {}
    for tok, i in tokenizer.get_vocab().items():
        t = _clean_token(tok).strip()
        if not t or t.startswith("##"):
            continue
        for k, m in enumerate(members):
            if _matches(t, m, cased):
                out[int(i)] = k
                break
    return out


def eta_squared(X: np.ndarray, y: np.ndarray) -> float:
    """Between-group share of the total sum of squares of the rows of X, groups y."""
    mu = X.mean(0)
    total = float(((X - mu) ** 2).sum())
    if total <= 0:
        return 0.0
    between = sum(float((y == g).sum()) * float(((X[y == g].mean(0) - mu) ** 2).sum()) for g in np.unique(y))
    return between / total


def find_cluster_family(
    name: str,
    members: list[str],
    fam_acts: np.ndarray,
    fam_member: np.ndarray,
    total_mass: np.ndarray,
    n_rows: int,
    rule: ClusterRule = ClusterRule(),
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One cluster family from the latent activations on the family's token rows.

    fam_acts (R, d_sae): activations on the R rows whose token names a member; fam_member (R,):
    the member index of each row; total_mass (d_sae,): each latent's activation summed over all
    `n_rows` rows. Returns (the family in families.json format, or None; the statistics either way).
    """
    fam_acts = np.asarray(fam_acts, dtype=np.float64)
    fam_member = np.asarray(fam_member, dtype=np.int64)
    counts = (
        np.bincount(fam_member, minlength=len(members)) if len(fam_member) else np.zeros(len(members), int)
    )
    share = fam_acts.sum(0) / np.maximum(np.asarray(total_mass, dtype=np.float64), 1e-12)
    lift = share / max(len(fam_member) / max(n_rows, 1), 1e-12)
    fires = (fam_acts > 0).sum(0)
    selective = (share >= rule.min_share) | (lift >= rule.min_lift)
    cluster = np.flatnonzero(selective & (fires >= rule.min_rows))
    present = [k for k in range(len(members)) if counts[k] >= rule.min_member_rows]
    often = np.flatnonzero(fires >= rule.min_rows)
    top = often[np.argsort(-share[often], kind="stable")][:8]
    stats: dict[str, Any] = {
        # the latents with most of their mass on the family (of those firing on >= min_rows rows)
        # [latent, mass share, lift over the base rate, rows fired on]
        "top_latents": [
            [int(j), round(float(share[j]), 4), round(float(lift[j]), 1), int(fires[j])] for j in top
        ],
        "n_rows": int(len(fam_member)),
        "rows_per_member": {members[k]: int(counts[k]) for k in range(len(members))},
        "n_latents": int(len(cluster)),
        "n_members": len(present),
        "eta2": None,
        "p_value": None,
        "found": False,
    }
    if len(cluster) == 0 or len(present) <= len(members) // 2:
        return None, stats
    rows = np.isin(fam_member, present)
    X, y = fam_acts[rows][:, cluster], fam_member[rows]
    obs = eta_squared(X, y)
    rng = np.random.default_rng(rule.seed)
    null = np.array([eta_squared(X, rng.permutation(y)) for _ in range(rule.n_permutations)])
    p = (1 + int((null >= obs - 1e-12).sum())) / (1 + rule.n_permutations)
    stats.update(eta2=obs, eta2_null_median=float(np.median(null)), p_value=float(p), found=p <= rule.alpha)
    if not stats["found"]:
        return None, stats
    weights = np.stack([X[y == k].mean(0) for k in present])
    family = {
        "name": name,
        "kind": "cyclic",
        "finder": "cluster",
        "members": [int(c) for c in cluster],  # the cluster's latents (not one per member)
        "member_weights": weights.round(6).tolist(),  # member x cluster latent: mean activation
        "labels": [members[k] for k in present],  # the points, in cyclic order
        "positions": present,  # each point's place in the cycle of `cycle`
        "cycle": len(members),
        "latent_shares": [float(share[c]) for c in cluster],
        "latent_lifts": [float(lift[c]) for c in cluster],
        "eta2": obs,
        "p_value": float(p),
        "true_members": [],
    }
    return family, stats


@torch.no_grad()
def cluster_families(
    sae: Any,
    activations_dir: str | Path,
    tokenizer: Any,
    cased: bool = True,
    rule: ClusterRule = ClusterRule(),
    batch_size: int = 1024,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Weekday and month cluster families of an SAE over one split's activations (one streaming
    pass: every latent's total mass, and the activations of the rows naming a member).
    Returns (families found, {family name: statistics})."""
    ids = {name: member_token_ids(tokenizer, members, cased) for name, members in CYCLIC_FAMILIES.items()}
    total = np.zeros(sae.cfg.d_sae)
    n_rows = 0
    acts: dict[str, list[np.ndarray]] = {n: [] for n in ids}
    member: dict[str, list[np.ndarray]] = {n: [] for n in ids}
    for b in storage.iter_batches(activations_dir, batch_size, ["resid", "token"]):
        f = (
            sae.encode(torch.as_tensor(b["resid"], dtype=torch.float32, device=sae.device))
            .float()
            .cpu()
            .numpy()
        )
        total += f.sum(0)
        n_rows += len(f)
        tok = np.asarray(b["token"])
        for n, table in ids.items():
            if not table:
                continue
            keys = np.fromiter(table, dtype=np.int64)
            hit = np.isin(tok, keys)
            if hit.any():
                lookup = dict(table)
                acts[n].append(f[hit])
                member[n].append(np.array([lookup[int(t)] for t in tok[hit]], dtype=np.int64))
    families, stats = [], {}
    for n, members in CYCLIC_FAMILIES.items():
        a = np.concatenate(acts[n]) if acts[n] else np.zeros((0, len(total)))
        m = np.concatenate(member[n]) if member[n] else np.zeros(0, dtype=np.int64)
        fam, st = find_cluster_family(n, members, a, m, total, n_rows, rule)
        stats[n] = {**st, "member_tokens": len(ids[n])}
        if fam is not None:
            families.append(fam)
    return families, stats
