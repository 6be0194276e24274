"""Feature extraction and the end-to-end ``evaluate`` (query / gallery loaders -> features -> metrics)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from oskt.config import DataConfig, EvalConfig
from oskt.data.loaders import build_test_loader
from oskt.data.records import ReIDDataset
from oskt.eval.metrics import ReIDMetrics, compute_metrics

log = logging.getLogger(__name__)

__all__ = ["evaluate", "extract_features", "resolve_neck_feat"]


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: DataLoader, device: str | torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader``; returns (features ``[N, D]`` float32 on CPU, pids, camids).

    The model's training / eval mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    feats, pids, cams = [], [], []
    try:
        for imgs, p, c in loader:
            if imgs.shape[0] == 0:  # every image of the batch was skipped as unreadable
                continue
            out = model(imgs.to(device, non_blocking=True))
            feats.append(out.float().cpu())
            pids.append(p.numpy())
            cams.append(c.numpy())
    finally:
        model.train(was_training)
    if not feats:
        return torch.empty(0, 0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return torch.cat(feats), np.concatenate(pids).astype(np.int64), np.concatenate(cams).astype(np.int64)


def resolve_neck_feat(neck_feat: str, family: str) -> str:
    """``auto`` -> ``after`` (BNNeck output, CNN recipe) for resnet, ``before`` for vit (SPEC.md §7)."""
    if neck_feat != "auto":
        return neck_feat
    return "after" if family == "resnet" else "before"


def evaluate(
    model: nn.Module,
    dataset: ReIDDataset,
    data: DataConfig,
    eval: EvalConfig,  # noqa: A002 - the config section's name
    family: str,
    device: str | torch.device,
) -> ReIDMetrics:
    """Query / gallery features with the test transforms, then CMC / mAP / mINP (standard rule).

    If the model has a ``neck_feat`` attribute it is set from ``eval.neck_feat`` (``auto`` = per family) for the
    duration of the call.

    Args:
        model: a ReID model; in eval mode it returns the retrieval feature ``[B, D]``.
        dataset: the data set whose query and gallery splits are used.
        data: input size, normalisation, workers.
        eval: batch size, query chunk, max rank, neck feature.
        family: ``resnet`` or ``vit``.
        device: where the model runs (the ranking runs there too).
    """
    t0 = time.perf_counter()
    model.to(device)
    old_neck = getattr(model, "neck_feat", None)
    if old_neck is not None:
        model.neck_feat = resolve_neck_feat(eval.neck_feat, family)
    try:
        qf, qp, qc = extract_features(model, build_test_loader(dataset.query, data, eval.batch_size, family), device)
        gf, gp, gc = extract_features(model, build_test_loader(dataset.gallery, data, eval.batch_size, family), device)
    finally:
        if old_neck is not None:
            model.neck_feat = old_neck
    dev = torch.device(device)
    metrics = compute_metrics(
        qf.to(dev), gf.to(dev), qp, gp, qc, gc, max_rank=eval.max_rank, query_chunk=eval.query_chunk
    )
    log.info(
        "%s: mAP %.4f rank1 %.4f mINP %.4f (%d queries, %d gallery, %.1fs)",
        dataset.label,
        metrics.mAP,
        metrics.rank1,
        metrics.mINP,
        len(qp),
        len(gp),
        time.perf_counter() - t0,
    )
    return metrics
