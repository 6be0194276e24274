"""Fine-tuned students recorded in MLflow as pick candidates (``oskt pick --from-mlflow``).

A run qualifies when it has the tag ``method=oskt`` (by default), a metric ``mAP`` and a student checkpoint among
its artifacts (any ``*.pt`` that ``oskt.models.load_model(kind="student")`` accepts; the pipeline logs them when
``tracking.log_checkpoints`` is on). Runs are tried best ``mAP`` first; each checkpoint is downloaded only when its
run is tried. ``mlflow`` is imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from oskt.errors import OsktError

__all__ = ["TrainedRun", "iter_trained_students", "list_trained_runs"]


@dataclass(frozen=True)
class TrainedRun:
    """A qualifying MLflow run: ``run_id``, its ``mAP`` and the tags ``student`` / ``scenario`` (may be empty)."""

    run_id: str
    mAP: float
    student: str
    scenario: str


def _client(uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise OsktError(f"--from-mlflow needs mlflow (pip install oskt[pipeline]): {e}") from None
    return MlflowClient(tracking_uri=uri) if uri else MlflowClient()


def list_trained_runs(
    uri: str | None = None, experiment: str | None = None, method: str = "oskt", metric: str = "mAP"
) -> list[TrainedRun]:
    """Finished runs tagged ``method`` that carry ``metric``, best first.

    Args:
        uri: tracking URI (``None`` = MLflow's default / ``MLFLOW_TRACKING_URI``).
        experiment: experiment name (``None`` = every experiment).
        method: the ``method`` tag to require.
        metric: the accuracy metric to rank by.
    """
    client = _client(uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise OsktError(f"MLflow experiment {experiment!r} does not exist at {uri or 'the default URI'}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    runs = client.search_runs(ids, filter_string=f"tags.method = '{method}'", max_results=5000)
    out = [
        TrainedRun(
            r.info.run_id,
            float(r.data.metrics[metric]),
            r.data.tags.get("student", ""),
            r.data.tags.get("scenario", ""),
        )
        for r in runs
        if metric in r.data.metrics and r.info.status == "FINISHED"
    ]
    return sorted(out, key=lambda r: -r.mAP)


def _checkpoints(client: Any, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            found += _checkpoints(client, run_id, f.path)
        elif f.path.endswith(".pt"):
            found.append(f.path)
    return found


def iter_trained_students(
    runs: list[TrainedRun], uri: str | None, download_dir: str
) -> Iterator[tuple[TrainedRun, Any, str]]:
    """Yield ``(run, model, artifact_path)`` for each run's student checkpoint, in the order of ``runs``.

    Checkpoints under a ``finetune`` folder are preferred over others (e.g. the pre-fine-tuning ``init``); runs
    without a loadable student checkpoint are skipped.
    """
    from oskt.errors import CheckpointError
    from oskt.models.io import load_model

    client = _client(uri)
    for run in runs:
        paths = sorted(_checkpoints(client, run.run_id), key=lambda p: ("finetune" not in p, "init" in p, p))
        for art in paths:
            local = client.download_artifacts(run.run_id, art, os.path.join(download_dir, run.run_id))
            try:
                model, _ = load_model(local, kind="student")
            except CheckpointError:
                continue
            yield run, model, art
            break
