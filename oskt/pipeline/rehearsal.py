"""The paper-scale rehearsal (issue #18): a paper profile's whole pipeline, cut short, on stand-in data.

A rehearsal is the profile's own config with a few overrides (:func:`rehearsal_overrides`), nothing else: every
source, chain width, student, method and scenario of the profile, at full model and input size, with the profile's
batch, schedulers, milestones and AMP setting, so the same jobs, schedulers, checkpoints, resumes and MLflow runs
are made as on a GPU cluster. What is cut:

- every phase to one epoch of ``iters`` iterations (``train.max_iters_per_epoch``), the distillers' source phases
  (``baselines.<method>.epochs``) to one epoch where the profile has one;
- the data sets to stand-ins in the real layouts (:func:`oskt.data.standin.make_standin`; Market-1501,
  MSMT17_V1, CUHK03-NP, read by the real parsers), small: a few more training ids than one P×K batch holds, a
  handful of test ids, so evaluation runs on a small query / gallery;
- where it runs: its own root (``data/``, ``out/``, ``mlflow.db``, experiment ``rehearsal-<profile>``), CPU (or
  the device given), one CPU per grid cell and no GPU reservation on CPU (a cell asking for the profile's GPU
  would wait forever for a GPU that a CPU machine does not have).

What is added: ``students.methods`` = every registered method (``oskt.config.METHODS``).

:func:`small_overrides` is the reduced rehearsal the test suite runs (one cross-data-set scenario, two students
one of them wide, one chain, a small P×K batch, full model and input size). :func:`rehearsal_summary` says what
finished (every cell's ``result.json`` and its MLflow run); ``oskt.pipeline.cost`` turns the measurements into the
cost of the full profile. The verb that builds the DVC workspace and runs it is ``oskt rehearse`` (``flows/``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from oskt import io
from oskt.config import METHODS, Config, load_config
from oskt.errors import ConfigError
from oskt.jobs import read_result, reuse
from oskt.pipeline.graph import datasets_used, jobs_from_config
from oskt.pipeline.records import Paths

__all__ = [
    "DEFAULT_ITERS",
    "REHEARSAL_PROFILES",
    "RehearsalSummary",
    "rehearsal_config",
    "rehearsal_overrides",
    "rehearsal_summary",
    "report_gaps",
    "small_overrides",
    "standin_sizes",
    "update_record",
    "write_standins",
]

REHEARSAL_PROFILES = ("paper", "paper_vit")
"""Profiles a rehearsal is defined for (the ones meant for a GPU cluster)."""
DEFAULT_ITERS = 2
"""Iterations per phase: two, so that seconds per iteration is not only the first (warm-up) step."""
DISTILLERS_WITH_SOURCE_PHASE = ("kdpp", "ofa", "rsd")
"""``baselines.<method>.epochs``: the source-set distillation phase of a cross-scenario cell."""


def _under(root: str, name: str) -> str:
    """``root/name``; just ``name`` for root ``''`` / ``'.'`` (a DVC workspace reads paths relative to itself)."""
    return name if root in ("", ".") else io.join(root, name)


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _on_gpu(device: str) -> bool:
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def small_overrides(profile: str) -> list[str]:
    """The reduced rehearsal of the test suite and the GPU check: one source (Market-1501), one scenario across data
    sets (Market-1501 → CUHK03-NP: two real layouts, the distillers' source phase), two students of which one wide
    (ResNet: S1, the chain's own width, and S4, expanded; ViT: S1 and S2), one chain, a 4 × 2 P×K batch. Models
    and input size stay full size."""
    _check_profile(profile)
    students = "[S1,S4]" if profile == "paper" else "[S1,S2]"
    width = "[8]" if profile == "paper" else "[120]"
    return [
        "data.sources=[market1501]",
        "students.scenarios=[market1501->cuhk03]",
        f"students.names={students}",
        f"chain.widths={width}",
        "train.ids_per_batch=4",
        "train.images_per_id=2",
    ]


def _check_profile(profile: str) -> None:
    if profile not in REHEARSAL_PROFILES:
        raise ConfigError(f"rehearsal profile {profile!r} is not allowed: expected one of {REHEARSAL_PROFILES}")


def rehearsal_overrides(
    profile: str,
    root: str,
    *,
    iters: int = DEFAULT_ITERS,
    device: str = "cpu",
    small: bool = False,
    cpus: int | None = None,
) -> list[str]:
    """The ``key=value`` overrides that turn ``profile`` into its rehearsal under ``root`` (see the module docstring).

    Args:
        profile: ``paper`` or ``paper_vit``.
        root: the rehearsal's folder ('' or '.' = paths relative to the working directory, as in its DVC workspace).
        iters: iterations of every phase (one epoch each).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        small: the reduced rehearsal of :func:`small_overrides`.
        cpus: torch threads of the teacher / chain stage processes (default: the CPUs this process may use); grid
            cells use one CPU each on CPU.

    Raises:
        ConfigError: an unknown profile or a bad ``iters`` / ``device``.
    """
    _check_profile(profile)
    if iters < 1:
        raise ConfigError(f"rehearsal iters={iters!r} is not allowed: expected an integer >= 1")
    base = load_config(profile=profile)
    out = [
        f"data.root={_under(root, 'data')}",
        f"compute.out_dir={_under(root, 'out')}",
        f"tracking.uri=sqlite:///{_under(root, 'mlflow.db')}",
        f"tracking.experiment=rehearsal-{profile}",
        "teacher.epochs=1",
        "chain.epochs=1",
        "students.epochs=1",
        f"train.max_iters_per_epoch={iters}",
        "train.progress=false",
        "students.methods=[" + ",".join(METHODS) + "]",
        f"compute.device={device}",
        f"compute.num_threads={cpus or _cpus()}",
    ]
    # the distillers' source-set phase runs where the profile has one (one epoch, like every phase)
    for method in DISTILLERS_WITH_SOURCE_PHASE:
        if getattr(base.baselines, method).epochs > 0:
            out.append(f"baselines.{method}.epochs=1")
    if not _on_gpu(device):
        # on CPU: a cell reserving the profile's GPU (compute.gpus_per_task) would never be scheduled; and no loader
        # workers: the profile's 8 per cell are 8 processes importing torch (forkserver) to evaluate a small query /
        # gallery on a machine of a few cores (training images are cached and augmented in-process anyway)
        out += ["compute.gpus_per_task=0", "compute.cpus_per_task=1", "data.num_workers=0"]
    return out + (small_overrides(profile) if small else [])


def rehearsal_config(
    profile: str,
    root: str,
    *,
    iters: int = DEFAULT_ITERS,
    device: str = "cpu",
    small: bool = False,
    overrides: Sequence[str] = (),
) -> Config:
    """The rehearsal's config: the profile, :func:`rehearsal_overrides`, then ``overrides`` (``--set``)."""
    over = rehearsal_overrides(profile, root, iters=iters, device=device, small=small)
    return load_config(profile=profile, overrides=[*over, *overrides])


# ---------------------------------------------------------------------------------------------------- data


def standin_sizes(cfg: Config) -> dict[str, int]:
    """Stand-in sizes for ``cfg``'s P×K batch and iterations per phase: P training ids per iteration and four more
    (the P×K sampler's epoch ends when fewer than P ids have K images left: with P + 4 ids an MSMT17 or CUHK03-NP
    stand-in gave one batch), half a batch of test ids (a small query / gallery), and about K images per id and
    camera (every id is seen by two or more cameras)."""
    p, k = cfg.train.ids_per_batch, cfg.train.images_per_id
    iters = max(1, cfg.train.max_iters_per_epoch)
    return {"ids": p * iters + 4, "test_ids": max(4, p // 2), "images_per_cam": max(2, k - 1)}


def write_standins(cfg: Config, *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """A stand-in for every data set ``cfg`` uses, where ``data.datasets`` expects it (``data.root/<path>``);
    complete identical ones are kept. Returns each one's :func:`~oskt.data.standin.make_standin` summary.

    Raises:
        ConfigError: a used data set whose layout has no stand-in (synthetic, folder, csv).
        DataError: a data set folder holds files oskt did not write (nothing is written then).
    """
    from oskt.data.layouts import dataset_path
    from oskt.data.standin import KINDS, make_standin

    sizes = standin_sizes(cfg)
    out = {}
    for name in datasets_used(cfg):
        layout = cfg.data.datasets[name].layout
        if layout not in KINDS:
            raise ConfigError(f"data.datasets.{name}.layout={layout!r}: a rehearsal writes stand-ins of {KINDS} only")
        out[name] = make_standin(layout, dataset_path(name, cfg.data), seed=seed, **sizes)
    return out


# ---------------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class RehearsalSummary:
    """What a rehearsal finished.

    Attributes:
        profile: the profile rehearsed.
        cells_total: grid cells of the rehearsal's job graph.
        cells_ok: cells whose folder holds their finished ``result.json`` and whose MLflow run finished.
        stages_ok: the DVC stages recorded in ``dvc.lock`` (``prepare``, ``teacher@<source>``, ...).
        jobs_missing: teachers, chains and cells that are not finished (labels), cells without an MLflow run, the
            report's empty entries (:func:`report_gaps`).
        skipped: grid combinations no method can run (label, why), from the job graph.
        peak_rss_mib: the largest resident set size any phase recorded.
        peak_cuda_mib: the largest CUDA ``max_memory_allocated`` any phase recorded (0 on CPU).
        seconds: wall-clock time of the whole run.
    """

    profile: str
    cells_total: int
    cells_ok: int
    stages_ok: tuple[str, ...]
    jobs_missing: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    peak_rss_mib: float = 0.0
    peak_cuda_mib: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.cells_ok == self.cells_total and not self.jobs_missing

    def record(self) -> dict[str, Any]:
        """The ``bench/results/rehearsal.json`` entry (issue #18's fields first, then ``extra``)."""
        return {
            "profile": self.profile,
            "cells_total": self.cells_total,
            "cells_ok": self.cells_ok,
            "stages_ok": list(self.stages_ok),
            "seconds": round(self.seconds, 1),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            **({"peak_cuda_mib": round(self.peak_cuda_mib, 1)} if self.peak_cuda_mib else {}),
            "jobs_missing": list(self.jobs_missing),
            "skipped": [list(s) for s in self.skipped],
            **self.extra,
        }


def dvc_stages(lock: str) -> tuple[str, ...]:
    """The stage names ``dvc.lock`` records (DVC writes a stage there only when it succeeded)."""
    import yaml

    if not os.path.exists(lock):
        return ()
    with open(lock) as f:
        return tuple(sorted((yaml.safe_load(f) or {}).get("stages", {})))


def _finished_runs(cfg: Config) -> set[tuple[str, str]]:
    """(cell label, job key) of every FINISHED cell run in the rehearsal's MLflow experiment."""
    from oskt.pipeline.tracking import search_runs, target_from_config

    target = target_from_config(cfg)
    if not target.enabled:
        return set()
    runs = search_runs(target, "tags.`oskt.kind` = 'cell' and attributes.status = 'FINISHED'")
    return {(r.data.tags.get("oskt.cell", ""), r.data.tags.get("oskt.key", "")) for r in runs}


def report_gaps(markdown: str) -> list[str]:
    """What the report lacks: its "Missing from MLflow" line, and each table entry shown as "—" (no finished run)
    as ``<scenario> / <method> / column <i>``."""
    gaps, scenario = [], ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            scenario = line[3:].strip()
        elif line.startswith("Missing from MLflow"):
            gaps.append(line.split(":")[0])
        elif line.startswith("| ") and not line.startswith(("| Method", "|---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            gaps += [f"{scenario} / {cells[0]} / column {i}" for i, c in enumerate(cells[1:], 1) if c == "—"]
    return gaps


def rehearsal_summary(
    cfg: Config, *, seconds: float = 0.0, lock: str = "dvc.lock", by_record: bool = False
) -> RehearsalSummary:
    """Check a finished rehearsal of ``cfg`` (paths as ``cfg`` names them, relative to the working directory):
    every teacher, chain and cell done by the one reuse rule, every cell with a FINISHED MLflow run of its key.

    Args:
        by_record: take each job's key from its ``result.json`` instead of recomputing it (checking a rehearsal
            trained by an older copy of the code, whose keys the current code may compute differently).
    """
    graph = jobs_from_config(cfg)
    paths = Paths(cfg.compute.out_dir)
    runs = _finished_runs(cfg)
    missing: list[str] = []
    peak_rss = peak_cuda = 0.0
    cells_ok = 0
    for job in graph.jobs():
        rec = read_result(paths.job_dir(job)) if by_record else reuse(paths.job_dir(job), job)
        if rec is None:
            missing.append(f"{job.kind} {job.label}")
            continue
        peak_rss = max(peak_rss, rec.metrics.get("peak_rss_mib", 0.0))
        peak_cuda = max(peak_cuda, rec.metrics.get("peak_cuda_mib", 0.0))
        if job.kind == "cell":
            if (job.label, rec.key) in runs:
                cells_ok += 1
            else:
                missing.append(f"mlflow run of cell {job.label}")
    report = io.join(paths.report_dir(), "report.md")
    if io.exists(report):
        missing += [f"report entry {g}" for g in report_gaps(io.read_bytes(report).decode())]
    else:
        missing.append(f"report {report}")
    return RehearsalSummary(
        profile=cfg.profile,
        cells_total=len(graph.cells),
        cells_ok=cells_ok,
        stages_ok=dvc_stages(lock),
        jobs_missing=tuple(missing),
        skipped=graph.skipped,
        peak_rss_mib=peak_rss,
        peak_cuda_mib=peak_cuda,
        seconds=seconds,
    )


def update_record(path: str, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Set ``entry`` under ``key`` in the JSON file ``path`` (other keys kept; written atomically); returns the
    whole record. A file that is not a JSON object is an error, not overwritten."""
    data: dict[str, Any] = {}
    if io.exists(path):
        try:
            data = json.loads(io.read_bytes(path).decode())
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}): fix or remove it") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} holds a {type(data).__name__}, expected a JSON object of profiles")
    data[key] = entry
    io.write_json_atomic(path, data)
    return data
