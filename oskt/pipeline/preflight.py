"""Checks that run before any work: the tracking store answers, S3 locations are reachable with credentials.

Every command that needs MLflow or S3 runs them first (``oskt run`` / ``stage`` / ``grid``, ``oskt report``,
``oskt pick --from-mlflow``, ``oskt train *`` with ``s3://`` paths, ``oskt export`` of ``s3://`` files), so an
unreachable service is one line and exit code 2 within seconds instead of a client's retry loop (MLflow's HTTP
client retried for 261 s) or a 72-line botocore traceback. Each probe is bounded as a whole, name resolution
included (``socket`` timeouts do not cover DNS): at most ``timeout`` seconds (default :data:`TIMEOUT_S`).

Each failure is one :class:`PreflightError` (an :class:`~oskt.errors.OsktError`, so the CLI prints one line and exits
2) that says what is wrong and how to fix it. Credentials and endpoints come from the environment only
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``MLFLOW_S3_ENDPOINT_URL``), never from ``params.yaml``.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import TypeVar

from oskt.config import Config
from oskt.errors import OsktError
from oskt.pipeline.tracking import resolve_uri

TIMEOUT_S = 5.0
"""Upper bound of one probe (DNS + connect + answer)."""

T = TypeVar("T")


class PreflightError(OsktError):
    """The command cannot start: a service is unreachable or credentials are missing."""


def _bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` in a daemon thread, waited for at most ``timeout`` s (a hung DNS lookup is abandoned, not joined).

    Raises:
        PreflightError: ``fn`` did not return in time (``what`` says what was probed).
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="oskt-preflight", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise PreflightError(f"{what} did not answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ S3


def s3_locations(cfg: Config) -> list[str]:
    """Every ``s3://`` location a pipeline run reads or writes."""
    locs = [cfg.data.root, cfg.compute.out_dir, cfg.tracking.artifact_location or ""]
    locs += [e.path for e in cfg.data.datasets.values()]
    return [loc for loc in dict.fromkeys(locs) if loc.startswith("s3://")]


def data_locations(cfg: Config) -> list[str]:
    """The ``s3://`` locations the data sets are read from (``data.root`` and absolute dataset paths)."""
    locs = [cfg.data.root, *(e.path for e in cfg.data.datasets.values())]
    return [loc for loc in dict.fromkeys(locs) if loc.startswith("s3://")]


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (None = AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _has_credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    import botocore.session

    # the full chain (profiles, container and instance metadata); the metadata probes are what can take seconds
    return botocore.session.get_session().get_credentials() is not None


def check_s3(url: str, timeout: float = TIMEOUT_S) -> None:
    """Credentials exist and the bucket of ``url`` answers, within ``timeout`` seconds for each probe."""
    try:
        import botocore.session  # noqa: F401
        import s3fs
    except ImportError:
        raise PreflightError(f"{url} is on S3 but s3fs is not installed: install oskt[pipeline]") from None
    if not _bounded(_has_credentials, timeout, f"looking up S3 credentials for {url}"):
        raise PreflightError(
            f"S3 credentials are missing for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment; endpoint from AWS_ENDPOINT_URL_S3 for non-AWS S3"
        )
    bucket = url[len("s3://") :].split("/", 1)[0]
    endpoint = s3_endpoint()
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        skip_instance_cache=True,
        config_kwargs={"connect_timeout": timeout, "read_timeout": timeout, "retries": {"max_attempts": 1}},
    )
    where = f"S3 location {url} (endpoint {endpoint or 'AWS'})"
    try:
        _bounded(lambda: fs.ls(bucket), timeout, where)
    except PreflightError:
        raise
    except FileNotFoundError:
        raise PreflightError(f"S3 bucket {bucket!r} of {url} does not exist (endpoint {endpoint or 'AWS'})") from None
    except Exception as e:  # noqa: BLE001 - botocore / aiohttp raise many types; one line says which
        raise PreflightError(f"{where} is not reachable: {type(e).__name__}: {_first_line(e)}") from None


def check_locations(locations: Iterable[str | None], timeout: float = TIMEOUT_S) -> None:
    """:func:`check_s3` for every ``s3://`` entry of ``locations`` (local paths and None are skipped)."""
    for url in dict.fromkeys(str(loc) for loc in locations if loc):
        if url.startswith("s3://"):
            check_s3(url, timeout)


# ------------------------------------------------------------------------------------------------ tracking


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def check_tracking(uri: str, timeout: float = TIMEOUT_S) -> None:
    """An HTTP tracking server answers ``/health`` within ``timeout`` s in all (DNS, connect, answer); a SQLite
    store's folder is writable; other schemes (a local ``mlruns`` folder, ``databricks``) are not probed."""
    if not uri:
        return
    if uri.startswith(("http://", "https://")):
        hint = "start it (see infra/README.md) or point MLFLOW_TRACKING_URI / tracking.uri at a reachable one"

        def probe() -> int:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                return int(r.status)

        try:
            status = _bounded(probe, timeout, f"MLflow tracking server {uri}")
        except PreflightError as e:
            raise PreflightError(f"{e}: {hint}") from None
        except urllib.error.HTTPError as e:
            raise PreflightError(f"MLflow tracking server {uri} answered /health with HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise PreflightError(f"MLflow tracking server {uri} is unreachable ({reason}): {hint}") from None
        if status != 200:
            raise PreflightError(f"MLflow tracking server {uri} answered /health with HTTP {status}")
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        existing = folder
        while not os.path.isdir(existing):  # the store's folder is created when missing: check where it would be
            existing = os.path.dirname(existing) or "."
        if not os.access(existing, os.W_OK):
            what = "is not writable" if existing == folder else f"cannot be created ({existing} is not writable)"
            raise PreflightError(f"MLflow SQLite store {uri}: folder {folder} {what}")


def mlflow_uri(explicit: str | None = None) -> str:
    """The tracking URI an MLflow client would use: ``explicit``, else ``MLFLOW_TRACKING_URI`` ('' = MLflow's
    local default, nothing to probe)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI", "")


# ------------------------------------------------------------------------------------------------ all of it


def preflight(cfg: Config, locations: Iterable[str | None] = (), timeout: float = TIMEOUT_S) -> None:
    """Every check of a pipeline command: the tracking store, every ``s3://`` location of ``cfg`` and the extra
    ``locations`` (e.g. an ``--out-dir``); raises :class:`PreflightError` on the first problem."""
    check_tracking(resolve_uri(cfg.tracking), timeout)
    check_locations([*s3_locations(cfg), *locations], timeout)
    if (
        cfg.tracking.enabled
        and (cfg.tracking.artifact_location or "").startswith("s3://")
        and not (os.environ.get("MLFLOW_S3_ENDPOINT_URL") or s3_endpoint() is None)
    ):
        raise PreflightError(
            "tracking.artifact_location is on S3 with a custom endpoint: set MLFLOW_S3_ENDPOINT_URL "
            f"(e.g. to {s3_endpoint()}) so MLflow uploads artifacts there"
        )
