"""Training throughput: ``finetune_student`` (real data loader on the embedded synthetic set, augmentation, losses,
checkpointing, tracker logging) against a bare forward/backward loop over preloaded tensors, for the same model,
batch and losses, in one run. Goal: ratio >= 0.90.

The pipeline uses the configured data path (``data.cache``, default ``auto``: the decode-once uint8 cache with
augmentation on the device when the images fit; ``--set data.cache=none`` measures the PIL loader). The bare loop
runs before the pipeline and after each of its epochs; ratio = median over epochs 2.. of (epoch images/s) / (mean of
the bare runs either side), which cancels most of the drift of a shared machine's load.

Usage: .venv/bin/python bench/train_throughput.py [--quick] [--device auto|cpu|cuda] [--student S1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oskt.config import load_config  # noqa: E402
from oskt.data import load_dataset, make_synthetic, use_memory_cache  # noqa: E402
from oskt.jobs import spec_of  # noqa: E402
from oskt.models import build_model, load_model, save_model  # noqa: E402
from oskt.pipeline.graph import finetune_job, run_options  # noqa: E402
from oskt.runtime import select_device  # noqa: E402
from oskt.tracking import MemoryTracker  # noqa: E402
from oskt.train import ReIDLoss, build_optimizer, finetune_student  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """Forward + losses + backward + optimiser steps over one preloaded float batch on the device (no data
    pipeline, no loop bookkeeping): the same model (from ``init``), batch (P x K), losses and optimisers as the
    pipeline. ``run(iters)`` returns images/s."""

    def __init__(self, cfg, init: str, num_classes: int, device: torch.device) -> None:  # noqa: ANN001
        self.cfg, self.device = cfg, device
        model, _ = load_model(init)
        self.model = model.to(device).train()
        self.loss = ReIDLoss(cfg.train, num_classes, model.spec.feat_dim).to(device)
        self.opt = build_optimizer(model.named_parameters(), cfg.train)
        center = self.loss.center
        self.copt = torch.optim.SGD(center.parameters(), lr=cfg.train.center_lr) if center is not None else None
        self.amp = cfg.train.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        p, k = cfg.train.ids_per_batch, cfg.train.images_per_id
        self.x = torch.randn(p * k, 3, cfg.data.height, cfg.data.width, device=device)
        self.y = torch.arange(p, device=device).repeat_interleave(k)
        for _ in range(3):
            self._step()

    def _step(self) -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            total = self.loss(self.model(self.x), self.y)["total"]
        self.opt.zero_grad(set_to_none=True)
        if self.copt:
            self.copt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt)
        if self.copt:
            self.scaler.unscale_(self.copt)
            for q in self.loss.center.parameters():
                q.grad.mul_(1.0 / self.cfg.train.center_weight)
            self.scaler.step(self.copt)
        self.scaler.update()

    def run(self, iters: int) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self._step()
        _sync(self.device)
        return iters * self.x.shape[0] / (time.perf_counter() - t0)


def bare_loop(cfg, init: str, num_classes: int, iters: int, device: torch.device) -> float:  # noqa: ANN001
    """Images/s of :class:`BareLoop` over ``iters`` steps (after 3 warm-up steps)."""
    return BareLoop(cfg, init, num_classes, device).run(iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 1 min on 2 CPU cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--student", default="S1")
    ap.add_argument("--profile", default="quick", help="config profile the recipe / input size come from")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    epochs, iters = (5, 8) if args.quick else (6, 30)
    synth = (
        "{train_ids: 32, test_ids: 8, images_per_id: 8, height: 128, width: 64, seed: 0}"
        if args.quick
        else "{train_ids: 150, test_ids: 20, images_per_id: 16, height: 128, width: 64, seed: 0}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            profile=args.profile,
            overrides=[
                f"data.root={tmp}",
                f"data.synthetic={synth}",
                f"compute.device={args.device}",
                "train.progress=false",
                f"students.epochs={epochs}",
                "students.milestones=[]",
                f"train.max_iters_per_epoch={iters}",
                "train.eval_every=0",
                *args.overrides,
            ],
        )
        device = select_device(cfg.compute.device)
        t0 = time.perf_counter()
        make_synthetic(str(Path(tmp) / cfg.data.datasets["synth_a"].path), cfg.data.synthetic, "a")
        ds = load_dataset("synth_a", cfg.data)
        setup_s = time.perf_counter() - t0
        spec = spec_of(cfg.teacher, args.student, (cfg.data.height, cfg.data.width))
        init = str(Path(tmp) / "init.pt")
        save_model(init, build_model(spec, ds.num_train_pids), "student")
        # Shared machines are noisy (other jobs come and go): the bare loop runs right before the pipeline and
        # after each of its epochs (an epoch hook, outside the epoch's timing), and each pipeline epoch is compared
        # with the mean of the bare runs on either side of it; the ratio is the median over the epochs after the
        # first (which warms up).
        bare_model = BareLoop(cfg, init, ds.num_train_pids, device)
        bare_runs = [bare_model.run(iters)]
        tracker = MemoryTracker()
        t0 = time.perf_counter()
        job = finetune_job(cfg, "synth_a", upstream="bench", seed=0)
        result = finetune_student(
            job,
            init,
            str(Path(tmp) / "run"),
            run=run_options(cfg),
            tracker=tracker,
            callbacks=[lambda epoch, record: bare_runs.append(bare_model.run(iters))],
        )
        run_s = time.perf_counter() - t0
        per_epoch = [h["images_per_s"] for h in result.history]
        ratios = [per_epoch[e] / ((bare_runs[e] + bare_runs[e + 1]) / 2) for e in range(len(per_epoch))]
        ratio = statistics.median(ratios[1:] if len(ratios) > 1 else ratios)
        pipeline = statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)
        bare = statistics.median(bare_runs[1:] if len(bare_runs) > 2 else bare_runs)
        cached = use_memory_cache(len(ds.train), cfg.data)
    out = {
        "device": str(device),
        "student": spec.name,
        "batch": cfg.train.batch_size,
        "input": [cfg.data.height, cfg.data.width],
        "data_cache": f"{cfg.data.cache} -> {'memory' if cached else 'none'}",
        "num_workers": 0 if cached else cfg.data.num_workers,
        "epochs": epochs,
        "iters_per_epoch": iters,
        "pipeline_images_per_s": pipeline,
        "pipeline_per_epoch": per_epoch,
        "bare_images_per_s": bare,
        "bare_runs": bare_runs,
        "ratio_per_epoch": ratios,
        "ratio_best_vs_best": max(per_epoch[1:] or per_epoch) / max(bare_runs),
        "amp": cfg.train.amp,
        "ratio": ratio,
        "finetune_seconds": run_s,
        "data_setup_seconds": setup_s,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for k in (
        "device",
        "student",
        "batch",
        "data_cache",
        "pipeline_images_per_s",
        "bare_images_per_s",
        "finetune_seconds",
    ):
        print(f"{k}: {out[k]:.1f}" if isinstance(out[k], float) else f"{k}: {out[k]}")
    print(f"train_throughput: ratio={ratio:.3f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
