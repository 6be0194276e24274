"""What every training phase shares — teacher training, chain refinement and student fine-tuning differ in model,
losses and recipe, not in how a phase is set up, resumed and finished (fast-reid's trainer hooks, nanoGPT's one loop).

One path for all three:

1. :func:`open_phase`: a finished run with the job's key is returned at once (``oskt.jobs.reuse``); otherwise the
   folder is created, temp files a killed write left are removed, ``job.json`` records the start, params are logged.
2. :func:`train_phase`: the optimiser / schedule / scaler / centre optimiser from the recipe, the P×K loader, and
   the epochs (``oskt.train.loop.run_epochs``), resuming ``last.pt`` when it was written by the same job
   (``train_state`` checkpoint rewritten atomically after every epoch), with evaluation / tracking / checkpointing
   as epoch callbacks.
3. :func:`close_phase`: ``history.json``, then ``result.json`` (the completion marker, ``oskt.jobs.record_result``),
   then ``last.pt`` is removed; final metrics logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from oskt import io
from oskt.checkpoint import load_checkpoint, save_checkpoint
from oskt.config import InputConfig, Recipe
from oskt.data.records import ReIDDataset
from oskt.data.refs import DatasetRef
from oskt.errors import CheckpointError, ConfigError
from oskt.jobs import JOB_FILE, Job, JobRecord, RunOptions, describe, flatten, job_key, record_result, reuse, start_job
from oskt.tracking import NullTracker, Tracker
from oskt.train.loop import EpochCallback, LoopOptions, LossFn, Trainable, rng_state, run_epochs, set_rng_state
from oskt.train.losses import ReIDLoss
from oskt.train.optim import build_optimizer, build_scaler, build_schedule

log = logging.getLogger(__name__)

LAST = "last.pt"
HISTORY = "history.json"
METRIC_KEYS = ("mAP", "mINP", "rank1", "rank5", "rank10")


@dataclass(frozen=True)
class PhaseRun:
    """What :func:`train_phase` did: the history of every epoch, the seconds over all segments, and of those the
    seconds restored from an earlier (killed) attempt."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    earlier_seconds: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """What a training entry point returns.

    Attributes:
        checkpoint: the final checkpoint (teacher / student model, or the chain for ``refine_chain``).
        metrics: final evaluation metrics as fractions, plus ``seconds`` and ``epochs``.
        history: one record per epoch (mean loss parts, lr, images/s, eval metrics when evaluated).
        seconds: wall-clock training time over all (resumed) segments.
        files: every named output file (``checkpoint``, and e.g. ``refined_teacher``).
        reused: True when the folder already held the finished run.
        earlier_seconds: the part of ``seconds`` that earlier attempts spent (all of it when reused, the restored
            segments' when resumed, 0 when trained in one go): a caller timing its own attempt adds it.
    """

    checkpoint: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    reused: bool = False
    earlier_seconds: float = 0.0


def load_checked(ref: DatasetRef, policy: str, run: RunOptions, out_dir: str) -> ReIDDataset:
    """The data set, every train / query / gallery image decoded once before any training (a corrupt gallery image
    is an error now, not after the last epoch; ``data.bad_images=skip`` drops it). Good images are remembered by
    size and mtime in ``run.image_cache`` (default: the phase's folder), so reruns don't decode them again."""
    from oskt.data import verify_images

    cache = run.image_cache or io.join(out_dir, "image_check.json")
    return verify_images(ref.load(), cache, policy).dataset


def _result(rec: JobRecord, out_dir: str) -> TrainResult:
    hpath = io.join(out_dir, HISTORY)
    history = io.read_json(hpath) if io.exists(hpath) else []
    return TrainResult(
        rec.checkpoint,
        dict(rec.metrics),
        history,
        rec.seconds,
        dict(rec.files),
        reused=True,
        earlier_seconds=rec.seconds,
    )


def _remove_last(out_dir: str) -> None:
    last = io.join(out_dir, LAST)
    if not io.is_url(last) and os.path.exists(last):
        os.remove(last)


def open_phase(
    job: Job, out_dir: str, *, resume: bool, tracker: Tracker | None, params: dict[str, Any] | None = None
) -> tuple[TrainResult | None, Tracker]:
    """Start a phase in ``out_dir``: the finished result when ``resume`` and the folder holds it (a ``last.pt`` this
    job left, killed between its two final writes, is removed; another job's is kept), else ``(None, tracker)``
    with the folder ready."""
    if resume and (done := reuse(out_dir, job)) is not None:
        log.info("%s already holds the finished %s job %s: skipping", out_dir, job.kind, job_key(job))
        started = io.join(out_dir, JOB_FILE)
        if io.exists(started) and io.read_json(started).get("key") == done.key:
            _remove_last(out_dir)  # this job's own last.pt, left by a kill between its two final writes
        return _result(done, out_dir), tracker or NullTracker()
    io.makedirs(out_dir)
    if not io.is_url(out_dir):  # temp files a killed atomic write left here (a live writer's are kept)
        io.remove_stale_temps(out_dir)
    start_job(out_dir, job)
    tracker = tracker or NullTracker()
    tracker.log_params({**flatten(describe(job)), **(params or {})})
    return None, tracker


@dataclass
class Phase:
    """One training phase, ready to run (built by the entry points in :mod:`oskt.train.api`).

    Attributes:
        name: ``teacher``, ``chain`` or ``student`` (progress label, tracker metric prefix, ``last.pt`` owner).
        job: the job this phase runs (its key guards ``last.pt``; its identity is saved with it).
        out_dir: the phase's folder.
        modules: named modules whose state is checkpointed (the model, the losses' centres, an aux loss).
        params: what the optimiser trains.
        losses: the ReID losses (their centres get the centre optimiser).
        loss_fn: ``(images, pids, step) -> parts``.
        records: the training images.
        family: ``resnet`` or ``vit`` (transforms).
        recipe: optimiser, schedule, batch and epochs.
        input: image input settings.
        seed: data order / augmentation seed.
        spec: the trained model's spec (stored in ``last.pt``).
        evaluate: returns eval metrics (fractions) for periodic evaluation (``recipe.eval_every``), or None.
        desc: progress label.
    """

    name: str
    job: Job
    out_dir: str
    modules: dict[str, nn.Module]
    params: Iterable[tuple[str, nn.Parameter]]
    losses: Sequence[ReIDLoss]
    loss_fn: LossFn
    records: Sequence[Any]
    family: str
    recipe: Recipe
    input: InputConfig
    seed: int
    spec: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[], dict[str, float]] | None = None
    desc: str = ""


def iters_per_epoch(loader: DataLoader, max_iters: int) -> int:
    """Steps per epoch: one pass over the sampler, capped by ``max_iters_per_epoch`` (0 = no cap)."""
    try:
        n = len(loader)
    except TypeError:
        if max_iters <= 0:
            raise ConfigError("the training loader has no length: set train.max_iters_per_epoch") from None
        return max_iters
    if n == 0:
        raise ConfigError(
            "the training loader yields no batch: too few identities for train.ids_per_batch × train.images_per_id"
        )
    return min(n, max_iters) if max_iters > 0 else n


def make_trainable(
    modules: dict[str, nn.Module],
    params: Iterable[tuple[str, nn.Parameter]],
    losses: Sequence[ReIDLoss],
    recipe: Recipe,
    device: torch.device,
) -> Trainable:
    """Optimiser (the recipe's base rate), schedule, AMP scaler and the centres' own SGD (BoT) of one phase."""
    optimizer = build_optimizer(params, recipe)
    centers = [(lo.center, lo.center_weight) for lo in losses if lo.center is not None]
    center_opt = (
        torch.optim.SGD([p for c, _ in centers for p in c.parameters()], lr=recipe.center_lr) if centers else None
    )
    return Trainable(
        modules=modules,
        optimizer=optimizer,
        schedule=build_schedule(optimizer, recipe, max(recipe.epochs, 1), recipe.milestones),
        scaler=build_scaler(device, recipe.amp),
        centers=centers,
        center_optimizer=center_opt,
    )


def _load_last(path: str, phase: str, key: str) -> dict[str, Any] | None:
    """``last.pt`` when it was written by this job's phase; None for another job's (started over)."""
    try:
        ck = load_checkpoint(path, kind="train_state")
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete it or pass --restart to start the phase over") from None
    if ck["extra"].get("phase") != phase:
        raise ConfigError(f"{path!r} belongs to a {ck['extra'].get('phase')!r} run, not {phase!r}")
    if ck["extra"].get("job_key") != key:
        log.info("%s: %s was left by another job: starting over", phase, path)
        return None
    return ck


def train_phase(
    ph: Phase,
    *,
    run: RunOptions,
    device: torch.device,
    tracker: Tracker,
    resume: bool,
    callbacks: Sequence[EpochCallback] = (),
) -> PhaseRun:
    """Run the phase's epochs (continuing ``last.pt`` when ``resume``)."""
    from oskt.data import build_train_loader

    reset_peak_memory(device)
    tr = make_trainable(ph.modules, ph.params, ph.losses, ph.recipe, device)
    loader = build_train_loader(ph.records, ph.input, ph.recipe, ph.family, ph.seed)
    opts = LoopOptions(
        epochs=ph.recipe.epochs,
        iters_per_epoch=iters_per_epoch(loader, ph.recipe.max_iters_per_epoch),
        seed=ph.seed,
        device=device,
        amp=ph.recipe.amp,
        grad_clip=ph.recipe.grad_clip,
        progress=run.progress,
        desc=ph.desc or ph.name,
    )
    key = job_key(ph.job)
    last = io.join(ph.out_dir, LAST)
    start, history, seconds_before = 0, [], 0.0

    def track(epoch: int, record: dict[str, float]) -> None:
        tracker.log_metrics({f"{ph.name}/{k}": float(v) for k, v in record.items()}, step=epoch + 1)

    ck = _load_last(last, ph.name, key) if resume and io.exists(last) else None
    if ck is not None:
        ex = ck["extra"]
        tr.load_state_dict({"modules": ck["state_dict"], **ex["trainer"]})
        set_rng_state(ex["rng"], loader)
        start = int(ex["epoch"]) + 1
        history = list(ex.get("history", []))
        seconds_before = float(ex.get("seconds", 0.0))
        log.info("%s: resuming from %s after epoch %d/%d", ph.name, last, start, opts.epochs)
        for rec in history:  # this attempt's run (MLflow: a new one) gets the whole curve, not only what follows
            track(int(rec["epoch"]) - 1, rec)
    t0 = time.perf_counter()

    def evaluate(epoch: int, record: dict[str, float]) -> None:
        every = ph.recipe.eval_every
        if ph.evaluate is not None and every > 0 and (epoch + 1) % every == 0 and epoch + 1 < opts.epochs:
            record.update({f"eval_{k}": v for k, v in ph.evaluate().items()})

    def checkpoint(epoch: int, record: dict[str, float]) -> None:
        history.append(dict(record))
        state = tr.state_dict()
        extra = {
            "phase": ph.name,
            "job_key": key,
            "epoch": epoch,
            "trainer": {k: v for k, v in state.items() if k != "modules"},
            "rng": rng_state(loader),
            "history": list(history),
            "seconds": seconds_before + time.perf_counter() - t0,
        }
        save_checkpoint(
            last, kind="train_state", state_dict=state["modules"], spec=ph.spec, config=describe(ph.job), extra=extra
        )

    run_epochs(tr, loader, ph.loss_fn, opts, start_epoch=start, callbacks=[evaluate, track, checkpoint, *callbacks])
    return PhaseRun(history, seconds_before + time.perf_counter() - t0, seconds_before)


def reset_peak_memory(device: torch.device) -> None:
    """Start the phase's peak-memory count: CUDA's ``max_memory_allocated``, and on Linux the resident set's
    high-water mark (``/proc/self/clear_refs``: a Ray worker trains many cells, and without the reset each cell
    would report the largest peak of the cells before it)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux (or not allowed): the process-lifetime peak below
        pass


def _rss_high_water_mib() -> float:
    """``VmHWM`` (reset by :func:`reset_peak_memory`), else the process-lifetime ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of the phase: resident set size (MiB; what a CPU phase costs) and on CUDA
    ``max_memory_allocated`` (MiB), both since ``train_phase`` reset them (:func:`reset_peak_memory`)."""
    out = {"peak_rss_mib": _rss_high_water_mib()}
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def close_phase(
    ph_name: str,
    job: Job,
    out_dir: str,
    *,
    files: dict[str, str],
    metrics: dict[str, float],
    phase: PhaseRun,
    tracker: Tracker,
) -> TrainResult:
    """``history.json``, then ``result.json`` (marks the job finished), then drop ``last.pt``; log the final
    metrics. Checkpoints are not uploaded here: the pipeline logs them once, under ``checkpoint/``."""
    seconds = float(phase.seconds)
    final = {**{k: float(v) for k, v in metrics.items()}, "seconds": seconds, "epochs": float(job_epochs(job))}
    io.write_json_atomic(io.join(out_dir, HISTORY), phase.history)
    record_result(out_dir, job, files=files, metrics=final, seconds=seconds)
    _remove_last(out_dir)
    tracker.log_metrics({f"{ph_name}/final_{k}": v for k, v in final.items()}, step=job_epochs(job))
    return TrainResult(
        files["checkpoint"], final, phase.history, seconds, dict(files), earlier_seconds=phase.earlier_seconds
    )


def job_epochs(job: Job) -> int:
    return int(job.recipe.epochs)


def metrics_dict(m: Any) -> dict[str, float]:
    """The scalar fields of a ``ReIDMetrics`` (fractions)."""
    return {k: float(getattr(m, k)) for k in METRIC_KEYS if hasattr(m, k)}
