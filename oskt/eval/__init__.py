"""Evaluation: feature extraction and retrieval metrics (CMC, mAP, mINP) under the standard ReID rule."""

from oskt.eval.features import evaluate, extract_features, resolve_neck_feat
from oskt.eval.metrics import ReIDMetrics, compute_metrics, l2_normalize

__all__ = ["ReIDMetrics", "compute_metrics", "evaluate", "extract_features", "l2_normalize", "resolve_neck_feat"]
