"""``oskt expand``: generate a student of any width from one or more weight chains (SPEC.md §3)."""

from __future__ import annotations

import argparse
import dataclasses
import time

from oskt.errors import SpecError


def _student_spec(args: argparse.Namespace, teacher):  # noqa: ANN001, ANN202 - ModelSpec (imported lazily)
    from oskt.models.spec import ModelSpec, parse_spec

    opts = {
        "last_stride": teacher.last_stride,
        "img_size": teacher.img_size,
        "drop_path": teacher.drop_path,
        "vit_stem": args.vit_stem or teacher.vit_stem,
    }
    if args.student:
        return parse_spec(args.student, teacher.arch, **opts)
    if teacher.family == "resnet":
        if args.in_planes is None or args.multipliers is None or args.dim is not None:
            raise SpecError("a ResNet chain needs --student NAME or --in-planes W --multipliers M1 M2 M3")
        return ModelSpec(arch=teacher.arch, in_planes=args.in_planes, multipliers=tuple(args.multipliers), **opts)
    if args.dim is None or args.in_planes is not None:
        raise SpecError(f"a {teacher.arch} chain needs --student NAME or --dim D")
    return dataclasses.replace(teacher, dim=args.dim, vit_stem=opts["vit_stem"])


def _expand(args: argparse.Namespace) -> int:
    from oskt.chain import expand_from_chains, load_chain
    from oskt.models import save_model

    chains = [load_chain(p) for p in args.chain]
    spec = _student_spec(args, chains[0].teacher_spec)
    t = time.perf_counter()
    model = expand_from_chains(chains, spec, args.num_classes, bn_stats=args.bn_stats)
    seconds = time.perf_counter() - t
    width = _chain_width(chains, spec)
    save_model(
        args.output,
        model,
        "student",
        extra={"init": "oskt", "chains": list(args.chain), "chain_width": width, "bn_stats": args.bn_stats},
    )
    n = sum(p.numel() for p in model.backbone.parameters())
    print(
        f"wrote {args.output}: {spec.arch} {spec.name} {spec.layer_widths()} from chain {width}, "
        f"{n / 1e6:.2f}M backbone parameters, expanded in {seconds * 1e3:.0f} ms"
    )
    return 0


def _chain_width(chains, spec) -> int:  # noqa: ANN001
    from oskt.models.spec import select_chain

    return select_chain(spec, [c.width for c in chains], chains[0].teacher_spec)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "expand",
        help="generate a student of any width from weight chains",
        description="Generate a student (kind 'student' checkpoint) from the widest chain that fits it in every "
        "layer (SPEC.md §3). Any width between the chain and the teacher works, not only S1..S6.",
    )
    p.add_argument(
        "--chain",
        action="append",
        required=True,
        metavar="PATH",
        help="chain checkpoint; repeat to offer several chains (the widest fitting one is used)",
    )
    p.add_argument("--student", default=None, help="student name: S1..S6, r16-2-3-4 (ResNet), S1/S2/vit144 (ViT)")
    p.add_argument("--in-planes", type=int, default=None, help="ResNet stem width")
    p.add_argument("--multipliers", type=int, nargs=3, default=None, metavar="M", help="ResNet stage multipliers")
    p.add_argument("--dim", type=int, default=None, help="ViT embedding width (divisible by the head count)")
    p.add_argument(
        "--vit-stem", choices=["teacher", "plain"], default=None, help="ViT student stem (default: the teacher spec's)"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=1,
        help="classifier size of the fresh head (fine-tuning replaces it for the target identities)",
    )
    p.add_argument(
        "--bn-stats",
        choices=["reset", "average"],
        default="reset",
        help="BN running statistics: fresh (the paper) or group means of the teacher's",
    )
    p.add_argument("-o", "--output", required=True, help="student checkpoint to write")
    p.set_defaults(func=_expand)
