"""``oskt pick``: the widest student that fits a device budget, generated from the weight chain(s)."""

from __future__ import annotations

import argparse

from oskt.errors import ConfigError


def _pick(args: argparse.Namespace) -> int:
    from oskt.pipeline.preflight import check_locations, check_tracking, mlflow_uri

    if args.max_latency_ms is not None and not args.max_latency_ms > 0:
        raise ConfigError(f"--max-latency-ms {args.max_latency_ms}: a budget must be positive")
    if args.input_size is not None and min(args.input_size) < 1:
        raise ConfigError(f"--input-size {args.input_size[0]} {args.input_size[1]}: expected two positive integers H W")
    # before the heavy imports: one line within seconds when the server is down (MLflow's client retries for minutes)
    if args.from_mlflow:
        check_tracking(mlflow_uri(args.mlflow_uri))
    check_locations([*args.chain, args.output])
    from oskt.deploy.pick import Budget, format_count, parse_count, pick_to_file

    budget = Budget(
        max_params=parse_count(args.max_params) if args.max_params is not None else None,
        max_macs=parse_count(args.max_macs) if args.max_macs is not None else None,
        max_latency_ms=args.max_latency_ms,
        device=args.device,
    )
    res = pick_to_file(
        args.chain,
        args.output,
        budget,
        num_classes=args.num_classes,
        from_mlflow=args.from_mlflow,
        mlflow_uri=args.mlflow_uri,
        mlflow_experiment=args.mlflow_experiment,
        input_size=args.input_size,
        last_stride=args.last_stride,
        in_planes_step=args.in_planes_step,
        max_multiplier=args.max_multiplier,
    )
    c = res.candidate
    where = f"at {res.input_size[0]}x{res.input_size[1]}"
    if c.spec.family == "resnet":
        where += f", last stride {res.last_stride}"
    lat = f", {c.latency_ms:.3f} ms on {budget.device}" if c.latency_ms is not None else ""
    if res.source == "mlflow":
        origin = f"fine-tuned MLflow run {res.run_id} (mAP {res.mAP:.4f}; {res.num_within} runs tried)"
    else:
        origin = (
            f"expanded from chain {res.chain_width} ({res.num_candidates} candidates, {res.num_within} within "
            f"params/MACs, {res.num_timed} timed)"
        )
    print(
        f"picked {c.spec.name} widths {list(c.spec.layer_widths())}: {format_count(c.params)} params, "
        f"{format_count(c.macs)} MACs {where}{lat}; {origin}"
    )
    print(f"wrote {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pick",
        help="generate the widest student that fits a device budget",
        description="Search the width grid between the chain(s) and the teacher (not only S1..S6), choose the "
        "student with the most backbone parameters that fits every budget given (ties: fewer MACs), expand it "
        "from the weight chain and write a student checkpoint. Budgets combine. With --from-mlflow, the best-mAP "
        "fine-tuned student recorded in MLflow that fits is written instead, when there is one.",
    )
    p.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="PATH",
        help="chain checkpoint (local or s3://); repeat for several chains of one teacher",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="student checkpoint to write")
    p.add_argument("--max-params", default=None, metavar="N", help="backbone parameters, e.g. 1.5M")
    p.add_argument("--max-macs", default=None, metavar="N", help="backbone MACs per image, e.g. 0.3G")
    p.add_argument("--max-latency-ms", type=float, default=None, metavar="MS", help="batch-1 latency on --device")
    p.add_argument("--device", default="cpu", help="device for the latency budget (default cpu)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input size for MACs / latency (default: the teacher's img_size)",
    )
    p.add_argument(
        "--last-stride",
        type=int,
        choices=[1, 2],
        default=None,
        help="ResNet last stride for the MAC count only (default: the model's; README figures use 2)",
    )
    p.add_argument(
        "--in-planes-step",
        type=int,
        default=None,
        help="ResNet stem-width grid step (default: the narrowest chain width)",
    )
    p.add_argument("--max-multiplier", type=int, default=16, help="largest ResNet stage multiplier (default 16)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=1,
        help="classifier outputs of the written student (fresh head; fine-tuning resets it)",
    )
    p.add_argument(
        "--from-mlflow",
        action="store_true",
        help="prefer the best-mAP fine-tuned student in MLflow (tag method=oskt, metric mAP) that fits",
    )
    p.add_argument("--mlflow-uri", default=None, help="tracking URI for --from-mlflow (default: MLflow's)")
    p.add_argument("--mlflow-experiment", default=None, help="experiment for --from-mlflow (default: all)")
    p.set_defaults(func=_pick)
