"""``oskt data make|info``: generate the embedded synthetic data sets or a stand-in in a real layout, or summarise
any supported layout.

Generating never deletes or overwrites what oskt did not write: every target folder is checked
(:func:`oskt.data.ownership.check_owned`) before anything is rendered, so one foreign file anywhere stops the whole
command with one error line and nothing written.
"""

from __future__ import annotations

import argparse
import time

from oskt import io
from oskt.cli.common import add_config_args, config_from_args
from oskt.data.layouts import LAYOUT_NAMES, dataset_path, load_layout
from oskt.data.ownership import check_owned
from oskt.data.standin import KINDS, make_standin, standin_params
from oskt.data.synthetic import is_complete, make_synthetic
from oskt.errors import ConfigError, DataError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x128, got {text!r}") from None
    return h, w


def _make_standin(args: argparse.Namespace) -> int:
    kind = args.like
    if args.dataset:
        raise ConfigError("--like makes one stand-in at --out; it cannot be combined with --dataset")
    out = args.out
    if out is None:
        cfg = config_from_args(args)
        entry = cfg.data.datasets.get(kind)
        if entry is None or entry.layout != kind:
            raise ConfigError(f"data.datasets has no {kind!r} entry of layout {kind!r} to write to: give --out DIR")
        out = dataset_path(kind, cfg.data)
    standin_params(  # bad arguments are an error before the folder is looked at
        kind, ids=args.ids, test_ids=args.test_ids, images_per_cam=args.images_per_cam, seed=args.seed, size=args.size
    )
    t0 = time.perf_counter()
    c = make_standin(
        kind,
        out,
        ids=args.ids,
        test_ids=args.test_ids,
        images_per_cam=args.images_per_cam,
        seed=args.seed,
        size=args.size,
        force=args.force,
    )
    if not c["generated"]:
        print(f"{kind}: stand-in up to date at {c['path']}")
        return 0

    def splits(d: dict) -> str:
        return ", ".join(f"{s} {d[s]['ids']} ids / {d[s]['images']} images" for s in ("train", "query", "gallery"))

    parts = [f"{v}: {splits(c[v])}" for v in ("detected", "labeled")] if kind == "cuhk03" else [splits(c)]
    print(f"{kind}: wrote a stand-in at {c['path']} in {time.perf_counter() - t0:.1f}s ({'; '.join(parts)})")
    return 0


def _make(args: argparse.Namespace) -> int:
    if args.like:
        return _make_standin(args)
    if args.out is not None:
        raise ConfigError("--out goes with --like; synthetic data sets are written to data.root/<path>")
    cfg = config_from_args(args)
    synthetic = [n for n, e in cfg.data.datasets.items() if e.layout == "synthetic"]
    names = args.dataset or synthetic
    for name in names:
        if name not in cfg.data.datasets:
            raise DataError(f"unknown data set {name!r}; data.datasets has {sorted(cfg.data.datasets)}")
        if cfg.data.datasets[name].layout != "synthetic":
            raise DataError(
                f"data set {name!r} has layout {cfg.data.datasets[name].layout!r}: only synthetic data sets can be "
                "made (stand-ins of the real layouts: --like market1501|msmt17|cuhk03)"
            )
    todo = []
    for name in names:  # every folder is checked before anything is written
        entry = cfg.data.datasets[name]
        path = dataset_path(name, cfg.data)
        if not args.force and is_complete(path, cfg.data.synthetic, entry.domain):
            print(f"{name}: up to date at {path}")
            continue
        check_owned(path)
        todo.append((name, entry, path))
    for name, entry, path in todo:
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
    ds = load_layout(
        args.path,
        args.layout,
        cuhk03_split=args.cuhk03_split,
        merge_val=args.merge_val,
        allow_outside_root=args.allow_outside_root,
    )
    print(ds.describe())
    print(f"  cameras overall: {ds.num_cams}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="make the synthetic data sets or a stand-in, or summarise a data set",
        description="Generate the embedded synthetic data sets or a stand-in in a real layout, or summarise a data "
        "set folder.",
    )
    verbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    make = verbs.add_parser(
        "make",
        help="generate the synthetic data sets of the config, or a stand-in of a real data set",
        description="Generate the synthetic data sets of the config under data.root (deterministic from "
        "data.synthetic.seed; complete ones with the same generator config are skipped), or with --like a small "
        "synthetic stand-in written in the exact layout of Market-1501, MSMT17_V1 or CUHK03-NP. A folder holding "
        "anything oskt did not write is an error; nothing is written then.",
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
    standin = make.add_argument_group("stand-ins of the real data sets")
    standin.add_argument("--like", choices=KINDS, default=None, help="write a stand-in in this real layout")
    standin.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="the stand-in's folder (default: where data.datasets.<KIND> points, e.g. data/MSMT17_V1)",
    )
    standin.add_argument("--ids", type=int, default=24, help="training identities (default 24)")
    standin.add_argument("--test-ids", type=int, default=None, help="test identities (default: --ids)")
    standin.add_argument(
        "--images-per-cam", type=int, default=3, help="mean images per id and camera (default 3; test ids one more)"
    )
    standin.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    standin.add_argument(
        "--size", type=_size, default=None, metavar="HxW", help="stored size (default 256x128; CUHK03-NP: variable)"
    )
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
    info.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let CSV rows / MSMT17 list lines name files outside the data set's folder",
    )
    info.set_defaults(func=_info)
