"""The student grid: which cells exist, and running one cell idempotently.

``run_cell`` is the unit every engine (serial, plain Ray, Prefect on Ray) executes. A cell whose folder already
holds its checkpoint and a ``metrics.json`` with the same fingerprint is skipped, so a rerun after a crash only does
what is missing. ``metrics.json`` is written last (atomically), which makes it the completion marker.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from oskt import io
from oskt.config import Config, write_resolved
from oskt.pipeline.backend import load_backend
from oskt.pipeline.records import CELL_PARAMS, CellResult, GridCell, Paths, TrackingTarget, fingerprint

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CELL_FILE = "cell.json"


def grid_cells(cfg: Config) -> list[GridCell]:
    """Every cell of the configured grid: scenarios × students × methods × seeds × few-shot fractions."""
    s = cfg.students
    return [
        GridCell(method=m, student=n, scenario=sc, seed=seed, few_shot=fs)
        for sc, n, m, seed, fs in itertools.product(s.scenarios, s.names, s.methods, s.seeds, s.few_shot)
    ]


def cell_fingerprint(cfg: Config, cell: GridCell) -> str:
    """Hash of everything the cell's result depends on (not the grid's lists: adding a seed keeps the others)."""
    return fingerprint(cfg.flat(), CELL_PARAMS, cell.to_dict())


def finished(out_dir: str, fp: str) -> dict[str, Any] | None:
    """The stored ``metrics.json`` record when the cell in ``out_dir`` is complete for fingerprint ``fp``."""
    path = io.join(out_dir, METRICS_FILE)
    if not io.exists(path):
        return None
    try:
        rec = io.read_json(path)
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fp or not io.exists(rec.get("checkpoint", "")):
        return None
    return rec


def _cell_tags(cell: GridCell, fp: str) -> dict[str, str]:
    return {"oskt.kind": "cell", "oskt.cell": cell.name, "oskt.fingerprint": fp, **cell.tags()}


def _record_in_mlflow(target: TrackingTarget, cell: GridCell, fp: str) -> str:
    """The run id of a finished MLflow run for this cell and fingerprint ('' when none)."""
    from oskt.pipeline.tracking import search_runs

    runs = search_runs(
        target,
        f"tags.`oskt.cell` = '{cell.name}' and tags.`oskt.fingerprint` = '{fp}' and attributes.status = 'FINISHED'",
    )
    return runs[0].info.run_id if runs else ""


def run_cell(
    cfg: Config,
    cell: GridCell,
    paths: Paths,
    *,
    target: TrackingTarget | None = None,
    threads: int = 0,
    backend: str | None = None,
) -> CellResult:
    """Run one grid cell (or skip it when finished) and log it as an MLflow child run.

    Args:
        cfg: the resolved config.
        cell: which student / method / scenario / seed / few-shot fraction.
        paths: output layout.
        target: MLflow target (None or disabled = no tracking).
        threads: torch threads for this cell (0 = leave as is); engines pass the CPUs they reserved.
        backend: backend module name (None = ``$OSKT_PIPELINE_BACKEND`` or the real one).

    Returns:
        The cell's result; ``skipped=True`` when an earlier run had finished it.
    """
    out_dir = paths.cell_dir(cell)
    fp = cell_fingerprint(cfg, cell)
    tracking = target is not None and target.enabled
    done = finished(out_dir, fp)
    if done is not None:
        run_id = done.get("run_id", "")
        if tracking and not _record_in_mlflow(target, cell, fp):
            run_id = _log_finished(cfg, cell, fp, done, target)  # the MLflow store was reset: record it again
        log.info("cell %s is finished, skipping", cell.name)
        return CellResult(
            cell,
            out_dir,
            done["checkpoint"],
            done["metrics"],
            done.get("seconds", 0.0),
            fp,
            skipped=True,
            run_id=run_id,
        )

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    be = load_backend(backend)
    io.makedirs(out_dir)
    tracker = None
    if tracking:
        from oskt.pipeline.tracking import kill_if_running, start_run

        kill_if_running(target.uri, _previous_attempt(out_dir))  # an earlier attempt died mid-cell
        tracker = start_run(target, f"cell:{cell.name}", _cell_tags(cell, fp))
        tracker.log_params({**cfg.flat(), **{f"cell.{k}": v for k, v in cell.to_dict().items()}})
    io.write_json_atomic(
        io.join(out_dir, CELL_FILE),
        {"cell": cell.to_dict(), "fingerprint": fp, "pid": os.getpid(), "run_id": tracker.run_id if tracker else ""},
    )
    t0 = time.perf_counter()
    try:
        from oskt.tracking import NullTracker

        checkpoint, metrics = be.train_cell(cfg, cell, paths, out_dir, tracker or NullTracker())
        metrics = {**metrics, **be.complexity(cfg, checkpoint)}
        seconds = time.perf_counter() - t0
        run_id = tracker.run_id if tracker else ""
        if tracker:
            tracker.log_metrics({**metrics, "seconds": seconds})
            if target.log_checkpoints:
                tracker.log_artifact(checkpoint, "checkpoint")
        record = {
            "cell": cell.to_dict(),
            "fingerprint": fp,
            "checkpoint": checkpoint,
            "metrics": metrics,
            "seconds": seconds,
            "run_id": run_id,
        }
        io.write_json_atomic(io.join(out_dir, METRICS_FILE), record)  # last: marks the cell finished
        if tracker:
            tracker.log_artifact(io.join(out_dir, METRICS_FILE))
            tracker.log_artifact(write_resolved(cfg, out_dir))
            tracker.close()
    except BaseException:
        if tracker:
            tracker.close("FAILED")
        raise
    return CellResult(cell, out_dir, checkpoint, metrics, seconds, fp, run_id=run_id)


def _previous_attempt(out_dir: str) -> str:
    """The MLflow run id of an unfinished earlier attempt at this cell ('' when none)."""
    path = io.join(out_dir, CELL_FILE)
    try:
        return str(io.read_json(path).get("run_id", "")) if io.exists(path) else ""
    except (OSError, ValueError):
        return ""


def _log_finished(cfg: Config, cell: GridCell, fp: str, done: dict[str, Any], target: TrackingTarget) -> str:
    """Log an already finished cell (from its metrics.json) as a run, so the report finds it in MLflow."""
    from oskt.pipeline.tracking import start_run

    with start_run(target, f"cell:{cell.name}", {**_cell_tags(cell, fp), "oskt.restored": "true"}) as tracker:
        tracker.log_params({**cfg.flat(), **{f"cell.{k}": v for k, v in cell.to_dict().items()}})
        tracker.log_metrics({**done["metrics"], "seconds": done.get("seconds", 0.0)})
        return tracker.run_id


def summarise(results: list[CellResult], path: str) -> None:
    """Write the grid summary (one entry per cell) next to the cell folders."""
    io.write_json_atomic(path, {"cells": [r.to_dict() for r in sorted(results, key=lambda r: r.cell.name)]})
