"""Arguments shared by verbs that read the configuration."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TextIO

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
    add_set_arg(p)


def add_set_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set train.lr=1e-3 --set students.seeds=[0,1,2]" + (f" ({note})" if note else ""),
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved config of a command, with this process set up for it: torch's thread count from the CPUs it may
    really use (``compute.num_threads``), and ``compute.deterministic``'s pinned kernels, both before any tensor
    work (``oskt.runtime.configure_process``)."""
    params = args.params
    if params is None and args.profile is None and os.path.exists("params.yaml"):
        params = "params.yaml"
    cfg = load_config(params=params, profile=args.profile, overrides=args.overrides)
    from oskt.runtime import configure_process  # late: torch loads only for commands that read a config

    configure_process(cfg.compute)
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
    except BrokenPipeError:  # `oskt plan | head`: the reader has gone; no traceback, and none at exit either
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "botocore", "boto3", "s3transfer", "aiobotocore", "s3fs", "filelock")
"""Libraries whose request logs are noise at INFO; shown again with ``-v`` / ``--verbose``."""


def console_defaults(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Quiet library request logs (unless ``verbose``), keep Prefect's per-task state lines off the console (they
    still reach the Prefect server), and drop colour codes when the output is not a terminal. Sets environment
    defaults, so the processes this one starts (DVC stages, Ray workers) get the same; a value the user set wins."""
    stream = stream or sys.stdout
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    if not _is_terminal(stream):
        os.environ.setdefault("NO_COLOR", "1")  # rich (Prefect's console), tqdm and others honour it
        os.environ.setdefault("PREFECT_LOGGING_COLORS", "false")
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _quiet_prefect(record: logging.LogRecord) -> bool:
    """Prefect's own INFO lines (``Task run ... Finished in state Completed()``) are the Prefect server's business:
    they reach it through Prefect's API handler; our console shows their warnings and errors only."""
    return not (record.name.startswith("prefect") and record.levelno < logging.WARNING)


def setup_logging(verbose: bool = False) -> None:
    """The commands' logging: INFO lines with a time stamp (DEBUG with ``verbose``), after ``console_defaults``."""
    console_defaults(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_prefect)
