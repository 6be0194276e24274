"""KD++ (Wang et al., "Improving Knowledge Distillation via Regularizing Feature Norm and Direction";
BASELINES.md §1.3) as an init method: a Scratch student plus the KD++ auxiliary loss.

KD++ is a training method, not a weight transfer, so ``init`` returns the Scratch student (BASELINES.md §1.1) and
``aux`` = :class:`oskt.train.kd.KDPPLoss` built with the loaded ORIGINAL teacher (frozen, eval mode, on
``ctx.device``) and ``ctx.baselines.kdpp`` (temperature, KD weight with linear warm-up, ND weight). The loss adds
``b·w(e)·KD(z_s, z_t) + c·ND`` to the ReID losses (CE-LS + triplet (+ center) are the paper's "cls" part); ND pulls
the projected student embedding toward the teacher's class-mean embedding, with a projector
``BN1d → Dropout(0.5) → Linear(d_s, d_t)`` to the teacher's width. Both embeddings are the pre-BNNeck features
(``ReIDOutput.feat``; the BNNeck-output alternative is not used).

Which data it distils on (our choice, BASELINES.md §1.0 / §1.3):

* Cross scenario A→B: the teacher's classifier covers A's identities, so distillation runs on the SOURCE set A
  (``baselines.kdpp.epochs`` epochs of ``finetune_student(..., aux=aux)`` on A; the pipeline's ``distil/`` phase),
  and the distilled student is then fine-tuned on B with the standard recipe and no aux. The teacher's class centres
  are those of A's train split: pass ``ctx.source_loader_factory`` over A (un-augmented). With
  ``baselines.kdpp.epochs = 0`` the pipeline instead distils during the target fine-tune (ND only, since the
  identities differ); then leave ``source_loader_factory`` unset so the centres are computed on B's records.
* Single scenario A→A: distillation happens during the target fine-tune itself (``aux`` passed to it); the centres
  are those of A's train split (from the factory, or deferred).

When ``ctx.source_loader_factory`` is ``None`` the centres are deferred: ``KDPPLoss.prepare(loader, device)``, which
``finetune_student`` calls with an un-augmented loader over exactly the records it trains on (pids included, so the
centres are always indexed like the training labels).

Weights as the authors run it (docs/methods.md §1): cls (the ReID losses) 1, ``kd_weight`` b = 1, ``nd_weight``
c = 1 (the official argparse defaults; the per-pair tuned b of 1.0–4.0 belong to ImageNet / CIFAR pairs), T = 4.
The KD warm-up is clipped to ``ctx.finetune_epochs`` (``oskt.train.kd.kd_warmup``), so the KD weight reaches
``kd_weight`` inside the run. The teacher may be of another architecture than the student (a ViT teacher for a
ResNet student): KD++ only needs its logits and embedding, computed on the batch resized to the teacher's size.
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


@register_init("kdpp", InitNeeds(teacher=True, source_phase=True))
def init_kdpp(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Scratch student + ``KDPPLoss`` (class centres from ``ctx.source_loader_factory`` when given, else deferred
    to ``KDPPLoss.prepare``)."""
    from oskt.train.kd import KDPPLoss, teacher_class_centres

    teacher = load_teacher(ctx, "kdpp")
    check_student_teacher(spec, teacher.spec, "kdpp")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_model(spec, num_classes)
    centres = None
    if ctx.source_loader_factory is not None:
        centres = teacher_class_centres(teacher, ctx.source_loader_factory(), ctx.device)
    aux = KDPPLoss(
        teacher, ctx.baselines.kdpp, spec.feat_dim, teacher.spec.feat_dim, centres, total_epochs=ctx.finetune_epochs
    ).to(ctx.device)
    info = {
        "teacher": teacher.spec.name,
        "teacher_arch": teacher.spec.arch,
        "kd_warmup_epochs": aux.warmup_epochs,
        "teacher_classes": teacher.num_classes,
        "centres": "source_loader" if centres is not None else "deferred",
        "num_centres": int(centres.shape[0]) if centres is not None else 0,
        "embedding": "pre_bnneck",
    }
    return InitResult(student, aux, info)
