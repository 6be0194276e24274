"""The embedded synthetic data set: determinism, order independence, layout, id disjointness, skip / force."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from oskt.config import DataConfig, SynthConfig
from oskt.data import load_dataset, load_layout, make_synthetic, read_image
from oskt.data.synthetic import DOMAINS, _camera, _render, is_complete, synthetic_plan
from oskt.errors import DataError

TINY = SynthConfig(train_ids=5, test_ids=4, images_per_id=4, height=64, width=32, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a1 = _files(Path(make_synthetic(str(tmp_path / "a1"), TINY, "a")))
    a2 = _files(Path(make_synthetic(str(tmp_path / "a2"), TINY, "a")))
    assert a1 == a2
    other = SynthConfig(**{**TINY.__dict__, "seed": 1})
    a3 = _files(Path(make_synthetic(str(tmp_path / "a3"), other, "a")))
    jpgs = {v for k, v in a1.items() if k.endswith(".jpg")}
    assert len(jpgs) == sum(k.endswith(".jpg") for k in a1)  # no two images alike
    assert not jpgs & {v for k, v in a3.items() if k.endswith(".jpg")}
    b = _files(Path(make_synthetic(str(tmp_path / "b"), TINY, "b")))
    assert not jpgs & {v for k, v in b.items() if k.endswith(".jpg")}


def test_image_independent_of_generation_order(tmp_path: Path) -> None:
    root = Path(make_synthetic(str(tmp_path / "s"), TINY, "a"))
    plan = synthetic_plan(TINY, "a")
    cams = [_camera(TINY.seed, "a", c) for c in range(DOMAINS["a"].num_cams)]
    for folder, name, scode, pid, cam, idx in reversed(plan[::7]):
        assert _render(TINY, "a", cams, scode, pid, cam, idx) == (root / folder / name).read_bytes()


@pytest.mark.parametrize("domain", ["a", "b"])
def test_layout_and_ids(tiny_synth: DataConfig, domain: str) -> None:
    ds = load_dataset(f"synth_{domain}", tiny_synth)
    train_paths = {os.path.basename(r.path)[:4] for r in ds.train}
    test_pids = {r.pid for r in ds.query} | {r.pid for r in ds.gallery if r.pid != 0}
    assert not {int(p) for p in train_paths} & test_pids  # original ids disjoint
    assert ds.num_train_pids == 8 and len({r.pid for r in ds.query}) == 6
    assert any(r.pid == 0 for r in ds.gallery)  # distractors
    assert len(ds.train) == 8 * 6 and len(ds.query) + len(ds.gallery) == 6 * 6 + sum(r.pid == 0 for r in ds.gallery)
    # every query has a same-id gallery image from another camera, and at most one query per id and camera
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    assert len({(q.pid, q.camid) for q in ds.query}) == len(ds.query)
    img = read_image(ds.train[0].path)
    assert img.size == (32, 64)
    assert ds.num_cams <= DOMAINS[domain].num_cams


def test_domains_differ(tiny_synth: DataConfig) -> None:
    a, b = load_dataset("synth_a", tiny_synth), load_dataset("synth_b", tiny_synth)
    assert DOMAINS["a"].num_cams != DOMAINS["b"].num_cams
    assert max(r.camid for r in b.train) < DOMAINS["b"].num_cams

    # domain b is darker on average (lower gain range)
    def mean_level(recs):
        return sum(float(torch.tensor(list(read_image(r.path).getdata())).float().mean()) for r in recs) / len(recs)

    assert mean_level(b.train[:12]) < mean_level(a.train[:12])


def test_skip_when_complete_and_force(tmp_path: Path) -> None:
    path = make_synthetic(str(tmp_path / "s"), TINY, "a")
    marker = Path(path) / "bounding_box_train" / "marker.txt"
    marker.write_text("kept")
    assert is_complete(path, TINY, "a") and not is_complete(path, TINY, "b")
    make_synthetic(path, TINY, "a")
    assert marker.exists()  # untouched: same config
    with pytest.raises(DataError, match="marker.txt"):  # a file oskt did not write is never deleted (issue #17)
        make_synthetic(path, TINY, "a", force=True)
    assert marker.read_text() == "kept"
    marker.unlink()
    inode = os.stat(path).st_ino
    make_synthetic(path, TINY, "a", force=True)
    assert os.stat(path).st_ino != inode and is_complete(path, TINY, "a")  # regenerated: a new folder swapped in
    bigger = SynthConfig(**{**TINY.__dict__, "train_ids": 6})
    make_synthetic(path, bigger, "a")
    assert load_layout(path).num_train_pids == 6
    assert os.listdir(tmp_path) == ["s"]  # no temporary folder left beside it


def test_bad_domain() -> None:
    with pytest.raises(DataError, match="unknown synthetic domain 'c'"):
        synthetic_plan(TINY, "c")
