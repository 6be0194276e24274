"""``oskt init-student``: initialise one student with any registered method and save it (kind ``student``)."""

from __future__ import annotations

import argparse
import json

from oskt.cli.common import add_config_args, config_from_args


def _base_spec(args: argparse.Namespace, cfg):  # noqa: ANN001, ANN202 - a Config -> ModelSpec
    """The spec whose structural options (arch, input size, strides, ViT stem) the student inherits: the teacher
    checkpoint's, else the first chain's teacher, else the config's teacher."""
    from oskt.checkpoint import load_checkpoint
    from oskt.jobs import spec_of
    from oskt.models.spec import ModelSpec

    if args.teacher:
        return ModelSpec.from_dict(dict(load_checkpoint(args.teacher)["spec"]))
    if args.chain:
        return ModelSpec.from_dict(dict(load_checkpoint(args.chain[0], kind="chain")["spec"]))
    return spec_of(cfg.teacher, cfg.teacher.name, (cfg.data.height, cfg.data.width))


def _init_student(args: argparse.Namespace) -> int:
    from oskt.baselines import INIT_METHODS, InitContext
    from oskt.models import save_model
    from oskt.models.spec import parse_spec
    from oskt.runtime import select_device

    cfg = config_from_args(args)
    base = _base_spec(args, cfg)
    spec = parse_spec(
        args.student,
        base.arch,
        last_stride=base.last_stride,
        vit_stem=base.vit_stem,
        img_size=base.img_size,
        drop_path=base.drop_path,
    )
    device = str(select_device(args.device))
    ctx = InitContext(
        teacher_ckpt=args.teacher,
        chain_ckpts=tuple(args.chain),
        baselines=cfg.baselines,
        device=device,
        example_input_size=tuple(base.img_size),
        seed=args.seed,
    )
    result = INIT_METHODS.get(args.method)(ctx, spec, args.num_classes)
    extra = {
        "method": args.method,
        "info": result.info,
        "teacher_ckpt": args.teacher or "",
        "chain_ckpts": list(args.chain),
        "seed": args.seed,
    }
    if result.aux is not None:  # an aux loss is a training-time object: the fine-tune rebuilds it from the teacher
        extra["aux"] = type(result.aux).__name__
    save_model(args.output, result.model, "student", config=cfg.to_dict(), extra=extra)
    print(json.dumps({"checkpoint": args.output, "student": spec.name, **result.info}, indent=2, sort_keys=True))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from oskt.config import METHODS

    p = sub.add_parser(
        "init-student",
        help=f"initialise a student ({', '.join(METHODS)}) and save it",
        description="Initialise one student with a registered method (SPEC.md §5.1) and write a student checkpoint "
        "whose extra records the method and its info. The student inherits arch, input size and strides from "
        "the teacher checkpoint (else the first chain, else the config).",
    )
    p.add_argument("--method", required=True, choices=METHODS, help="init method")
    p.add_argument(
        "--teacher",
        default=None,
        metavar="CKPT",
        help="the trained (original) teacher checkpoint (wtsel, kdpp, depgraph)",
    )
    p.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="CKPT",
        help="a chain checkpoint (oskt; repeat for several widths, the widest fitting one is used)",
    )
    p.add_argument("--student", required=True, help="student name: S1..S6, r16-2-3-4, vit144, ...")
    p.add_argument("--num-classes", required=True, type=int, help="classifier outputs (training identities)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parts (scratch, fresh heads)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="student checkpoint (local or s3://)")
    add_config_args(p)
    p.set_defaults(func=_init_student)
