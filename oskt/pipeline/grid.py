"""Running one grid cell idempotently, and the grid as a map over cells with an engine given as an argument.

``run_cell`` is the unit every engine (serial here; Ray and Prefect-on-Ray in ``flows/``) executes. A cell whose
folder holds a ``result.json`` with the cell job's key is reused (``oskt.jobs.reuse``: the one rule), so a rerun
after a crash only does what is missing. ``result.json`` is written last (atomically): the completion marker.

``run_grid(cells, paths, engine=..., train=...)``: ``engine(fn, cells)`` maps a picklable one-argument function over
the cells and returns the results in order (:func:`serial` is the in-process engine); ``train`` is the function that
trains one cell (``oskt.pipeline.cell.train_cell``; tests pass a fast double as an argument).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from oskt import io
from oskt.jobs import JOB_FILE, CellJob, JobRecord, RunOptions, flatten, record_result, reuse, settings, start_job
from oskt.pipeline.cell import complexity, train_cell
from oskt.pipeline.records import CellResult, Paths, TrackingTarget
from oskt.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

TrainFn = Callable[[CellJob, Paths, str, Tracker, RunOptions], tuple[str, dict[str, float]]]
"""``train(job, paths, out_dir, tracker, run) -> (checkpoint, metrics)``: trains one cell."""
ComplexityFn = Callable[[CellJob, str], dict[str, float]]
Done = Callable[[CellResult], None] | None
Engine = Callable[[Callable[[CellJob], CellResult], Sequence[CellJob], Done], list[CellResult]]
"""``engine(fn, cells, on_done) -> [fn(c) for c in cells]``, however it distributes the calls; ``on_done(result)``
is called in the driver as each cell finishes (progress lines)."""


def serial(fn: Callable[[CellJob], CellResult], cells: Sequence[CellJob], on_done: Done = None) -> list[CellResult]:
    """The in-process engine: one cell after another."""
    out = []
    for c in cells:
        out.append(fn(c))
        if on_done is not None:
            on_done(out[-1])
    return out


def node_name() -> str:
    """The Ray node this process runs on (its id), else the host name."""
    ray = sys.modules.get("ray")  # set in a Ray worker; this module never imports Ray itself
    try:
        if ray is not None and ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - a Ray without a runtime context: the host identifies the node
        pass
    return socket.gethostname()


def cell_tags(job: CellJob) -> dict[str, str]:
    """MLflow tags of a cell's run (the report and the MLflow UI columns read them)."""
    return {"oskt.kind": "cell", "oskt.cell": job.label, "oskt.key": job.key, **job.tags()}


def _result(job: CellJob, out_dir: str, rec: JobRecord, skipped: bool, run_id: str) -> CellResult:
    return CellResult(
        label=job.label,
        tags=job.tags(),
        out_dir=out_dir,
        checkpoint=rec.checkpoint,
        metrics=dict(rec.metrics),
        seconds=rec.seconds,
        key=rec.key,
        skipped=skipped,
        run_id=run_id,
        node=str(rec.extra.get("node", "")),
    )


def ensure_logged(target: TrackingTarget, job: CellJob, rec: JobRecord) -> str:
    """The run id of a finished MLflow run of this cell and key; a finished cell missing from the store (a new or
    reset store) is logged again from its ``result.json`` (tag ``oskt.restored``)."""
    from oskt.pipeline.tracking import search_runs, start_run

    runs = search_runs(
        target,
        f"tags.`oskt.cell` = '{job.label}' and tags.`oskt.key` = '{job.key}' and attributes.status = 'FINISHED'",
    )
    if runs:
        return runs[0].info.run_id
    with start_run(target, f"cell:{job.label}", {**cell_tags(job), "oskt.restored": "true"}) as tracker:
        tracker.log_params({f"job.{k}": v for k, v in flatten(rec.job).items()})
        tracker.log_metrics({**rec.metrics, "seconds": rec.seconds})
        return tracker.run_id


def reused_cell(job: CellJob, out_dir: str, done: JobRecord, target: TrackingTarget | None) -> CellResult:
    """The result of a cell an earlier run finished (``done``: its ``result.json``), logged to MLflow if missing."""
    tracking = target is not None and target.enabled
    run_id = ensure_logged(target, job, done) if tracking else str(done.extra.get("run_id", ""))
    log.info("cell %s is finished, skipping", job.label)
    return _result(job, out_dir, done, True, run_id)


