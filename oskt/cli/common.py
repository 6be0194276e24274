"""Arguments shared by verbs that read the configuration."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable

from oskt.config import PROFILES, Config, load_config
from oskt.errors import OsktError


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


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_guarded(fn: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command: an ``OsktError`` becomes one ``oskt: error:`` line and exit code 2, Ctrl-C exit code 130, and
    SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so temporary Prefect servers, local Ray instances
    and open MLflow runs are closed instead of left behind; exit code 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(fn(args) or 0)
    except OsktError as e:
        print(f"oskt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oskt: interrupted", file=sys.stderr)
        return 130
