"""The epoch loop as plain functions with callbacks (no engine class).

``run_epochs`` drives ``train_epoch`` from ``start_epoch`` to ``epochs``; after every epoch it calls the callbacks
with the epoch's record (mean loss parts, lr, throughput), in order. The entry points in :mod:`oskt.train.api`
add evaluation, tracker logging and checkpointing as callbacks.

Exact resume: before each epoch every RNG (Python, NumPy, torch, CUDA, and the data loader's samplers) is reseeded
from ``(seed, epoch)``, so data order, augmentation and dropout of epoch ``e`` do not depend on what ran before —
a run resumed after epoch ``k`` sees the same batches as an uninterrupted one.

Device-side augmentation: a loader with a ``device_transform`` attribute hands out raw batches (e.g. uint8 images
from a decode-once cache); the loop applies ``loader.device_transform(images)`` after moving them to the device.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from oskt.runtime import autocast, seed_everything
from oskt.train.losses import rescale_center_grads
from oskt.train.optim import Schedule, current_lr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """Where a training step is: 0-based ``epoch``, global ``iteration`` and the phase's ``total`` iterations."""

    epoch: int
    iteration: int
    total: int


LossFn = Callable[[Tensor, Tensor, Step], dict[str, Tensor]]
"""``loss_fn(images, pids, step) -> {"part": tensor, ..., "total": tensor}`` (runs under autocast)."""

EpochCallback = Callable[[int, dict[str, float]], None]
"""``callback(epoch, record)`` after each epoch (``epoch`` is 0-based; callbacks may add keys to ``record``)."""


@dataclass
class Trainable:
    """Everything one phase optimises and checkpoints.

    Attributes:
        modules: named modules whose ``state_dict`` is checkpointed (the model, the losses' centres, an aux loss).
        optimizer: the main optimiser.
        schedule: epoch-indexed lr schedule of ``optimizer``.
        scaler: AMP gradient scaler (disabled on CPU).
        centers: ``(center_loss, weight)`` pairs stepped by ``center_optimizer`` (BoT rescaled gradients).
        center_optimizer: SGD over the centres, or None.
    """

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    centers: list[tuple[nn.Module, float]] = field(default_factory=list)
    center_optimizer: torch.optim.Optimizer | None = None

    def train(self, mode: bool = True) -> None:
        for m in self.modules.values():
            m.train(mode)

    def params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "center_optimizer": self.center_optimizer.state_dict() if self.center_optimizer else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.center_optimizer is not None and state.get("center_optimizer"):
            self.center_optimizer.load_state_dict(state["center_optimizer"])


@dataclass(frozen=True)
class LoopOptions:
    """How to run the epochs of one phase."""

    epochs: int
    iters_per_epoch: int
    seed: int
    device: torch.device
    amp: bool = False
    grad_clip: float = 0.0
    progress: bool = False
    desc: str = "train"


# --------------------------------------------------------------------------------------------------- RNG


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed that depends only on ``(seed, epoch)``."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(epoch)]).generate_state(1)[0])


def _loader_rngs(loader: Any) -> list[Any]:
    """Random generators reachable from a DataLoader (its own, its sampler's and batch sampler's)."""
    found: list[Any] = []
    objs = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    objs.append(getattr(objs[-1], "sampler", None))
    for obj in objs:
        if obj is None:
            continue
        for name in ("generator", "rng", "_rng", "random", "_random", "g", "_g"):
            val = getattr(obj, name, None)
            if isinstance(val, (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)) and all(
                val is not f for f in found
            ):
                found.append(val)
    return found


