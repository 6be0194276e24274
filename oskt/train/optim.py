"""Optimisers, learning-rate schedules and mixed precision (../shared/SPEC.md §4.3).

* CNN (BoT): Adam, lr 3.5e-4, wd 5e-4; linear warmup from ``warmup_factor·lr`` then ×``gamma`` at each milestone,
  stepped once per epoch.
* ViT (TransReID/PASS): SGD momentum 0.9, lr 4e-4, wd 1e-4, bias lr ×``bias_lr_factor``; timm's
  ``CosineLRScheduler`` with warmup from ``warmup_factor·lr`` down to ``min_lr_factor·lr``.

Both schedules are set from the epoch number alone (``schedule.step(epoch)`` with the 0-based epoch about to run),
so a resumed run gets exactly the learning rates of an uninterrupted one. As in the reference code (ignite's
``EPOCH_STARTED`` hook in BoT, ``scheduler.step(epoch)`` with 1-based epochs in TransReID), epoch ``e`` uses the
schedule value at ``t = e + 1``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import nn

from oskt.config import TrainConfig


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], train: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over the trainable parameters; biases get ``lr × bias_lr_factor`` (SPEC.md §4.3).

    Args:
        named_params: ``module.named_parameters()`` (frozen parameters are skipped; duplicates are removed).
        train: the recipe.
    """
    seen: set[int] = set()
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (biases if name.endswith("bias") else weights).append(p)
    groups: list[dict[str, Any]] = []
    if weights:
        groups.append({"params": weights, "lr": train.lr, "weight_decay": train.weight_decay})
    if biases:
        groups.append({"params": biases, "lr": train.lr * train.bias_lr_factor, "weight_decay": train.weight_decay})
    for g in groups:
        g["initial_lr"] = g["lr"]
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


class Schedule(Protocol):
    """An epoch-indexed learning-rate schedule."""

    def step(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def warmup_multistep_factor(
    t: int, milestones: Iterable[int], gamma: float, warmup_epochs: int, warmup_factor: float
) -> float:
    """BoT ``WarmupMultiStepLR`` factor at (1-based) epoch ``t``: linear warmup ``warmup_factor → 1`` over
    ``warmup_epochs`` times ``gamma ** #(milestones <= t)``."""
    warm = 1.0
    if t < warmup_epochs:
        alpha = t / warmup_epochs
        warm = warmup_factor * (1.0 - alpha) + alpha
    return warm * gamma ** bisect.bisect_right(sorted(milestones), t)


class WarmupMultiStep:
    """Linear warmup then multistep decay, set per epoch (SPEC.md §4.3, CNN)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Iterable[int],
        gamma: float,
        warmup_epochs: int,
        warmup_factor: float,
    ) -> None:
        self.optimizer = optimizer
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.warmup_factor = warmup_factor
        self.epoch = -1
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def step(self, epoch: int) -> None:
        self.epoch = epoch
        f = warmup_multistep_factor(epoch + 1, self.milestones, self.gamma, self.warmup_epochs, self.warmup_factor)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", -1))


class Cosine:
    """timm ``CosineLRScheduler`` with warmup (SPEC.md §4.3, ViT), set per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, train: TrainConfig) -> None:
        from timm.scheduler import CosineLRScheduler

        self.sched = CosineLRScheduler(
            optimizer,
            t_initial=max(1, epochs),
            lr_min=train.lr * train.min_lr_factor,
            warmup_t=train.warmup_epochs,
            warmup_lr_init=train.lr * train.warmup_factor,
            cycle_limit=1,
            t_in_epochs=True,
        )

    def step(self, epoch: int) -> None:
        self.sched.step(epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state)


def build_schedule(
    optimizer: torch.optim.Optimizer, train: TrainConfig, epochs: int, milestones: Iterable[int]
) -> Schedule:
    """The schedule ``train.scheduler`` names, for a phase of ``epochs`` epochs with its own ``milestones``."""
    if train.scheduler == "cosine":
        return Cosine(optimizer, epochs, train)
    return WarmupMultiStep(optimizer, milestones, train.gamma, train.warmup_epochs, train.warmup_factor)


def build_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for AMP on CUDA (a pass-through on CPU)."""
    return torch.amp.GradScaler("cuda", enabled=bool(amp and device.type == "cuda"))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (the non-bias weights)."""
    return float(optimizer.param_groups[0]["lr"])
