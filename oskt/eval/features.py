"""Feature extraction and the end-to-end evaluation (query / gallery loaders -> features -> protocol -> metrics)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from oskt.config import DataConfig, EvalConfig
from oskt.data.layouts import check_images
from oskt.data.loaders import build_test_loader
from oskt.data.records import ImageRecord, ReIDDataset
from oskt.eval.metrics import QueryResults, ReIDMetrics
from oskt.eval.protocol import protocol_settings, rank_features

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate", "evaluate_dataset", "extract_features", "resolve_neck_feat"]


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: DataLoader, device: str | torch.device, *, flip: bool = False
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader``; returns (features ``[N, D]`` float32 on CPU, pids, camids).

    Args:
        model: returns the retrieval feature ``[B, D]`` in eval mode.
        loader: yields ``(images [B, 3, H, W], pids, camids)``.
        device: where the model runs.
        flip: flip test-time augmentation (fast-reid ``TEST.FLIP``): the feature is the mean of the features of
            the image and of its horizontal mirror (a pedestrian seen mirrored is the same person).

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
            x = imgs.to(device, non_blocking=True)
            out = model(x).float()
            if flip:
                out = (out + model(x.flip(3)).float()) / 2
            feats.append(out.cpu())
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


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the metrics, the per-query results and the images they refer to.

    Attributes:
        metrics: averaged metrics (``eval.max_rank`` long CMC).
        queries: per-query AP / INP / first-match rank (and top-k lists when asked for).
        query: the query images, in the order of ``queries`` (unreadable ones skipped under
            ``data.bad_images=skip``).
        gallery: the gallery images (``queries.topk_index`` indexes this list).
        settings: the protocol (``eval.*`` settings that change the numbers).
        seconds: wall time of features + ranking.
    """

    metrics: ReIDMetrics
    queries: QueryResults
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    settings: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0


def _readable(records: list[ImageRecord], n_feats: int) -> list[ImageRecord]:
    """The records the loader really returned features for (only differs under ``bad_images=skip``)."""
    if n_feats == len(records):
        return records
    good, _ = check_images(records, "skip")  # decode again to learn which were skipped (rare path)
    return good


def evaluate_dataset(
    model: nn.Module,
    dataset: ReIDDataset,
    data: DataConfig,
    eval: EvalConfig,  # noqa: A002 - the config section's name
    family: str,
    device: str | torch.device,
    *,
    topk: int = 0,
) -> EvalResult:
    """Query / gallery features with the test transforms, then ``eval``'s protocol; everything kept.

    If the model has a ``neck_feat`` attribute it is set from ``eval.neck_feat`` (``auto`` = per family) for the
    duration of the call.

    Args:
        model: a ReID model; in eval mode it returns the retrieval feature ``[B, D]``.
        dataset: the data set whose query and gallery splits are used.
        data: input size, normalisation, workers.
        eval: batch size, query chunk, max rank, neck feature, metric, flip, AQE, re-ranking, CUHK03 metric.
        family: ``resnet`` or ``vit``.
        device: where the model runs (the ranking runs there too).
        topk: keep each query's ``topk`` nearest gallery images (for :mod:`oskt.eval.visrank`).
    """
    t0 = time.perf_counter()
    model.to(device)
    old_neck = getattr(model, "neck_feat", None)
    if old_neck is not None:
        model.neck_feat = resolve_neck_feat(eval.neck_feat, family)
    try:
        qf, qp, qc = extract_features(
            model, build_test_loader(dataset.query, data, eval.batch_size, family), device, flip=eval.flip
        )
        gf, gp, gc = extract_features(
            model, build_test_loader(dataset.gallery, data, eval.batch_size, family), device, flip=eval.flip
        )
    finally:
        if old_neck is not None:
            model.neck_feat = old_neck
    dev = torch.device(device)
    queries = rank_features(qf.to(dev), gf.to(dev), qp, gp, qc, gc, eval, topk=topk)
    metrics = queries.summary(eval.max_rank)
    seconds = time.perf_counter() - t0
    log.info(
        "%s: mAP %.4f rank1 %.4f mINP %.4f (%d queries, %d gallery, %.1fs)",
        dataset.label,
        metrics.mAP,
        metrics.rank1,
        metrics.mINP,
        len(qp),
        len(gp),
        seconds,
    )
    return EvalResult(
        metrics=metrics,
        queries=queries,
        query=_readable(list(dataset.query), len(qp)),
        gallery=_readable(list(dataset.gallery), len(gp)),
        settings=protocol_settings(eval),
        seconds=seconds,
    )


def evaluate(
    model: nn.Module,
    dataset: ReIDDataset,
    data: DataConfig,
    eval: EvalConfig,  # noqa: A002 - the config section's name
    family: str,
    device: str | torch.device,
) -> ReIDMetrics:
    """Query / gallery features with the test transforms, then CMC / mAP / mINP under ``eval``'s protocol
    (default: cosine, no flip / AQE / re-ranking, the Market rule). See :func:`evaluate_dataset`."""
    return evaluate_dataset(model, dataset, data, eval, family, device).metrics
