"""Fast stand-ins for training, passed as arguments (``train=`` of the stage functions and of ``run_grid``): DVC,
Prefect, Ray, MLflow and S3 stay real in the orchestration tests. They write real oskt job records (``result.json``)
through the same phase bookkeeping as the real trainers, and deterministic metrics.

* ``slow_cell(seconds)``: a cell trainer that takes that long.
* ``killing_cell(name_part, markers)``: the first attempt of every cell whose label contains ``name_part`` SIGKILLs
  its own process (a worker death); a marker file in ``markers`` makes later attempts succeed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import time
from typing import Any

from oskt import io
from oskt.jobs import CellJob, ChainJob, RunOptions, TeacherJob, record_result, reuse, start_job
from oskt.pipeline.records import Paths
from oskt.tracking import NullTracker, Tracker
from oskt.train.phase import TrainResult

ATTEMPTS_FILE = "attempts.txt"


def _score(*parts: Any) -> float:
    h = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)
    return (h % 1000) / 1000.0


def _job(job: Any, out_dir: str, metrics: dict[str, float], files: dict[str, str], tracker: Tracker) -> TrainResult:
    if (done := reuse(out_dir, job)) is not None:
        return TrainResult(done.checkpoint, done.metrics, [], done.seconds, done.files, reused=True)
    start_job(out_dir, job)
    for name, path in files.items():
        io.write_json_atomic(path, {"kind": name, "key": job.key})
    for epoch in range(job.recipe.epochs):
        tracker.log_metrics({f"{job.kind}/loss": 1.0 / (epoch + 1)}, step=epoch + 1)
    rec = record_result(out_dir, job, files=files, metrics=metrics, seconds=0.01)
    return TrainResult(rec.checkpoint, rec.metrics, [], rec.seconds, rec.files)


def fake_teacher(
    job: TeacherJob, out_dir: str, *, run: RunOptions = RunOptions(), tracker: Tracker | None = None, **_: Any
) -> TrainResult:
    return _job(
        job,
        out_dir,
        {"mAP": 0.5, "rank1": 0.7},
        {"checkpoint": io.join(out_dir, "teacher.pt")},
        tracker or NullTracker(),
    )


def fake_chain(
    job: ChainJob,
    teacher_ckpt: str,
    out_dir: str,
    *,
    run: RunOptions = RunOptions(),
    tracker: Tracker | None = None,
    **_: Any,
) -> TrainResult:
    assert io.exists(teacher_ckpt), teacher_ckpt
    files = {"checkpoint": io.join(out_dir, "chain.pt"), "refined_teacher": io.join(out_dir, "teacher_refined.pt")}
    return _job(job, out_dir, {"mAP": 0.3, "rank1": 0.5}, files, tracker or NullTracker())


def _attempt(markers: str, job: CellJob) -> None:
    if markers:
        with open(os.path.join(markers, ATTEMPTS_FILE), "a") as f:
            f.write(f"{job.label} {os.getpid()} threads={_threads()}\n")


def fake_cell(
    job: CellJob,
    paths: Paths,
    out_dir: str,
    tracker: Tracker,
    run: RunOptions,
    *,
    markers: str = "",
    sleep: float = 0.0,
    kill: str = "",
) -> tuple[str, dict[str, float]]:
    """A cell trainer: records the attempt, optionally dies or sleeps, writes a stand-in checkpoint."""
    _attempt(markers, job)
    if kill and kill in job.label:
        marker = os.path.join(markers, f"killed-{job.label}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(sleep)
    for epoch in range(job.recipe.epochs):
        tracker.log_metrics({"loss": 1.0 / (epoch + 1), "lr": 1e-3}, step=epoch)
    bonus = {"oskt": 0.2, "kdpp": 0.1, "wtsel": 0.08, "depgraph": 0.05, "scratch": 0.0}.get(job.method, 0.02)
    base = 0.3 + 0.05 * int(job.student_name.lstrip("S") or 1) + bonus
    noise = 0.02 * _score(job.label)
    ckpt = io.join(out_dir, "finetune", "student.pt")
    io.write_json_atomic(ckpt, {"kind": "student", "numel": 8})
    return ckpt, {"mAP": min(base + noise, 0.99), "rank1": min(base + 0.2 + noise, 0.99)}


def fake_count(job: CellJob, checkpoint: str) -> dict[str, float]:
    n = io.read_json(checkpoint)["numel"]
    return {"params": float(n * 1000), "macs": float(n * 1e6)}


def cell_trainer(markers: str = "", sleep: float = 0.0, kill: str = "") -> Any:
    """``fake_cell`` with its options bound (picklable: a partial of a module-level function)."""
    return functools.partial(fake_cell, markers=markers, sleep=sleep, kill=kill)


def _threads() -> int:
    """torch's thread count in this process (torch is imported only if something else already did)."""
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else int(os.environ.get("OMP_NUM_THREADS", "0"))
