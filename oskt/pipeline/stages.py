"""One function per pipeline stage that is not the grid: prepare the data, train a teacher, refine a chain. DVC
calls them through ``python -m flows stage <name>``; the Prefect flow calls them as tasks.

Each takes its job(s) (``oskt.jobs``), the output layout and an MLflow target. A stage whose job is finished in its
folder returns the record at once (``oskt.jobs.reuse``, inside the training entry point): DVC decides staleness of
stages on its own; this makes the Prefect path, which has no DVC, just as idempotent, and keeps a stage DVC reruns
for an unrelated setting from training anything.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from oskt import io
from oskt.data.refs import DatasetRef
from oskt.errors import DataError
from oskt.jobs import RESULT_FILE, CellJob, ChainJob, JobRecord, RunOptions, TeacherJob, flatten, reuse, settings
from oskt.pipeline.cell import complexity, train_cell, upstream_checkpoint
from oskt.pipeline.grid import ComplexityFn, Engine, TrainFn, run_grid, serial
from oskt.pipeline.records import CellResult, DataRecord, Paths, StageRecord, TrackingTarget
from oskt.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage_run(
    target: TrackingTarget | None, name: str, tags: dict[str, str], params: dict[str, Any] | None = None
) -> Iterator[Tracker]:
    """An MLflow child run for a stage (a NullTracker when tracking is off); FAILED when the body raises."""
    if target is None or not target.enabled:
        yield NullTracker()
        return
    from oskt.pipeline.tracking import start_run

    with start_run(target, name, tags) as tracker:
        if params:
            tracker.log_params(params)
        yield tracker


def _log_outputs(tracker: Tracker, target: TrackingTarget | None, out_dir: str, checkpoints: Sequence[str]) -> None:
    if target is None or not target.enabled:
        return
    tracker.log_artifact(io.join(out_dir, "result.json"))
    if target.log_checkpoints:
        for c in checkpoints:
            tracker.log_artifact(c, "checkpoint")


# ---------------------------------------------------------------------------------------------------- prepare


def prepare_data(
    refs: Sequence[DatasetRef],
    paths: Paths,
    target: TrackingTarget | None = None,
    *,
    bad_images: str = "fail",
    run: RunOptions = RunOptions(),
) -> DataRecord:
    """Generate the embedded synthetic sets that are missing or stale (the generator skips complete ones), check
    that every data set the grid uses parses and that every one of its images decodes (``data.bad_images``), before
    any training; writes ``prepare/manifest.json`` and one ``prepare/<name>.json`` per data set."""
    from oskt.data import verify_images
    from oskt.data.synthetic import make_synthetic

    with stage_run(target, "prepare", {"oskt.kind": "stage", "oskt.stage": "prepare"}) as tracker:
        sizes = {}
        for ref in refs:
            if ref.layout == "synthetic":
                make_synthetic(ref.path, ref.synthetic, ref.domain or "a")
            elif not io.exists(ref.path):
                raise DataError(
                    f"data set {ref.name!r} ({ref.layout}) is not at {ref.path}: put it there or change "
                    f"data.root / data.datasets.{ref.name}.path"
                )
            cache = run.image_cache or io.join(paths.root, "image_check.json")
            ds = verify_images(ref.load(), cache, bad_images).dataset
            sizes[ref.name] = {
                "layout": ref.layout,
                "path": ref.path,
                "train_images": len(ds.train),
                "train_ids": ds.num_train_pids,
                "query": len(ds.query),
                "gallery": len(ds.gallery),
                "cams": ds.num_cams,
            }
        for name, rec in sizes.items():  # one record per data set: a teacher depends on its own only (dvc.yaml)
            io.write_json_atomic(paths.dataset_record(name), rec)
        manifest = paths.prepare_manifest()
        io.write_json_atomic(manifest, {"datasets": sizes})
        tracker.log_metrics(
            {f"{n}.{k}": v for n, s in sizes.items() for k, v in s.items() if isinstance(v, (int, float))}
        )
    return DataRecord(root=paths.root, datasets=sizes, manifest=manifest)


# ---------------------------------------------------------------------------------------------------- teacher


def adoptable(job: TeacherJob | ChainJob, paths: Paths) -> str | None:
    """The folder, in one of ``paths.reuse_from``'s roots (in order), that holds the job finished with its key."""
    for root in paths.reuse_from:
        other = Paths(root).job_dir(job)
        if reuse(other, job) is not None:
            return other
    return None


def finished(job: TeacherJob | ChainJob, paths: Paths) -> JobRecord | None:
    """The job's finished result in its folder, or else one with the same key in a ``paths.reuse_from`` root,
    adopted: its ``result.json`` is copied into this run's folder (it names the files where they are), so every
    later reader of this run finds it as its own. None when neither has it."""
    out_dir = paths.job_dir(job)
    if (done := reuse(out_dir, job)) is not None:
        return done
    if (other := adoptable(job, paths)) is None:
        return None
    io.makedirs(out_dir)
    io.write_bytes_atomic(io.join(out_dir, RESULT_FILE), io.read_bytes(io.join(other, RESULT_FILE)))
    log.info("%s %s: finished in %s (same key %s), reused", job.kind, job.label, other, job.key)
    return reuse(out_dir, job)


