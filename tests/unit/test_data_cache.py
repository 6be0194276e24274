"""Decode-once cache (``data.cache``) and the on-device train augmentation.

Cached and PIL paths resize the same way (torchvision ``resize`` of the decoded PIL image), so the un-augmented
tensors agree to float rounding; the contract checked is the looser ``<= 1/255`` after normalisation (1/255 / std
in normalised units), which a different resize kernel would also have to meet.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from oskt.config import DataConfig, TrainConfig
from oskt.data import (
    CachedImages,
    DeviceAugment,
    ImageRecord,
    build_test_transform,
    build_train_loader,
    cache_bytes,
    load_dataset,
    normalization,
    read_image,
    use_memory_cache,
)
from oskt.data.augment import BOT_ERASE_FILL
from oskt.data.cache import AUTO_LIMIT_BYTES
from oskt.errors import ConfigError, DataError
from oskt.train.loop import seed_loader


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _normalised(x: torch.Tensor, family: str) -> torch.Tensor:
    mean, std = normalization("auto", family)
    return (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_cached_matches_the_pil_test_transform(tiny_synth: DataConfig, family: str) -> None:
    recs = load_dataset("synth_a", tiny_synth).train[:12]
    cached = CachedImages(recs, 32, 16, family)
    assert cached.images.shape == (12, 3, 32, 16) and cached.images.dtype == torch.uint8
    assert cached.nbytes == cache_bytes(12, 32, 16)
    plain = DeviceAugment(32, 16, "auto", family, train=False)(cached.images)
    pil = torch.stack([build_test_transform(32, 16, "auto", family)(read_image(r.path)) for r in recs])
    _, std = normalization("auto", family)
    assert (plain - pil).abs().max() <= 1 / 255 / max(std) + 1e-6
    assert (plain - pil).abs().max() < 1e-5  # in fact the same resize: float rounding only
    one = CachedImages(recs, 32, 16, family, threads=1)
    assert torch.equal(one.images, cached.images)  # threads change nothing
    imgs, pids, cams = cached.__getitems__([3, 0, 3])
    assert torch.equal(imgs[1], cached.images[0]) and pids.tolist() == [recs[i].pid for i in (3, 0, 3)]
    assert cams.dtype == torch.long


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_augment_shape_dtype_range_and_determinism(family: str) -> None:
    x = torch.randint(0, 256, (64, 3, 32, 16), dtype=torch.uint8)
    aug = DeviceAugment(32, 16, "auto", family)
    torch.manual_seed(3)
    a = aug(x)
    assert a.shape == (64, 3, 32, 16) and a.dtype == torch.float32 and a.device == x.device
    assert torch.isfinite(a).all()
    if family == "resnet":  # normalised pixels, the zero padding and BoT's fill all lie in the normalised range
        lo, hi = _normalised(torch.zeros(1, 1, 1), family), _normalised(torch.full((1, 1, 1), 255), family)
        assert (a >= lo.view(1, 3, 1, 1) - 1e-5).all() and (a <= hi.view(1, 3, 1, 1) + 1e-5).all()
    torch.manual_seed(3)
    assert torch.equal(aug(x), a)  # only torch's global generator: reseeding reproduces the batch
    assert not torch.equal(aug(x), a)
    with pytest.raises(ValueError, match="expected a"):
        aug(x[:, :, :16])
    assert aug(x[:0]).shape == (0, 3, 32, 16)


def _match_shift(out: torch.Tensor, img: torch.Tensor, pad: int, family: str) -> tuple[bool, int, int] | None:
    """(flipped, dy, dx) such that ``out`` is ``img`` (flipped) zero-padded and shifted, or None."""
    h, w = img.shape[1:]
    for flipped in (False, True):
        src = img.flip(-1) if flipped else img
        padded = torch.nn.functional.pad(src, (pad, pad, pad, pad))
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.allclose(_normalised(padded[:, dy : dy + h, dx : dx + w], family), out, atol=1e-5):
                    return flipped, dy, dx
    return None


def test_flip_and_crop_are_the_pil_recipe() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (400, 3, 32, 16), dtype=torch.uint8)
    aug = DeviceAugment(32, 16, "auto", "resnet", erase_p=0.0)
    out = aug(x)
    assert aug.pad == 1
    matches = [_match_shift(o, i, aug.pad, "resnet") for o, i in zip(out, x, strict=True)]
    assert all(m is not None for m in matches)  # every output = flip? + pad + crop of its input
    flips = sum(m[0] for m in matches)  # type: ignore[index]
    assert 150 < flips < 250  # p = 0.5 (binomial sd 10)
    shifts = Counter((m[1], m[2]) for m in matches)  # type: ignore[index]
    assert len(shifts) == 9 and min(shifts.values()) > 20  # uniform over the 3 x 3 offsets (~44 each)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_erasing_probability_area_and_fill(family: str) -> None:
    torch.manual_seed(0)
    h, w, n = 64, 32, 1000
    x = torch.full((n, 3, h, w), 128, dtype=torch.uint8)
    aug = DeviceAugment(h, w, "auto", family, flip_p=0.0)
    aug.pad = 0  # no padding: every changed pixel is an erased one
    out = aug(x)
    base = _normalised(x[0], family)
    erased = ((out - base).abs() > 1e-4).any(1)  # [n, h, w]
    hit = erased.flatten(1).any(1)
    assert 0.45 * n < hit.sum() < 0.55 * n  # p = 0.5
    frac = erased[hit].flatten(1).float().mean(1)
    hi = 0.4 if family == "resnet" else 1 / 3
    assert frac.min() >= 0.015 and frac.max() <= hi + 0.02  # area fraction (after rounding the sides)
    assert frac.mean() > 0.1
    for i in hit.nonzero().flatten()[:50].tolist():  # one axis-aligned rectangle
        ys, xs = erased[i].nonzero(as_tuple=True)
        box = erased[i, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all() and box.sum() == erased[i].sum()
        hh, ww = box.shape
        assert 0.3 / 1.5 <= hh / ww <= 1.5 / 0.3
    if family == "resnet":  # BoT: constant CIFAR-mean fill, applied after normalising
        fill = torch.tensor(BOT_ERASE_FILL).view(3, 1)
        assert torch.allclose(out.permute(1, 0, 2, 3)[:, erased], fill.expand(3, int(erased.sum())))
    else:  # timm pixel mode: N(0, 1) per pixel and channel
        vals = out.permute(1, 0, 2, 3)[:, erased]
        assert abs(vals.mean()) < 0.05 and abs(vals.std() - 1) < 0.05


def test_bad_images_on_the_cached_path(tiny_synth: DataConfig, tmp_path: Path) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    bad = tmp_path / "0001_c1s1_000000_00.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    recs = [*ds.train[:5], ImageRecord(str(bad), 1, 0), *ds.train[5:9]]
    with pytest.raises(DataError, match="0001_c1s1_000000_00.jpg"):
        CachedImages(recs, 32, 16)
    cached = CachedImages(recs, 32, 16, bad_images="skip")
    assert cached.skipped == [str(bad)] and len(cached) == 9 and cached.images.shape[0] == 9
    assert [r.path for r in cached.records] == [r.path for r in recs if r.path != str(bad)]
    assert cached.pids.tolist() == [r.pid for r in cached.records]
    memory = dataclasses.replace(tiny_synth, cache="memory")
    with pytest.raises(DataError, match="0001_c1s1_000000_00.jpg"):
        build_train_loader(
            [*ds.train, ImageRecord(str(bad), 1, 0)], memory, TrainConfig(ids_per_batch=4, images_per_id=2), "resnet", 0
        )
    skip = dataclasses.replace(memory, bad_images="skip")
    loader = build_train_loader(
        [*ds.train, ImageRecord(str(bad), 1, 0)], skip, TrainConfig(ids_per_batch=4, images_per_id=2), "resnet", 0
    )
    assert loader.dataset.skipped == [str(bad)] and len(loader.dataset) == len(ds.train)
    with pytest.raises(DataError, match="no images"):
        build_train_loader(
            [ImageRecord(str(bad), 0, 0)], skip, TrainConfig(ids_per_batch=2, images_per_id=2), "resnet", 0
        )


def test_auto_picks_memory_or_none_by_size(tiny_synth: DataConfig) -> None:
    big = dataclasses.replace(tiny_synth, height=256, width=128)
    per_image = cache_bytes(1, 256, 128)
    assert per_image == 98304
    fits = AUTO_LIMIT_BYTES // per_image
    assert use_memory_cache(fits, big) and not use_memory_cache(fits + 1, big)
    assert use_memory_cache(12936, big)  # Market-1501 train: ~1.3 GB
    assert use_memory_cache(32621, big)  # MSMT17 train: ~3.2 GB
    assert not use_memory_cache(10**6, big)
    assert use_memory_cache(10**6, dataclasses.replace(big, cache="memory"))
    assert not use_memory_cache(1, dataclasses.replace(big, cache="none"))
    with pytest.raises(ConfigError, match="data.cache"):
        dataclasses.replace(big, cache="disk")


def test_cached_and_pil_loaders_sample_the_same_batches(tiny_synth: DataConfig) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    train = TrainConfig(ids_per_batch=4, images_per_id=2)
    mem = build_train_loader(ds.train, dataclasses.replace(tiny_synth, cache="memory"), train, "resnet", seed=5)
    pil = build_train_loader(ds.train, dataclasses.replace(tiny_synth, cache="none"), train, "resnet", seed=5)
    assert mem.num_workers == 0 and isinstance(mem.device_transform, DeviceAugment)
    assert not hasattr(pil, "device_transform")
    assert len(mem) == len(pil)
    a, b = list(mem), list(pil)
    assert [x[1].tolist() for x in a] == [x[1].tolist() for x in b]  # same P x K sampler, same order
    assert [x[2].tolist() for x in a] == [x[2].tolist() for x in b]
    assert a[0][0].dtype == torch.uint8 and b[0][0].dtype == torch.float32
    assert mem.device_transform(a[0][0]).shape == b[0][0].shape
    # the epoch loop's reseeding reproduces the augmented batches of an epoch
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        seed_loader(mem, 5, 1)
        outs.append([mem.device_transform(x[0]) for x in mem])
    assert all(torch.equal(p, q) for p, q in zip(*outs, strict=True))


def test_pil_workers_are_reseeded_every_epoch(tiny_synth: DataConfig) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    data = dataclasses.replace(tiny_synth, cache="none", num_workers=1)
    loader = build_train_loader(ds.train[:16], data, TrainConfig(ids_per_batch=2, images_per_id=2), "resnet", 0)
    assert loader.persistent_workers is False
    epochs = []
    for epoch in (0, 1, 0):
        seed_loader(loader, 0, epoch)
        epochs.append(torch.cat([x[0] for x in loader]))
    assert torch.equal(epochs[0], epochs[2]) and not torch.equal(epochs[0], epochs[1])
