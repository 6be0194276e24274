"""Cross-architecture distillation losses: OFA-KD and RSD, as ``AuxLoss`` modules for
:func:`oskt.train.finetune_student` (docs/methods.md §2, §3).

Both work where OSKT, WTSel and DepGraph cannot: with a teacher of another family than the student (a ViT teacher
for a ResNet student and back). The teacher is frozen, held outside the module tree (not in ``parameters()`` /
``state_dict()``), run with its sub-modules in eval mode on the batch resized to its own input size
(:func:`oskt.train.kd.teacher_outputs`). Only the projectors are trained (and checkpointed with the aux).

* **OFA-KD** (Hao et al., NeurIPS 2023, "One-for-All: Bridge the Gap Between Heterogeneous Architectures in
  Knowledge Distillation"; official code ``Hao840/OFAKD``, ``distillers/ofa.py``): every student stage is projected
  into the logit space by its own branch and trained, like the student's final logits, towards the teacher's logits
  with the target-enhanced loss ``−Σ_c [(p_t + m)^ε − m]_c log p_s,c`` (:func:`ofa_loss`). It needs the stage
  features: :meth:`OFALoss.attach` hooks the student's stages (the four ResNet layers, or four ViT blocks). It
  needs logits over the same identities as the teacher.
* **RSD** (Zhang et al., ICCV 2025, "Cross-Architecture Distillation Made Simple with Redundancy Suppression";
  official code ``spacewanderx/RSD``, ``distillers/rsd.py``): the student's pooled feature goes through a decoupling
  MLP to the teacher's width; both are standardised per dimension over the batch and the cross-correlation ``C`` is
  pushed to the identity, off-diagonal terms weighted by κ (:func:`rsd_loss`). Embeddings only: it works across
  data sets.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from oskt.config import OFAConfig, RSDConfig
from oskt.errors import ConfigError, SpecError
from oskt.models.spec import ModelSpec
from oskt.models.vit import NUM_PARTS, PATCH, Block
from oskt.train.kd import freeze, teacher_outputs

log = logging.getLogger(__name__)

RSD_REFERENCE_RATIO = (768 - 1) / (128 - 1)
"""``(D − 1) / (B − 1)`` of the RSD authors' runs: 768-wide teachers (Swin-T, ConvNeXt-T, Mixer-B) and 128 images
per GPU (the loss is computed per GPU; ``configs/cifar/*.yaml``); κ = 0.01 was chosen there (see :func:`rsd_kappa`)."""

OFA_MIN_PATCHES = 49
"""The official ViT branch merges patches down to a 7×7 grid (``final_patch_grid = 7``)."""


# --------------------------------------------------------------------------------------------------- losses


def ofa_loss(
    student_logits: Tensor, teacher_logits: Tensor, target_mask: Tensor, eps: float, temperature: float = 1.0
) -> Tensor:
    """OFA-KD's target-enhanced loss, batch mean of ``−Σ_c [(p_t + m)^ε − m]_c · log p_s,c`` (Hao et al. 2023, Eq. 4;
    ``ofa_loss`` of the official code) with ``p = softmax(z / T)`` and ``m`` the one-hot target mask.

    ``ε = 1`` gives ``−Σ_c p_t,c log p_s,c``: Hinton KD at temperature ``T`` (without the T² factor), i.e.
    ``KL(p_t ‖ p_s)`` plus the teacher's entropy, a constant. ``ε > 1`` raises the target class's weight and lowers
    the others' the more, the less confident the teacher is.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]`` (no gradient).
        target_mask: ``[B, C]`` one-hot ground truth.
        eps: the modulating exponent ε ≥ 1.
        temperature: T of both softmaxes.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)  # log_softmax: finite where the official log(p) is not
    p_t = F.softmax(teacher_logits.float() / t, dim=1)
    m = target_mask.to(p_t.dtype)
    weight = (p_t + m).pow(eps) - m
    return -(weight * log_p_s).sum(dim=1).mean()


def rsd_loss(student_feat: Tensor, teacher_feat: Tensor, kappa: float) -> Tensor:
    """RSD loss ``Σ_i (C_ii − 1)² + κ Σ_{i≠j} C_ij²`` (Zhang et al. 2025; ``rsd_loss`` of the official code).

    ``C = Tᵀ S / B`` is the cross-correlation of the teacher's and the (projected) student's features, each
    standardised per dimension over the batch (mean 0, biased std 1, ``+1e-5`` as the official ``Normalize``). The
    diagonal term maximises the invariance of every dimension across the two architectures, the off-diagonal one
    decorrelates (suppresses redundancy). Computed in float32 with autocast off: a fp16 correlation of thousands of
    dimensions is not accurate enough.

    Args:
        student_feat: ``[B, D]``, the student's feature already projected to the teacher's width.
        teacher_feat: ``[B, D]``.
        kappa: weight of the off-diagonal terms.
    """
    if student_feat.shape != teacher_feat.shape:
        raise SpecError(
            f"RSD: student features {tuple(student_feat.shape)} and teacher features {tuple(teacher_feat.shape)} "
            "differ: the decoupling MLP must map to the teacher's width"
        )
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        s, t = _standardise(student_feat.float()), _standardise(teacher_feat.float())
        c = t.t() @ s / s.shape[0]
        diag = torch.diagonal(c)
        on = (diag - 1.0).pow(2).sum()
        off = c.pow(2).sum() - diag.pow(2).sum()
        return on + kappa * off


def _standardise(x: Tensor) -> Tensor:
    return (x - x.mean(dim=0)) / (x.std(dim=0, unbiased=False) + 1e-5)


def rsd_kappa(kappa: float, batch: int, dim: int) -> float:
    """κ for a batch of ``batch`` samples and ``dim`` dimensions, scaled so the decorrelation term weighs as in the
    authors' runs (our inference, docs/methods.md §3): ``κ · min(1, ρ_ref / ρ)`` with ``ρ = (D − 1) / (B − 1)``.

    Why: a batch of B standardised samples spans at most B − 1 directions, so with ``D > B`` the D×D ``C`` has rank
    ≤ B − 1 and cannot equal I. Its diagonal can (every ``C_ii`` is one correlation over B samples), but even a
    student equal to the teacher keeps, per row, ``Σ_{j≠i} C_ij² ≈ (D − 1)/(B − 1) = ρ`` from sampling noise alone
    (each empirical correlation of unrelated dimensions has variance ≈ 1/(B − 1)). That noise floor costs ``κ·ρ`` per
    dimension against the at most 1 the diagonal can gain: 0.06 in the authors' setting (ρ_ref ≈ 6.0), 0.32 for a
    2048-wide ResNet-50 teacher with a P×K batch of 64 (ρ ≈ 32). Scaling κ by ``ρ_ref / ρ`` keeps the authors'
    balance between invariance and decorrelation; κ is never raised above the configured value.
    """
    if batch < 2 or dim < 2:
        return float(kappa)
    rho = (dim - 1) / (batch - 1)
    return float(kappa) * min(1.0, RSD_REFERENCE_RATIO / rho)


# --------------------------------------------------------------------------------------------------- stage taps


def _store(store: dict[int, Tensor], index: int, module: nn.Module, inputs: Any, output: Tensor) -> None:
    # Only a training-mode forward with autograd on feeds the loss; evaluation and no-grad forwards keep nothing.
    if module.training and torch.is_grad_enabled():
        store[index] = output


class StageTap:
    """Forward hooks that keep the latest training-mode output of some modules until it is :meth:`pop`-ped.

    Each hooked module's output replaces the previous one and :meth:`pop` removes them, so at most one step's
    activations (and their graph) are held, and none once the step's loss is built.
    """

    def __init__(self) -> None:
        self._store: dict[int, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, modules: Sequence[nn.Module]) -> None:
        """Hook ``modules`` (their outputs come back from :meth:`pop` in this order); earlier hooks are removed."""
        self.detach()
        self._handles = [
            m.register_forward_hook(functools.partial(_store, self._store, i)) for i, m in enumerate(modules)
        ]

    def detach(self) -> None:
        """Remove the hooks and drop anything held."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._store.clear()

    def pop(self) -> list[Tensor]:
        """The hooked outputs of the latest training-mode forward, removed from the tap."""
        n = len(self._handles)
        if len(self._store) != n:
            raise RuntimeError(
                f"stage tap holds {len(self._store)} of {n} stage outputs: call the student in training mode with "
                "gradients on before the distillation loss"
            )
        out = [self._store[i] for i in range(n)]
        self._store.clear()
        return out


def student_stages(model: nn.Module, stages: Sequence[int], vit_blocks: Sequence[int]) -> list[nn.Module]:
    """The student modules whose outputs OFA projects: ResNet ``layer{s}`` for each stage s in 1..4; ViT
    ``blocks[vit_blocks[s − 1]]`` (the official code's ViT "stages" are blocks 1, 3, 9, 11, 0-based)."""
    bb = model.backbone
    if model.spec.family == "resnet":
        return [getattr(bb, f"layer{s}") for s in stages]
    return [bb.blocks[vit_blocks[s - 1]] for s in stages]


# --------------------------------------------------------------------------------------------------- OFA


class SepConv(nn.Sequential):
    """OFA's CNN projector block: two depthwise-separable 3×3 convolutions, the first with stride 2, BN + ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False),
        )


def cnn_branch(channels: int, stage: int, width: int, num_classes: int) -> nn.Sequential:
    """OFA branch for CNN stage ``stage`` (1..4) with ``channels`` output channels: ``4 − stage`` stride-2 SepConvs
    doubling the channels (the last to ``width``), or a 1×1 conv to ``width`` for stage 4, then global average
    pooling and a linear classifier. Pooling is adaptive, so any input size (256×128 included) works."""
    if stage < 4:
        blocks: list[nn.Module] = []
        c = channels
        n = 4 - stage
        for i in range(n):
            blocks.append(SepConv(c, width if i == n - 1 else 2 * c))
            c *= 2
    else:
        blocks = [nn.Conv2d(channels, width, 1)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerge(nn.Module):
    """2×2 patch merging on an ``h × w`` token grid (Swin): concatenate each 2×2 neighbourhood, LayerNorm(4C), a
    bias-free Linear to ``out_dim`` and an activation. Height and width are tracked separately (ReID grids are
    not square)."""

    def __init__(self, grid: tuple[int, int], dim: int, out_dim: int, act: bool) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act: nn.Module = nn.GELU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        h, w = self.grid
        x = x.reshape(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.act(self.reduction(self.norm(x.reshape(b, -1, 4 * c))))


class ViTBranch(nn.Module):
    """OFA branch for a ViT block output ``[B, prefix + h·w, D]``: patch merging of the patch tokens while the grid
    stays at least 7×7 patches (``OFA_MIN_PATCHES``), ``depth`` transformer blocks, the prefix tokens read out like the
    ReID head (cls, or ``concat(cls, mean(part tokens))``) and a linear classifier.

    Args:
        dim: the block width D.
        heads: attention heads of the projector blocks.
        grid: (h, w) patch grid of the student's input.
        prefix: cls + part tokens in front of the patches.
        depth: transformer blocks (``max(4 − stage, 1)``).
        num_classes: logits.
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], prefix: int, depth: int, num_classes: int) -> None:
        super().__init__()
        self.prefix = prefix
        merges: list[nn.Module] = []
        h, w = grid
        sizes: list[tuple[int, int]] = []
        while h % 2 == 0 and w % 2 == 0 and (h // 2) * (w // 2) >= OFA_MIN_PATCHES:
            sizes.append((h, w))
            h, w = h // 2, w // 2
        for i, g in enumerate(sizes):  # official: GELU after every merge but a last one that is not also the first
            merges.append(PatchMerge(g, dim, dim, act=(i == 0 or i != len(sizes) - 1)))
        self.merges = nn.Sequential(*merges)
        self.blocks = nn.Sequential(*(Block(dim, heads, 0.0) for _ in range(depth)))
        self.fc = nn.Linear(dim if prefix == 1 else 2 * dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens, patches = x[:, : self.prefix], x[:, self.prefix :]
        x = self.blocks(torch.cat([tokens, self.merges(patches)], dim=1))
        feat = x[:, 0] if self.prefix == 1 else torch.cat([x[:, 0], x[:, 1 : self.prefix].mean(dim=1)], dim=1)
        return self.fc(feat)


def init_projector(module: nn.Module) -> None:
    """Initialisation of the official projectors (``init_weights``): conv He fan-out, BN 1/0, linear trunc-normal
    0.02 with zero bias; LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            m.reset_parameters()
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def ofa_branches(spec: ModelSpec, ofa: OFAConfig, num_classes: int, teacher_feat_dim: int) -> nn.ModuleDict:
    """One projector per configured stage of the student ``spec`` into ``num_classes`` logits (keys ``stage1``…)."""
    out = nn.ModuleDict()
    for s in ofa.stages:
        if spec.family == "resnet":
            channels = 4 * spec.planes[s - 1]
            branch: nn.Module = cnn_branch(channels, s, max(spec.feat_dim, teacher_feat_dim), num_classes)
        else:
            grid = (spec.img_size[0] // PATCH, spec.img_size[1] // PATCH)
            branch = ViTBranch(spec.dim, spec.num_heads, grid, 1 + NUM_PARTS, max(4 - s, 1), num_classes)
        out[f"stage{s}"] = branch
    init_projector(out)
    return out


class OFALoss(nn.Module):
    """OFA-KD auxiliary loss: ``aux(images, pids, out, epoch) -> {"ofa", "kd"}`` (already weighted; the caller adds
    the ReID losses, the paper's ``gt`` part with weight 1).

    ``ofa = ofa_weight · Σ_stages ofa_loss(branch_s(f_s), z_t)`` over the hooked stage features ``f_s``, ``kd =
    kd_weight · ofa_loss(z_s, z_t)`` on the student's own logits. Call :meth:`attach` with the student that is
    trained before the first step (``finetune_student`` does, right after loading it).

    Args:
        teacher: the frozen teacher, any family (training-mode forward returns ``(logits, feat)``).
        ofa: ε, temperature, weights, stages.
        student: the student's spec (channels, ViT grid and width of the branches).
        num_classes: the teacher's classes (the branches' logits).
        teacher_feat_dim: the teacher's pre-logit feature width (CNN branches are ``max(d_s, d_t)`` wide).
    """

    def __init__(
        self, teacher: nn.Module, ofa: OFAConfig, student: ModelSpec, num_classes: int, teacher_feat_dim: int
    ) -> None:
        super().__init__()
        self._teacher = [freeze(teacher)]  # a list keeps it out of parameters() / state_dict()
        self.student_spec = student
        self.num_classes = num_classes
        self.eps = ofa.eps
        self.temperature = ofa.temperature
        self.ofa_weight = ofa.ofa_weight
        self.kd_weight = ofa.kd_weight
        self.stages = tuple(ofa.stages)
        self.vit_blocks = tuple(ofa.vit_blocks)
        self.branches = ofa_branches(student, ofa, num_classes, teacher_feat_dim)
        self._tap = StageTap()

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def attach(self, model: nn.Module) -> None:
        """Hook the stages of ``model`` (the student being trained; any earlier model is unhooked)."""
        if getattr(model, "spec", None) != self.student_spec:
            have = getattr(getattr(model, "spec", None), "name", type(model).__name__)
            raise SpecError(f"OFA: projectors were built for student {self.student_spec.name}, attach() got {have}")
        self._tap.attach(student_stages(model, self.stages, self.vit_blocks))

    def detach(self) -> None:
        """Remove the stage hooks."""
        self._tap.detach()

    def prepare(self, loader: Iterable, device: torch.device) -> None:
        """Move the teacher to ``device`` (``finetune_student`` calls this before training; ``loader`` is unused)."""
        self.teacher.to(device)

    def forward(self, images: Tensor, pids: Tensor, out: Any, epoch: int) -> dict[str, Tensor]:
        if not self._tap.attached:
            raise RuntimeError("OFALoss.attach(student) was not called: OFA needs the student's stage features")
        feats = self._tap.pop()
        teacher = self.teacher
        if next(teacher.parameters()).device != images.device:
            teacher.to(images.device)
        t_logits, _ = teacher_outputs(teacher, images)
        s_logits = out[0]
        if t_logits.shape[1] != s_logits.shape[1]:
            raise ConfigError(
                f"OFA-KD distils the teacher's logits, so teacher and student must classify the same identities: the "
                f"teacher has {t_logits.shape[1]} classes, the student {s_logits.shape[1]} (a cross-scenario or "
                "few-shot fine-tune); use it on the teacher's own identities (single scenario, or a source "
                "distillation phase, baselines.ofa.epochs > 0)"
            )
        mask = F.one_hot(pids.long(), t_logits.shape[1])
        branch = [
            ofa_loss(self.branches[f"stage{s}"](f), t_logits, mask, self.eps, self.temperature)
            for s, f in zip(self.stages, feats, strict=True)
        ]
        return {
            "ofa": self.ofa_weight * torch.stack(branch).sum(),
            "kd": self.kd_weight * ofa_loss(s_logits, t_logits, mask, self.eps, self.temperature),
        }


# --------------------------------------------------------------------------------------------------- RSD


def decoupler(d_s: int, d_t: int, hidden_factor: int) -> nn.Sequential:
    """RSD's decoupling MLP ``Linear(d_s, γ·d_s) → BN1d → GELU → Linear(γ·d_s, d_t)`` (bias-free linears, as the
    official ``projector``; trunc-normal 0.02): the RSD objective acts on its output, not on the student's own
    feature, which keeps the student's architecture-specific representation (the paper's decoupling module)."""
    hidden = hidden_factor * d_s
    mlp = nn.Sequential(
        nn.Linear(d_s, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, d_t, bias=False)
    )
    init_projector(mlp)
    return mlp


class RSDLoss(nn.Module):
    """RSD auxiliary loss: ``aux(images, pids, out, epoch) -> {"rsd"}`` (already weighted) on the student's
    pre-BNNeck feature (``out.feat``) and the teacher's, so it needs no shared identities (works across data sets).

    Args:
        teacher: the frozen teacher, any family.
        rsd: weight, κ (and its batch scaling), hidden factor γ.
        student_feat_dim: d_s.
        teacher_feat_dim: d_t.
    """

    def __init__(self, teacher: nn.Module, rsd: RSDConfig, student_feat_dim: int, teacher_feat_dim: int) -> None:
        super().__init__()
        self._teacher = [freeze(teacher)]
        self.weight = rsd.weight
        self.kappa = rsd.kappa
        self.kappa_rank_scaling = rsd.kappa_rank_scaling
        self.projector = decoupler(student_feat_dim, teacher_feat_dim, rsd.hidden_factor)
        self._logged = False

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def prepare(self, loader: Iterable, device: torch.device) -> None:
        """Move the teacher to ``device`` (``loader`` is unused)."""
        self.teacher.to(device)

    def kappa_for(self, batch: int, dim: int) -> float:
        """κ used for a ``batch × dim`` correlation (:func:`rsd_kappa` when ``kappa_rank_scaling``)."""
        return rsd_kappa(self.kappa, batch, dim) if self.kappa_rank_scaling else self.kappa

    def forward(self, images: Tensor, pids: Tensor, out: Any, epoch: int) -> dict[str, Tensor]:
        teacher = self.teacher
        if next(teacher.parameters()).device != images.device:
            teacher.to(images.device)
        _, t_feat = teacher_outputs(teacher, images)
        s_feat = self.projector(out[1])
        kappa = self.kappa_for(t_feat.shape[0], t_feat.shape[1])
        if not self._logged:
            log.info(
                "RSD: batch %d, teacher width %d, rank <= %d: kappa %.3g", *t_feat.shape, t_feat.shape[0] - 1, kappa
            )
            self._logged = True
        return {"rsd": self.weight * rsd_loss(s_feat, t_feat, kappa)}


def count_trainable(module: nn.Module) -> int:
    """Trainable parameters of a module (the projectors' overhead, reported in the init info)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "OFALoss",
    "RSDLoss",
    "StageTap",
    "count_trainable",
    "ofa_loss",
    "rsd_kappa",
    "rsd_loss",
]
