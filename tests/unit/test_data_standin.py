"""Stand-ins in the real layouts (issue #18): each is read by the same parser as the real set, with the real set's
id / camera / split structure, junk and distractors, list files and detected / labeled variants."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from oskt.config import DataConfig
from oskt.data import load_dataset, load_layout, make_standin
from oskt.data.layouts import detect_layout
from oskt.data.standin import standin_is_complete, standin_params
from oskt.errors import ConfigError

SMALL = {"ids": 6, "test_ids": 5, "images_per_cam": 2, "size": (64, 32)}
# the real file names (../shared/BASELINES.md §3.2)
MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s([1-6])_\d{6}_\d{2}\.jpg$")
MSMT_NAME = re.compile(r"^(\d{4})_\d{3}_(\d{2})_\d{4}(morning|noon|afternoon)_\d{4}_\d\.jpg$")
CUHK_NAME = re.compile(r"^(\d{4})_c([12])_\d+\.png$")


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict]]:
    root = tmp_path_factory.mktemp("standins")
    out = {}
    for kind, folder in (("market1501", "Market-1501-v15.09.15"), ("msmt17", "MSMT17_V1"), ("cuhk03", "CUHK03-NP")):
        out[kind] = (str(root / folder), make_standin(kind, str(root / folder), **SMALL))
    return out


def _tree(root: str) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(d, f), root): hashlib.sha256(Path(d, f).read_bytes()).hexdigest()
        for d, _, fs in os.walk(root)
        for f in fs
    }


def test_market1501(standins: dict) -> None:
    path, counts = standins["market1501"]
    assert detect_layout(path) == "market1501"
    ds = load_layout(path, "market1501")  # the real parser, no special case
    assert ds.stats() == {s: counts[s] for s in ("train", "query", "gallery")}
    assert ds.num_train_pids == 6 and sorted({r.pid for r in ds.train}) == list(range(6))  # relabelled
    names = {s: sorted(os.listdir(os.path.join(path, s))) for s in ("bounding_box_train", "query", "bounding_box_test")}
    for folder, files in names.items():
        assert files and all(MARKET_NAME.match(n) for n in files), folder
    raw = {s: {int(MARKET_NAME.match(n).group(1)) for n in f} for s, f in names.items()}
    assert len(raw["bounding_box_train"]) == 6 and not raw["bounding_box_train"] & raw["query"]
    assert max(raw["bounding_box_train"] | raw["query"]) > 12  # ids interleaved in 1..1501, not 1..11
    # junk (-1) sits in the gallery folder but is dropped; distractors (0000) are kept as pid 0; never elsewhere
    junk = [n for n in names["bounding_box_test"] if n.startswith("-1_")]
    distractors = [n for n in names["bounding_box_test"] if n.startswith("0000_")]
    assert len(junk) == counts["junk"] >= 3 and len(distractors) == counts["distractors"] >= 3
    assert not {-1, 0} & (raw["bounding_box_train"] | raw["query"])
    assert sum(r.pid == 0 for r in ds.gallery) == len(distractors) and all(r.pid != -1 for r in ds.gallery)
    assert len(ds.gallery) == len(names["bounding_box_test"]) - len(junk)
    # 6 cameras, every query has a same-id gallery image from another camera, one query per (id, camera)
    assert {r.camid for r in ds.train + ds.query + ds.gallery} <= set(range(6))
    assert len({(q.pid, q.camid) for q in ds.query}) == len(ds.query)
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    assert {r.seq for r in ds.train} <= set(range(6))  # s1..s6 -> 0..5
    assert Image.open(ds.train[0].path).size == (32, 64)


def test_msmt17_lists(standins: dict) -> None:
    path, counts = standins["msmt17"]
    assert sorted(os.listdir(path)) == sorted(
        ["dataset.json", "list_gallery.txt", "list_query.txt", "list_train.txt", "list_val.txt", "test", "train"]
    )
    ds = load_layout(path)
    assert ds.stats() == {s: counts[s] for s in ("train", "query", "gallery")}
    lines = {n: Path(path, f"list_{n}.txt").read_text().splitlines() for n in ("train", "val", "query", "gallery")}
    for name, ls in lines.items():
        for line in ls:
            rel, pid = line.split(" ")
            m = MSMT_NAME.match(os.path.basename(rel))
            assert m and rel.startswith(f"{int(pid):04d}/") and m.group(1) == f"{int(pid):04d}", line
            assert 1 <= int(m.group(2)) <= 15
            assert Path(path, "train" if name in ("train", "val") else "test", rel).is_file()
    # list_val: more images of training ids, disjoint from list_train; test ids numbered from 0 again
    assert lines["val"] and not set(lines["val"]) & set(lines["train"])
    assert {line.split()[1] for line in lines["val"]} <= {line.split()[1] for line in lines["train"]}
    assert {int(line.split()[1]) for line in lines["query"]} == set(range(5))
    assert len(os.listdir(Path(path, "train"))) == 6 and len(os.listdir(Path(path, "test"))) == 5
    merged = load_layout(path, merge_val=True)
    assert len(merged.train) == len(ds.train) + len(lines["val"]) == counts["train"]["images"] + counts["val"]["images"]
    assert counts["train"]["cameras"] > 6  # 15 cameras in all, more than Market's 6
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)


def test_cuhk03_detected_and_labeled(standins: dict) -> None:
    path, counts = standins["cuhk03"]
    assert detect_layout(path) == "cuhk03"
    for split in ("detected", "labeled"):
        assert sorted(os.listdir(Path(path, split))) == ["bounding_box_test", "bounding_box_train", "query"]
        ds = load_layout(path, "cuhk03", cuhk03_split=split)
        assert ds.stats() == counts[split]
        assert ds.num_train_pids == 6 and ds.num_cams == 2
        assert len(ds.query) == 2 * 5  # one query per camera per test id
        for folder in ("bounding_box_train", "query", "bounding_box_test"):
            assert all(CUHK_NAME.match(n) for n in os.listdir(Path(path, split, folder)))
    det, lab = counts["detected"], counts["labeled"]
    # as in the release: a few more labelled training images, a few more detected gallery images, same ids
    assert lab["train"]["images"] > det["train"]["images"] and det["gallery"]["images"] > lab["gallery"]["images"]
    assert {s: det[s]["ids"] for s in det} == {s: lab[s]["ids"] for s in lab}
    q = sorted(os.listdir(Path(path, "detected", "query")))
    assert q == sorted(os.listdir(Path(path, "labeled", "query")))
    a, b = (Path(path, v, "query", q[0]).read_bytes() for v in ("detected", "labeled"))
    assert a != b  # a different crop of the same person


def test_cuhk03_variable_png_sizes(tmp_path: Path) -> None:
    make_standin("cuhk03", str(tmp_path / "c"), ids=2, test_ids=2, images_per_cam=1)
    sizes = set()
    for p in Path(tmp_path / "c", "labeled", "bounding_box_train").iterdir():
        with Image.open(p) as im:
            assert im.format == "PNG"
            sizes.add(im.size)
    assert len(sizes) > 1 and all(40 <= w <= 100 and 120 <= h <= 210 for w, h in sizes)


def test_default_size_and_determinism(tmp_path: Path) -> None:
    a = make_standin("market1501", str(tmp_path / "a"), ids=2, test_ids=2, images_per_cam=1)
    b = make_standin("market1501", str(tmp_path / "b"), ids=2, test_ids=2, images_per_cam=1)
    assert _tree(a["path"]) == _tree(b["path"]) and a["generated"]
    with Image.open(next(Path(a["path"], "bounding_box_train").iterdir())) as im:
        assert im.size == (128, 256)  # 256x128 stored by default
    c = make_standin("market1501", str(tmp_path / "c"), ids=2, test_ids=2, images_per_cam=1, seed=1)
    assert not set(_tree(a["path"]).values()) & {v for k, v in _tree(c["path"]).items() if k.endswith(".jpg")}
    # up to date: nothing written; another size regenerates in place
    again = make_standin("market1501", a["path"], ids=2, test_ids=2, images_per_cam=1)
    assert not again["generated"] and again["train"] == a["train"]
    params = standin_params("market1501", ids=2, test_ids=2, images_per_cam=1)
    assert standin_is_complete(a["path"], params)
    make_standin("market1501", a["path"], ids=2, test_ids=2, images_per_cam=1, size=(64, 32))
    assert not standin_is_complete(a["path"], params)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]  # no temporary folder left behind


def test_default_config_entries_read_the_standins(standins: dict) -> None:
    root = os.path.dirname(standins["market1501"][0])
    for name in ("market1501", "msmt17", "cuhk03"):  # the default data.datasets entries, as for the real sets
        ds = load_dataset(name, DataConfig(root=root, sources=(name,)))
        assert ds.stats() == (
            standins[name][1]["detected"] if name == "cuhk03" else {s: standins[name][1][s] for s in ds.stats()}
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "viper"}, "stand-in kind 'viper'"),
        ({"ids": 1}, "ids=1"),
        ({"images_per_cam": 0}, "images_per_cam=0"),
        ({"size": (8, 4)}, "size=(8, 4)"),
        ({"ids": 1000}, "exceeds the real set's 1501 pids"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str, tmp_path: Path) -> None:
    kind = kwargs.pop("kind", "market1501")
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_standin(kind, str(tmp_path / "x"), **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_make_like_writes_where_the_config_points(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "oskt", "data", "make", "--profile", "smoke", "--set", "data.root=d"]
    small = ["--ids", "3", "--test-ids", "2", "--images-per-cam", "1", "--size", "64x32"]
    r = subprocess.run([*argv, "--like", "msmt17", *small], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "msmt17: wrote a stand-in at d/MSMT17_V1" in r.stdout
    assert load_layout(str(tmp_path / "d" / "MSMT17_V1")).num_train_pids == 3
    r = subprocess.run([*argv, "--like", "msmt17", "--size", "9"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "expected HEIGHTxWIDTH" in r.stderr
