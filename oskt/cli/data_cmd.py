"""``oskt data make|info``: generate the embedded synthetic data sets, or summarise any supported layout."""

from __future__ import annotations

import argparse
import time

from oskt import io
from oskt.cli.common import add_config_args, config_from_args
from oskt.data.layouts import LAYOUT_NAMES, dataset_path, load_layout
from oskt.data.synthetic import is_complete, make_synthetic
from oskt.errors import DataError


def _make(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    synthetic = [n for n, e in cfg.data.datasets.items() if e.layout == "synthetic"]
    names = args.dataset or synthetic
    for name in names:
        if name not in cfg.data.datasets:
            raise DataError(f"unknown data set {name!r}; data.datasets has {sorted(cfg.data.datasets)}")
        if cfg.data.datasets[name].layout != "synthetic":
            raise DataError(
                f"data set {name!r} has layout {cfg.data.datasets[name].layout!r}: only synthetic data sets can be made"
            )
    for name in names:
        entry = cfg.data.datasets[name]
        path = dataset_path(name, cfg.data)
        if not args.force and is_complete(path, cfg.data.synthetic, entry.domain):
            print(f"{name}: up to date at {path}")
            continue
        t0 = time.perf_counter()
        make_synthetic(path, cfg.data.synthetic, entry.domain, force=True)
        counts = io.read_json(io.join(path, "dataset.json"))["counts"]
        print(
            f"{name}: generated domain {entry.domain} at {path} in {time.perf_counter() - t0:.1f}s "
            f"(train {counts.get('bounding_box_train', 0)}, query {counts.get('query', 0)}, "
            f"gallery {counts.get('bounding_box_test', 0)} images)"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    ds = load_layout(args.path, args.layout, cuhk03_split=args.cuhk03_split, merge_val=args.merge_val)
    print(ds.describe())
    print(f"  cameras overall: {ds.num_cams}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="make the synthetic data sets or summarise a data set",
        description="Generate the embedded synthetic data sets, or summarise a data set folder.",
    )
    verbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    make = verbs.add_parser(
        "make",
        help="generate the synthetic data sets of the config under data.root",
        description="Generate the synthetic data sets of the config (deterministic from "
        "data.synthetic.seed); complete ones with the same generator config are skipped.",
    )
    add_config_args(make)
    make.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="only this data set (repeatable; default: every synthetic one in data.datasets)",
    )
    make.add_argument("--force", action="store_true", help="regenerate even when up to date")
    make.set_defaults(func=_make)
    info = verbs.add_parser(
        "info",
        help="print ids / images / cameras per split of a data set folder",
        description="Parse a data set folder (or CSV) and print ids / images / cameras per split.",
    )
    info.add_argument("path", help="data set folder, CSV file or s3:// URL")
    info.add_argument("--layout", choices=["auto", *LAYOUT_NAMES], default="auto")
    info.add_argument("--cuhk03-split", choices=["detected", "labeled"], default="detected")
    info.add_argument("--merge-val", action="store_true", help="MSMT17: add list_val.txt to train")
    info.set_defaults(func=_info)
