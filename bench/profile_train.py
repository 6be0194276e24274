"""Where the training pipeline loses throughput against the bare loop: data loader alone, the epoch loop over
preloaded batches, and the full pipeline, for one configuration.

Usage: .venv/bin/python bench/profile_train.py [--device cuda] [--set data.num_workers=8 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_throughput import bare_loop  # noqa: E402
from oskt.config import load_config  # noqa: E402
from oskt.data import build_train_loader, load_dataset, make_synthetic  # noqa: E402
from oskt.jobs import spec_of  # noqa: E402
from oskt.models import build_model, load_model, save_model  # noqa: E402
from oskt.runtime import select_device  # noqa: E402
from oskt.train.api import _trainable  # noqa: E402
from oskt.train.loop import LoopOptions, train_epoch  # noqa: E402
from oskt.train.losses import ReIDLoss  # noqa: E402


class CachedUint8(torch.utils.data.Dataset):
    """Prototype of the proposed data-side fix: decode + resize every training image once into one uint8 tensor."""

    def __init__(self, records, height: int, width: int) -> None:  # noqa: ANN001
        import numpy as np
        from PIL import Image

        from oskt.data import read_image

        arr = np.stack([np.asarray(read_image(r.path).resize((width, height), Image.BILINEAR)) for r in records])
        self.images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W] uint8
        self.pids = torch.tensor([r.pid for r in records])
        self.camids = torch.tensor([r.camid for r in records])

    def __len__(self) -> int:
        return len(self.pids)

    def __getitems__(self, idx: list[int]):  # noqa: ANN204 - one gather per batch instead of B item fetches
        i = torch.as_tensor(idx)
        return self.images[i], self.pids[i], self.camids[i]


def gpu_augment(x: torch.Tensor, pad: int, mean, std) -> torch.Tensor:  # noqa: ANN001
    """BoT train augmentation on a uint8 batch, on the device: h-flip 0.5, pad + random crop, normalise,
    random erasing 0.5 (area 0.02-0.4, aspect 0.3-3.33, CIFAR-mean fill)."""
    b, _, h, w = x.shape
    dev = x.device
    x = torch.where((torch.rand(b, device=dev) < 0.5).view(b, 1, 1, 1), x.flip(-1), x)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), device=dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=dev)
    iy = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]
    ix = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]
    x = xp.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], iy, ix].permute(0, 3, 1, 2)
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    x = (x.float() / 255.0 - m) / s
    tries = 10
    area = h * w * torch.empty(b, tries, device=dev).uniform_(0.02, 0.4)
    aspect = torch.empty(b, tries, device=dev).uniform_(0.3, 1 / 0.3)
    eh = (area * aspect).sqrt().round().long()
    ew = (area / aspect).sqrt().round().long()
    ok = (eh < h) & (ew < w)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(b, dtype=torch.long, device=dev))
    eh = eh.gather(1, first[:, None]).squeeze(1)
    ew = ew.gather(1, first[:, None]).squeeze(1)
    do = (torch.rand(b, device=dev) < 0.5) & ok.any(1)
    y0 = (torch.rand(b, device=dev) * (h - eh + 1).clamp(min=1)).long()
    x0 = (torch.rand(b, device=dev) * (w - ew + 1).clamp(min=1)).long()
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    mask = (
        (yy >= y0.view(b, 1, 1))
        & (yy < (y0 + eh).view(b, 1, 1))
        & (xx >= x0.view(b, 1, 1))
        & (xx < (x0 + ew).view(b, 1, 1))
        & do.view(b, 1, 1)
    )
    fill = torch.tensor((0.4914, 0.4822, 0.4465), device=dev).view(1, 3, 1, 1)
    return torch.where(mask[:, None], fill, x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--student", default="S1")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    synth = "{train_ids: 150, test_ids: 20, images_per_id: 16, height: 128, width: 64, seed: 0}"
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            profile="quick",
            overrides=[
                f"data.root={tmp}",
                f"data.synthetic={synth}",
                f"compute.device={args.device}",
                "train.progress=false",
                *args.overrides,
            ],
        )
        device = select_device(cfg.compute.device)
        make_synthetic(str(Path(tmp) / "synth_a"), cfg.data.synthetic, "a")
        ds = load_dataset("synth_a", cfg.data)
        spec = spec_of(cfg.teacher, args.student, (cfg.data.height, cfg.data.width))
        init = str(Path(tmp) / "init.pt")
        save_model(init, build_model(spec, ds.num_train_pids), "student")
        n = args.iters
        res["bare"] = bare_loop(cfg, init, ds.num_train_pids, n, device)

        loader = build_train_loader(ds.train, cfg.data, cfg.train, spec.family, 0)
        for rep in range(2):  # data alone (second pass: workers warm)
            t0, seen = time.perf_counter(), 0
            for i, b in enumerate(loader):
                if i >= n:
                    break
                seen += b[0].shape[0]
            res[f"loader_only_{rep}"] = seen / (time.perf_counter() - t0)

        model, _ = load_model(init)
        model.to(device)
        loss = ReIDLoss(cfg.train, ds.num_train_pids, spec.feat_dim).to(device)
        tr = _trainable(cfg, {"model": model, "loss": loss}, model.named_parameters(), [loss], 10, (), device)
        p, k = cfg.train.ids_per_batch, cfg.train.images_per_id
        batch = (
            torch.randn(p * k, 3, cfg.data.height, cfg.data.width),
            torch.arange(p).repeat_interleave(k),
            torch.zeros(p * k, dtype=torch.long),
        )
        opts = LoopOptions(epochs=10, iters_per_epoch=n, seed=0, device=device, amp=cfg.train.amp)

        def loss_fn(images, pids, step):  # noqa: ANN001, ANN202
            return loss(model(images), pids)

        tr.schedule.step(0)
        for rep in range(2):
            res[f"loop_preloaded_cpu_batch_{rep}"] = train_epoch(tr, [batch] * n, loss_fn, rep, opts)["images_per_s"]
        gb = tuple(t.to(device) for t in batch)
        res["loop_preloaded_gpu_batch"] = train_epoch(tr, [gb] * n, loss_fn, 2, opts)["images_per_s"]
        for rep in range(2):
            res[f"loop_real_loader_{rep}"] = train_epoch(tr, loader, loss_fn, 3 + rep, opts)["images_per_s"]
        # prototype of the proposed fix: decode-once uint8 cache, one gather per batch, augmentation on the device
        from torch.utils.data import DataLoader

        from oskt.data import normalization
        from oskt.data.transforms import pad_for_height

        t0 = time.perf_counter()
        cached = CachedUint8(ds.train, cfg.data.height, cfg.data.width)
        res["cache_build_s"] = time.perf_counter() - t0
        fast = DataLoader(
            cached,
            batch_size=cfg.train.batch_size,
            sampler=loader.sampler,
            drop_last=True,
            collate_fn=lambda b: b,
            pin_memory=device.type == "cuda",
        )
        mean, std = normalization(cfg.data.normalize, spec.family)
        pad = pad_for_height(cfg.data.height)
        fast.device_transform = lambda x: gpu_augment(x, pad, mean, std)  # type: ignore[attr-defined]
        for rep in range(2):
            res[f"loop_fast_loader_{rep}"] = train_epoch(tr, fast, loss_fn, 5 + rep, opts)["images_per_s"]
    res["num_workers"] = cfg.data.num_workers
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
