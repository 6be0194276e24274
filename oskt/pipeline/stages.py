"""One function per pipeline stage, called by DVC (``python -m oskt.pipeline <stage>``) and by the Prefect flow.

Each takes the resolved :class:`~oskt.config.Config`, a :class:`~oskt.pipeline.records.Paths` and (optionally) a
:class:`~oskt.pipeline.records.TrackingTarget`, and returns a record. A stage whose output already holds a result
with the same fingerprint returns it without work (DVC decides staleness on its own; this makes the Prefect path,
which has no DVC, just as idempotent).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from oskt import io
from oskt.config import Config, write_resolved
from oskt.errors import OsktError
from oskt.pipeline.backend import load_backend
from oskt.pipeline.grid import grid_cells, summarise
from oskt.pipeline.records import STAGE_PARAMS, CellResult, DataRecord, Paths, StageRecord, TrackingTarget, fingerprint
from oskt.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


class StageError(OsktError):
    """A stage cannot start: an upstream output is missing or the grid engine is unknown."""


@contextlib.contextmanager
def stage_run(
    target: TrackingTarget | None, name: str, tags: dict[str, str], cfg: Config | None = None
) -> Iterator[Tracker]:
    """An MLflow child run for a stage (a NullTracker when tracking is off); FAILED when the body raises."""
    if target is None or not target.enabled:
        yield NullTracker()
        return
    from oskt.pipeline.run import with_data_version
    from oskt.pipeline.tracking import start_run

    target = with_data_version(cfg, target) if cfg is not None else target

    with start_run(target, name, tags) as tracker:
        if cfg is not None:
            tracker.log_params(cfg.flat())
        yield tracker


def _reuse(out_dir: str, fp: str) -> dict[str, Any] | None:
    path = io.join(out_dir, RESULT_FILE)
    if not io.exists(path):
        return None
    rec = io.read_json(path)
    return rec if rec.get("fingerprint") == fp and io.exists(rec.get("checkpoint", "")) else None


def _stage_record(stage: str, key: str, out_dir: str, fp: str, rec: dict[str, Any], reused: bool) -> StageRecord:
    return StageRecord(
        stage=stage,
        key=key,
        out_dir=out_dir,
        checkpoint=rec["checkpoint"],
        metrics=rec["metrics"],
        seconds=rec["seconds"],
        fingerprint=fp,
        extra=rec.get("extra", {}),
        reused=reused,
    )


# ---------------------------------------------------------------------------------------------------- prepare


def datasets_used(cfg: Config) -> list[str]:
    """Source and target data sets of the configured scenarios, sources first, no repeats."""
    names = list(cfg.data.sources) + [t for _, t in cfg.students.pairs()]
    return list(dict.fromkeys(names))


def prepare_data(cfg: Config, paths: Paths, target: TrackingTarget | None = None) -> DataRecord:
    """Generate the embedded synthetic sets that are missing and check every data set the grid uses parses."""
    be = load_backend()
    with stage_run(target, "prepare", {"oskt.kind": "stage", "oskt.stage": "prepare"}, cfg) as tracker:
        sizes = {name: be.make_dataset(cfg, name) for name in datasets_used(cfg)}
        manifest = paths.prepare_manifest()
        io.write_json_atomic(manifest, {"root": cfg.data.root, "datasets": sizes})
        tracker.log_metrics(
            {f"{n}.{k}": v for n, s in sizes.items() for k, v in s.items() if isinstance(v, (int, float))}
        )
    return DataRecord(root=cfg.data.root, datasets=sizes, manifest=manifest)


# ---------------------------------------------------------------------------------------------------- teacher


def train_teacher(cfg: Config, source: str, paths: Paths, target: TrackingTarget | None = None) -> StageRecord:
    """Train (or reuse) the teacher of data set ``source``."""
    if source not in cfg.data.sources:
        raise StageError(f"teacher source {source!r} is not in data.sources {list(cfg.data.sources)}")
    out_dir = paths.teacher_dir(source)
    fp = fingerprint(cfg.flat(), STAGE_PARAMS["teacher"], {"source": source})
    rec = _reuse(out_dir, fp)
    if rec is not None:
        return _stage_record("teacher", source, out_dir, fp, rec, reused=True)
    tags = {"oskt.kind": "stage", "oskt.stage": "teacher", "source": source, "student": cfg.teacher.name}
    with stage_run(target, f"teacher:{source}", tags, cfg) as tracker:
        t0 = time.perf_counter()
        io.makedirs(out_dir)
        write_resolved(cfg, out_dir)
        ckpt, metrics = load_backend().train_teacher(cfg, source, out_dir, tracker)
        rec = {"checkpoint": ckpt, "metrics": metrics, "seconds": time.perf_counter() - t0, "fingerprint": fp}
        io.write_json_atomic(io.join(out_dir, RESULT_FILE), rec)
        _log_outputs(tracker, target, [ckpt], out_dir)
    return _stage_record("teacher", source, out_dir, fp, rec, reused=False)


# ---------------------------------------------------------------------------------------------------- chains


def refine_chain(
    cfg: Config, source: str, width: int, paths: Paths, target: TrackingTarget | None = None
) -> StageRecord:
    """Cluster ``source``'s teacher into the chain of ``width`` and refine it (or reuse the finished chain)."""
    if width not in cfg.chain.widths:
        raise StageError(f"chain width {width} is not in chain.widths {list(cfg.chain.widths)}")
    teacher = _reuse(paths.teacher_dir(source), fingerprint(cfg.flat(), STAGE_PARAMS["teacher"], {"source": source}))
    if teacher is None:
        raise StageError(
            f"the teacher of {source!r} is missing or stale in {paths.teacher_dir(source)}: run the "
            "teacher stage first (dvc repro does)"
        )
    out_dir = paths.chain_dir(source, width)
    fp = fingerprint(cfg.flat(), STAGE_PARAMS["chain"], {"source": source, "width": width})
    rec = _reuse(out_dir, fp)
    if rec is not None:
        return _stage_record("chain", f"{source}/w{width}", out_dir, fp, rec, reused=True)
    tags = {"oskt.kind": "stage", "oskt.stage": "chain", "source": source, "chain_width": str(width)}
    with stage_run(target, f"chain:{source}:w{width}", tags, cfg) as tracker:
        t0 = time.perf_counter()
        io.makedirs(out_dir)
        write_resolved(cfg, out_dir)
        ckpt, metrics = load_backend().refine_chain(cfg, teacher["checkpoint"], width, out_dir, tracker)
        rec = {"checkpoint": ckpt, "metrics": metrics, "seconds": time.perf_counter() - t0, "fingerprint": fp}
        io.write_json_atomic(io.join(out_dir, RESULT_FILE), rec)
        from oskt.train.api import REFINED_TEACHER_FILE  # the phase's file names, as pipeline/cell.py reads them

        # the chain and the teacher refined jointly with it (a backend need not write the latter)
        refined = io.join(out_dir, REFINED_TEACHER_FILE)
        _log_outputs(tracker, target, [ckpt, refined] if io.exists(refined) else [ckpt], out_dir)
    return _stage_record("chain", f"{source}/w{width}", out_dir, fp, rec, reused=False)


