"""WTSel, weight selection (Xu et al., ICLR 2024, "Initializing Models with Larger Ones"; BASELINES.md §1.2).

The official ``weight_selection.py`` in three steps, applied to our state dicts:

1. Layer selection: implicit, by key. Student and teacher have the same depth (ResNet-50 3/4/6/3, ViT 12 blocks), so
   every student key exists in the teacher and layer ``i`` initialises layer ``i``.
2. Component mapping: the same key (conv→conv, BN→BN, qkv→qkv, ...).
3. Element selection (uniform, the default): for every tensor and every dimension with teacher size T and student
   size S, keep ``0, k, 2k, ...`` (k = T/S) when S divides T, else ``round(linspace(0, T − 1, S))`` (the rule after
   the upstream fix of the non-divisible branch, commit ``8bbb7a0``). The same (T, S) pair always gives the same
   indices, so residual streams stay aligned across layers ("consistency").

Covered: conv / linear weights and biases, BN γ / β / running mean / running var (``num_batches_tracked`` copied),
LayerNorm, the patch embedding, the cls / part tokens, the position embeddings, the ``dw`` projection, and the BNNeck
(a 1-D feature BN; BASELINES.md §1.2 recommends selecting it). Skipped: the classifier (``head.classifier``; the
identities differ), which stays fresh. The official code skips keys containing ``"head"``; under our naming that
would also drop the BNNeck (``head.bnneck``), so only the classifier is skipped.

Fused qkv (BASELINES.md §0.5, §1.2): by default the official rule runs on the ``3T`` rows as one dimension, which
misaligns q, k and v whenever S does not divide T (every OSKT ViT student). ``baselines.wtsel.qkv_aware=true``
splits the rows into q, k, v, selects each with the T→S rule (the residual stream's indices), and re-concatenates.

ViT ``vit_stem="plain"`` students have no ``dw``; the teacher's ``dw`` (applied after the position add, linear) is
folded into its patch embedding / tokens / positions first, so selection acts on the teacher's actual residual
stream (our choice; the official code has no ``dw``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from oskt.baselines.registry import (
    InitContext,
    InitNeeds,
    InitResult,
    check_student_teacher,
    load_teacher,
    register_init,
)
from oskt.errors import SpecError
from oskt.models.factory import build_model
from oskt.models.spec import ModelSpec
from oskt.models.vit import has_dw

SKIP_PREFIXES = ("head.classifier.",)
QKV_SUFFIXES = ("attn.qkv.weight", "attn.qkv.bias")
_STEM_TOKENS = ("backbone.cls_token", "backbone.part_tokens", "backbone.token_pos", "backbone.pos_embed")


def select_indices(teacher_size: int, student_size: int) -> Tensor:
    """The official uniform element-selection indices for one dimension (T → S)."""
    if not 1 <= student_size <= teacher_size:
        raise SpecError(f"WTSel cannot select {student_size} elements out of {teacher_size}")
    if teacher_size % student_size == 0:
        return torch.arange(student_size) * (teacher_size // student_size)
    return torch.round(torch.linspace(0, teacher_size - 1, student_size)).long()


def select_tensor(w: Tensor, shape: Sequence[int]) -> Tensor:
    """Select ``shape`` out of ``w`` dimension by dimension (equal dimensions untouched)."""
    if w.dim() != len(shape):
        raise SpecError(f"WTSel: teacher tensor {tuple(w.shape)} and student {tuple(shape)} differ in rank")
    for d, (t, s) in enumerate(zip(w.shape, shape, strict=True)):
        if t != s:
            w = w.index_select(d, select_indices(t, s).to(w.device))
    return w


def select_qkv(w: Tensor, shape: Sequence[int]) -> Tensor:
    """q/k/v-aware selection on a fused ``[3T, ...]`` tensor: each third selected with the T → S rule."""
    t3, s3 = w.shape[0], shape[0]
    if t3 % 3 or s3 % 3:
        raise SpecError(f"WTSel: fused qkv rows {t3} → {s3} are not multiples of 3")
    parts = w.reshape(3, t3 // 3, *w.shape[1:])
    return select_tensor(parts, (3, s3 // 3, *shape[1:])).reshape(tuple(shape))


def fold_dw(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ViT state dict with ``backbone.dw`` folded into the stem (exact: ``dw`` is linear, after the position
    add), i.e. the equivalent plain-stem teacher."""
    out = dict(state)
    dw = out.pop("backbone.dw.weight")
    w = out["backbone.patch_embed.proj.weight"]
    out["backbone.patch_embed.proj.weight"] = (dw @ w.reshape(w.shape[0], -1)).reshape(dw.shape[0], *w.shape[1:])
    out["backbone.patch_embed.proj.bias"] = dw @ out["backbone.patch_embed.proj.bias"]
    for name in _STEM_TOKENS:
        out[name] = out[name] @ dw.t()
    return out


def select_state(
    teacher_state: Mapping[str, Tensor], student_shapes: Mapping[str, Sequence[int]], qkv_aware: bool = False
) -> dict[str, Tensor]:
    """WTSel element selection for every student key (classifier keys are left out).

    Args:
        teacher_state: the teacher's state dict (same depth and key names).
        student_shapes: the student's state-dict keys and shapes.
        qkv_aware: select fused qkv rows per q / k / v instead of over all 3T rows.

    Raises:
        SpecError: a student key missing from the teacher, or a dimension wider than the teacher's.
    """
    out: dict[str, Tensor] = {}
    for key, shape in student_shapes.items():
        if key.startswith(SKIP_PREFIXES):
            continue
        if key not in teacher_state:
            raise SpecError(f"WTSel: student key {key!r} has no teacher counterpart (depth must be identical)")
        w = teacher_state[key]
        if w.dim() == 0:  # num_batches_tracked
            out[key] = w.clone()
        elif qkv_aware and key.endswith(QKV_SUFFIXES):
            out[key] = select_qkv(w, shape)
        else:
            out[key] = select_tensor(w, shape)
    return out


@register_init("wtsel", InitNeeds(teacher=True))
def init_wtsel(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Student = uniformly selected teacher weights (``ctx.baselines.wtsel.qkv_aware`` picks the qkv rule), with a
    fresh classifier for ``num_classes`` and the BNNeck selected from the teacher's."""
    teacher = load_teacher(ctx, "wtsel")
    check_student_teacher(spec, teacher.spec, "wtsel")  # same architecture only: it selects teacher tensors
    state = {k: v.detach() for k, v in teacher.state_dict().items()}
    folded = spec.family == "vit" and not has_dw(spec) and "backbone.dw.weight" in state
    if folded:
        state = fold_dw(state)
    student = build_model(spec, num_classes)
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    qkv_aware = bool(ctx.baselines.wtsel.qkv_aware)
    selected = select_state(state, shapes, qkv_aware=qkv_aware)
    missing, unexpected = student.load_state_dict(selected, strict=False)
    if unexpected or any(not k.startswith(SKIP_PREFIXES) for k in missing):
        raise SpecError(f"WTSel: selected state does not fit {spec.name}: missing {missing}, unexpected {unexpected}")
    info = {"teacher": teacher.spec.name, "qkv_aware": qkv_aware, "folded_dw": folded}
    return InitResult(student, None, info)
