"""How hard is the embedded synthetic data set? Generation time and the mAP of untrained features.

Generates both quick-profile domains (150 train + 150 test ids x 16 images, stored 128x64) into a temporary
folder, times it, then evaluates on each test split (standard rule) at the quick input size 64x32:

- raw pixels: the flattened, L2-normalised image;
- a randomly initialised small CNN (torchvision ResNet-18, no weights), global-average-pooled.

Both should be well under 50 % mAP (the data set must not be trivially separable).

    python bench/synthetic_difficulty.py [--quick]   # --quick: 40 test ids, same images per id

Last line: ``synthetic_difficulty: raw_pixels_mAP=<a> random_cnn_mAP=<b>``; figures go to
``bench/results/synthetic_difficulty.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import torch

from oskt.config import DataConfig, SynthConfig
from oskt.data import build_test_loader, load_layout, make_synthetic
from oskt.eval import compute_metrics, extract_features


class _Flatten(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _random_cnn() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    return net


class _Probe(torch.nn.Module):
    """ResNet-18 + BNNeck + classifier (a BoT-like model) used only to check the data set is learnable."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = _random_cnn()
        self.bn = torch.nn.BatchNorm1d(512)
        self.bn.bias.requires_grad_(False)
        self.fc = torch.nn.Linear(512, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return (self.fc(self.bn(f)), f) if self.training else self.bn(f)


def _train_probe(ds, data: DataConfig, epochs: int, device: str, ids_per_batch: int) -> torch.nn.Module:
    """CE (label smoothing 0.1) + batch-hard triplet (0.3), Adam 3.5e-4: the BoT recipe, shortened."""
    from oskt.config import TrainConfig
    from oskt.data import build_train_loader

    train = TrainConfig(ids_per_batch=ids_per_batch, images_per_id=4)
    loader = build_train_loader(ds.train, data, train, "resnet", seed=0)
    model = _Probe(ds.num_train_pids).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4, weight_decay=5e-4)
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    with torch.enable_grad():
        for _ in range(epochs):
            model.train()
            for imgs, pids, _ in loader:
                imgs, pids = imgs.to(device), pids.to(device)
                logits, f = model(imgs)
                d = torch.cdist(f, f)
                same = pids[:, None] == pids[None, :]
                hard_pos = (d * same).max(1).values
                hard_neg = (d + same * 1e6).min(1).values
                loss = ce(logits, pids) + torch.relu(hard_pos - hard_neg + 0.3).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="40 train / 40 test ids instead of 150 / 150")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="also train a ResNet-18 probe this many epochs per domain (learnability check)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ids-per-batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--domains", default="ab", help="domains to evaluate (both are always generated)")
    args = p.parse_args(argv)
    n = 40 if args.quick else 150
    synth = SynthConfig(train_ids=n, test_ids=n, images_per_id=16, height=128, width=64, seed=0)
    data = DataConfig(
        root="unused", sources=("synth_a",), height=64, width=32, num_workers=args.workers, normalize="imagenet"
    )
    figures: dict[str, object] = {"synthetic": dataclasses.asdict(synth), "input": [data.height, data.width]}
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for d in ("a", "b"):
            make_synthetic(os.path.join(tmp, f"synth_{d}"), synth, d)
        figures["generation_s_both_domains"] = round(time.perf_counter() - t0, 2)
        for d in args.domains:
            ds = load_layout(os.path.join(tmp, f"synth_{d}"), "market1501", name=f"synth_{d}")
            models = [("raw_pixels", _Flatten()), ("random_cnn", _random_cnn())]
            if args.train_epochs:
                t1 = time.perf_counter()
                models.append(
                    (
                        f"trained_resnet18_{args.train_epochs}ep",
                        _train_probe(ds, data, args.train_epochs, args.device, args.ids_per_batch),
                    )
                )
                figures[f"{d}/train_s"] = round(time.perf_counter() - t1, 1)
            for name, model in models:
                model.to(args.device)
                q = extract_features(model, build_test_loader(ds.query, data, 256, "resnet"), args.device)
                g = extract_features(model, build_test_loader(ds.gallery, data, 256, "resnet"), args.device)
                m = compute_metrics(q[0], g[0], q[1], g[1], q[2], g[2])
                figures[f"{d}/{name}"] = {
                    "mAP": round(m.mAP, 4),
                    "rank1": round(m.rank1, 4),
                    "queries": m.num_valid,
                    "gallery": len(g[1]),
                }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synthetic_difficulty.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures, indent=2))
    print(
        f"synthetic_difficulty: raw_pixels_mAP={figures['a/raw_pixels']['mAP']:.3f} "  # type: ignore[index]
        f"random_cnn_mAP={figures['a/random_cnn']['mAP']:.3f} (domain a; goal: well under 0.5)"
    )  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
