"""``oskt report``: the comparison tables and plots, from MLflow alone."""

from __future__ import annotations

import argparse

from oskt.cli.common import add_config_args, config_from_args


def _report(args: argparse.Namespace) -> int:
    from oskt.pipeline.preflight import preflight

    cfg = config_from_args(args)
    preflight(cfg, [args.out_dir])  # MLflow and S3 answer, or one line within seconds (not a 261 s retry loop)
    from oskt.pipeline.records import Paths
    from oskt.pipeline.reporting import report as build_report
    from oskt.pipeline.run import common_tags
    from oskt.pipeline.tracking import target_from_config

    paths = Paths(args.out_dir or cfg.compute.out_dir)
    rec = build_report(cfg, paths, target_from_config(cfg, common_tags(cfg)))
    print(f"report: {rec.markdown}\ncsv: {rec.csv}\nplots: {', '.join(rec.plots)}\ncells: {rec.num_runs}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="build the comparison report from MLflow",
        description="Methods × students per scenario (mAP/R1 in %, mean ± std over seeds) as "
        "Markdown and CSV, plus accuracy-vs-parameters/MACs plots; logged to MLflow.",
    )
    add_config_args(p)
    p.add_argument(
        "--out-dir", default=None, help="output root (default compute.out_dir); the report goes to <out>/report"
    )
    p.set_defaults(func=_report)
