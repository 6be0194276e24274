"""Evaluation: feature extraction (flip TTA), distances (cosine, Euclidean), AQE, k-reciprocal re-ranking, the
standard ReID rule (CMC, mAP, mINP; CUHK03 single-gallery-shot CMC), per-query results and ranked-result pictures."""

from oskt.eval.distance import METRICS, pairwise_distance, query_expansion, score_chunks
from oskt.eval.features import EvalResult, evaluate, evaluate_dataset, extract_features, resolve_neck_feat
from oskt.eval.metrics import QueryResults, ReIDMetrics, compute_metrics, l2_normalize, rank_queries
from oskt.eval.outputs import EvalFiles, format_table, log_evaluation, per_query_csv, write_evaluation
from oskt.eval.protocol import describe_protocol, protocol_settings, rank_features
from oskt.eval.rerank import iter_rerank, rerank_distance

__all__ = [
    "METRICS",
    "EvalFiles",
    "EvalResult",
    "QueryResults",
    "ReIDMetrics",
    "compute_metrics",
    "describe_protocol",
    "evaluate",
    "evaluate_dataset",
    "extract_features",
    "format_table",
    "iter_rerank",
    "l2_normalize",
    "log_evaluation",
    "pairwise_distance",
    "per_query_csv",
    "protocol_settings",
    "query_expansion",
    "rank_features",
    "rank_queries",
    "rerank_distance",
    "resolve_neck_feat",
    "score_chunks",
    "write_evaluation",
]
