"""Issue #17 leftovers: a kill during an atomic write leaves a hidden ``.NAME.XXXXXXXX.tmp`` that the next start of
the owning phase removes (a live writer's temporary and foreign files survive); the folder is fsynced after the
rename."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oskt import io

STALLED_WRITER = """
import os, sys, time
from oskt import io
def stall(src, dst):  # the process is killed here: after the data is written, before the rename
    print("writing", flush=True)
    time.sleep(120)
os.replace = stall
io.write_bytes_atomic(sys.argv[1], b"x" * 4096)
"""


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_killed_writer_leaves_a_temp_that_the_next_start_removes(tmp_path: Path) -> None:
    target = tmp_path / "teacher.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        (left,) = _temps(tmp_path)
        assert left.startswith(".teacher.pt.") and (tmp_path / left).stat().st_size == 4096
        # a live writer (it holds its temporary open) keeps it, however old the cleaner thinks it is
        assert io.remove_stale_temps(tmp_path, before=time.time() + 60) == []
        assert _temps(tmp_path) == [left]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _temps(tmp_path) == [left] and not target.exists()  # what issue #17 saw: nothing ever removed it
    assert io.remove_stale_temps(tmp_path, before=time.time() + 1) == [str(tmp_path / left)]
    assert _temps(tmp_path) == []


def test_only_old_temps_of_the_atomic_pattern_go(tmp_path: Path) -> None:
    hour_ago = time.time() - 3600
    names = {
        ".metrics.json.a1b2c3_d.tmp": True,  # left by a killed write before this process started: removed
        ".config.yaml.zz99zz99.tmp": True,
        ".metrics.json.ABCDEFGH.tmp": False,  # not mkstemp's alphabet: somebody else's
        ".notes.tmp": False,
        "draft.tmp": False,
        "metrics.json": False,
        ".x.1234567.tmp": False,  # 7 characters
    }
    for name in names:
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()  # a folder with a temp-like name is never touched
    young = tmp_path / ".history.json.qwertyui.tmp"  # written after this process started: a concurrent writer's
    young.write_text("x")
    removed = io.remove_stale_temps(tmp_path)  # default: older than this process's start
    assert sorted(removed) == sorted(str(tmp_path / n) for n, gone in names.items() if gone)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, gone in names.items() if not gone} | {".dir.abcdefgh.tmp", young.name}


def test_missing_folder_and_urls_are_no_ops(tmp_path: Path) -> None:
    assert io.remove_stale_temps(tmp_path / "missing") == []
    assert io.remove_stale_temps("s3://bucket/run") == []


def test_process_start_time_is_before_now_and_after_boot() -> None:
    start = io.process_start_time()
    assert start <= time.time() and time.time() - start < 24 * 3600 * 365


def test_temp_is_held_open_until_renamed_then_folder_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "m.json"
    events: list[tuple[str, bool]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: str, dst: str) -> None:
        # a cleaner running now must see the temporary as held open (no closed-but-not-renamed window)
        events.append(("replace", io._open_paths({os.path.abspath(src)}) == {os.path.abspath(src)}))
        real_replace(src, dst)

    def fsync(fd: int) -> None:
        events.append(("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file", target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    io.write_json_atomic(target, {"a": 1})
    assert events == [("fsync-file", False), ("replace", True), ("fsync-dir", True)]
    assert io.read_json(target) == {"a": 1} and os.listdir(target.parent) == ["m.json"]


def test_fsync_dir_tolerates_file_systems_that_refuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import errno

    def refuse(fd: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    io.fsync_dir(tmp_path)  # no error: such file systems make renames durable on their own terms