def build_chains(cfg: Config, source: str, paths: Paths, target: TrackingTarget | None = None) -> list[StageRecord]:
    """Every configured chain width of ``source``, narrowest first."""
    return [refine_chain(cfg, source, w, paths, target) for w in cfg.chain.widths]


def _log_outputs(tracker: Tracker, target: TrackingTarget | None, checkpoints: list[str], out_dir: str) -> None:
    if target is None or not target.enabled:
        return
    tracker.log_artifact(io.join(out_dir, "config.yaml"))
    tracker.log_artifact(io.join(out_dir, RESULT_FILE))
    if target.log_checkpoints:
        for c in checkpoints:
            tracker.log_artifact(c, "checkpoint")


# ---------------------------------------------------------------------------------------------------- students

ENGINES = ("prefect", "ray", "serial")


def check_upstream(cfg: Config, paths: Paths) -> None:
    """Raise before any fine-tune when a teacher or chain the grid needs is missing or stale."""
    for source in cfg.data.sources:
        if (
            _reuse(paths.teacher_dir(source), fingerprint(cfg.flat(), STAGE_PARAMS["teacher"], {"source": source}))
            is None
        ):
            raise StageError(f"the teacher of {source!r} is missing or stale in {paths.teacher_dir(source)}")
        for w in cfg.chain.widths:
            fp = fingerprint(cfg.flat(), STAGE_PARAMS["chain"], {"source": source, "width": w})
            if _reuse(paths.chain_dir(source, w), fp) is None:
                raise StageError(f"the chain {source}/w{w} is missing or stale in {paths.chain_dir(source, w)}")


def train_students(
    cfg: Config,
    paths: Paths,
    target: TrackingTarget | None = None,
    *,
    engine: str = "prefect",
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> list[CellResult]:
    """Run the whole student grid (finished cells are skipped) and write ``students/summary.json``.

    Args:
        engine: ``prefect`` (a Prefect flow mapping cells on prefect-ray's RayTaskRunner), ``ray`` (plain Ray
            tasks) or ``serial`` (this process).
        ray_address: a Ray cluster (None = ``$RAY_ADDRESS``, ``compute.ray_address``, else a local Ray).
        num_cpus: CPUs of a local Ray (None = all).
    """
    if engine not in ENGINES:
        raise StageError(f"engine={engine!r} is not allowed: expected one of {ENGINES}")
    check_upstream(cfg, paths)
    cells = grid_cells(cfg)
    io.makedirs(paths.students_dir())
    from oskt.pipeline.run import with_data_version

    target = with_data_version(cfg, target)
    with stage_run(target, "students", {"oskt.kind": "stage", "oskt.stage": "students"}, cfg) as tracker:
        grid_target = target.child(getattr(tracker, "run_id", "")) if target is not None and target.enabled else None
        t0 = time.perf_counter()
        if engine == "serial":
            from oskt.pipeline.engines import run_serial

            results = run_serial(cfg, cells, paths, grid_target)
        elif engine == "ray":
            from oskt.pipeline.engines import run_ray

            results = run_ray(cfg, cells, paths, grid_target, address=ray_address, num_cpus=num_cpus)
        else:
            from flows.student_grid import run_student_grid

            results = run_student_grid(cfg, paths, grid_target, ray_address=ray_address, num_cpus=num_cpus)
        tracker.log_metrics(
            {
                "cells": len(results),
                "cells_skipped": sum(r.skipped for r in results),
                "seconds": time.perf_counter() - t0,
            }
        )
    summarise(results, io.join(paths.students_dir(), "summary.json"))
    return results
