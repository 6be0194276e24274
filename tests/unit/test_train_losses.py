"""ReID and KD++ losses against hand-computed values (SPEC.md §4.2, BASELINES.md §1.3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from oskt.config import KDPPConfig, TrainConfig
from oskt.train.kd import KDPPLoss, kd_loss, nd_loss, teacher_class_centres
from oskt.train.losses import CenterLoss, ReIDLoss, cross_entropy_ls, rescale_center_grads, triplet_loss

# 1-D features: ids 0 = {0, 1}, 1 = {3, 5}. Batch-hard: d_ap = [1, 1, 2, 2], d_an = [3, 2, 2, 4].
FEAT = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
PIDS = torch.tensor([0, 0, 1, 1])


def test_triplet_hard_margin_with_hard_factor() -> None:
    # d_ap·1.2 = [1.2, 1.2, 2.4, 2.4], d_an·0.8 = [2.4, 1.6, 1.6, 3.2]; hinge(+0.3) = [0, 0, 1.1, 0]
    assert triplet_loss(FEAT, PIDS, margin=0.3, hard_factor=0.2).item() == pytest.approx(1.1 / 4, abs=1e-5)
    # no hard factor: hinge(d_ap - d_an + 0.3) = [0, 0, 0.3, 0]
    assert triplet_loss(FEAT, PIDS, margin=0.3, hard_factor=0.0).item() == pytest.approx(0.3 / 4, abs=1e-5)


def test_triplet_soft_margin_with_hard_factor() -> None:
    diffs = [1.2 - 2.4, 1.2 - 1.6, 2.4 - 1.6, 2.4 - 3.2]
    want = sum(math.log1p(math.exp(d)) for d in diffs) / 4
    assert triplet_loss(FEAT, PIDS, margin=None, hard_factor=0.2).item() == pytest.approx(want, abs=1e-5)


def test_cross_entropy_label_smoothing() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1])
    eps, c = 0.1, 3
    losses = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        lse = math.log(sum(math.exp(v) for v in z))
        q = [(1 - eps) * (i == y) + eps / c for i in range(c)]
        losses.append(-sum(qi * (zi - lse) for qi, zi in zip(q, z, strict=True)))
    assert cross_entropy_ls(logits, targets, eps).item() == pytest.approx(sum(losses) / 2, abs=1e-6)
    plain = -(2 - math.log(math.exp(2) + 2))
    assert cross_entropy_ls(logits[:1], targets[:1], 0.0).item() == pytest.approx(plain, abs=1e-6)


def test_center_loss_and_gradient_rescale() -> None:
    center = CenterLoss(2, 2)
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    feat = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    loss = center(feat, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((5.0 + 2.0) / 2)
    (5e-4 * loss).backward()
    g = center.centers.grad.clone()
    rescale_center_grads(center, 5e-4)
    torch.testing.assert_close(center.centers.grad, g / 5e-4)
    # d/dc0 of 0.5·|f0 - c0|² = -(f0 - c0) = [-1, -2]
    torch.testing.assert_close(center.centers.grad[0], torch.tensor([-1.0, -2.0]))


def test_reid_loss_combines_parts() -> None:
    cfg = TrainConfig(center_weight=0.5)
    loss = ReIDLoss(cfg, num_classes=2, feat_dim=1)
    logits = torch.randn(4, 2)
    parts = loss((logits, FEAT), PIDS)
    assert set(parts) == {"id", "tri", "center", "total"}
    torch.testing.assert_close(parts["total"], parts["id"] + parts["tri"] + 0.5 * parts["center"])
    assert parts["tri"].item() == pytest.approx(1.1 / 4, abs=1e-5)
    soft = ReIDLoss(TrainConfig(triplet="soft", center_weight=0.0, label_smoothing=0.0), 2, 1)
    parts = soft((logits, FEAT), PIDS)
    assert set(parts) == {"id", "tri", "total"} and not list(soft.parameters())


def test_kd_and_nd_losses() -> None:
    z = torch.randn(3, 5)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z, torch.randn(3, 5), 4.0).item() > 0
    s = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    centres = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # i=0: 1 - <[3,0],[1,0]>/max(3,1) = 0; i=1: 1 - <[0,1],[.707,.707]>/max(1,2) = 1 - 0.35355
    want = (0.0 + 1 - (1 / math.sqrt(2)) / 2) / 2
    assert nd_loss(s, t, centres, torch.tensor([0, 1])).item() == pytest.approx(want, abs=1e-6)


class _Teacher(nn.Module):
    """A stand-in ReID model: training mode -> (logits, feat), eval mode -> feat."""

    def __init__(self, d: int = 6, c: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, d), nn.BatchNorm1d(d))
        self.cls = nn.Linear(d, c)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        f = self.body(x)
        return (self.cls(f), f) if self.training else f


def test_kdpp_loss_module() -> None:
    teacher = _Teacher()
    x = torch.randn(8, 3, 2, 2)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    centres = teacher_class_centres(teacher, [(x, pids, pids)], "cpu")
    assert centres.shape == (3, 6)
    running = teacher.body[2].running_mean.clone()
    aux = KDPPLoss(teacher, KDPPConfig(warmup_epochs=5), student_feat_dim=4, teacher_feat_dim=6, class_centres=centres)
    torch.testing.assert_close(teacher.body[2].running_mean, running)  # teacher frozen, BN stats untouched
    names = [n for n, _ in aux.named_parameters()]
    assert names and all(n.startswith("projector.") for n in names)
    out = (torch.randn(8, 3, requires_grad=True), torch.randn(8, 4, requires_grad=True))
    parts = aux(x, pids, out, 0)
    assert parts["kd"].item() == 0.0  # warm-up: weight 0 in the first epoch
    parts = aux(x, pids, out, 10)
    assert set(parts) == {"kd", "nd"} and parts["kd"].item() > 0
    sum(parts.values()).backward()
    assert out[0].grad is not None and out[1].grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # different class counts (cross-domain / few-shot): ND only
    parts = aux(x, pids, (torch.randn(8, 5), torch.randn(8, 4)), 10)
    assert set(parts) == {"nd"}
