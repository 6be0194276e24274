"""Path helpers that work for local paths and URLs (``s3://`` through fsspec/s3fs).

Every write is atomic: local files go to a temporary sibling and are renamed into place, object stores receive the
whole object in one put. Nothing here creates folders at import time.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://`` paths (s3, gs, memory, ...), False for local paths."""
    return "://" in str(path) and not str(path).startswith("file://")


def _fs(path: str):
    import fsspec  # torch depends on fsspec, so it is always there; s3fs comes with the pipeline extra

    fs, _, paths = fsspec.get_fs_token_paths(path)
    return fs, paths[0]


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts with ``/`` for URLs and ``os.path.join`` for local paths."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(os.fspath(base), *parts)


def exists(path: str | os.PathLike[str]) -> bool:
    if is_url(path):
        fs, p = _fs(str(path))
        return fs.exists(p)
    return os.path.exists(path)


def makedirs(path: str | os.PathLike[str]) -> None:
    """Create a local folder (object stores have no folders: nothing to do)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """Names (not full paths) of the entries of a folder, sorted."""
    if is_url(path):
        fs, p = _fs(str(path))
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False))
    return sorted(os.listdir(path))


@contextmanager
def open_read(path: str | os.PathLike[str], mode: str = "rb") -> Iterator[Any]:
    """Open a local path or URL for reading."""
    if is_url(path):
        fs, p = _fs(str(path))
        with fs.open(p, mode) as f:
            yield f
    else:
        with open(path, mode) as f:
            yield f


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    with open_read(path, "rb") as f:
        return f.read()


@functools.cache
def _umask() -> int:
    """The process umask (read once: ``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: str) -> int:
    """The mode a plain ``open(path, "w")`` would give: the old file's, else 0o666 minus the umask (``mkstemp``
    alone makes every output owner-only, unreadable by a team sharing the output folder)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    if is_url(path):
        fs, p = _fs(str(path))
        fs.pipe_file(p, data)  # one PUT: object stores never expose a half-written object
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def torch_save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through an in-memory buffer, then an atomic write (local or URL)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())
