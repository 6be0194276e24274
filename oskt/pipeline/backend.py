"""The training calls the pipeline makes, as small adapters over ``oskt.data``, ``oskt.train`` and
``oskt.baselines``.

Stages never call the library directly: they call :func:`load_backend`, which returns this module, or the module
named by ``$OSKT_PIPELINE_BACKEND`` (a testing hook: the orchestration tests swap training for a fast double while
DVC, Prefect, Ray and MLflow stay real). A backend module provides the five functions below with these signatures.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from oskt import io
from oskt.config import Config
from oskt.errors import DataError
from oskt.pipeline.records import GridCell, Paths
from oskt.tracking import Tracker

BACKEND_ENV = "OSKT_PIPELINE_BACKEND"


def load_backend(name: str | None = None) -> ModuleType:
    """The backend module: ``name``, else ``$OSKT_PIPELINE_BACKEND``, else this module."""
    return importlib.import_module(name or os.environ.get(BACKEND_ENV) or __name__)


def make_dataset(cfg: Config, name: str) -> dict[str, Any]:
    """Generate ``name`` when it is an embedded synthetic set (missing or stale), then parse it; returns its sizes."""
    from oskt.data import dataset_path, load_dataset, make_synthetic

    entry = cfg.data.datasets[name]
    path = dataset_path(name, cfg.data)
    if entry.layout == "synthetic":
        make_synthetic(path, cfg.data.synthetic, entry.domain)  # no-op when complete and up to date
    elif not io.exists(path):
        raise DataError(
            f"data set {name!r} ({entry.layout}) is not at {path}: download it there or change "
            f"data.root / data.datasets.{name}.path"
        )
    ds = load_dataset(name, cfg.data)
    return {
        "layout": entry.layout,
        "path": path,
        "train_images": len(ds.train),
        "train_ids": ds.num_train_pids,
        "query": len(ds.query),
        "gallery": len(ds.gallery),
        "cams": ds.num_cams,
    }


def train_teacher(cfg: Config, source: str, out_dir: str, tracker: Tracker) -> tuple[str, dict[str, float]]:
    """Train the teacher on ``source``; returns (checkpoint, metrics)."""
    from oskt.data import load_dataset
    from oskt.train import train_teacher as _train

    r = _train(cfg, load_dataset(source, cfg.data), out_dir, tracker=tracker, resume=True)
    return r.checkpoint, dict(r.metrics)


def refine_chain(
    cfg: Config, teacher_ckpt: str, width: int, out_dir: str, tracker: Tracker
) -> tuple[str, dict[str, float]]:
    """Cluster the teacher into a chain of ``width`` and refine it jointly; returns (chain checkpoint, metrics)."""
    from oskt.train import refine_chain as _refine

    r = _refine(cfg, teacher_ckpt, width, out_dir, tracker=tracker, resume=True)
    return r.checkpoint, dict(r.metrics)


def train_cell(
    cfg: Config, cell: GridCell, paths: Paths, out_dir: str, tracker: Tracker
) -> tuple[str, dict[str, float]]:
    """Initialise the cell's student with its method, fine-tune it on the target; returns (checkpoint, metrics)."""
    from oskt.pipeline.cell import train_cell as _train_cell

    return _train_cell(cfg, cell, paths, out_dir, tracker)


def complexity(cfg: Config, checkpoint: str) -> dict[str, float]:
    """Parameter and MAC counts of the model in ``checkpoint`` at the configured input size."""
    from oskt.pipeline.cell import complexity as _complexity

    return _complexity(cfg, checkpoint)
