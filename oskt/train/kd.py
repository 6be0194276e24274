"""KD++ distillation losses (Wang et al., "Improving Knowledge Distillation via Regularizing Feature Norm and
Direction"; ../shared/BASELINES.md §1.3), as an ``AuxLoss`` for :func:`oskt.train.finetune_student`.

``L_aux = w(e)·b·KD(z_s, z_t) + c·ND(s, t, y)`` where

* ``KD = T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` (batch mean), ``w(e) = min(1, e / W)`` with 0-based epochs, as
  the authors' ``train_cifar_kd.py`` (``min(1.0, epoch / args.warm_up)``);
* ``ND = mean_i [1 − ⟨P(s_i), c_{y_i}/‖c_{y_i}‖⟩ / max(‖P(s_i)‖, ‖t_i‖)]`` with ``c_y`` the frozen teacher's
  class-mean embedding on the training set and ``P`` the projector ``BN1d → Dropout(0.5) → Linear(d_s, d_t)``
  (identity when the dimensions match).

The embedding is the pre-BNNeck feature of ``ReIDOutput`` for both networks. Logits are distilled only when the
teacher and the student classify the same identities (same number of classes); otherwise (cross-domain or
few-shot subsets) only the ND term is used.

Warm-up ``W`` (:func:`kd_warmup`): the authors ramp over 5 of 100 ImageNet epochs (20 of 240 on CIFAR), which is
``baselines.kdpp.warmup_epochs``; a short run is clipped to ``warmup_fraction`` of its epochs and to ``E − 1``, so the
KD weight always reaches ``kd_weight`` inside the run (the quick fine-tune of 4 epochs: 0, 1, 1, 1 instead of the
unclipped 0, 0.2, 0.4, 0.6). docs/methods.md §1.

The teacher may be of another family than the student (a ViT teacher for a ResNet student and back): it is run on
the batch resized to its own input size when that differs (:func:`teacher_outputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oskt.config import KDPPConfig
from oskt.errors import ConfigError

log = logging.getLogger(__name__)


def _set_children_eval(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    saved = [(m, m.training) for m in model.modules()]
    model.train(True)
    for m in model.modules():
        if m is not model:
            m.training = False
    return saved


def resize_for(model: nn.Module, images: Tensor) -> Tensor:
    """``images`` resized (bilinear) to ``model.spec.img_size`` when the model has a spec and the sizes differ.

    A ViT's position embeddings fix its input size, and a CNN teacher is best run at the size it was trained at; a
    teacher of another family than the student (or trained at another size) therefore sees the student's batch
    resized to its own size. ReID inputs are not square (256×128): height and width are resized separately.
    """
    spec = getattr(model, "spec", None)
    size = tuple(getattr(spec, "img_size", ()) or ())
    if len(size) != 2 or tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def freeze(teacher: nn.Module) -> nn.Module:
    """Turn off the teacher's gradients (its weights are never optimised by a distillation aux) and return it."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """The frozen teacher's ``(logits, feat)``: its training-mode output (``ReIDOutput``) computed with every
    sub-module in eval mode (BN running statistics, no dropout / drop path), on ``images`` resized to the
    teacher's own input size if it differs (:func:`resize_for`)."""
    saved = _set_children_eval(teacher)
    try:
        out = teacher(resize_for(teacher, images))
    finally:
        for m, mode in saved:
            m.training = mode
    return out[0].float(), out[1].float()


@torch.no_grad()
def teacher_class_centres(
    teacher: nn.Module, loader: Iterable, device: torch.device | str, num_classes: int | None = None
) -> Tensor:
    """Class-mean teacher embeddings ``[C, D]`` over a loader yielding ``(images, pids, camids)`` (KD++ §ND).

    Args:
        teacher: the frozen teacher.
        loader: usually a test-style (un-augmented) loader over the training records.
        device: where the teacher runs.
        num_classes: C; default ``max(pid) + 1``. Classes without images get a zero centre.
    """
    device = torch.device(device)
    teacher.to(device)
    sums: Tensor | None = None
    counts: Tensor | None = None
    pid_chunks: list[Tensor] = []
    feats: list[Tensor] = []
    for batch in loader:
        _, f = teacher_outputs(teacher, batch[0].to(device))
        feats.append(f.cpu())
        pid_chunks.append(batch[1].long().cpu())
    feat = torch.cat(feats)
    pids = torch.cat(pid_chunks)
    c = int(num_classes if num_classes is not None else int(pids.max()) + 1)
    sums = torch.zeros(c, feat.shape[1]).index_add_(0, pids, feat)
    counts = torch.zeros(c).index_add_(0, pids, torch.ones_like(pids, dtype=torch.float32))
    return sums / counts.clamp(min=1).unsqueeze(1)


class EmbedProjector(nn.Sequential):
    """KD++ ``EmbTrans``: ``BN1d(d_s) → Dropout(0.5) → Linear(d_s, d_t)``, Linear ~ N(0, 0.01), no change of the
    logits."""

    def __init__(self, d_s: int, d_t: int) -> None:
        linear = nn.Linear(d_s, d_t)
        nn.init.normal_(linear.weight, 0.0, 0.01)
        nn.init.zeros_(linear.bias)
        super().__init__(nn.BatchNorm1d(d_s), nn.Dropout(0.5), linear)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``, batch mean."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * t * t


