"""OFA-KD (Hao et al., NeurIPS 2023, "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge
Distillation") as an init method: a Scratch student plus :class:`oskt.train.distill.OFALoss` (docs/methods.md §2).

OFA is a training method, so ``init`` returns the Scratch student (BASELINES.md §1.1) and the loss, built with the
loaded ORIGINAL teacher (frozen, eval mode, on ``ctx.device``), ``ctx.baselines.ofa`` and one logit-space branch per
student stage. The teacher may be of another architecture (its batch is resized to its own input size).

OFA distils the teacher's logits, so the student must classify the teacher's identities: ``num_classes`` must equal
the teacher's (single scenario A→A, or a source distillation phase before an A→B fine-tune); anything else is a
ConfigError here, and a fine-tune whose classifier differs (few-shot) fails at its first step with one.

The trainer must call ``aux.attach(model)`` on the student it trains (the branches read its stage features through
forward hooks).
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
from oskt.errors import ConfigError
from oskt.models.factory import build_model
from oskt.models.spec import ModelSpec


@register_init("ofa", InitNeeds(teacher=True, source_phase=True, logits=True))
def init_ofa(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Scratch student + ``OFALoss`` (``num_classes`` must be the teacher's number of identities)."""
    from oskt.train.distill import OFALoss, count_trainable

    teacher = load_teacher(ctx, "ofa")
    check_student_teacher(spec, teacher.spec, "ofa")
    if num_classes != teacher.num_classes:
        raise ConfigError(
            f"init method 'ofa' distils the teacher's logits: the student must classify the teacher's "
            f"{teacher.num_classes} identities, got num_classes={num_classes} (use OFA single-scenario, or distil on "
            "the source set first: baselines.ofa.epochs > 0)"
        )
    teacher.eval()
    student = build_model(spec, num_classes)
    aux = OFALoss(teacher, ctx.baselines.ofa, spec, teacher.num_classes, teacher.spec.feat_dim).to(ctx.device)
    info = {
        "teacher": teacher.spec.name,
        "teacher_arch": teacher.spec.arch,
        "teacher_classes": teacher.num_classes,
        "stages": list(aux.stages),
        "eps": aux.eps,
        "projector_params": count_trainable(aux),
    }
    return InitResult(student, aux, info)
