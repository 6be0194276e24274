"""Scratch: the student's default random initialisation, no teacher weights (BASELINES.md §1.1, SPEC.md §5.1).

ResNet: conv N(0, sqrt(2 / (k·k·out))) (He fan-out, the OSKT ``random_init``), BN γ=1 β=0. ViT: Linear, tokens and
positions trunc-normal(0.02), LayerNorm 1/0 (TransReID). BoT head: BNNeck 1/0 (β frozen), bias-free classifier
N(0, 0.001). All of this is ``build_model``'s own init, so Scratch is exactly ``build_model(spec, num_classes)``.
"""

from __future__ import annotations

from oskt.baselines.registry import InitContext, InitResult, check_student_teacher, register_init
from oskt.models.factory import build_model
from oskt.models.spec import ModelSpec


@register_init("scratch")
def init_scratch(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Randomly initialised student (seed with ``oskt.runtime.seed_everything`` beforehand for reproducibility).

    When ``ctx.teacher_ckpt`` is set its spec is read only to reject a student wider than a teacher of the same
    architecture (SpecError), so every method accepts the same students; a teacher of another architecture (a
    cross-architecture grid) constrains nothing. Without a teacher the student is checked against its family's full
    teacher.
    """
    if ctx.teacher_ckpt:
        from oskt.checkpoint import load_checkpoint

        teacher = ModelSpec.from_dict(dict(load_checkpoint(ctx.teacher_ckpt)["spec"]))
    else:
        teacher = spec.teacher()
    check_student_teacher(spec, teacher, "scratch")
    return InitResult(build_model(spec, num_classes), None, {"teacher": teacher.name, "teacher_arch": teacher.arch})
