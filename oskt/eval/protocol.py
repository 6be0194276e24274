"""The evaluation protocol an :class:`~oskt.config.EvalConfig` asks for, on extracted features.

Order, as fast-reid's evaluator: features (flip TTA happens at extraction) -> optional AQE -> the query x gallery
distance (``eval.metric``) or its k-reciprocal re-ranked version -> the Market rule (or the CUHK03 single-gallery
-shot CMC). Every step is chunked over queries, so no ``Q x G`` matrix is held at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from oskt.config import EvalConfig
from oskt.eval.distance import distance_from_score, query_expansion, score_chunks
from oskt.eval.metrics import QueryResults, rank_queries
from oskt.eval.rerank import iter_rerank

__all__ = ["describe_protocol", "protocol_settings", "rank_features"]

CUHK03_SEED = 0
"""Seed of the single-gallery-shot draws (fixed: the same features give the same CMC)."""


def protocol_settings(eval: EvalConfig) -> dict[str, object]:  # noqa: A002 - the config section's name
    """The ``eval.*`` settings that change the numbers (for metrics.json and the tracker's params)."""
    out: dict[str, object] = {"metric": eval.metric, "flip": eval.flip, "aqe": eval.aqe, "rerank": eval.rerank}
    if eval.aqe:
        out.update(aqe_k=eval.aqe_k, aqe_alpha=eval.aqe_alpha)
    if eval.rerank:
        out.update(rerank_k1=eval.rerank_k1, rerank_k2=eval.rerank_k2, rerank_lambda=eval.rerank_lambda)
    out["cuhk03_metric"] = eval.cuhk03_metric
    if eval.cuhk03_metric:
        out["cuhk03_repeats"] = eval.cuhk03_repeats
    out["neck_feat"] = eval.neck_feat
    return out


def describe_protocol(eval: EvalConfig) -> str:  # noqa: A002
    """One line such as ``cosine, flip, AQE (k=5, alpha=3), re-ranking (k1=20, k2=6, lambda=0.3)``."""
    parts = [eval.metric]
    if eval.flip:
        parts.append("flip")
    if eval.aqe:
        parts.append(f"AQE (k={eval.aqe_k}, alpha={eval.aqe_alpha:g})")
    if eval.rerank:
        parts.append(f"re-ranking (k1={eval.rerank_k1}, k2={eval.rerank_k2}, lambda={eval.rerank_lambda:g})")
    if eval.cuhk03_metric:
        parts.append(f"CUHK03 single-gallery-shot CMC ({eval.cuhk03_repeats} draws)")
    return ", ".join(parts)


def rank_features(
    qf: torch.Tensor,
    gf: torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    eval: EvalConfig,  # noqa: A002
    *,
    topk: int = 0,
) -> QueryResults:
    """Per-query results of ``eval``'s protocol on query / gallery features (computed on ``qf``'s device).

    Args:
        qf: query features ``[Q, D]`` (flip TTA, when asked for, is already in them).
        gf: gallery features ``[G, D]``.
        q_pids: query person ids.
        g_pids: gallery person ids.
        q_camids: query camera ids.
        g_camids: gallery camera ids.
        eval: metric, AQE, re-ranking, CUHK03 metric and query chunk.
        topk: also keep each query's ``topk`` nearest gallery images (ranked-result pictures).

    Returns:
        Per-query results; ``.summary(eval.max_rank)`` gives the :class:`~oskt.eval.metrics.ReIDMetrics`.
    """
    qf, gf = qf.float(), gf.float().to(qf.device)
    if eval.aqe:
        qf, gf = query_expansion(qf, gf, eval.metric, eval.aqe_k, eval.aqe_alpha, eval.query_chunk)
    chunks: Iterator[tuple[int, torch.Tensor]]
    if eval.rerank:
        blocks = iter_rerank(
            qf,
            gf,
            metric=eval.metric,
            k1=eval.rerank_k1,
            k2=eval.rerank_k2,
            lambda_value=eval.rerank_lambda,
            chunk=eval.query_chunk,
        )
        chunks = ((s, d.neg_()) for s, d in blocks)
        distance_of = torch.neg
    else:
        chunks = score_chunks(qf, gf, eval.metric, eval.query_chunk)
        distance_of = distance_from_score(eval.metric)
    return rank_queries(
        chunks,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        topk=topk,
        distance_of=distance_of,
        single_shot_repeats=eval.cuhk03_repeats if eval.cuhk03_metric else 0,
        seed=CUHK03_SEED,
    )
