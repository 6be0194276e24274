"""Prefect tasks: thin wrappers around the ``oskt.pipeline`` stage functions (all logic lives there).

Retries cover transient failures (a tracking server hiccup, an S3 timeout); a worker process that dies is retried by
Ray itself (``max_retries`` in the remote options). Results are plain records, never models.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from oskt.config import Config
from oskt.data.refs import DatasetRef
from oskt.jobs import CellJob, ChainJob, RunOptions, TeacherJob
from oskt.pipeline import reporting, stages
from oskt.pipeline.records import CellResult, DataRecord, Paths, ReportRecord, StageRecord, TrackingTarget

RETRIES = 2
RETRY_DELAY_S = 5


@task(name="prepare-data", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def prepare_task(
    refs: list[DatasetRef], paths: Paths, target: TrackingTarget | None, bad_images: str, run: RunOptions
) -> DataRecord:
    """Generate / check the data sets."""
    return stages.prepare_data(refs, paths, target, bad_images=bad_images, run=run)


@task(name="train-teacher", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def teacher_task(job: TeacherJob, paths: Paths, target: TrackingTarget | None, run: RunOptions) -> StageRecord:
    """Train the teacher of one source data set."""
    return stages.train_teacher(job, paths, target, run)


@task(name="refine-chain", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def chain_task(job: ChainJob, paths: Paths, target: TrackingTarget | None, run: RunOptions) -> StageRecord:
    """Build and refine one chain width of one source."""
    return stages.refine_chain(job, paths, target, run)


@task(name="grid-cell", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def cell_task(cell: CellJob, fn: Callable[[CellJob], CellResult]) -> CellResult:
    """Fine-tune one student of the grid (reused when already finished)."""
    return fn(cell)


@task(name="report", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def report_task(cfg: Config, paths: Paths, target: TrackingTarget | None) -> ReportRecord:
    """Build the comparison tables and plots from MLflow."""
    return reporting.report(cfg, paths, target)
