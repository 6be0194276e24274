"""Decode-once training images: every image read (through :mod:`oskt.io`, so local or ``s3://``), resized to the
model input once and kept in one ``uint8 [N, 3, H, W]`` tensor; a batch is one gather (``__getitems__``).

Memory: ``N * 3 * H * W`` bytes — 96 KiB an image at 256 x 128: Market-1501 train (12,936 images) ~1.3 GB,
MSMT17 train (32,621) ~3.2 GB. ``data.cache=auto`` uses the cache up to :data:`AUTO_LIMIT_BYTES`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from oskt import io
from oskt.config import DataConfig
from oskt.data.layouts import read_image
from oskt.data.records import ImageRecord
from oskt.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["AUTO_LIMIT_BYTES", "CachedImages", "cache_bytes", "use_memory_cache"]

AUTO_LIMIT_BYTES = 4 * 2**30
"""``data.cache=auto`` keeps the training images in memory up to this many bytes."""


def cache_bytes(n_images: int, height: int, width: int) -> int:
    """Bytes of a uint8 cache of ``n_images`` RGB images of ``height x width``."""
    return n_images * 3 * height * width


def use_memory_cache(n_images: int, data: DataConfig) -> bool:
    """Whether ``data.cache`` (``memory`` / ``none`` / ``auto``) selects the in-memory cache for this split."""
    if data.cache == "auto":
        return cache_bytes(n_images, data.height, data.width) <= AUTO_LIMIT_BYTES
    return data.cache == "memory"


def resize_interpolation(family: str) -> InterpolationMode:
    """The train / test transforms' resize: bicubic for ViTs, bilinear for CNNs."""
    return InterpolationMode.BICUBIC if family == "vit" else InterpolationMode.BILINEAR


def _default_threads(records: Sequence[ImageRecord]) -> int:
    cpus = os.cpu_count() or 1
    remote = any(io.is_url(r.path) for r in records[:1])
    return 32 if remote else max(1, min(8, cpus))  # PIL releases the GIL while decoding and resizing


class CachedImages(Dataset):
    """Records -> decoded, resized uint8 images in memory; items and batches are ``(uint8 [3, H, W] / [B, 3, H, W],
    pid, camid)``.

    The resize is the PIL path's (torchvision ``resize`` of the decoded PIL image, same interpolation), so an
    un-augmented cached image equals the PIL test transform's before ``ToTensor``.

    Args:
        records: the images.
        height, width: the model input size.
        family: ``resnet`` (bilinear resize) or ``vit`` (bicubic).
        bad_images: ``fail`` (a DataError naming the first unreadable file) or ``skip`` (dropped, logged, listed
            in ``skipped``; ``records`` keeps only the decoded ones).
        threads: decoding threads (default: up to 8 for local files, 32 for URLs).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        height: int,
        width: int,
        family: str = "resnet",
        bad_images: str = "fail",
        threads: int | None = None,
    ) -> None:
        records = list(records)
        self.height, self.width = height, width
        self.skipped: list[str] = []
        interp = resize_interpolation(family)
        t0 = time.perf_counter()

        def decode(path: str) -> np.ndarray | DataError:
            try:
                img = read_image(path)
            except DataError as e:
                return e
            return np.array(TF.resize(img, [height, width], interpolation=interp))  # [H, W, 3] uint8, writable

        images = torch.empty(len(records), 3, height, width, dtype=torch.uint8)
        keep: list[ImageRecord] = []
        n_threads = threads or _default_threads(records)
        with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="oskt-decode") as pool:
            try:
                for r, arr in zip(records, pool.map(decode, [r.path for r in records]), strict=True):
                    if isinstance(arr, DataError):
                        if bad_images == "fail":
                            raise arr
                        log.warning("skipping unreadable image %s", r.path)
                        self.skipped.append(r.path)
                        continue
                    images[len(keep)].copy_(torch.from_numpy(arr).permute(2, 0, 1))
                    keep.append(r)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        self.images = images[: len(keep)]  # [N, 3, H, W] uint8 (a prefix view when images were skipped)
        self.records = keep
        self.pids = torch.tensor([r.pid for r in keep], dtype=torch.long)
        self.camids = torch.tensor([r.camid for r in keep], dtype=torch.long)
        log.info(
            "cached %d images (%dx%d, %.1f MB) in %.1f s with %d threads%s",
            len(keep),
            height,
            width,
            self.nbytes / 1e6,
            time.perf_counter() - t0,
            n_threads,
            f", skipped {len(self.skipped)} unreadable" if self.skipped else "",
        )

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.images[i], int(self.pids[i]), int(self.camids[i])

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One gather per batch (the DataLoader calls this instead of ``__getitem__`` per index)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return self.images.index_select(0, i), self.pids.index_select(0, i), self.camids.index_select(0, i)
