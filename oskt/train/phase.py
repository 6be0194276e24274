"""What every training phase shares: resuming from ``last.pt``, per-epoch checkpoints, evaluation and tracker
logging as epoch callbacks, and the ``metrics.json`` / ``TrainResult`` at the end.

A phase writes into its ``out_dir``: ``config.yaml`` (resolved config), ``last.pt`` (``train_state``, rewritten
atomically after every epoch, removed once the run is finished), the final checkpoint(s), ``history.json`` (one
record per epoch) and, last, ``metrics.json`` (final metrics as fractions + seconds + epochs; marks completion).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from oskt import io
from oskt.checkpoint import load_checkpoint, save_checkpoint
from oskt.config import PHASE_PARAMS, Config, fingerprint, write_resolved
from oskt.errors import ConfigError
from oskt.tracking import NullTracker, Tracker
from oskt.train.loop import EpochCallback, LoopOptions, LossFn, Trainable, rng_state, run_epochs, set_rng_state

log = logging.getLogger(__name__)

LAST = "last.pt"
METRICS = "metrics.json"
HISTORY = "history.json"
METRIC_KEYS = ("mAP", "mINP", "rank1", "rank5", "rank10")


def run_key(cfg: Config, phase: str, inputs: dict[str, Any]) -> str:
    """The identity of a phase's run: a hash of the config entries it reads (``PHASE_PARAMS``) and its inputs."""
    return fingerprint(cfg.flat(), PHASE_PARAMS[phase], {"phase": phase, **inputs})


@dataclass(frozen=True)
class TrainResult:
    """What a training entry point returns.

    Attributes:
        checkpoint: the final checkpoint (teacher / student model, or the chain for ``refine_chain``).
        metrics: final evaluation metrics as fractions, plus ``seconds`` and ``epochs``.
        history: one record per epoch (mean loss parts, lr, images/s, eval metrics when evaluated).
        seconds: wall-clock training time over all (resumed) segments.
    """

    checkpoint: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    seconds: float


@dataclass
class Phase:
    """One training phase, ready to run.

    Attributes:
        name: ``teacher``, ``chain`` or ``student`` (progress label, tracker metric prefix).
        cfg: the resolved config (saved with every checkpoint).
        out_dir: the phase's folder.
        tr: what is optimised and checkpointed.
        loader: the training loader.
        loss_fn: ``(images, pids, step) -> parts``.
        opts: loop options (epochs, iterations, seed, device, ...).
        evaluate: returns eval metrics (fractions) for periodic evaluation (``train.eval_every``), or None.
        tracker: where epoch records go.
        callbacks: extra epoch callbacks, run after the checkpoint of the epoch is written.
        spec: the trained model's spec (stored in ``last.pt``).
        key: the run's ``run_key``.
    """

    name: str
    cfg: Config
    out_dir: str
    tr: Trainable
    loader: DataLoader
    loss_fn: LossFn
    opts: LoopOptions
    evaluate: Callable[[], dict[str, float]] | None = None
    tracker: Tracker = field(default_factory=NullTracker)
    callbacks: Sequence[EpochCallback] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    """``run_key`` of this run: stored in ``last.pt`` and ``metrics.json``, compared before either is reused."""


def iters_per_epoch(loader: DataLoader, max_iters: int) -> int:
    """Steps per epoch: one pass over the sampler, capped by ``train.max_iters_per_epoch`` (0 = no cap)."""
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


def finished(out_dir: str, checkpoint: str, key: str) -> TrainResult | None:
    """The result of an already finished run in ``out_dir`` (final checkpoint and metrics.json present, made with
    run key ``key``); None otherwise (a run of another config is trained again, not returned)."""
    mpath = io.join(out_dir, METRICS)
    if not (io.exists(checkpoint) and io.exists(mpath)):
        return None
    data = io.read_json(mpath)
    if data.get("run_key") != key:
        log.info("%s holds a finished run of another config or input: training again", out_dir)
        return None
    flat = {**data, **data["metrics"]} if isinstance(data.get("metrics"), dict) else data  # a wrapping record
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    hpath = io.join(out_dir, HISTORY)
    history = io.read_json(hpath) if io.exists(hpath) else []
    log.info("%s already holds a finished run: skipping", out_dir)
    return TrainResult(checkpoint, metrics, history, float(metrics.get("seconds", 0.0)))