def seed_loader(loader: Any, seed: int, epoch: int) -> None:
    """Make the loader's order for ``epoch`` a function of ``(seed, epoch)``: ``set_epoch`` where the sampler
    has one, and every reachable generator reseeded."""
    s = epoch_seed(seed, epoch)
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    for g in _loader_rngs(loader):
        if isinstance(g, torch.Generator):
            g.manual_seed(s)
        elif isinstance(g, np.random.Generator):
            g.bit_generator.state = np.random.default_rng(s).bit_generator.state
        elif isinstance(g, np.random.RandomState):
            g.seed(s)
        else:
            g.seed(s)


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA) and the loader's generator states, in a weights-only-loadable form."""
    py = random.getstate()
    npst = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            npst[0],
            torch.from_numpy(np.asarray(npst[1], dtype=np.int64)),
            int(npst[2]),
            int(npst[3]),
            float(npst[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": [g.get_state() for g in _loader_rngs(loader) if isinstance(g, torch.Generator)] if loader else [],
    }
    return state


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader is not None:
        gens = [g for g in _loader_rngs(loader) if isinstance(g, torch.Generator)]
        for g, s in zip(gens, state.get("loader", []), strict=False):
            g.set_state(s)


# --------------------------------------------------------------------------------------------------- loop


def train_epoch(tr: Trainable, loader: Iterable, loss_fn: LossFn, epoch: int, opts: LoopOptions) -> dict[str, float]:
    """One epoch of at most ``opts.iters_per_epoch`` steps; returns mean loss parts, lr, images/s and seconds."""
    from tqdm.auto import tqdm

    tr.train(True)
    n = opts.iters_per_epoch
    names: list[str] = []
    sums: Tensor | None = None  # running sums of the loss parts, on the device: no host sync per step
    images_seen = 0
    bar = tqdm(
        total=n,
        desc=f"{opts.desc} {epoch + 1}/{opts.epochs}",
        unit="it",
        disable=not opts.progress,
        leave=False,
        dynamic_ncols=True,
    )
    # a loader may hand out raw (e.g. uint8, un-augmented) batches and leave augmentation to the device
    device_transform = getattr(loader, "device_transform", None)
    t0 = time.perf_counter()
    it = 0
    for batch in loader:
        images = batch[0].to(opts.device, non_blocking=True)
        pids = batch[1].to(opts.device, non_blocking=True)
        if device_transform is not None:
            images = device_transform(images)
        step = Step(epoch, epoch * n + it, opts.epochs * n)
        with autocast(opts.device, opts.amp):
            parts = loss_fn(images, pids, step)
        tr.optimizer.zero_grad(set_to_none=True)
        if tr.center_optimizer is not None:
            tr.center_optimizer.zero_grad(set_to_none=True)
        tr.scaler.scale(parts["total"]).backward()
        if opts.grad_clip > 0:
            tr.scaler.unscale_(tr.optimizer)
            torch.nn.utils.clip_grad_norm_(tr.params(), opts.grad_clip)
        tr.scaler.step(tr.optimizer)
        if tr.center_optimizer is not None:
            tr.scaler.unscale_(tr.center_optimizer)
            for center, weight in tr.centers:
                rescale_center_grads(center, weight)  # type: ignore[arg-type]
            tr.scaler.step(tr.center_optimizer)
        tr.scaler.update()
        vec = torch.stack([v.detach().float().reshape(()) for v in parts.values()])
        if sums is None:
            names, sums = list(parts), vec
        else:
            sums += vec
        images_seen += images.shape[0]
        it += 1
        if opts.progress:
            if it % 10 == 1:  # reading the loss syncs the device: only now and then
                el = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{float(parts['total']):.3f}", img_s=f"{images_seen / max(el, 1e-9):.0f}", refresh=False
                )
            bar.update(1)
        if it >= n:
            break
    bar.close()
    means = (sums / max(it, 1)).tolist() if sums is not None else []  # waits for the device's queued work
    seconds = time.perf_counter() - t0
    record = {f"loss_{k}" if k != "total" else "loss": v for k, v in zip(names, means, strict=True)}
    record.update(
        lr=current_lr(tr.optimizer), images_per_s=images_seen / max(seconds, 1e-9), seconds=seconds, iters=float(it)
    )
    return record


def duration(seconds: float) -> str:
    """``41 s``, ``5 min``, ``2.3 h`` (ETAs of epoch lines and grid lines)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_epochs(
    tr: Trainable,
    loader: Iterable,
    loss_fn: LossFn,
    opts: LoopOptions,
    *,
    start_epoch: int = 0,
    callbacks: Sequence[EpochCallback] = (),
) -> list[dict[str, float]]:
    """Train epochs ``start_epoch .. opts.epochs−1``; returns their records (callbacks may have extended them).

    Each epoch: reseed from ``(opts.seed, epoch)``, set the lr from the schedule, :func:`train_epoch`, then the
    callbacks in order (evaluation, logging, checkpointing, ...).
    """
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for epoch in range(start_epoch, opts.epochs):
        seed_everything(epoch_seed(opts.seed, epoch))
        seed_loader(loader, opts.seed, epoch)
        tr.schedule.step(epoch)
        record = train_epoch(tr, loader, loss_fn, epoch, opts)
        record["epoch"] = float(epoch + 1)
        seconds_per_epoch = (time.perf_counter() - t_start) / (epoch + 1 - start_epoch)
        left = (opts.epochs - epoch - 1) * seconds_per_epoch
        log.info(
            "%s epoch %d/%d: loss %.4f, lr %.2e, %.1f img/s, %.1f s%s",
            opts.desc,
            epoch + 1,
            opts.epochs,
            record.get("loss", float("nan")),
            record["lr"],
            record["images_per_s"],
            record["seconds"],
            f", ETA {duration(left)}" if epoch + 1 < opts.epochs else "",
        )
        for cb in callbacks:
            cb(epoch, record)
        history.append(record)
    return history
