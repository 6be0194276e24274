"""A fast stand-in for training (``OSKT_PIPELINE_BACKEND=tests.flows.fake_backend``).

It replaces only the training calls: DVC, Prefect, Ray, MLflow and S3 stay real in the orchestration tests. It writes
real oskt checkpoints and deterministic metrics, and can simulate failures:

* ``OSKT_FAKE_SLEEP``: seconds each grid cell takes (default 0).
* ``OSKT_FAKE_KILL_CELL`` + ``OSKT_FAKE_MARKERS``: the first attempt of every cell whose name contains the value
  SIGKILLs its own process (a worker death); a marker file in the markers folder makes later attempts succeed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

from oskt import io
from oskt.config import Config
from oskt.pipeline.records import GridCell, Paths
from oskt.tracking import Tracker

ATTEMPTS_FILE = "attempts.txt"


def _score(*parts: Any) -> float:
    h = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)
    return (h % 1000) / 1000.0


def make_dataset(cfg: Config, name: str) -> dict[str, Any]:
    entry = cfg.data.datasets[name]
    path = io.join(cfg.data.root, entry.path)
    io.write_json_atomic(io.join(path, "fake.json"), {"name": name, "domain": entry.domain})
    return {"layout": entry.layout, "path": path, "train_ids": cfg.data.synthetic.train_ids}


def _ckpt(path: str, kind: str, cfg: Config, width: int = 4) -> str:
    # a stand-in checkpoint (JSON, no torch import: stage processes start faster)
    io.write_json_atomic(path, {"kind": kind, "numel": width * 2, "profile": cfg.profile})
    return path


def train_teacher(cfg: Config, source: str, out_dir: str, tracker: Tracker) -> tuple[str, dict[str, float]]:
    for epoch in range(cfg.teacher.epochs):
        tracker.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch)
    return _ckpt(io.join(out_dir, "teacher.pt"), "teacher", cfg), {"mAP": 0.5, "rank1": 0.7}


def refine_chain(
    cfg: Config, teacher_ckpt: str, width: int, out_dir: str, tracker: Tracker
) -> tuple[str, dict[str, float]]:
    assert io.exists(teacher_ckpt), teacher_ckpt
    for epoch in range(cfg.chain.epochs):
        tracker.log_metrics({"refine_loss": 1.0 / (epoch + 1)}, step=epoch)
    _ckpt(io.join(out_dir, "teacher_refined.pt"), "teacher", cfg)  # as the real backend: chain + refined teacher
    return _ckpt(io.join(out_dir, "chain.pt"), "chain", cfg, width), {"mAP": 0.3, "rank1": 0.5}


def train_cell(
    cfg: Config, cell: GridCell, paths: Paths, out_dir: str, tracker: Tracker
) -> tuple[str, dict[str, float]]:
    kill = os.environ.get("OSKT_FAKE_KILL_CELL")
    markers = os.environ.get("OSKT_FAKE_MARKERS", "")
    if markers:
        with open(os.path.join(markers, ATTEMPTS_FILE), "a") as f:
            f.write(f"{cell.name} {os.getpid()} threads={_threads()}\n")
    if kill and kill in cell.name:
        marker = os.path.join(markers, f"killed-{cell.name}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("OSKT_FAKE_SLEEP", "0")))
    for epoch in range(cfg.students.epochs):
        tracker.log_metrics({"loss": 1.0 / (epoch + 1), "lr": 1e-3}, step=epoch)
    bonus = {"oskt": 0.2, "kdpp": 0.1, "wtsel": 0.08, "depgraph": 0.05, "scratch": 0.0}[cell.method]
    base = 0.3 + 0.05 * int(cell.student.lstrip("S") or 1) + bonus
    noise = 0.02 * _score(cell.name)
    metrics = {"mAP": min(base + noise, 0.99), "rank1": min(base + 0.2 + noise, 0.99)}
    return _ckpt(io.join(out_dir, "student.pt"), "student", cfg), metrics


def complexity(cfg: Config, checkpoint: str) -> dict[str, float]:
    n = io.read_json(checkpoint)["numel"]
    return {"params": float(n * 1000), "macs": float(n * 1e6)}


def _threads() -> int:
    """torch's thread count in this process (torch is imported only if something else already did)."""
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else int(os.environ.get("OMP_NUM_THREADS", "0"))
