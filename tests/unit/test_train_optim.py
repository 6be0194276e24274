"""Optimisers and learning-rate schedules (SPEC.md §4.3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oskt.config import TrainConfig
from oskt.train.optim import build_optimizer, build_scaler, build_schedule, current_lr


def _lrs(cfg: TrainConfig, epochs: int, milestones: tuple[int, ...]) -> list[float]:
    opt = build_optimizer(nn.Linear(2, 2).named_parameters(), cfg)
    sched = build_schedule(opt, cfg, epochs, milestones)
    out = []
    for e in range(epochs):
        sched.step(e)
        out.append(current_lr(opt))
    return out


def test_warmup_multistep_curve() -> None:
    cfg = TrainConfig(lr=1.0, warmup_epochs=10, warmup_factor=0.01, gamma=0.1)
    lrs = _lrs(cfg, 100, (40, 70))
    # BoT: epoch t (1-based) -> warmup 0.01·(1 - t/10) + t/10 for t < 10, then ×0.1 from epoch 40 and 70
    assert lrs[0] == pytest.approx(0.01 * 0.9 + 0.1)
    assert lrs[4] == pytest.approx(0.01 * 0.5 + 0.5)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert lrs[9] == pytest.approx(1.0) and lrs[38] == pytest.approx(1.0)
    assert lrs[39] == pytest.approx(0.1) and lrs[68] == pytest.approx(0.1)
    assert lrs[69] == pytest.approx(0.01) and lrs[99] == pytest.approx(0.01)


def test_no_warmup_is_flat_until_milestone() -> None:
    lrs = _lrs(TrainConfig(lr=0.5, warmup_epochs=0), 5, (3,))
    assert lrs == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.05])


def test_cosine_warmup_and_end_value() -> None:
    cfg = TrainConfig(
        optimizer="sgd",
        lr=4e-4,
        scheduler="cosine",
        warmup_epochs=20,
        warmup_factor=0.01,
        min_lr_factor=0.002,
        bias_lr_factor=2.0,
    )
    lrs = _lrs(cfg, 120, ())
    init = 4e-4 * 0.01
    assert lrs[0] == pytest.approx(init + (4e-4 - init) / 20)  # TransReID steps with 1-based epochs
    # warmup over 1-based epochs 1..19, then timm's cosine over the whole run (warmup_prefix=False, as TransReID)
    assert all(a < b for a, b in zip(lrs[:18], lrs[1:19], strict=True))
    assert all(a >= b for a, b in zip(lrs[19:-1], lrs[20:], strict=True))
    assert lrs[19] < 4e-4
    assert lrs[-1] == pytest.approx(4e-4 * 0.002)  # the last epoch reaches lr_min


def test_optimizer_groups_bias_lr_and_frozen() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m[1].bias.requires_grad_(False)
    sgd = build_optimizer(
        m.named_parameters(), TrainConfig(optimizer="sgd", lr=0.1, bias_lr_factor=2.0, weight_decay=1e-4, momentum=0.9)
    )
    assert isinstance(sgd, torch.optim.SGD)
    w, b = sgd.param_groups
    assert w["lr"] == 0.1 and b["lr"] == pytest.approx(0.2) and w["momentum"] == 0.9 and w["weight_decay"] == 1e-4
    assert len(w["params"]) == 2 and len(b["params"]) == 1  # the frozen BN bias is left out
    adam = build_optimizer(m.named_parameters(), TrainConfig())
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 5e-4


def test_scaler_off_on_cpu() -> None:
    assert not build_scaler(torch.device("cpu"), True).is_enabled()