def run_cell(
    job: CellJob,
    paths: Paths,
    *,
    target: TrackingTarget | None = None,
    threads: int = 0,
    run: RunOptions = RunOptions(),
    train: TrainFn = train_cell,
    count: ComplexityFn = complexity,
) -> CellResult:
    """Run one grid cell (or reuse it when finished) and log it as an MLflow child run.

    Args:
        job: the cell.
        paths: output layout.
        target: MLflow target (None or disabled = no tracking).
        threads: torch threads for this cell (0 = leave as is); engines pass the CPUs they reserved.
        run: device and progress output.
        train: trains the cell (default: the real one).
        count: parameter / MAC counts of the trained checkpoint.

    Returns:
        The cell's result; ``skipped=True`` when an earlier run had finished it.
    """
    out_dir = paths.job_dir(job)
    tracking = target is not None and target.enabled
    done = reuse(out_dir, job)
    if done is not None:
        return reused_cell(job, out_dir, done, target)

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    tracker: Any = None
    if tracking:
        from oskt.pipeline.tracking import kill_if_running, start_run

        kill_if_running(target.uri, _previous_attempt(out_dir))  # an earlier attempt died mid-cell
        tracker = start_run(target, f"cell:{job.label}", {**cell_tags(job), "oskt.node": node_name()})
        tracker.log_params({f"job.{k}": v for k, v in flatten(settings(job)).items()})
    node = node_name()
    start_job(out_dir, job, {"pid": os.getpid(), "node": node, "run_id": tracker.run_id if tracker else ""})
    t0 = time.perf_counter()
    try:
        checkpoint, metrics = train(job, paths, out_dir, tracker or NullTracker(), run)
        metrics = {**metrics, **count(job, checkpoint)}
        # this attempt's time plus what killed attempts before it spent in the phases it resumed
        seconds = time.perf_counter() - t0 + float(metrics.get("earlier_seconds", 0.0))
        run_id = tracker.run_id if tracker else ""
        if tracker:
            tracker.log_metrics({**metrics, "seconds": seconds})
            if target.log_checkpoints:
                tracker.log_artifact(checkpoint, "checkpoint")
        rec = record_result(
            out_dir,
            job,
            files={"checkpoint": checkpoint},
            metrics=metrics,
            seconds=seconds,
            extra={"run_id": run_id, "node": node},
        )  # last: marks the cell finished
        if tracker:
            tracker.log_artifact(io.join(out_dir, "result.json"))
            tracker.close()
    except BaseException:
        if tracker:
            tracker.close("FAILED")
        raise
    return _result(job, out_dir, rec, False, run_id)


def _previous_attempt(out_dir: str) -> str:
    """The MLflow run id of an unfinished earlier attempt at this cell ('' when none)."""
    return str((io.read_json_object(io.join(out_dir, JOB_FILE)) or {}).get("run_id", ""))


def run_grid(
    cells: Sequence[CellJob],
    paths: Paths,
    *,
    engine: Engine = serial,
    target: TrackingTarget | None = None,
    threads: int = 0,
    run: RunOptions = RunOptions(),
    train: TrainFn = train_cell,
    count: ComplexityFn = complexity,
    progress: bool = True,
) -> list[CellResult]:
    """Every cell through ``engine``; with ``progress``, one line per finished cell
    (``oskt.pipeline.progress.GridProgress``). Writes ``students/summary.json``.

    Cells an earlier run finished (their ``result.json`` under the same key) are reused here, in this process,
    before the engine starts: only the cells left to train reach it, and with none left no Ray and no Prefect flow
    is started at all (a changed report setting or a new data source costs no cluster time)."""
    from oskt.pipeline.progress import GridProgress

    fn = functools.partial(run_cell, paths=paths, target=target, threads=threads, run=run, train=train, count=count)
    io.makedirs(paths.students_dir())
    cells = list(cells)
    bar = GridProgress(len(cells)) if progress else None
    try:
        by_label, todo = {}, []
        for c in cells:
            done = reuse(paths.job_dir(c), c)
            if done is None:
                todo.append(c)
                continue
            by_label[c.label] = r = reused_cell(c, paths.job_dir(c), done, target)
            if bar is not None:
                bar(r)
        if todo:
            log.info(
                "%d of %d cells finished earlier (reused); %d to train", len(cells) - len(todo), len(cells), len(todo)
            )
            by_label.update((r.label, r) for r in engine(fn, todo, bar))
        results = [by_label[c.label] for c in cells]
    finally:
        if bar is not None:
            bar.close()
    summarise(results, io.join(paths.students_dir(), "summary.json"))
    return results


def summarise(results: Sequence[CellResult], path: str) -> None:
    """Write the grid summary (one entry per cell) next to the cell folders."""
    io.write_json_atomic(path, {"cells": [r.to_dict() for r in sorted(results, key=lambda r: r.label)]})
