"""OSKT as an init method: expand the widest fitting weight chain to the student's widths (SPEC.md §3, §3.3)."""

from __future__ import annotations

from oskt.baselines.registry import InitContext, InitNeeds, InitResult, check_student_teacher, register_init
from oskt.errors import CheckpointError, ConfigError, SpecError
from oskt.models.spec import ModelSpec, select_chain


@register_init("oskt", InitNeeds(chain=True))
def init_oskt(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Load ``ctx.chain_ckpts``, pick the widest chain whose S-Student fits ``spec`` in every layer
    (``select_chain``: SpecError when the student is wider than the teacher or narrower than every chain) and
    ``expand`` it with the default options (BN running statistics reset, SPEC.md §3.2) and a fresh head."""
    from oskt.chain import expand, load_chain
    from oskt.checkpoint import load_checkpoint

    if not ctx.chain_ckpts:
        raise ConfigError("init method 'oskt' needs weight chains: InitContext.chain_ckpts is empty")
    # read every chain's width and teacher first; only the selected chain is rebuilt (chains are large)
    teachers: dict[str, ModelSpec] = {}
    widths: dict[str, int] = {}
    for path in ctx.chain_ckpts:
        ckpt = load_checkpoint(path, kind="chain")
        try:
            teachers[path] = ModelSpec.from_dict(dict(ckpt["spec"]))
            widths[path] = int(ckpt["extra"]["width"])
        except (KeyError, TypeError, ValueError, SpecError) as e:
            raise CheckpointError(f"chain checkpoint {path!r} has no valid spec / width: {e}") from None
        del ckpt
    first = ctx.chain_ckpts[0]
    teacher = teachers[first]
    for path, t in teachers.items():
        if t.arch != teacher.arch or t.layer_widths() != teacher.layer_widths():
            raise SpecError(
                f"chain {path!r} comes from teacher {t.arch} {t.name}, chain {first!r} from "
                f"{teacher.arch} {teacher.name}"
            )
    if spec.arch != teacher.arch:  # same architecture only: chains are the teacher's own layers (fit: select_chain)
        check_student_teacher(spec, teacher, "oskt")
    width = select_chain(spec, list(widths.values()), teacher)
    path = next(p for p, w in widths.items() if w == width)
    student = expand(load_chain(path).to(ctx.device), spec, num_classes)
    return InitResult(student, None, {"teacher": teacher.name, "chain_width": width, "chain_ckpt": path})
