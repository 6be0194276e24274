"""``oskt eval``: evaluate a checkpoint on a data set (torchreid ``test.evaluate_only``, fast-reid ``--eval-only``).

Prints the metrics table, writes ``metrics.json``, ``per_query.csv`` and (``--visrank K``) ranked-result pictures
into the output folder, and logs them to MLflow when tracking is on. The protocol flags are shortcuts for the
``eval.*`` config keys (``--rerank`` = ``--set eval.rerank=true``), so the same settings work in every pipeline
phase through the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from oskt.cli.common import add_config_args, config_from_args


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides or [])
    for flag, key in (("rerank", "rerank"), ("flip", "flip"), ("aqe", "aqe"), ("cuhk03_metric", "cuhk03_metric")):
        if getattr(args, flag):
            out.append(f"eval.{key}=true")
    if args.metric:
        out.append(f"eval.metric={args.metric}")
    if args.no_track:
        out.append("tracking.enabled=false")
    return out


def _dataset(spec: str, data):  # noqa: ANN001, ANN202 - DataConfig -> ReIDDataset (imported lazily)
    from oskt import io
    from oskt.data import load_dataset, load_layout
    from oskt.errors import DataError

    if spec in data.datasets:
        return load_dataset(spec, data)
    if io.exists(spec):
        return load_layout(spec, "auto")
    raise DataError(
        f"--data {spec!r} is neither a data set name from data.datasets {sorted(data.datasets)} nor an existing "
        "folder / CSV file"
    )


def _eval(args: argparse.Namespace) -> int:
    from oskt import io
    from oskt.eval import describe_protocol, evaluate_dataset, format_table, log_evaluation, write_evaluation
    from oskt.models import load_model
    from oskt.runtime import select_device

    args.overrides = _overrides(args)
    cfg = config_from_args(args)
    device = select_device(cfg.compute.device)
    model, _ = load_model(args.checkpoint)
    spec = model.spec
    ds = _dataset(args.data, cfg.data)
    h, w = args.input_size or spec.img_size
    data = dataclasses.replace(cfg.data, height=h, width=w)  # the size the model was built for, unless told
    stem = os.path.splitext(args.checkpoint.rstrip("/").rsplit("/", 1)[-1])[0]
    out = args.output or io.join(cfg.compute.out_dir, "eval", f"{stem}-{ds.name}")
    result = evaluate_dataset(model, ds, data, cfg.eval, spec.family, device, topk=max(args.visrank, 1))
    info = {"checkpoint": args.checkpoint, "dataset": ds.label, "model": spec.name, "input_size": [h, w]}
    files = write_evaluation(result, out, info=info, visrank=args.visrank, visrank_max=args.visrank_max)
    print(
        f"{args.checkpoint} ({spec.arch} {spec.name}, {h}x{w}) on {ds.label}: {len(result.query)} queries, "
        f"{len(result.gallery)} gallery images; {describe_protocol(cfg.eval)}; {result.seconds:.1f}s on {device}"
    )
    print(format_table(result))
    written = [files.metrics, files.per_query]
    if files.visrank:
        written.append(f"{io.join(out, 'visrank')}/ ({len(files.visrank)} pictures)")
    if files.worst:
        written.append(files.worst)
    print("wrote " + ", ".join(written))
    if cfg.tracking.enabled:
        from oskt.pipeline.tracking import start_run, target_from_config

        target = target_from_config(cfg)
        tags = {"oskt.kind": "eval", "oskt.dataset": ds.label, "oskt.model": spec.name}
        with start_run(target, f"eval:{stem}:{ds.label}", tags) as tracker:
            log_evaluation(tracker, result, files, {"checkpoint": args.checkpoint, "dataset": ds.label, **info})
        print(f"logged to MLflow run {tracker.run_id} ({target.uri}, experiment {target.experiment!r})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on a data set (metrics, per-query CSV, ranked-result pictures)",
        description="Evaluate a model checkpoint on a data set's query / gallery split under the standard ReID "
        "rule; the protocol options are the eval.* config keys.",
    )
    p.add_argument("--checkpoint", required=True, metavar="S.pt", help="model checkpoint (teacher or student)")
    p.add_argument(
        "--data", required=True, metavar="NAME|PATH", help="a name from data.datasets, or a data set folder / CSV"
    )
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (eval.rerank_k1/k2/lambda)")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    p.add_argument("--aqe", action="store_true", help="average query expansion (eval.aqe_k, eval.aqe_alpha)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default=None, help="distance (default: eval.metric)")
    p.add_argument("--cuhk03-metric", action="store_true", help="CUHK03 single-gallery-shot CMC (old protocol)")
    p.add_argument(
        "--visrank", type=_count, default=0, metavar="K", help="write ranked-result pictures of the top K (0 = none)"
    )
    p.add_argument(
        "--visrank-max", type=_count, default=None, metavar="N", help="pictures for the first N queries only"
    )
    p.add_argument(
        "--input-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="default: the checkpoint's"
    )
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow (= --set tracking.enabled=false)")
    p.add_argument("-o", "--output", default=None, metavar="DIR", help="default: <compute.out_dir>/eval/<ckpt>-<data>")
    add_config_args(p)
    p.set_defaults(func=_eval)
