"""The reproducible pipeline: one function per stage, shared by DVC (``python -m oskt.pipeline <stage>``) and the
Prefect flows in ``flows/``; the student grid fans out on Ray; everything logs to MLflow.

Only ``oskt`` and the standard library are imported here: Prefect, Ray, MLflow and DVC are imported inside the
functions that use them, so ``import oskt.pipeline`` works without the ``pipeline`` extra.
"""

from oskt.pipeline.grid import grid_cells, run_cell
from oskt.pipeline.records import CellResult, DataRecord, GridCell, Paths, ReportRecord, StageRecord, TrackingTarget
from oskt.pipeline.reporting import report
from oskt.pipeline.stages import build_chains, prepare_data, refine_chain, train_students, train_teacher

__all__ = [
    "CellResult",
    "DataRecord",
    "GridCell",
    "Paths",
    "ReportRecord",
    "StageRecord",
    "TrackingTarget",
    "build_chains",
    "grid_cells",
    "prepare_data",
    "refine_chain",
    "report",
    "run_cell",
    "train_students",
    "train_teacher",
]
