"""RSD (Zhang et al., ICCV 2025, "Cross-Architecture Distillation Made Simple with Redundancy Suppression") as an
init method: a Scratch student plus :class:`oskt.train.distill.RSDLoss` (docs/methods.md §3).

RSD is a training method, so ``init`` returns the Scratch student (BASELINES.md §1.1) and the loss, built with the
loaded ORIGINAL teacher (frozen, eval mode, on ``ctx.device``), ``ctx.baselines.rsd`` and the decoupling MLP from the
student's pre-BNNeck feature to the teacher's. It uses embeddings only, so it runs in any scenario (the target
fine-tune distils on target images with the source teacher) and with a teacher of any architecture.
"""

from __future__ import annotations

from oskt.baselines.registry import (
    InitContext,
    InitNeeds,
    InitResult,
    check_student_teacher,
    load_teacher,
    register_init,
)
from oskt.models.factory import build_model
from oskt.models.spec import ModelSpec


@register_init("rsd", InitNeeds(teacher=True, source_phase=True))
def init_rsd(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Scratch student + ``RSDLoss``."""
    from oskt.train.distill import RSDLoss, count_trainable

    teacher = load_teacher(ctx, "rsd")
    check_student_teacher(spec, teacher.spec, "rsd")
    teacher.eval()
    student = build_model(spec, num_classes)
    aux = RSDLoss(teacher, ctx.baselines.rsd, spec.feat_dim, teacher.spec.feat_dim).to(ctx.device)
    info = {
        "teacher": teacher.spec.name,
        "teacher_arch": teacher.spec.arch,
        "teacher_feat_dim": teacher.spec.feat_dim,
        "kappa": aux.kappa,
        "kappa_rank_scaling": aux.kappa_rank_scaling,
        "projector_params": count_trainable(aux),
        "embedding": "pre_bnneck",
    }
    return InitResult(student, aux, info)
