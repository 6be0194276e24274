"""The reproducible pipeline: the job graph of a config (``graph.jobs_from_config``), one function per stage, the
grid as a map over cell jobs with the engine given as an argument, MLflow tracking and the report.

The engines that distribute the grid (Ray, Prefect on Ray) live in ``flows/``, which imports this package, never
the other way round. Only ``oskt`` and the standard library are imported here at import time; MLflow is imported
inside ``oskt.pipeline.tracking``'s functions.
"""

from oskt.pipeline.graph import JobGraph, datasets_used, jobs_from_config
from oskt.pipeline.grid import run_cell, run_grid, serial
from oskt.pipeline.records import CellResult, DataRecord, Paths, ReportRecord, StageRecord, TrackingTarget
from oskt.pipeline.reporting import report
from oskt.pipeline.stages import prepare_data, refine_chain, train_teacher

__all__ = [
    "CellResult",
    "DataRecord",
    "JobGraph",
    "Paths",
    "ReportRecord",
    "StageRecord",
    "TrackingTarget",
    "datasets_used",
    "jobs_from_config",
    "prepare_data",
    "refine_chain",
    "report",
    "run_cell",
    "run_grid",
    "serial",
    "train_teacher",
]