def _stage_record(stage: str, label: str, out_dir: str, key: str, result: Any, reused: bool) -> StageRecord:
    return StageRecord(
        stage=stage,
        label=label,
        out_dir=out_dir,
        checkpoint=result.checkpoint,
        metrics=dict(result.metrics),
        seconds=float(result.seconds),
        key=key,
        files=dict(getattr(result, "files", {}) or {}),
        reused=reused,
    )


def train_teacher(
    job: TeacherJob,
    paths: Paths,
    target: TrackingTarget | None = None,
    run: RunOptions = RunOptions(),
    train: Callable[..., Any] | None = None,
) -> StageRecord:
    """Train (or reuse) the teacher job into its folder (``train``: the trainer, default
    ``oskt.train.train_teacher``; tests pass a fast double)."""
    from oskt.train import train_teacher

    _train = train or train_teacher

    from oskt.pipeline.run import with_data_version

    out_dir = paths.job_dir(job)
    if (done := finished(job, paths)) is not None:
        return _stage_record("teacher", job.label, out_dir, job.key, done, True)
    target = with_data_version(target, paths)
    tags = {"oskt.kind": "stage", "oskt.stage": "teacher", "oskt.key": job.key, "source": job.label}
    with stage_run(target, f"teacher:{job.label}", tags, flatten(settings(job))) as tracker:
        t0 = time.perf_counter()
        r = _train(job, out_dir, run=run, tracker=tracker, resume=True)
        log.info("teacher %s: %.1f s", job.label, time.perf_counter() - t0)
        _log_outputs(tracker, target, out_dir, [r.checkpoint])
    return _stage_record("teacher", job.label, out_dir, job.key, r, r.reused)


# ---------------------------------------------------------------------------------------------------- chains


def refine_chain(
    job: ChainJob,
    paths: Paths,
    target: TrackingTarget | None = None,
    run: RunOptions = RunOptions(),
    train: Callable[..., Any] | None = None,
) -> StageRecord:
    """Cluster the job's teacher into its chain and refine it (or reuse the finished chain); ``train`` as for
    :func:`train_teacher` (default ``oskt.train.refine_chain``)."""
    from oskt.train import refine_chain

    _refine = train or refine_chain

    from oskt.pipeline.run import with_data_version

    out_dir = paths.job_dir(job)
    if (done := finished(job, paths)) is not None:
        return _stage_record("chain", job.label, out_dir, job.key, done, True)
    target = with_data_version(target, paths)
    teacher_ckpt = upstream_checkpoint(paths, job.teacher)  # type: ignore[arg-type]
    tags = {
        "oskt.kind": "stage",
        "oskt.stage": "chain",
        "oskt.key": job.key,
        "source": job.data.name,
        "chain_width": str(job.width),
    }
    with stage_run(target, f"chain:{job.data.name}:w{job.width}", tags, flatten(settings(job))) as tracker:
        r = _refine(job, teacher_ckpt, out_dir, run=run, tracker=tracker, resume=True)
        # the chain and the teacher refined jointly with it
        _log_outputs(tracker, target, out_dir, [r.files["checkpoint"], r.files["refined_teacher"]])
    return _stage_record("chain", job.label, out_dir, job.key, r, r.reused)


# ---------------------------------------------------------------------------------------------------- students


def check_upstream(cells: Sequence[CellJob], paths: Paths) -> None:
    """Raise (StageError naming the folder) before any fine-tune when a teacher or chain a cell reads is not done."""
    seen: set[str] = set()
    for cell in cells:
        for up in (cell.teacher, cell.chain):
            if up is not None and up.key not in seen:
                upstream_checkpoint(paths, up)
                seen.add(up.key)


def train_students(
    cells: Sequence[CellJob],
    paths: Paths,
    target: TrackingTarget | None = None,
    *,
    engine: Engine = serial,
    threads: int = 0,
    run: RunOptions = RunOptions(),
    train: TrainFn = train_cell,
    count: ComplexityFn = complexity,
) -> list[CellResult]:
    """The whole student grid under one ``students`` MLflow run (finished cells are reused); ``engine`` distributes
    the cells (``oskt.pipeline.grid.serial``, or the Ray / Prefect engines of ``flows/``); ``train`` / ``count``
    train one cell and count its cost (tests pass fast doubles)."""
    from oskt.pipeline.run import with_data_version

    check_upstream(cells, paths)
    target = with_data_version(target, paths)
    if target is not None and target.enabled:
        from oskt.pipeline.tracking import ensure_experiment

        ensure_experiment(target)  # before the fan-out: cells racing to create a fresh SQLite store would fail
    with stage_run(target, "students", {"oskt.kind": "stage", "oskt.stage": "students"}) as tracker:
        grid_target = target.child(getattr(tracker, "run_id", "")) if target is not None and target.enabled else None
        t0 = time.perf_counter()
        results = run_grid(
            cells, paths, engine=engine, target=grid_target, threads=threads, run=run, train=train, count=count
        )
        tracker.log_metrics(
            {
                "cells": len(results),
                "cells_skipped": sum(r.skipped for r in results),
                "seconds": time.perf_counter() - t0,
            }
        )
    return results