def kd_warmup(warmup_epochs: float, warmup_fraction: float, total_epochs: int | None) -> float:
    """The KD warm-up length ``W`` in epochs: ``min(warmup_epochs, warmup_fraction · E, E − 1)`` for a run of
    ``E = total_epochs`` epochs, so that ``w(E − 1) = min(1, (E − 1) / W) = 1``: the last epoch at the latest has
    the full KD weight; ``warmup_epochs`` unclipped when ``E`` is unknown (``None``)."""
    if total_epochs is None:
        return float(warmup_epochs)
    if total_epochs < 1:
        raise ConfigError(
            f"KD++ total_epochs={total_epochs} is not allowed: expected the run's epochs, an integer >= 1"
        )
    return max(0.0, min(float(warmup_epochs), warmup_fraction * total_epochs, float(total_epochs - 1)))


def nd_loss(s_emb: Tensor, t_emb: Tensor, centres: Tensor, labels: Tensor) -> Tensor:
    """KD++ norm-and-direction loss ``mean_i [1 − ⟨s_i, ĉ_{y_i}⟩ / max(‖s_i‖, ‖t_i‖)]``."""
    c = centres[labels]
    e_c = c / c.norm(dim=1, keepdim=True).clamp(min=1e-12)
    max_norm = torch.maximum(s_emb.norm(dim=1), t_emb.norm(dim=1)).clamp(min=1e-12)
    return (1.0 - (s_emb * e_c).sum(1) / max_norm).mean()


class KDPPLoss(nn.Module):
    """KD++ auxiliary loss: ``aux(images, pids, out, epoch) -> {"kd", "nd"}`` (already weighted; the caller adds
    them to the ReID loss). Its trainable parameters (the projector) are returned by ``.parameters()``; the teacher
    is held outside the module tree, frozen.

    Args:
        teacher: the frozen teacher (training-mode forward returns ``(logits, feat)``); any family.
        kdpp: temperature, weights and warm-up.
        student_feat_dim: d_s of the student's pre-BNNeck feature.
        teacher_feat_dim: d_t of the teacher's.
        class_centres: ``[C, d_t]`` teacher class means, or None to compute them in :meth:`prepare`.
        total_epochs: epochs of the run this loss is trained in (the fine-tune, or the source distillation phase);
            the warm-up is clipped to it (:func:`kd_warmup`). ``None``: ``kdpp.warmup_epochs`` unclipped.
    """

    def __init__(
        self,
        teacher: nn.Module,
        kdpp: KDPPConfig,
        student_feat_dim: int,
        teacher_feat_dim: int,
        class_centres: Tensor | None = None,
        total_epochs: int | None = None,
    ) -> None:
        super().__init__()
        self._teacher = [freeze(teacher)]  # a list keeps it out of parameters() / state_dict()
        self.temperature = kdpp.temperature
        self.kd_weight = kdpp.kd_weight
        self.nd_weight = kdpp.nd_weight
        self.warmup_epochs = kd_warmup(kdpp.warmup_epochs, kdpp.warmup_fraction, total_epochs)
        self.total_epochs = total_epochs
        self.projector: nn.Module = (
            EmbedProjector(student_feat_dim, teacher_feat_dim)
            if student_feat_dim != teacher_feat_dim
            else nn.Identity()
        )
        self.register_buffer(
            "centres", class_centres.float().clone() if class_centres is not None else torch.zeros(0, teacher_feat_dim)
        )
        self._warned = False

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def prepare(self, loader: Iterable, device: torch.device) -> None:
        """Move the teacher to ``device`` and compute the class centres over ``loader`` if none were given
        (called by ``finetune_student`` with an un-augmented loader over the training records it uses)."""
        self.teacher.to(device)
        if self.centres.numel() == 0:
            self.centres = teacher_class_centres(self.teacher, loader, device).to(device)

    def kd_factor(self, epoch: int) -> float:
        """``b · min(1, epoch / W)`` (0-based epochs: the first epoch has weight 0 when ``W > 0``; ``W`` =
        ``warmup_epochs``, already clipped to the run by :func:`kd_warmup`)."""
        ramp = 1.0 if self.warmup_epochs <= 0 else min(1.0, epoch / self.warmup_epochs)
        return self.kd_weight * ramp

    def forward(self, images: Tensor, pids: Tensor, out: Any, epoch: int) -> dict[str, Tensor]:
        if self.centres.numel() == 0:
            raise RuntimeError("KDPPLoss has no class centres: pass class_centres or call prepare(loader, device)")
        teacher = self.teacher
        if next(teacher.parameters()).device != images.device:
            teacher.to(images.device)
        t_logits, t_feat = teacher_outputs(teacher, images)
        s_logits, s_feat = out[0].float(), out[1].float()
        parts: dict[str, Tensor] = {}
        if t_logits.shape[1] == s_logits.shape[1]:
            parts["kd"] = self.kd_factor(epoch) * kd_loss(s_logits, t_logits, self.temperature)
        elif not self._warned:
            log.info(
                "KD++: teacher has %d classes, student %d: logit distillation off, ND only",
                t_logits.shape[1],
                s_logits.shape[1],
            )
            self._warned = True
        s_emb = self.projector(s_feat)
        parts["nd"] = self.nd_weight * nd_loss(s_emb.float(), t_feat, self.centres.to(s_emb.device), pids)
        return parts
