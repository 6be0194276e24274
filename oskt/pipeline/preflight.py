"""Checks that run before any training: the tracking store answers, S3 locations are reachable with credentials.

Each failure is one :class:`PreflightError` (an :class:`~oskt.errors.OsktError`, so the CLI prints one line and exits
2) that says what is wrong and how to fix it. Credentials and endpoints come from the environment only
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``MLFLOW_S3_ENDPOINT_URL``), never from ``params.yaml``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from oskt.config import Config
from oskt.errors import OsktError
from oskt.pipeline.tracking import resolve_uri

TIMEOUT_S = 5.0


class PreflightError(OsktError):
    """The pipeline cannot start: a service is unreachable or credentials are missing."""


def s3_locations(cfg: Config) -> list[str]:
    """Every ``s3://`` location the run reads or writes."""
    locs = [cfg.data.root, cfg.compute.out_dir, cfg.tracking.artifact_location or ""]
    locs += [e.path for e in cfg.data.datasets.values()]
    return [loc for loc in dict.fromkeys(locs) if loc.startswith("s3://")]


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (None = AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def check_s3(url: str) -> None:
    """Credentials exist and the bucket of ``url`` answers."""
    try:
        import botocore.session
        import s3fs
    except ImportError:
        raise PreflightError(f"{url} is on S3 but s3fs is not installed: install oskt[pipeline]") from None
    if botocore.session.get_session().get_credentials() is None:
        raise PreflightError(
            f"S3 credentials are missing for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment; endpoint from AWS_ENDPOINT_URL_S3 for non-AWS S3"
        )
    bucket = url[len("s3://") :].split("/", 1)[0]
    endpoint = s3_endpoint()
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        skip_instance_cache=True,
        config_kwargs={"connect_timeout": TIMEOUT_S, "read_timeout": TIMEOUT_S, "retries": {"max_attempts": 1}},
    )
    try:
        fs.ls(bucket)
    except FileNotFoundError:
        raise PreflightError(f"S3 bucket {bucket!r} of {url} does not exist (endpoint {endpoint or 'AWS'})") from None
    except Exception as e:
        raise PreflightError(
            f"S3 location {url} is not reachable (endpoint {endpoint or 'AWS'}): {type(e).__name__}: {e}"
        ) from None


def check_tracking(uri: str) -> None:
    """An HTTP tracking server answers ``/health``; a SQLite store's folder is writable."""
    if not uri:
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S) as r:
                if r.status != 200:
                    raise PreflightError(f"MLflow tracking server {uri} answered /health with HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            raise PreflightError(
                f"MLflow tracking server {uri} is unreachable ({e}): start it (see infra/README.md) "
                "or point MLFLOW_TRACKING_URI / tracking.uri at a reachable one"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        existing = folder
        while not os.path.isdir(existing):  # the store's folder is created when missing: check where it would be
            existing = os.path.dirname(existing) or "."
        if not os.access(existing, os.W_OK):
            what = "is not writable" if existing == folder else f"cannot be created ({existing} is not writable)"
            raise PreflightError(f"MLflow SQLite store {uri}: folder {folder} {what}")


def preflight(cfg: Config) -> None:
    """Run every check; raises :class:`PreflightError` on the first problem."""
    check_tracking(resolve_uri(cfg.tracking))
    for url in s3_locations(cfg):
        check_s3(url)
    if (
        cfg.tracking.enabled
        and (cfg.tracking.artifact_location or "").startswith("s3://")
        and not (os.environ.get("MLFLOW_S3_ENDPOINT_URL") or s3_endpoint() is None)
    ):
        raise PreflightError(
            "tracking.artifact_location is on S3 with a custom endpoint: set MLFLOW_S3_ENDPOINT_URL "
            f"(e.g. to {s3_endpoint()}) so MLflow uploads artifacts there"
        )
