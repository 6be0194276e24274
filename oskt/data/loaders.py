"""Image data sets and DataLoaders yielding ``(images, pids long[B], camids long[B])``.

Test loaders and PIL-path train loaders (``data.cache=none``) yield augmented / normalised ``float [B,3,H,W]``.
Cached train loaders (``data.cache=memory``, or ``auto`` when the images fit in 4 GiB) yield the cache's raw
``uint8 [B,3,H,W]`` and carry ``device_transform`` (a :class:`~oskt.data.augment.DeviceAugment`), which the epoch
loop applies after moving the batch to the device: consumers of a train loader apply it when present.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from oskt.config import DataConfig, TrainConfig
from oskt.data.augment import DeviceAugment
from oskt.data.cache import CachedImages, use_memory_cache
from oskt.data.layouts import read_image
from oskt.data.records import ImageRecord
from oskt.data.sampler import RandomIdentitySampler
from oskt.data.transforms import build_test_transform, build_train_transform
from oskt.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["ImageDataset", "build_test_loader", "build_train_loader"]


class ImageDataset(Dataset):
    """Records -> ``(image tensor, pid, camid)``; images read through :mod:`oskt.io` (local or ``s3://``).

    Args:
        records: the images.
        transform: PIL image -> tensor.
        bad_images: ``fail`` (a DataError naming the file) or ``skip`` (the item becomes None, dropped by the
            collate function, logged and counted in ``skipped`` of this process).
    """

    def __init__(
        self, records: Sequence[ImageRecord], transform: Callable[[Any], torch.Tensor], bad_images: str = "fail"
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.bad_images = bad_images
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        r = self.records[i]
        try:
            img = read_image(r.path)
        except DataError:
            if self.bad_images == "fail":
                raise
            log.warning("skipping unreadable image %s", r.path)
            self.skipped.append(r.path)
            return None
        return self.transform(img), r.pid, r.camid


class _Collate:
    """Drops skipped (None) items; an all-skipped batch becomes empty tensors of the right shape."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def __call__(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = [b for b in batch if b is not None]
        if not batch:
            e = torch.empty(0, dtype=torch.long)
            return torch.empty(0, 3, self.height, self.width), e, e.clone()
        imgs, pids, cams = default_collate(batch)
        return imgs, pids.long(), cams.long()


def _check(records: Sequence[ImageRecord], what: str) -> None:
    if len(records) == 0:
        raise DataError(f"cannot build the {what} loader: no images")


def _as_batch(batch: Any) -> Any:
    """Collate for data sets whose ``__getitems__`` already returns the batch."""
    return batch


def build_train_loader(
    records: Sequence[ImageRecord], data: DataConfig, train: TrainConfig, family: str, seed: int
) -> DataLoader:
    """P x K identity-balanced training loader with the train transforms (drop_last).

    ``data.cache`` picks the path (see :class:`~oskt.config.DataConfig`): the decode-once cache (raw uint8
    batches, one gather each, no workers, augmentation by the loader's ``device_transform`` on the training
    device) or PIL decoding + augmentation every epoch in ``data.num_workers`` processes. Either way the loader's
    randomness depends only on torch / Python / NumPy state the epoch loop reseeds per epoch (workers are not
    persistent: each epoch's workers are seeded from the loader's reseeded generator), so resumes are exact.

    Args:
        records: training images (pids 0..N-1).
        data: input size, normalisation, cache, workers, bad-image policy.
        train: ``ids_per_batch`` (P) and ``images_per_id`` (K).
        family: ``resnet`` or ``vit`` (transform recipe, ``auto`` normalisation).
        seed: sampler and worker seed.
    """
    _check(records, "training")
    gen = torch.Generator()
    gen.manual_seed(seed)  # seeds the workers' torch / random / numpy generators
    if use_memory_cache(len(records), data):
        cached = CachedImages(records, data.height, data.width, family, data.bad_images)
        _check(cached.records, "training")  # every image unreadable and skipped
        sampler = RandomIdentitySampler(cached.pids.tolist(), train.ids_per_batch, train.images_per_id, seed)
        loader = DataLoader(
            cached,
            batch_size=train.batch_size,
            sampler=sampler,
            num_workers=0,
            drop_last=True,
            collate_fn=_as_batch,
            generator=gen,
            pin_memory=torch.cuda.is_available(),
        )
        augment = DeviceAugment(data.height, data.width, data.normalize, family)
        loader.device_transform = augment  # type: ignore[attr-defined]
        return loader
    transform = build_train_transform(data.height, data.width, data.normalize, family)
    sampler = RandomIdentitySampler([r.pid for r in records], train.ids_per_batch, train.images_per_id, seed)
    return DataLoader(
        ImageDataset(records, transform, data.bad_images),
        batch_size=train.batch_size,
        sampler=sampler,
        num_workers=data.num_workers,
        drop_last=True,
        collate_fn=_Collate(data.height, data.width),
        generator=gen,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # new workers every epoch, seeded from ``gen`` (reseeded per epoch by the loop)
        multiprocessing_context=_worker_context(data.num_workers),
    )


def _worker_context(num_workers: int) -> str | None:
    """Workers start from a clean forkserver, not a fork of this process: the pipeline runs loaders inside processes
    that hold threads (Prefect, Ray, MLflow clients), and a forked copy of such a process can die at start."""
    return "forkserver" if num_workers > 0 else None


def build_test_loader(records: Sequence[ImageRecord], data: DataConfig, batch_size: int, family: str) -> DataLoader:
    """Deterministic, in-order loader with the test transforms.

    Args:
        records: query or gallery images.
        data: input size, normalisation, workers, bad-image policy.
        batch_size: images per batch.
        family: ``resnet`` or ``vit``.
    """
    _check(records, "test")
    transform = build_test_transform(data.height, data.width, data.normalize, family)
    return DataLoader(
        ImageDataset(records, transform, data.bad_images),
        batch_size=batch_size,
        shuffle=False,
        num_workers=data.num_workers,
        drop_last=False,
        collate_fn=_Collate(data.height, data.width),
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=_worker_context(data.num_workers),
    )
