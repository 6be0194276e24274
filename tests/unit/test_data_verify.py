"""The up-front image check (issue #17): every split decoded before training, cached by (path, size, mtime)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fsspec
import pytest

from oskt.config import SynthConfig
from oskt.data import load_layout, make_synthetic, verify_images
from oskt.errors import DataError

TINY = SynthConfig(train_ids=4, test_ids=3, images_per_id=4, height=32, width=16, seed=0)


@pytest.fixture
def data_set(tmp_path: Path) -> str:
    return make_synthetic(str(tmp_path / "data" / "s"), TINY, "a")


def _files(root: str) -> dict[str, float]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


def test_corrupt_gallery_image_fails_before_training(data_set: str, tmp_path: Path) -> None:
    ds = load_layout(data_set)
    bad = ds.gallery[-1].path
    Path(bad).write_bytes(Path(bad).read_bytes()[:60])  # truncated JPEG: the header survives, the decode fails
    cache = str(tmp_path / "run" / "image_check.json")
    data_before = _files(data_set)
    with pytest.raises(DataError, match=rf"data set 's', gallery split: cannot read image {bad}.*bad_images=skip"):
        verify_images(ds, cache)
    assert _files(data_set) == data_before  # nothing written into the data folder
    known = json.loads(Path(cache).read_text())["images"]
    assert bad not in known and ds.train[0].path in known  # what was verified is kept for the rerun
    skipped = verify_images(ds, cache, "skip")
    assert skipped.bad == [bad] and bad not in {r.path for r in skipped.dataset.gallery}
    assert skipped.cached == len(known) and skipped.decoded == 1  # only the bad one decoded again
    assert len(skipped.dataset.gallery) == len(ds.gallery) - 1 and skipped.dataset.train == ds.train


def test_corrupt_query_image_is_named(data_set: str) -> None:
    ds = load_layout(data_set)
    Path(ds.query[0].path).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"query split: cannot read image {ds.query[0].path}"):
        verify_images(ds, None)


def test_cache_skips_unchanged_files_and_rechecks_changed_ones(data_set: str, tmp_path: Path) -> None:
    ds = load_layout(data_set)
    n = len({r.path for r in ds.train + ds.query + ds.gallery})
    cache = str(tmp_path / "check.json")
    first = verify_images(ds, cache)
    assert (first.decoded, first.cached, first.bad) == (n, 0, [])
    second = verify_images(ds, cache)
    assert (second.decoded, second.cached) == (0, n) and second.dataset is ds
    # a replaced file (new size / mtime) is decoded again; here it is corrupt now
    target = ds.train[2].path
    shutil.copy(ds.query[0].path, target)
    Path(target).write_bytes(Path(target).read_bytes()[:100])
    with pytest.raises(DataError, match=rf"train split: cannot read image {target}"):
        verify_images(ds, cache)
    # a missing file is reported as unreadable too
    os.remove(ds.gallery[0].path)
    out = verify_images(ds, cache, "skip")
    assert set(out.bad) == {target, ds.gallery[0].path} and out.decoded == 2


def test_skip_relabels_train_and_refuses_an_empty_split(data_set: str) -> None:
    ds = load_layout(data_set)
    first_id = [r.path for r in ds.train if r.pid == 0]
    for p in first_id:
        Path(p).write_bytes(b"")
    out = verify_images(ds, None, "skip")
    assert sorted({r.pid for r in out.dataset.train}) == list(range(ds.num_train_pids - 1))
    for r in ds.query:
        Path(r.path).write_bytes(b"")
    with pytest.raises(DataError, match="every query image is unreadable"):
        verify_images(ds, None, "skip")
    with pytest.raises(DataError, match="policy 'maybe'"):
        verify_images(ds, None, "maybe")


def test_object_store_images(data_set: str) -> None:
    fs = fsspec.filesystem("memory")
    ds = load_layout(data_set)
    fs.put(data_set, "/oskt-verify/s", recursive=True)
    remote = load_layout("memory://oskt-verify/s")
    cache = "memory://oskt-verify/cache.json"
    assert verify_images(remote, cache).decoded == len(ds.train) + len(ds.query) + len(ds.gallery)
    assert verify_images(remote, cache).decoded == 0
    fs.rm("/oskt-verify", recursive=True)
