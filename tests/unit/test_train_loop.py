"""The epoch loop on a stand-in model: loss goes down, epochs depend only on (seed, epoch), state round-trips."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from oskt.config import TrainConfig
from oskt.train.loop import LoopOptions, Trainable, rng_state, run_epochs, set_rng_state
from oskt.train.losses import ReIDLoss
from oskt.train.optim import build_optimizer, build_scaler, build_schedule


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # noqa: ANN202 - tiny models on a shared 2-core machine: intra-op threads only oversubscribe
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Tiny(nn.Module):
    """Stand-in ReID model: training -> (logits, feat), eval -> feat."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 4, 16), nn.ReLU(), nn.Dropout(0.2))
        self.neck = nn.BatchNorm1d(16)
        self.cls = nn.Linear(16, c, bias=False)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        f = self.body(x)
        return (self.cls(self.neck(f)), f) if self.training else self.neck(f)


def _setup(seed: int = 0):  # noqa: ANN202
    torch.manual_seed(123)
    g = torch.Generator().manual_seed(7)
    pids = torch.arange(4).repeat_interleave(8)
    x = torch.randn(32, 3, 8, 4) + pids.view(-1, 1, 1, 1).float()
    loader = DataLoader(
        TensorDataset(x, pids, pids), batch_size=8, sampler=RandomSampler(range(32), generator=g), drop_last=True
    )
    cfg = TrainConfig(lr=3e-3, warmup_epochs=1, center_weight=5e-4)
    model = Tiny()
    loss = ReIDLoss(cfg, 4, 16)
    opt = build_optimizer(model.named_parameters(), cfg)
    center_opt = torch.optim.SGD(loss.center.parameters(), lr=cfg.center_lr)
    tr = Trainable(
        {"model": model, "loss": loss},
        opt,
        build_schedule(opt, cfg, 6, (4,)),
        build_scaler(torch.device("cpu"), False),
        [(loss.center, cfg.center_weight)],
        center_opt,
    )

    def loss_fn(images, pids, step):  # noqa: ANN001, ANN202
        return loss(model(images), pids)

    opts = LoopOptions(epochs=6, iters_per_epoch=4, seed=seed, device=torch.device("cpu"))
    return tr, loader, loss_fn, opts


def test_loss_goes_down_and_callbacks_run() -> None:
    tr, loader, loss_fn, opts = _setup()
    seen: list[int] = []
    hist = run_epochs(tr, loader, loss_fn, opts, callbacks=[lambda e, r: seen.append(e)])
    assert seen == list(range(6))
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert {"loss", "loss_id", "loss_tri", "loss_center", "lr", "images_per_s", "epoch"} <= set(hist[0])
    assert hist[0]["iters"] == 4 and hist[-1]["lr"] < hist[0]["lr"]


def test_resume_in_a_fresh_setup_is_bit_exact() -> None:
    tr, loader, loss_fn, opts = _setup()
    run_epochs(tr, loader, loss_fn, opts)
    full = tr.modules["model"].state_dict()

    tr, loader, loss_fn, opts = _setup()
    saved = {}

    def snap(epoch: int, record: dict) -> None:
        if epoch == 2:
            saved["tr"] = copy.deepcopy(tr.state_dict())
            saved["rng"] = rng_state(loader)

    run_epochs(tr, loader, loss_fn, opts, callbacks=[snap])
    tr2, loader2, loss_fn2, opts2 = _setup()
    torch.manual_seed(999)  # whatever the fresh process did before, the resumed epochs must not depend on it
    tr2.load_state_dict(saved["tr"])
    set_rng_state(saved["rng"], loader2)
    run_epochs(tr2, loader2, loss_fn2, opts2, start_epoch=3)
    for k, v in tr2.modules["model"].state_dict().items():
        assert torch.equal(v, full[k]), k


def test_a_different_seed_changes_the_run() -> None:
    tr, loader, loss_fn, opts = _setup(seed=0)
    a = run_epochs(tr, loader, loss_fn, opts)[-1]["loss"]
    tr, loader, loss_fn, opts = _setup(seed=1)
    b = run_epochs(tr, loader, loss_fn, opts)[-1]["loss"]
    assert a != b


def test_loader_device_transform_is_applied() -> None:
    tr, loader, loss_fn, opts = _setup()
    seen: list[torch.dtype] = []

    class Raw(list):
        def device_transform(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.dtype)
            return x.float() / 255.0

    pids = torch.arange(4).repeat_interleave(2)
    raw = Raw([(torch.randint(0, 255, (8, 3, 8, 4), dtype=torch.uint8), pids, pids)] * 4)
    rec = run_epochs(tr, raw, loss_fn, dataclasses.replace(opts, epochs=1))[0]
    assert seen == [torch.uint8] * 4 and rec["iters"] == 4


def test_grad_clip_bounds_the_update() -> None:
    tr, loader, loss_fn, opts = _setup()
    tr.optimizer = torch.optim.SGD(tr.modules["model"].parameters(), lr=1.0)
    before = [p.detach().clone() for p in tr.modules["model"].parameters()]
    opts = dataclasses.replace(opts, epochs=1, iters_per_epoch=1, grad_clip=1e-3)
    tr.schedule = type("Flat", (), {"step": lambda self, e: None})()
    run_epochs(tr, loader, loss_fn, opts)
    moved = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(tr.modules["model"].parameters(), before, strict=True)]
    )
    assert 0 < moved.norm() <= 1e-3 * 1.0001  # one SGD step of lr 1 with the gradient norm clipped to 1e-3
