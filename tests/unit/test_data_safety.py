"""Data safety (issue #17): nothing oskt did not write is deleted or overwritten, data sets are swapped in whole,
data set names are identifiers, list files cannot point outside the data set's folder.

The rows of the issue run through the CLI in a subprocess: exit code 2, one ``oskt: error:`` line naming the
folder / key / row, no traceback, and the file tree unchanged."""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from oskt import io
from oskt.config import SynthConfig
from oskt.data import check_owned, load_layout, make_synthetic, ownership, write_owned
from oskt.data.synthetic import is_complete
from oskt.errors import DataError

TINY = SynthConfig(train_ids=4, test_ids=2, images_per_id=4, height=32, width=16, seed=0)
SMOKE = ["--profile", "smoke", "--set", "data.synthetic={train_ids: 4, test_ids: 2, images_per_id: 4, height: 32, "
         "width: 16, seed: 0}", "--set", "data.root=d"]  # fmt: skip


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its bytes (folders: "dir")."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root)] = "dir"
        for n in files:
            out[os.path.relpath(os.path.join(d, n), root)] = hashlib.sha256(Path(d, n).read_bytes()).hexdigest()
    return out


def _oskt(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oskt", *args], cwd=cwd, capture_output=True, text=True, timeout=180)


def _one_error_line(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oskt: error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _jpeg() -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (8, 16), (90, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ the issue, via the CLI


def test_cli_make_refuses_a_folder_with_a_users_file(tmp_path: Path) -> None:
    notes = tmp_path / "d" / "synth_a" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")
    before = _tree(tmp_path)
    r = _oskt(tmp_path, "data", "make", *SMOKE)  # makes synth_a and synth_b: neither may be written
    _one_error_line(r, str(Path("d") / "synth_a"), "notes.txt")
    assert notes.read_text() == "my notes" and _tree(tmp_path) == before


def test_cli_make_force_refuses_a_generated_set_with_a_foreign_file(tmp_path: Path) -> None:
    assert _oskt(tmp_path, "data", "make", *SMOKE, "--dataset", "synth_a").returncode == 0
    mine = tmp_path / "d" / "synth_a" / "query" / "mine.jpg"
    mine.write_bytes(b"a user's file inside a generated set")
    before = _tree(tmp_path)
    r = _oskt(tmp_path, "data", "make", *SMOKE, "--force")
    _one_error_line(r, "is an oskt data set but also holds 1 file(s)", "query/mine.jpg")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("how", "value", "needle"),
    [
        ("set", '{"../../escape": {"layout": "synthetic"}}', "data.datasets key '../../escape'"),
        ("set", '{"ok": {"layout": "synthetic", "path": "../../escape"}}', "data.datasets.ok.path='../../escape'"),
        ("params", {"../evil": {"layout": "synthetic"}}, "data.datasets key '../evil'"),
    ],
)
def test_cli_traversal_names_are_refused(tmp_path: Path, how: str, value: object, needle: str) -> None:
    if how == "set":
        args = [*SMOKE, "--set", f"data.datasets={value}"]
    else:
        (tmp_path / "p.yaml").write_text(json.dumps({"profile": "smoke", "data": {"datasets": value}}))
        args = ["--params", "p.yaml", "--set", "data.root=d"]
    before = _tree(tmp_path)
    _one_error_line(_oskt(tmp_path, "data", "make", *args), needle)
    assert _tree(tmp_path) == before and not (tmp_path.parent / "escape").exists()


def test_cli_csv_row_outside_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "set"
    data.mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        (data / n).write_bytes(_jpeg())
    (tmp_path / "x.jpg").write_bytes(_jpeg())
    rows = "path,pid,camid,split\na.jpg,1,0,train\n../x.jpg,2,0,train\nb.jpg,3,0,query\nc.jpg,3,1,gallery\n"
    (data / "list.csv").write_text(rows)
    before = _tree(tmp_path)
    _one_error_line(_oskt(tmp_path, "data", "info", "set/list.csv"), "line 3", "'../x.jpg'", "allow_outside_root")
    assert _tree(tmp_path) == before
    ok = _oskt(tmp_path, "data", "info", "set/list.csv", "--allow-outside-root")
    assert ok.returncode == 0 and "train" in ok.stdout, ok.stderr


# ------------------------------------------------------------------------------------------------ library level


def test_csv_absolute_row_and_msmt_list_line_outside(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(f"path,pid,camid,split\n{tmp_path.parent / 'x.jpg'},1,0,train\n")
    with pytest.raises(DataError, match=r"a.csv line 2: path '/.*x.jpg' resolves outside"):
        load_layout(str(tmp_path / "a.csv"))
    root = tmp_path / "MSMT17_V1"
    for d in ("train", "test"):
        (root / d).mkdir(parents=True)
    (root / "list_train.txt").write_text("../../0001/0001_000_01_0303morning_0001_0.jpg 1\n")
    for n in ("list_query.txt", "list_gallery.txt"):
        (root / n).write_text("0001/0001_000_01_0303morning_0001_0.jpg 1\n")
    with pytest.raises(DataError, match=r"list_train.txt line 1: path '../../0001/.*' resolves outside"):
        load_layout(str(root))
    assert len(load_layout(str(root), allow_outside_root=True).train) == 1


def test_make_synthetic_swaps_a_new_set_in_and_removes_only_listed_files(tmp_path: Path) -> None:
    path = make_synthetic(str(tmp_path / "s"), TINY, "a")
    manifest = json.loads(Path(path, "dataset.json").read_text())
    assert sorted(manifest["files"]) == sorted(
        k for k, v in _tree(Path(path)).items() if v != "dir" and k != "dataset.json"
    )
    bigger = SynthConfig(**{**TINY.__dict__, "train_ids": 5})
    inode = os.stat(path).st_ino
    make_synthetic(path, bigger, "a")
    assert os.stat(path).st_ino != inode  # a new folder swapped in, not the old one emptied and refilled
    assert load_layout(path).num_train_pids == 5 and is_complete(path, bigger, "a")
    assert sorted(os.listdir(tmp_path)) == ["s"]  # the old set and the temporary folder are gone


def test_swap_without_exchange_and_a_failed_write_keep_the_old_set(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "set")
    write_owned(path, {"generator": "oskt.test"}, [("a/1.txt", b"1"), ("b.txt", b"2")])
    monkeypatch.setattr(ownership, "_exchange", lambda a, b: False)  # e.g. a file system without RENAME_EXCHANGE
    write_owned(path, {"generator": "oskt.test"}, [("a/1.txt", b"new"), ("c.txt", b"3")])
    assert _tree(Path(path)).keys() == {"a", "a/1.txt", "c.txt", "dataset.json"}
    assert Path(path, "a", "1.txt").read_bytes() == b"new"

    def broken():
        yield "d.txt", b"4"
        raise RuntimeError("renderer crashed")

    before = _tree(tmp_path)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_owned(path, {"generator": "oskt.test"}, broken())
    assert _tree(tmp_path) == before  # old set intact, no temporary folder left


def test_a_file_appearing_during_the_swap_survives(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "set")
    write_owned(path, {"generator": "oskt.test"}, [("a.txt", b"1")])

    def files():
        yield "a.txt", b"2"
        Path(path, "late.txt").write_text("written by the user meanwhile")  # after the up-front check

    write_owned(path, {"generator": "oskt.test"}, files())
    assert Path(path, "a.txt").read_bytes() == b"2"
    (aside,) = [p for p in tmp_path.iterdir() if p.name != "set"]
    assert [p.name for p in aside.iterdir()] == ["late.txt"]  # kept, never deleted


def test_check_owned_cases(tmp_path: Path) -> None:
    assert check_owned(str(tmp_path / "missing")) is None
    (tmp_path / "empty").mkdir()
    assert check_owned(str(tmp_path / "empty")) is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        check_owned(str(tmp_path / "file"))
    real = tmp_path / "Market-1501-v15.09.15" / "query"
    real.mkdir(parents=True)
    (real / "0001_c1s1_000001_00.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"Market-1501-v15.09.15 holds 2 entries oskt did not write \(e.g. query/0001"):
        check_owned(str(real.parent))
    path = make_synthetic(str(tmp_path / "s"), TINY, "a")
    (Path(path) / "extra").mkdir()
    with pytest.raises(DataError, match=r"also holds 1 file\(s\) oskt did not write \(e.g. extra/\)"):
        check_owned(path)
    os.rmdir(Path(path) / "extra")
    os.symlink(tmp_path / "file", Path(path) / "link.jpg")
    with pytest.raises(DataError, match="link.jpg"):
        check_owned(path)


def test_first_generator_manifests_without_a_file_list_are_still_ours(tmp_path: Path) -> None:
    path = make_synthetic(str(tmp_path / "s"), TINY, "a")
    m = json.loads(Path(path, "dataset.json").read_text())
    del m["files"]  # as the first generator wrote it
    Path(path, "dataset.json").write_text(json.dumps(m))
    assert check_owned(path)["version"] == 1 and is_complete(path, TINY, "a")
    make_synthetic(path, SynthConfig(**{**TINY.__dict__, "seed": 1}), "a")
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_object_store_pending_manifest_and_listed_deletes_only(monkeypatch) -> None:
    fs = fsspec.filesystem("memory")
    base = "memory://oskt-safety/set"
    monkeypatch.setattr(ownership, "_BATCH", 2)
    write_owned(base, {"generator": "oskt.test"}, [(f"q/{i}.txt", b"old") for i in range(3)])
    # an interrupted run: every object written so far is on the pending list, readers see "not complete"

    def dies():
        for i in range(3):
            yield f"q/new{i}.txt", b"new"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_owned(base, {"generator": "oskt.test"}, dies())
    pending = ownership.read_manifest(base)
    assert pending["pending"] and ownership.complete_manifest(base) is None
    objects = {p.rsplit("/set/", 1)[1] for p in fs.find("/oskt-safety/set")} - {"dataset.json"}
    assert objects <= set(pending["files"])
    # a foreign object stops the next write; nothing is touched
    io.write_bytes_atomic(f"{base}/notes.txt", b"mine")
    with pytest.raises(DataError, match="notes.txt"):
        write_owned(base, {"generator": "oskt.test"}, [("q/0.txt", b"x")])
    fs.rm_file("/oskt-safety/set/notes.txt")
    final = write_owned(base, {"generator": "oskt.test"}, [("q/0.txt", b"x")])
    assert final["files"] == ["q/0.txt"] and not final.get("pending")
    assert {p.rsplit("/set/", 1)[1] for p in fs.find("/oskt-safety/set")} == {"dataset.json", "q/0.txt"}
    fs.rm("/oskt-safety", recursive=True)
