"""Atomic writes (oskt.io): whole files only, no temp files left behind, ordinary file modes."""

from __future__ import annotations

import os
import stat

import pytest

from oskt import io


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "sub" / "m.json"
    io.write_json_atomic(path, {"a": 1})
    io.write_json_atomic(path, {"a": 2})
    assert io.read_json(path) == {"a": 2}
    assert os.listdir(path.parent) == ["m.json"]


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "m.json"
    io.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        io.write_bytes_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert io.read_json(path) == {"a": 1} and os.listdir(tmp_path) == ["m.json"]


def test_new_files_follow_the_umask_and_old_files_keep_their_mode(tmp_path) -> None:
    old = os.umask(0o027)
    io._umask.cache_clear()
    try:
        new = tmp_path / "new.txt"
        io.write_text_atomic(new, "x")
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o640  # as open(..., "w") would make it, not mkstemp's 0o600
        kept = tmp_path / "kept.txt"
        kept.write_text("x")
        os.chmod(kept, 0o604)
        io.write_text_atomic(kept, "y")
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_text() == "y"
    finally:
        os.umask(old)
        io._umask.cache_clear()


@pytest.mark.parametrize("base", ["local", "memory://oskt-io-object"])
def test_a_bookkeeping_json_reads_as_absent_when_missing_cut_short_or_not_an_object(tmp_path, base) -> None:  # noqa: ANN001
    root = str(tmp_path) if base == "local" else base
    path = io.join(root, "result.json")
    assert io.read_json_object(path) is None  # missing
    io.write_bytes_atomic(path, b'{"key": "ab')  # what a kill mid-write of a non-atomic writer would leave
    assert io.read_json_object(path) is None
    io.write_json_atomic(path, [1, 2])
    assert io.read_json_object(path) is None  # JSON, not an object
    io.write_json_atomic(path, {"key": "ab"})
    assert io.read_json_object(path) == {"key": "ab"}
