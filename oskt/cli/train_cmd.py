"""``oskt train teacher|chain|student``: run one training phase into a folder (resumable, idempotent)."""

from __future__ import annotations

import argparse
import json

from oskt.cli.common import add_config_args, config_from_args
from oskt.config import Config


def _preflight(cfg: Config, args: argparse.Namespace) -> None:
    """Before any work: every ``s3://`` location the phase reads or writes answers, with credentials (one line,
    exit 2, within seconds, instead of a botocore traceback from the first write)."""
    from oskt.pipeline.preflight import check_locations, data_locations

    check_locations([*data_locations(cfg), *(getattr(args, k, None) for k in ("output", "teacher", "init"))])


def _report(result) -> int:  # noqa: ANN001 - a TrainResult
    print(json.dumps({"checkpoint": result.checkpoint, **result.metrics}, indent=2, sort_keys=True))
    return 0


def _teacher(args: argparse.Namespace) -> int:
    from oskt.pipeline.graph import run_options, teacher_job
    from oskt.train import train_teacher

    if args.val_ids:  # a shortcut for --set data.val_ids=N
        args.overrides = [*(args.overrides or []), f"data.val_ids={args.val_ids}"]
    cfg = config_from_args(args)
    _preflight(cfg, args)
    job = teacher_job(cfg, args.dataset or cfg.data.sources[0])
    return _report(train_teacher(job, args.output, run=run_options(cfg), resume=not args.restart))


def _chain(args: argparse.Namespace) -> int:
    from oskt.checkpoint import load_checkpoint
    from oskt.data.refs import dataset_ref
    from oskt.jobs import checkpoint_identity
    from oskt.pipeline.graph import chain_job, run_options
    from oskt.train import refine_chain

    cfg = config_from_args(args)
    _preflight(cfg, args)
    recorded = (load_checkpoint(args.teacher, kind="teacher").get("extra") or {}).get("dataset")
    data = dataset_ref(args.dataset or recorded or cfg.data.sources[0], cfg.data)
    job = chain_job(cfg, checkpoint_identity(args.teacher), args.width, data)
    return _report(refine_chain(job, args.teacher, args.output, run=run_options(cfg), resume=not args.restart))


def _student(args: argparse.Namespace) -> int:
    from oskt.jobs import checkpoint_identity
    from oskt.pipeline.graph import finetune_job, run_options
    from oskt.train import finetune_student

    cfg = config_from_args(args)
    _preflight(cfg, args)
    job = finetune_job(
        cfg, args.dataset, upstream=checkpoint_identity(args.init), seed=args.seed, few_shot=args.few_shot
    )
    return _report(finetune_student(job, args.init, args.output, run=run_options(cfg), resume=not args.restart))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a teacher, refine a chain or fine-tune a student",
        description="Run one training phase into a folder. A killed run resumes from its last.pt; "
        "a finished one returns at once (use --restart to train again).",
    )
    verbs = p.add_subparsers(dest="train_verb", metavar="PHASE", required=True)

    t = verbs.add_parser("teacher", help="train the teacher (SPEC.md §4.2-4.3)")
    t.add_argument("--dataset", default=None, help="data set name (default: the first of data.sources)")
    t.add_argument(
        "--val-ids",
        type=int,
        default=0,
        metavar="N",
        help="hold out N training identities as query/gallery and evaluate on them instead of the test split "
        "(choose a recipe without touching test)",
    )
    t.set_defaults(func=_teacher)

    c = verbs.add_parser("chain", help="cluster a teacher into a weight chain and refine it (SPEC.md §2, §4.1)")
    c.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint")
    c.add_argument("--width", required=True, type=int, help="chain width (ResNet stem width / ViT dim)")
    c.add_argument("--dataset", default=None, help="refinement data set (default: the teacher's)")
    c.set_defaults(func=_chain)

    s = verbs.add_parser("student", help="fine-tune an initialised student (SPEC.md §5)")
    s.add_argument("--init", required=True, metavar="CKPT", help="initialised student checkpoint")
    s.add_argument("--dataset", required=True, help="data set name to fine-tune and evaluate on")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--few-shot", type=float, default=1.0, help="fraction of training identities (default 1.0)")
    s.set_defaults(func=_student)

    for q in (t, c, s):
        q.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (local or s3://)")
        q.add_argument("--restart", action="store_true", help="ignore last.pt and a finished run; train again")
        add_config_args(q)
