"""``oskt config show|init``: print the resolved configuration or write a full params file."""

from __future__ import annotations

import argparse
import json
import sys

from oskt import io
from oskt.cli.common import add_config_args, config_from_args
from oskt.config import dump_config


def _show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.format == "json":
        print(json.dumps(cfg.to_dict(), indent=2))
    elif args.format == "flat":
        for k, v in cfg.flat().items():
            print(f"{k}={v}")
    else:
        sys.stdout.write(dump_config(cfg))
    return 0


def _init(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if io.exists(args.output) and not args.force:
        print(f"oskt: error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    io.write_text_atomic(args.output, dump_config(cfg))
    print(f"wrote {args.output} (profile {cfg.profile})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show or write the resolved configuration",
        description="Show the resolved configuration (defaults < profile < params file < --set).",
    )
    verbs = p.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    show = verbs.add_parser("show", help="print the resolved config", description="Print the resolved config.")
    add_config_args(show)
    show.add_argument("--format", choices=["yaml", "json", "flat"], default="yaml")
    show.set_defaults(func=_show)
    init = verbs.add_parser(
        "init",
        help="write a complete params file for a profile",
        description="Write the resolved config as a complete params file (e.g. params.yaml).",
    )
    add_config_args(init)
    init.add_argument("-o", "--output", default="params.yaml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_init)
