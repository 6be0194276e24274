"""Arguments shared by verbs that read the configuration."""

from __future__ import annotations

import argparse
import os

from oskt.config import PROFILES, Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params", default=None, help="params file (default: ./params.yaml when it exists and no --profile is given)"
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="profile under the params file (default: the params file's, else quick)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set train.lr=1e-3 --set students.seeds=[0,1,2]",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    params = args.params
    if params is None and args.profile is None and os.path.exists("params.yaml"):
        params = "params.yaml"
    cfg = load_config(params=params, profile=args.profile, overrides=args.overrides)
    if cfg.compute.num_threads > 0:  # torch's intra-op threads for this command (0 = torch's default)
        from oskt.runtime import set_threads

        set_threads(cfg.compute.num_threads)
    return cfg
