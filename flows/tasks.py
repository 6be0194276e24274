"""Prefect tasks: thin wrappers around the ``oskt.pipeline`` stage functions (all logic lives there).

Retries cover transient failures (a tracking server hiccup, an S3 timeout); a worker process that dies is retried by
Ray itself (``max_retries`` in the remote options). Results are plain records, never models.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from oskt.config import Config
from oskt.pipeline import grid, reporting, stages
from oskt.pipeline.records import CellResult, DataRecord, GridCell, Paths, ReportRecord, StageRecord, TrackingTarget

RETRIES = 2
RETRY_DELAY_S = 5


@task(name="prepare-data", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def prepare_task(cfg: Config, paths: Paths, target: TrackingTarget | None) -> DataRecord:
    """Generate / check the data sets."""
    return stages.prepare_data(cfg, paths, target)


@task(name="train-teacher", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def teacher_task(cfg: Config, source: str, paths: Paths, target: TrackingTarget | None) -> StageRecord:
    """Train the teacher of one source data set."""
    return stages.train_teacher(cfg, source, paths, target)


@task(name="refine-chain", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def chain_task(cfg: Config, source: str, width: int, paths: Paths, target: TrackingTarget | None) -> StageRecord:
    """Build and refine one chain width of one source."""
    return stages.refine_chain(cfg, source, width, paths, target)


@task(name="grid-cell", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def cell_task(cell: GridCell, cfg: Config, paths: Paths, target: TrackingTarget | None, threads: int) -> CellResult:
    """Fine-tune one student of the grid (skipped when already finished)."""
    return grid.run_cell(cfg, cell, paths, target=target, threads=threads)


@task(name="report", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def report_task(cfg: Config, paths: Paths, target: TrackingTarget | None) -> ReportRecord:
    """Build the comparison tables and plots from MLflow."""
    return reporting.report(cfg, paths, target)
