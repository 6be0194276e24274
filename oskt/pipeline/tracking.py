"""MLflow behind the library's :class:`oskt.tracking.Tracker` protocol.

``mlflow`` is imported inside functions only, so ``oskt`` imports without it. Every call goes through an
``MlflowClient`` bound to an explicit run id (no global "active run"), which is what lets a Ray worker attach a
child run to the driver's parent run from nothing but two strings: the tracking URI and the parent run id.
Metrics are buffered and sent with ``log_batch`` (one request per flush, which matters over HTTP).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from oskt import io
from oskt.config import Config, TrackingConfig
from oskt.errors import OsktError
from oskt.pipeline.records import TrackingTarget

_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100  # MLflow's per-request log_batch limits
_MAX_PARAM_LEN = 6000


class TrackingError(OsktError):
    """The tracking store cannot be reached or refuses a request."""


def resolve_uri(tracking: TrackingConfig) -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` wins over ``tracking.uri``; a relative SQLite path is made
    absolute so that workers with another working directory write to the same database. '' when disabled."""
    if not tracking.enabled:
        return ""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def default_artifact_location(uri: str) -> str:
    """Artifacts of a SQLite store go next to the database (``<dir>/mlartifacts``), never into the working
    directory of whichever process happens to create the experiment; servers choose their own."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return os.path.join(os.path.dirname(uri[len(prefix) :]), "mlartifacts")
    return ""


def target_from_config(cfg: Config, tags: dict[str, str] | None = None, parent_run_id: str = "") -> TrackingTarget:
    """The tracking target of the ``tracking`` section (runs are children of ``parent_run_id`` when given)."""
    uri = resolve_uri(cfg.tracking)
    return TrackingTarget(
        uri=uri,
        experiment=cfg.tracking.experiment,
        parent_run_id=parent_run_id,
        artifact_location=cfg.tracking.artifact_location or default_artifact_location(uri),
        log_checkpoints=cfg.tracking.log_checkpoints,
        tags=dict(tags or {}),
    )


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        os.makedirs(os.path.dirname(uri[len("sqlite:///") :]) or ".", exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(target: TrackingTarget) -> str:
    """The experiment id for ``target.experiment``, created (with its artifact location) when missing."""
    client = _client(target.uri)
    exp = client.get_experiment_by_name(target.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(target.experiment, artifact_location=target.artifact_location or None)
    except Exception:  # another worker created it first
        exp = client.get_experiment_by_name(target.experiment)
        if exp is None:
            raise
        return exp.experiment_id


class MlflowTracker:
    """An :class:`oskt.tracking.Tracker` writing to one MLflow run.

    Use :func:`start_run` to create one; call :meth:`close` (or use it as a context manager) to flush buffered
    metrics and mark the run finished.
    """

    def __init__(self, uri: str, run_id: str, flush_every: int = 200) -> None:
        self.uri = uri
        self.run_id = run_id
        self._client = _client(uri)
        self._buffer: list[Any] = []
        self._flush_every = flush_every

    # -------------------------------------------------------------------------------------------- Tracker
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self._client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS], synchronous=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            try:
                value = float(v)
            except (TypeError, ValueError):
                continue
            self._buffer.append(Metric(str(k), value, now, int(step or 0)))
        if len(self._buffer) >= self._flush_every:
            self.flush()

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if io.is_url(path):  # fetch remote files first: MLflow uploads from local paths
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, path.rstrip("/").rsplit("/", 1)[-1])
                with open(local, "wb") as f:
                    f.write(io.read_bytes(path))
                self._client.log_artifact(self.run_id, local, artifact_path)
            return
        self._client.log_artifact(self.run_id, path, artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_TAGS):
            self._client.log_batch(self.run_id, tags=items[i : i + _MAX_TAGS], synchronous=True)

    # -------------------------------------------------------------------------------------------- extras
    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def flush(self) -> None:
        """Send buffered metrics in ``log_batch`` requests."""
        while self._buffer:
            chunk, self._buffer = self._buffer[:_MAX_METRICS], self._buffer[_MAX_METRICS:]
            self._client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        self.flush()
        self._client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def start_run(
    target: TrackingTarget, name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None
) -> MlflowTracker:
    """Create a run (a child of ``parent_run_id`` or ``target.parent_run_id`` when set) and return its tracker."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    exp_id = ensure_experiment(target)
    all_tags = {**target.tags, **(tags or {}), MLFLOW_RUN_NAME: name}
    parent = target.parent_run_id if parent_run_id is None else parent_run_id
    if parent:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent
    run = _client(target.uri).create_run(exp_id, tags=all_tags, run_name=name)
    return MlflowTracker(target.uri, run.info.run_id)


def search_runs(target: TrackingTarget, filter_string: str) -> list[Any]:
    """All runs of the experiment matching ``filter_string`` (newest first), across result pages."""
    client = _client(target.uri)
    exp = client.get_experiment_by_name(target.experiment)
    if exp is None:
        return []
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def metric_history(target: TrackingTarget, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of metric ``key`` of run ``run_id`` (oldest first)."""
    return [(int(m.step), float(m.value)) for m in _client(target.uri).get_metric_history(run_id, key)]


def set_parent_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Add tags to an existing run (e.g. the parent, from a stage process)."""
    MlflowTracker(uri, run_id).set_tags(tags)


def kill_if_running(uri: str, run_id: str) -> bool:
    """Mark ``run_id`` KILLED when it is still RUNNING (its process died); True when it was."""
    if not run_id:
        return False
    client = _client(uri)
    try:
        status = client.get_run(run_id).info.status
    except Exception:  # deleted, or from another store
        return False
    if status != "RUNNING":
        return False
    client.set_terminated(run_id, status="KILLED")
    return True