def begin(cfg: Config, out_dir: str, tracker: Tracker | None, params: dict[str, Any]) -> Tracker:
    """Create the folder, write the resolved config, log params once; returns the tracker to use."""
    io.makedirs(out_dir)
    write_resolved(cfg, out_dir)
    tracker = tracker or NullTracker()
    tracker.log_params({**cfg.flat(), **params})
    return tracker


def fit(ph: Phase, resume: bool) -> tuple[list[dict[str, float]], float]:
    """Run the phase's epochs (continuing ``last.pt`` when ``resume``); returns ``(history, seconds)``."""
    last = io.join(ph.out_dir, LAST)
    start, history, seconds_before = 0, [], 0.0
    ck = load_checkpoint(last, kind="train_state") if resume and io.exists(last) else None
    if ck is not None and ck["extra"].get("phase") != ph.name:
        raise ConfigError(f"{last!r} belongs to a {ck['extra'].get('phase')!r} run, not {ph.name!r}")
    if ck is not None and ck["extra"].get("run_key") != ph.key:
        log.info("%s: %s was left by a run of another config or input: starting over", ph.name, last)
        ck = None
    if ck is not None:
        ex = ck["extra"]
        ph.tr.load_state_dict({"modules": ck["state_dict"], **ex["trainer"]})
        set_rng_state(ex["rng"], ph.loader)
        start = int(ex["epoch"]) + 1
        history = list(ex.get("history", []))
        seconds_before = float(ex.get("seconds", 0.0))
        log.info("%s: resuming from %s after epoch %d/%d", ph.name, last, start, ph.opts.epochs)
    t0 = time.perf_counter()

    def evaluate(epoch: int, record: dict[str, float]) -> None:
        every = ph.cfg.train.eval_every
        if ph.evaluate is not None and every > 0 and (epoch + 1) % every == 0 and epoch + 1 < ph.opts.epochs:
            record.update({f"eval_{k}": v for k, v in ph.evaluate().items()})

    def track(epoch: int, record: dict[str, float]) -> None:
        ph.tracker.log_metrics({f"{ph.name}/{k}": float(v) for k, v in record.items()}, step=epoch + 1)

    def checkpoint(epoch: int, record: dict[str, float]) -> None:
        history.append(dict(record))
        state = ph.tr.state_dict()
        extra = {
            "phase": ph.name,
            "run_key": ph.key,
            "epoch": epoch,
            "trainer": {k: v for k, v in state.items() if k != "modules"},
            "rng": rng_state(ph.loader),
            "history": list(history),
            "seconds": seconds_before + time.perf_counter() - t0,
        }
        save_checkpoint(
            last, kind="train_state", state_dict=state["modules"], spec=ph.spec, config=ph.cfg.to_dict(), extra=extra
        )

    run_epochs(
        ph.tr, ph.loader, ph.loss_fn, ph.opts, start_epoch=start, callbacks=[evaluate, track, checkpoint, *ph.callbacks]
    )
    return history, seconds_before + time.perf_counter() - t0


def finish(
    ph: Phase, checkpoint: str, metrics: dict[str, float], history: list[dict[str, float]], seconds: float
) -> TrainResult:
    """Write ``metrics.json`` (which marks the run finished), log the final metrics and ``metrics.json``, drop
    ``last.pt``. Checkpoints are not uploaded here: the caller decides (the pipeline's stages and grid cells log
    them once, under ``checkpoint/``, when ``tracking.log_checkpoints``)."""
    final = {**{k: float(v) for k, v in metrics.items()}, "seconds": float(seconds), "epochs": float(ph.opts.epochs)}
    io.write_json_atomic(io.join(ph.out_dir, HISTORY), history)
    mpath = io.join(ph.out_dir, METRICS)
    io.write_json_atomic(mpath, {**final, "run_key": ph.key})
    ph.tracker.log_metrics({f"{ph.name}/final_{k}": v for k, v in final.items()}, step=ph.opts.epochs)
    ph.tracker.log_artifact(mpath)
    last = io.join(ph.out_dir, LAST)
    if not io.is_url(last) and os.path.exists(last):
        os.remove(last)
    return TrainResult(checkpoint, final, history, float(seconds))


def metrics_dict(m: Any) -> dict[str, float]:
    """The scalar fields of a ``ReIDMetrics`` (fractions)."""
    return {k: float(getattr(m, k)) for k in METRIC_KEYS if hasattr(m, k)}
