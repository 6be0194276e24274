"""Layout parsers on fake folders built in tmp_path, and every bad-input error."""

from __future__ import annotations

import io as _io
from pathlib import Path

import pytest
from PIL import Image

from oskt.config import DataConfig, DatasetEntry
from oskt.data import check_images, detect_layout, load_dataset, load_layout, read_image
from oskt.errors import DataError


def _jpeg() -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (8, 16), (120, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _touch(folder: Path, names: list[str], data: bytes = b"x") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(data)


def _market(root: Path, query: list[str] | None = None, train: list[str] | None = None) -> Path:
    _touch(
        root / "bounding_box_train",
        train or ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_000101_00.jpg", "Thumbs.db"],
    )
    _touch(root / "query", query or ["0010_c1s1_000001_00.jpg", "0011_c2s3_000002_00.jpg"])
    _touch(
        root / "bounding_box_test",
        ["0010_c2s1_000003_00.jpg", "0011_c1s1_000004_00.jpg", "0000_c4s1_000005_00.jpg", "-1_c1s1_000006_00.jpg"],
    )
    return root


def test_market1501(tmp_path: Path) -> None:
    ds = load_layout(str(_market(tmp_path / "Market")), "market1501")
    assert ds.name == "Market"
    assert sorted(r.pid for r in ds.train) == [0, 0, 1]  # relabelled 2, 7 -> 0, 1
    assert {r.camid for r in ds.train} == {0, 1, 2}  # 0-based
    assert [r.seq for r in sorted(ds.train, key=lambda r: r.path)][-1] == 1  # s2 -> 1
    assert ds.num_train_pids == 2
    assert sorted(r.pid for r in ds.query) == [10, 11]
    assert sorted(r.pid for r in ds.gallery) == [0, 10, 11]  # distractor kept, junk (-1) dropped
    assert ds.num_cams == 4
    assert detect_layout(str(tmp_path / "Market")) == "market1501"
    assert ds.stats()["gallery"] == {"ids": 3, "images": 3, "cameras": 3}


def test_market_errors(tmp_path: Path) -> None:
    root = _market(tmp_path / "m1")
    (root / "query" / "0010_c1s1_000001_00.jpg").unlink()
    (root / "query" / "0011_c2s3_000002_00.jpg").unlink()
    with pytest.raises(DataError, match="the query split is empty"):
        load_layout(str(root), "market1501")
    root2 = tmp_path / "m2"
    _touch(root2 / "bounding_box_train", ["0001_c1s1_000001_00.jpg"])
    _touch(root2 / "bounding_box_test", ["0001_c1s1_000001_00.jpg"])
    with pytest.raises(DataError, match=r"missing folder\(s\) query"):
        load_layout(str(root2), "market1501")
    root3 = _market(tmp_path / "m3", query=["img_0001.jpg"])
    with pytest.raises(DataError, match=r"file name .*img_0001\.jpg does not match"):
        load_layout(str(root3))
    root4 = _market(tmp_path / "m4", query=["0002_c2s1_000001_00.jpg"])
    with pytest.raises(DataError, match="appear in both query and train"):
        load_layout(str(root4))
    with pytest.raises(DataError, match="does not exist"):
        load_layout(str(tmp_path / "nowhere"), "market1501")


def test_msmt17(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "list_train.txt").write_text(
        "0000/0000_000_01_0303morning_0015_0.jpg 0\n"
        "0000/0000_001_05_0303morning_0016_0.jpg 0\n"
        "0005/0005_000_15_0303noon_0001_1.jpg 5\n"
    )
    (root / "list_val.txt").write_text("0007/0007_000_02_0303noon_0001_1.jpg 7\n")
    (root / "list_query.txt").write_text("0000/0000_000_03_0113morning_0015_0.jpg 0\n")
    (root / "list_gallery.txt").write_text("0000/0000_001_04_0113morning_0016_0.jpg 0\n\n")
    ds = load_layout(str(root))
    assert detect_layout(str(root)) == "msmt17"
    assert [r.camid for r in ds.train] == [0, 4, 14]
    assert [r.pid for r in ds.train] == [0, 0, 1]
    assert ds.train[0].path.endswith("train/0000/0000_000_01_0303morning_0015_0.jpg")
    assert ds.query[0].path.endswith("test/0000/0000_000_03_0113morning_0015_0.jpg")
    merged = load_layout(str(root), "msmt17", merge_val=True)
    assert merged.num_train_pids == 3 and len(merged.train) == 4
    (root / "list_val.txt").unlink()
    with pytest.raises(DataError, match="missing list_val.txt"):
        load_layout(str(root), "msmt17", merge_val=True)
    (root / "list_gallery.txt").write_text("0000/0000_001_04_0113morning_0016_0.jpg\n")
    with pytest.raises(DataError, match=r"list_gallery\.txt line 1"):
        load_layout(str(root), "msmt17")


@pytest.mark.parametrize("split", ["detected", "labeled"])
def test_cuhk03_np(tmp_path: Path, split: str) -> None:
    root = tmp_path / "CUHK03-NP"
    for s in ("detected", "labeled"):
        _touch(root / s / "bounding_box_train", [f"0001_c1_{s[0]}1.png", "0001_c2_1.png", "0003_c1_1.png"])
        _touch(root / s / "query", ["0800_c1_1.png"])
        _touch(root / s / "bounding_box_test", ["0800_c2_1.png", "0801_c1_1.png"])
    ds = load_layout(str(root), "auto", cuhk03_split=split)
    assert detect_layout(str(root)) == "cuhk03"
    assert ds.num_train_pids == 2 and len(ds.gallery) == 2
    assert f"/{split}/" in ds.train[0].path
    with pytest.raises(DataError, match="missing folder labeled/"):
        _touch(tmp_path / "c2" / "detected" / "query", ["0001_c1_1.png"])
        load_layout(str(tmp_path / "c2"), "cuhk03", cuhk03_split="labeled")


def test_folder_layout(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _touch(root / "train" / "12", ["c1_0001.jpg", "c2_0002.jpg"])
    _touch(root / "train" / "15", ["c1_0001.jpg"])
    _touch(root / "query" / "40", ["c1_0001.jpg"])
    _touch(root / "gallery" / "40", ["c3-0001.png", "notes.txt"])
    ds = load_layout(str(root))
    assert detect_layout(str(root)) == "folder"
    assert sorted(r.pid for r in ds.train) == [0, 0, 1]
    assert ds.gallery[0].camid == 2 and ds.query[0].pid == 40
    _touch(root / "gallery" / "40", ["frame_0001.jpg"])
    with pytest.raises(DataError, match=r"frame_0001\.jpg does not start with c<camera>"):
        load_layout(str(root))
    (root / "gallery" / "40" / "frame_0001.jpg").unlink()
    _touch(root / "gallery" / "bob", ["c1_1.jpg"])
    with pytest.raises(DataError, match="must be integer ids"):
        load_layout(str(root), "folder")
    with pytest.raises(DataError, match=r"missing folder\(s\) gallery"):
        _touch(tmp_path / "f2" / "train" / "1", ["c1_1.jpg"])
        _touch(tmp_path / "f2" / "query" / "2", ["c1_1.jpg"])
        load_layout(str(tmp_path / "f2"), "folder")


def test_csv_layout(tmp_path: Path) -> None:
    csv = tmp_path / "set.csv"
    csv.write_text(
        "path,pid,camid,split\nimgs/a.jpg,3,0,train\nimgs/b.jpg,3,1,train\n/abs/c.jpg,9,0,query\n"
        "imgs/d.jpg,9,1,gallery\nimgs/e.jpg,-1,1,gallery\n"
    )
    with pytest.raises(DataError, match="line 4: path '/abs/c.jpg' resolves outside"):
        load_layout(str(csv))  # rows stay inside the CSV's folder unless data.allow_outside_root (issue #17)
    ds = load_layout(str(csv), allow_outside_root=True)
    assert detect_layout(str(csv)) == "csv"
    assert ds.train[0].path == str(tmp_path / "imgs" / "a.jpg") and ds.query[0].path == "/abs/c.jpg"
    assert len(ds.gallery) == 1 and ds.train[0].pid == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("path,pid,split\na.jpg,1,train\n")
    with pytest.raises(DataError, match=r"missing column\(s\) camid"):
        load_layout(str(bad))
    bad.write_text("path,pid,camid,split\na.jpg,1,0,val\n")
    with pytest.raises(DataError, match="line 2: split 'val'"):
        load_layout(str(bad))
    bad.write_text("path,pid,camid,split\na.jpg,one,0,train\n")
    with pytest.raises(DataError, match="line 2: pid / camid / seq must be integers"):
        load_layout(str(bad))


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="cannot recognise the layout"):
        detect_layout(str(tmp_path))


def test_load_dataset(tmp_path: Path, tiny_synth: DataConfig) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    assert ds.num_train_pids == 8
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_dataset("nope", tiny_synth)
    cfg = DataConfig(root=str(tmp_path), sources=("synth_a",))
    with pytest.raises(DataError, match="oskt data make --dataset synth_a"):
        load_dataset("synth_a", cfg)
    _market(tmp_path / "elsewhere")
    cfg = DataConfig(root="/ignored", sources=("m",), datasets={"m": DatasetEntry(path=str(tmp_path / "elsewhere"))})
    assert load_dataset("m", cfg).name == "m"  # absolute path used as it is


def test_bad_images(tmp_path: Path) -> None:
    good, corrupt, truncated = tmp_path / "good.jpg", tmp_path / "corrupt.jpg", tmp_path / "trunc.jpg"
    good.write_bytes(_jpeg())
    corrupt.write_bytes(b"not an image at all")
    truncated.write_bytes(_jpeg()[:40])
    assert read_image(str(good)).size == (8, 16)
    for p in (corrupt, truncated, tmp_path / "missing.jpg"):
        with pytest.raises(DataError, match=f"cannot read image {p}"):
            read_image(str(p))
    from oskt.data.records import ImageRecord

    recs = [ImageRecord(str(good), 0, 0), ImageRecord(str(corrupt), 1, 0)]
    with pytest.raises(DataError, match="corrupt.jpg"):
        check_images(recs, "fail")
    kept, bad = check_images(recs, "skip")
    assert kept == recs[:1] and bad == [str(corrupt)]
