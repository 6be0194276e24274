"""Query x gallery scores for the two distances ReID code uses, and average query expansion (AQE).

- ``cosine`` (the default; fast-reid's and the OSKT authors'): cosine similarity of L2-normalised features,
  distance ``1 - cos`` (OSKT reports ``arccos``; a monotone change, same ranking, BASELINES.md §3.1).
- ``euclidean`` (torchreid's default ``dist_metric``): the *squared* Euclidean distance on the raw,
  un-normalised features, ``|q|^2 + |g|^2 - 2 q.g`` (torchreid's ``euclidean_squared_distance``), clamped at 0.

Scores are "larger = closer" (the cosine similarity, or the negated distance) so that the ranking core
(:func:`oskt.eval.metrics.rank_queries`) has one convention; :func:`distance_from_score` turns them back into the
distance shown in per-query lists and pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = [
    "METRICS",
    "distance_from_score",
    "l2_normalize",
    "pairwise_distance",
    "prepare_features",
    "query_expansion",
    "score_chunks",
]

METRICS = ("cosine", "euclidean")


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not allowed: expected one of {METRICS}")


def prepare_features(f: torch.Tensor, metric: str) -> torch.Tensor:
    """The features as the metric sees them: L2-normalised for ``cosine``, unchanged (float) for ``euclidean``."""
    _check_metric(metric)
    f = f.float() if not f.is_floating_point() else f
    return l2_normalize(f) if metric == "cosine" else f


def score_chunks(
    qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine", chunk: int = 1024
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, scores [C, G])`` for query rows ``start:start+C`` (fresh tensors the caller may overwrite).

    Args:
        qf: query features ``[Q, D]`` (the scores are computed on its device).
        gf: gallery features ``[G, D]``.
        metric: ``cosine`` or ``euclidean``.
        chunk: query rows per chunk (memory ``chunk x G x 4`` bytes).
    """
    _check_metric(metric)
    gf = gf.to(qf.device)
    q, g = prepare_features(qf, metric), prepare_features(gf, metric)
    g_t = g.t().contiguous()
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    for s in range(0, q.shape[0], chunk):
        sim = q[s : s + chunk] @ g_t
        if g_sq is not None:  # -(|q|^2 + |g|^2 - 2 q.g), in place on the product
            q_sq = (q[s : s + chunk] * q[s : s + chunk]).sum(1, keepdim=True)
            sim.mul_(-2).add_(q_sq).add_(g_sq).clamp_min_(0).neg_()
        yield s, sim


def distance_from_score(metric: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Score -> distance: ``1 - s`` for cosine, ``-s`` for the negated distances (euclidean, re-ranked)."""
    return (lambda s: 1.0 - s) if metric == "cosine" else torch.neg


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """The full ``[Q, G]`` distance matrix (small problems: tests, pictures)."""
    to_dist = distance_from_score(metric)
    return torch.cat([to_dist(s) for _, s in score_chunks(qf, gf, metric, max(1, qf.shape[0]))])


def query_expansion(
    qf: torch.Tensor,
    gf: torch.Tensor,
    metric: str = "cosine",
    k: int = 5,
    alpha: float = 3.0,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-weighted average query expansion (alpha-QE, Radenovic et al., TPAMI 2018), fast-reid's ``TEST.AQE``.

    Every feature, query and gallery alike (database-side augmentation, as fast-reid applies it), is replaced by
    the weighted mean of its ``k`` nearest neighbours among all ``Q + G`` images, itself included (its own weight
    is 1): ``f'_i = (1/k) sum_{n in N_k(i)} max(cos(i, n), 0)^alpha f_n``. Neighbours and weights use the cosine
    similarity of L2-normalised features whatever the metric (the weights need a similarity in [0, 1]); the
    averaged features are those the metric ranks (L2-normalised for cosine, raw for euclidean, as fast-reid
    averages its raw features). Negative similarities get weight 0 so that a non-integer alpha stays defined
    (fast-reid raises them to the power as they are; among the 5 nearest neighbours they practically never
    occur).

    Args:
        qf: query features ``[Q, D]``.
        gf: gallery features ``[G, D]``.
        metric: ``cosine`` or ``euclidean``.
        k: neighbours averaged, the feature itself included (fast-reid: 5).
        alpha: weight exponent (fast-reid: 3).
        chunk: rows of the ``[chunk, Q + G]`` similarity block held at a time.

    Returns:
        The expanded query and gallery features (same shapes, on ``qf``'s device).
    """
    _check_metric(metric)
    if k < 1 or alpha < 0:
        raise ValueError(f"AQE needs k >= 1 and alpha >= 0, got k={k}, alpha={alpha}")
    gf = gf.to(qf.device)
    feats = torch.cat([prepare_features(qf, metric), prepare_features(gf, metric)])
    unit = l2_normalize(feats)
    unit_t = unit.t().contiguous()
    k = min(k, feats.shape[0])
    out = torch.empty_like(feats)
    for s in range(0, feats.shape[0], chunk):
        sims, idx = (unit[s : s + chunk] @ unit_t).topk(k, dim=1)
        # the image itself has cosine 1 with itself; put it first whatever rounding says
        rows = torch.arange(s, s + sims.shape[0], device=feats.device)
        has_self = (idx == rows[:, None]).any(1)
        idx[~has_self, -1] = rows[~has_self]
        sims = torch.where(idx == rows[:, None], torch.ones_like(sims), sims)
        w = sims.clamp_min(0).pow(alpha)
        out[s : s + sims.shape[0]] = (w.unsqueeze(2) * feats[idx]).mean(1)
    return out[: qf.shape[0]], out[qf.shape[0] :]
