"""ReID losses of the BoT (CNN) and TransReID/PASS (ViT) recipes (../shared/SPEC.md §4.2).

* ID loss: cross-entropy with label smoothing ε (0.1 for CNN, 0 for ViT) on the classifier logits.
* Metric loss: batch-hard triplet on the un-normalised pre-BNNeck feature with the "hard factor" h
  (d_ap·(1+h), d_an·(1−h)), either with a margin (CNN) or in its soft-margin form log(1 + exp(d_ap − d_an)) (ViT).
* Center loss (CNN only): squared distance of the pre-BNNeck feature to its class centre; the centres have their own
  SGD optimiser and BoT divides their gradient by the loss weight before stepping (so they move at ``center_lr``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oskt.config import TrainConfig


def cross_entropy_ls(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Cross-entropy against ``(1−ε)·onehot + ε/C`` targets, averaged over the batch (SPEC.md §4.2, BoT
    ``CrossEntropyLabelSmooth``).

    Args:
        logits: ``[B, C]`` classifier outputs.
        targets: ``[B]`` class indices.
        epsilon: label smoothing ε (0 = plain cross-entropy).
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=float(epsilon))


def euclidean_dist(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``[N, M]``, clamped at 1e-12 before the square root as in BoT."""
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).t()
    d2 = (xx + yy - 2.0 * x @ y.t()).clamp(min=1e-12)
    return d2.sqrt()


def hard_example_mining(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each anchor, the largest positive and the smallest negative distance (batch-hard mining).

    Anchors without a negative (a batch of one identity) get ``d_an`` = the largest distance in the batch.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    big = torch.finfo(dist.dtype).max
    d_ap = torch.where(same, dist, torch.full_like(dist, -big)).max(1).values
    d_an = torch.where(same, torch.full_like(dist, big), dist).min(1).values
    return d_ap, torch.where(d_an >= big, dist.max().detach().expand_as(d_an), d_an)


def triplet_loss(feat: Tensor, labels: Tensor, margin: float | None = 0.3, hard_factor: float = 0.0) -> Tensor:
    """Batch-hard triplet loss (SPEC.md §4.2).

    Args:
        feat: ``[B, D]`` un-normalised features.
        labels: ``[B]`` identities.
        margin: hinge margin; ``None`` = the soft-margin form ``mean(log(1 + exp(d_ap − d_an)))``.
        hard_factor: h; the mined distances become ``d_ap·(1+h)`` and ``d_an·(1−h)``.
    """
    dist = euclidean_dist(feat.float(), feat.float())
    d_ap, d_an = hard_example_mining(dist, labels)
    d_ap = d_ap * (1.0 + hard_factor)
    d_an = d_an * (1.0 - hard_factor)
    if margin is None:
        return F.softplus(d_ap - d_an).mean()  # == nn.SoftMarginLoss()(d_an - d_ap, 1)
    return F.relu(d_ap - d_an + margin).mean()  # == nn.MarginRankingLoss(margin)(d_an, d_ap, 1)


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016) as in BoT: ``mean_i ‖f_i − c_{y_i}‖²`` with learnable centres ``[C, D]``."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feat: Tensor, labels: Tensor) -> Tensor:
        d = (feat.float() - self.centers[labels]).pow(2).sum(1)
        return d.clamp(min=1e-12, max=1e12).mean()


def center_optimizer(center: CenterLoss, lr: float) -> torch.optim.Optimizer:
    """The centres' own SGD optimiser (BoT ``optimizer_center``, lr ``train.center_lr``)."""
    return torch.optim.SGD(center.parameters(), lr=lr)


def rescale_center_grads(center: CenterLoss, weight: float) -> None:
    """BoT multiplies the centres' gradient by ``1/center_weight`` before their step, so the loss weight scales
    only the gradient reaching the network (SPEC.md §4.2)."""
    if weight > 0:
        for p in center.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 / weight)


class ReIDLoss(nn.Module):
    """ID + triplet (+ weighted center) loss of one branch (SPEC.md §4.2). Holds the branch's centres.

    Called as ``loss(out, pids)`` with ``out`` a ``ReIDOutput``-like ``(logits, feat)``; returns
    ``{"id", "tri", ["center"], "total"}`` where ``total = id + tri + center_weight · center``.
    """

    def __init__(self, train: TrainConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.epsilon = train.label_smoothing
        self.margin: float | None = train.triplet_margin if train.triplet == "hard" else None
        self.hard_factor = train.hard_factor
        self.center_weight = train.center_weight
        self.center = CenterLoss(num_classes, feat_dim) if train.center_weight > 0 else None

    def forward(self, out: Any, pids: Tensor) -> dict[str, Tensor]:
        logits, feat = out[0], out[1]
        parts = {
            "id": cross_entropy_ls(logits, pids, self.epsilon),
            "tri": triplet_loss(feat, pids, self.margin, self.hard_factor),
        }
        total = parts["id"] + parts["tri"]
        if self.center is not None:
            parts["center"] = self.center(feat, pids)
            total = total + self.center_weight * parts["center"]
        parts["total"] = total
        return parts
