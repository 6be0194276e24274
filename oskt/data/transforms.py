"""Train and test transforms (BoT recipe for CNNs, TransReID recipe for ViTs; ../shared/SPEC.md §4.3)."""

from __future__ import annotations

import math
import random

import torch
from torchvision import transforms as T

from oskt.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BoTRandomErasing",
    "build_test_transform",
    "build_train_transform",
    "normalization",
    "pad_for_height",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


def normalization(normalize: str, family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): ``imagenet``, ``half`` (mean = std = 0.5), or ``auto`` = imagenet for resnet, half for vit."""
    if normalize == "auto":
        if family not in ("resnet", "vit"):
            raise ConfigError(f"family={family!r} is not allowed: expected 'resnet' or 'vit'")
        normalize = "imagenet" if family == "resnet" else "half"
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize == "half":
        return HALF, HALF
    raise ConfigError(f"data.normalize={normalize!r} is not allowed: expected auto|imagenet|half")


def pad_for_height(height: int) -> int:
    """BoT pads 10 px at 256 px height; scale with the input height (at least 1 px)."""
    return max(1, round(10 * height / 256))


class BoTRandomErasing:
    """BoT / reid-strong-baseline random erasing: one rectangle filled with a constant per channel.

    Applied to the normalised tensor, exactly as BoT does (its fill constants are the CIFAR means, kept as is).

    Args:
        probability: chance to erase.
        sl: min erased area fraction.
        sh: max erased area fraction.
        r1: min aspect ratio (max = 1 / r1).
        mean: fill value per channel.
    """

    def __init__(
        self,
        probability: float = 0.5,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465),
    ) -> None:
        self.probability, self.sl, self.sh, self.r1, self.mean = probability, sl, sh, r1, mean

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # python's random, like BoT; DataLoader seeds it per worker
        if random.uniform(0, 1) >= self.probability:
            return img
        _, h, w = img.shape
        for _ in range(100):
            area = h * w * random.uniform(self.sl, self.sh)
            aspect = random.uniform(self.r1, 1 / self.r1)
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if ew < w and eh < h:
                y, x = random.randint(0, h - eh), random.randint(0, w - ew)
                for c in range(img.shape[0]):
                    img[c, y : y + eh, x : x + ew] = self.mean[c % len(self.mean)]
                return img
        return img

    def __repr__(self) -> str:
        return f"BoTRandomErasing(p={self.probability}, area=({self.sl}, {self.sh}), r1={self.r1})"


def build_train_transform(height: int, width: int, normalize: str = "auto", family: str = "resnet") -> T.Compose:
    """Resize, h-flip 0.5, pad + random crop, to tensor, normalise, random erasing 0.5.

    CNN: bilinear resize and BoT's erasing; ViT: bicubic resize and timm's ``RandomErasing`` (pixel mode), as in
    the authors' code. The 10-px padding scales with the input height.
    """
    mean, std = normalization(normalize, family)
    vit = family == "vit"
    interp = T.InterpolationMode.BICUBIC if vit else T.InterpolationMode.BILINEAR
    if vit:
        from timm.data.random_erasing import RandomErasing

        erase = RandomErasing(probability=0.5, mode="pixel", max_count=1, device="cpu")
    else:
        erase = BoTRandomErasing()
    return T.Compose(
        [
            T.Resize((height, width), interpolation=interp),
            T.RandomHorizontalFlip(p=0.5),
            T.Pad(pad_for_height(height)),
            T.RandomCrop((height, width)),
            T.ToTensor(),
            T.Normalize(mean, std),
            erase,
        ]
    )


def build_test_transform(height: int, width: int, normalize: str = "auto", family: str = "resnet") -> T.Compose:
    """Resize, to tensor, normalise."""
    mean, std = normalization(normalize, family)
    interp = T.InterpolationMode.BICUBIC if family == "vit" else T.InterpolationMode.BILINEAR
    return T.Compose([T.Resize((height, width), interpolation=interp), T.ToTensor(), T.Normalize(mean, std)])
