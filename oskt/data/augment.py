"""Train augmentation of a whole uint8 batch on its device (the decode-once cache's counterpart of
:func:`~oskt.data.transforms.build_train_transform`; ../shared/SPEC.md §4.3).

Per image, in order: h-flip 0.5, zero pad + random crop back to the input size, ``/255`` and normalise, random
erasing 0.5 — BoT's (area 0.02–0.4, aspect uniform in [0.3, 1/0.3], up to 100 tries, constant CIFAR-mean fill) for
CNNs, timm's ``RandomErasing(mode="pixel")`` (area 0.02–1/3, log-uniform aspect, 10 tries, N(0, 1) noise per
pixel) for ViTs. The images arrive already resized (the cache resizes once, like the PIL path's first step).

Every random number comes from torch's global generator of the batch's device, drawn in a fixed number of calls
per batch, so reseeding torch (the epoch loop does, per epoch) makes the augmentation reproducible; nothing syncs
the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from oskt.data.transforms import normalization, pad_for_height

__all__ = ["BOT_ERASE_FILL", "DeviceAugment"]

BOT_ERASE_FILL = (0.4914, 0.4822, 0.4465)


class DeviceAugment:
    """``uint8 [B, 3, H, W]`` (any device) -> augmented, normalised ``float32 [B, 3, H, W]`` on the same device.

    Args:
        height, width: the input size (the batch's size).
        normalize: ``auto`` / ``imagenet`` / ``half`` (see :func:`~oskt.data.transforms.normalization`).
        family: ``resnet`` (BoT erasing) or ``vit`` (timm pixel-mode erasing).
        train: False = normalise only (the test transform on already-resized images).
        flip_p, erase_p: probabilities of the flip and of the erasing.
    """

    def __init__(
        self,
        height: int,
        width: int,
        normalize: str = "auto",
        family: str = "resnet",
        *,
        train: bool = True,
        flip_p: float = 0.5,
        erase_p: float = 0.5,
    ) -> None:
        mean, std = normalization(normalize, family)
        self.height, self.width, self.family, self.train = height, width, family, train
        self.pad = pad_for_height(height)
        self.flip_p, self.erase_p = flip_p, erase_p
        # (x / 255 - mean) / std == x * scale - shift
        self.scale = tuple(1.0 / (255.0 * s) for s in std)
        self.shift = tuple(m / s for m, s in zip(mean, std, strict=True))
        if family == "vit":  # timm RandomErasing(probability=0.5, mode="pixel", max_count=1) defaults
            self.tries, self.area = 10, (0.02, 1 / 3)
            self.aspect, self.log_aspect = (math.log(0.3), math.log(1 / 0.3)), True
        else:  # BoT RandomErasing(0.5, sl=0.02, sh=0.4, r1=0.3)
            self.tries, self.area = 100, (0.02, 0.4)
            self.aspect, self.log_aspect = (0.3, 1 / 0.3), False
        self._consts: dict[torch.device, tuple[Tensor, ...]] = {}

    def _const(self, dev: torch.device) -> tuple[Tensor, ...]:
        if dev not in self._consts:
            h, w = self.height, self.width
            self._consts[dev] = (
                torch.tensor(self.scale, device=dev).view(1, 3, 1),
                torch.tensor(self.shift, device=dev).view(1, 3, 1),
                torch.tensor(BOT_ERASE_FILL, device=dev).view(1, 3, 1),
                torch.arange(h, device=dev),
                torch.arange(w, device=dev),
            )
        return self._consts[dev]

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (self.height, self.width):
            raise ValueError(f"expected a [B, 3, {self.height}, {self.width}] batch, got {tuple(x.shape)}")
        scale, shift, fill, ar_h, ar_w = self._const(x.device)
        b, h, w, p, t = x.shape[0], self.height, self.width, self.pad, self.tries
        hw = h * w
        if not self.train or b == 0:
            return torch.addcmul(-shift, x.reshape(b, 3, hw).float(), scale).view(b, 3, h, w)
        dev = x.device
        # source "pixels" per image and channel: the normalised image, then the padding value (0 before
        # normalising) and BoT's erasing fill; every output pixel is one gather from them
        src = torch.empty(b, 3, hw + 2, device=dev)
        torch.addcmul(-shift, x.reshape(b, 3, hw).float(), scale, out=src[:, :, :hw])
        src[:, :, hw] = -shift[:, :, 0]
        src[:, :, hw + 1] = fill[:, :, 0]
        # one draw for all per-image scalars: flip, crop y, crop x, erase?, erase y, erase x, t areas, t aspects
        u = torch.rand(b, 6 + 2 * t, device=dev)
        # h-flip, then zero pad + random crop == a window shifted by (oy, ox) in [-p, p] over the flipped image
        flip = u[:, 0] < self.flip_p
        oy = (u[:, 1] * (2 * p + 1)).long().clamp_(max=2 * p) - p
        ox = (u[:, 2] * (2 * p + 1)).long().clamp_(max=2 * p) - p
        sy = oy[:, None] + ar_h  # [b, h] source rows
        sx = ox[:, None] + ar_w  # [b, w] source columns of the flipped image
        sx = torch.where(flip[:, None], w - 1 - sx, sx)  # ... i.e. mirrored columns of the image
        idx = (sy.clamp(0, h - 1) * w)[:, :, None] + sx.clamp(0, w - 1)[:, None, :]  # [b, h, w]
        outside = ((sy < 0) | (sy >= h))[:, :, None] | ((sx < 0) | (sx >= w))[:, None, :]
        idx.masked_fill_(outside, hw)
        erase = self._erase_mask(u[:, 3:], ar_h, ar_w)  # [b, h, w]
        vit = self.family == "vit"
        if not vit:
            idx.masked_fill_(erase, hw + 1)
        out = src.gather(2, idx.view(b, 1, hw).expand(b, 3, hw)).view(b, 3, h, w)
        if vit:  # timm pixel mode: N(0, 1) noise per erased pixel and channel
            out = torch.where(erase[:, None], torch.randn(out.shape, device=dev), out)
        return out

    def _erase_mask(self, u: Tensor, ar_h: Tensor, ar_w: Tensor) -> Tensor:
        """``[b, h, w]`` bool: the erased rectangle of each image (none for images not erased)."""
        h, w, t = self.height, self.width, self.tries
        lo, hi = self.area
        area = (h * w) * (lo + (hi - lo) * u[:, 3 : 3 + t])
        a0, a1 = self.aspect
        aspect = a0 + (a1 - a0) * u[:, 3 + t : 3 + 2 * t]
        if self.log_aspect:
            aspect = aspect.exp()
        eh = (area * aspect).sqrt().round().long()  # round half to even, like Python's round
        ew = (area / aspect).sqrt().round().long()
        ok = (eh < h) & (ew < w)
        first = ok.long().argmax(1, keepdim=True)  # first successful try (0 when none: masked out below)
        eh = eh.gather(1, first).squeeze(1)
        ew = ew.gather(1, first).squeeze(1)
        do = (u[:, 0] < self.erase_p) & ok.any(1)
        eh = eh * do  # a 0 x 0 rectangle when not erasing
        y0 = (u[:, 1] * (h - eh + 1)).long().clamp_(0, h - 1)
        x0 = (u[:, 2] * (w - ew + 1)).long().clamp_(0, w - 1)
        ys = (ar_h[None] >= y0[:, None]) & (ar_h[None] < (y0 + eh)[:, None])  # [b, h]
        xs = (ar_w[None] >= x0[:, None]) & (ar_w[None] < (x0 + ew)[:, None])  # [b, w]
        return ys[:, :, None] & xs[:, None, :]

    def __repr__(self) -> str:
        mode = "timm pixel" if self.family == "vit" else "BoT"
        return (
            f"DeviceAugment({self.height}x{self.width}, train={self.train}, flip={self.flip_p}, pad={self.pad}, "
            f"erase={self.erase_p} ({mode}))"
        )
