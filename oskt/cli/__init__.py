"""The ``oskt`` console command. Each verb group lives in its own module with a ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

from oskt import __version__
from oskt.cli.common import run_guarded, setup_logging

# verb modules, in the order they appear in --help; each defines register(subparsers). Packages that build on the
# library add verbs through the ``oskt.cli`` entry point group (``flows`` adds run / stage / grid): the library
# never imports them.
PLUGIN_GROUP = "oskt.cli"
VERB_MODULES = [
    "oskt.cli.config_cmd",
    "oskt.cli.data_cmd",
    "oskt.cli.plan_cmd",
    "oskt.cli.report_cmd",
    "oskt.cli.train_cmd",
    "oskt.cli.eval_cmd",
    "oskt.cli.init_cmd",
    "oskt.cli.pick_cmd",
    "oskt.cli.export_cmd",
    "oskt.cli.expand_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oskt",
        description="OSKT: one-shot knowledge transfer for scalable person re-identification.",
    )
    parser.add_argument("--version", action="version", version=f"oskt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_guarded(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
