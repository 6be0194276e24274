"""P x K sampler, transforms, loaders (incl. the bad-image policy) and few-shot subsets."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from oskt.config import DataConfig, TrainConfig
from oskt.data import (
    ImageRecord,
    RandomIdentitySampler,
    build_test_loader,
    build_train_loader,
    build_train_transform,
    few_shot_ids,
    holdout_split,
    load_dataset,
    normalization,
    subset_records,
)
from oskt.data.transforms import IMAGENET_MEAN, pad_for_height
from oskt.errors import ConfigError, DataError


def test_sampler_pk_blocks() -> None:
    pids = [p for p in range(10) for _ in range(3 + p % 4)]  # 3..6 images per id
    s = RandomIdentitySampler(pids, ids_per_batch=4, images_per_id=2, seed=0)
    idx = list(iter(s))
    assert len(idx) % 8 == 0 and len(idx) > 0
    for b in range(0, len(idx), 8):
        counts = Counter(pids[i] for i in idx[b : b + 8])
        assert len(counts) == 4 and set(counts.values()) == {2}
    assert len(s) == len(list(iter(s)))  # exact length of the next epoch
    s2 = RandomIdentitySampler(pids, 4, 2, seed=0)
    assert list(iter(s2)) == idx  # same seed, same first epoch
    assert list(iter(s2)) != idx  # next epoch differs
    s2.set_epoch(0)
    assert list(iter(s2)) == idx


def test_sampler_few_images_and_too_few_ids() -> None:
    s = RandomIdentitySampler([0, 1, 1, 2, 3, 3, 3], ids_per_batch=2, images_per_id=4, seed=1)
    idx = list(iter(s))
    assert idx and len(idx) % 8 == 0  # ids with < K images are sampled with replacement
    with pytest.raises(DataError, match="at least ids_per_batch=5 identities"):
        RandomIdentitySampler([0, 1, 2], 5, 2)


def test_normalization_and_padding() -> None:
    assert normalization("auto", "resnet")[0] == IMAGENET_MEAN
    assert normalization("auto", "vit") == ((0.5,) * 3, (0.5,) * 3)
    assert normalization("half", "resnet")[1] == (0.5,) * 3
    with pytest.raises(ConfigError, match="family"):
        normalization("auto", "mlp")
    assert pad_for_height(256) == 10 and pad_for_height(128) == 5 and pad_for_height(32) == 1


@pytest.mark.parametrize("cache", ["memory", "none"])
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_train_loader(tiny_synth: DataConfig, family: str, cache: str) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    train = TrainConfig(ids_per_batch=4, images_per_id=2)
    data = dataclasses.replace(tiny_synth, cache=cache)
    loader = build_train_loader(ds.train, data, train, family, seed=0)
    imgs, pids, cams = next(iter(loader))
    if cache == "memory":  # raw uint8 batches; the epoch loop applies the augmentation on the device
        assert imgs.dtype == torch.uint8
        imgs = loader.device_transform(imgs)
    assert imgs.shape == (8, 3, 32, 16) and imgs.dtype == torch.float32
    assert pids.dtype == torch.long and cams.dtype == torch.long
    assert sorted(Counter(pids.tolist()).values()) == [2, 2, 2, 2]
    assert len(loader) == len(list(loader))
    t = build_train_transform(32, 16, "auto", family)
    assert any("Erasing" in type(x).__name__ for x in t.transforms)


def test_test_loader_order_and_bad_images(tiny_synth: DataConfig, tmp_path: Path) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    loader = build_test_loader(ds.query, tiny_synth, batch_size=5, family="resnet")
    pids = torch.cat([p for _, p, _ in loader]).tolist()
    assert pids == [r.pid for r in ds.query]
    bad = tmp_path / "0001_c1s1_000000_00.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    recs = [*ds.query[:3], ImageRecord(str(bad), 1, 0)]
    with pytest.raises(DataError, match="0001_c1s1_000000_00.jpg"):
        list(build_test_loader(recs, tiny_synth, 4, "resnet"))
    skip = dataclasses.replace(tiny_synth, bad_images="skip")
    loader = build_test_loader(recs, skip, 4, "resnet")
    imgs, p, _ = next(iter(loader))
    assert imgs.shape[0] == 3 and loader.dataset.skipped == [str(bad)]
    with pytest.raises(DataError, match="no images"):
        build_test_loader([], tiny_synth, 4, "resnet")


def test_few_shot() -> None:
    pids = [p for p in range(20) for _ in range(3)]
    a = few_shot_ids(pids, 0.3, seed=0)
    assert a == few_shot_ids(pids, 0.3, seed=0) and len(a) == 6 and a == sorted(a)
    assert few_shot_ids(pids, 0.3, seed=1) != a
    assert len(few_shot_ids(pids, 0.1, 0)) == 2 and len(few_shot_ids(pids, 0.5, 0)) == 10
    assert few_shot_ids(pids, 1.0, 0) == list(range(20))
    assert set(few_shot_ids(pids, 0.1, 0)) <= set(few_shot_ids(pids, 0.1, 0) + a)
    with pytest.raises(ConfigError, match="few_shot"):
        few_shot_ids(pids, 0.0, 0)
    recs = [ImageRecord(f"{p}.jpg", p, 0) for p in pids]
    sub = subset_records(recs, a)
    assert sorted({r.pid for r in sub}) == list(range(6)) and len(sub) == 18
    with pytest.raises(DataError, match="subset is empty"):
        subset_records(recs, [99])


def test_holdout_split_keeps_test_untouched_and_ids_disjoint() -> None:
    from oskt.data import ReIDDataset

    train = [ImageRecord(f"t{p}_{c}_{k}.jpg", p, c) for p in range(12) for c in range(3) for k in range(2)]
    test = [ImageRecord("q.jpg", 500, 0)]
    ds = ReIDDataset("d", train=train, query=test, gallery=test)
    val = holdout_split(ds, 4, seed=0)
    assert val.name == "d" and val.protocol == "val4" and val.label == "d[val4]" and val.num_train_pids == 8
    assert sorted({r.pid for r in val.train}) == list(range(8))  # relabelled for the classifier
    held = {r.pid for r in val.query}
    assert len(held) == 4 and held == {r.pid for r in val.gallery} and 0 not in held  # no pid reads as distractor
    assert len(val.query) == 4 * 3 and len({(r.pid, r.camid) for r in val.query}) == 12  # one per (id, camera)
    assert len(val.gallery) == 4 * 3 * 2 - 12
    kept = {r.path for r in val.train} | {r.path for r in val.query} | {r.path for r in val.gallery}
    assert kept == {r.path for r in train} and len(kept) == len(train)  # every image used once, test never
    assert holdout_split(ds, 4, seed=0) == val and holdout_split(ds, 4, seed=1).query != val.query
    with pytest.raises(ConfigError, match="val_ids=11"):
        holdout_split(ds, 11)
