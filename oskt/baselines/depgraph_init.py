"""DepGraph as an init method: the teacher structurally pruned to the student's widths (BASELINES.md §1.4).

One-shot local pruning by ``oskt.baselines.depgraph.prune_to_spec`` (``GroupMagnitudeImportance(p)`` with
``p = baselines.depgraph.importance_p``, per-layer ratios hitting the student's widths exactly; no sparse-training
phase), then ``reset_classifier(num_classes)``: fresh BNNeck(s) and classifier, as for every method. The backbone's
BN running statistics are the teacher's, pruned with their channels: they describe exactly the kept channels, so
keeping them is the natural pruning result (the fine-tune re-estimates them anyway).
"""

from __future__ import annotations

import torch

from oskt.baselines.registry import (
    InitContext,
    InitNeeds,
    InitResult,
    check_student_teacher,
    load_teacher,
    register_init,
)
from oskt.models.spec import ModelSpec


@register_init("depgraph", InitNeeds(teacher=True))
def init_depgraph(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Prune the trained teacher to ``spec`` and give it a fresh head for ``num_classes``."""
    from oskt.baselines.depgraph import prune_to_spec

    teacher = load_teacher(ctx, "depgraph")
    check_student_teacher(spec, teacher.spec, "depgraph")  # same architecture only: it prunes the teacher
    teacher.eval()
    t = teacher.spec
    size = t.img_size if t.family == "vit" else (ctx.example_input_size or t.img_size)
    example = torch.randn(2, 3, *size, device=ctx.device)
    p = ctx.baselines.depgraph.importance_p
    student = prune_to_spec(teacher, spec, example_input=example, importance_p=p)
    student.reset_classifier(num_classes)
    return InitResult(student, None, {"teacher": teacher.spec.name, "importance_p": p, "bn_stats": "teacher_pruned"})
