"""Path helpers that work for local paths and URLs (``s3://`` through fsspec/s3fs).

Every write is atomic: local files go to a temporary sibling and are renamed into place, object stores receive the
whole object in one put. Nothing here creates folders at import time.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

log = logging.getLogger(__name__)


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


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush ``folder``'s entries to disk: after a rename, the new name is durable only once its folder is fsynced
    (POSIX; without it a power cut can bring back the old file or none). A no-op where folders cannot be opened
    (Windows) or fsynced (some network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one, and the new one
    survives a crash once this returns (file and folder fsynced).

    The temporary is a hidden sibling ``.NAME.XXXXXXXX.tmp``, held open until it has been renamed into place, so
    :func:`remove_stale_temps` can tell a live writer's temporary from one a killed process left behind.
    """
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
            os.replace(tmp, path)  # still open: never a closed temporary that a cleaner could take for stale
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


_IMPORTED_AT = time.time()  # a fallback start time where /proc is missing (reading the clock changes nothing)

# mkstemp's names: prefix + 8 characters of [a-z0-9_] + suffix
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def process_start_time() -> float:
    """When this process started (seconds since the epoch): Linux ``/proc/self/stat``, elsewhere the time
    ``oskt.io`` was first imported (later than the start: a safe bound for :func:`remove_stale_temps`)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")  # btime is whole seconds, rounded down: an earlier bound
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def _open_paths(candidates: set[str]) -> set[str] | None:
    """Which of ``candidates`` (absolute paths) some process on this host holds open; None without ``/proc``.

    Processes of other users whose ``fd`` folder cannot be read are not seen.
    """
    if not os.path.isdir("/proc/self/fd"):
        return None
    held: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in candidates:
                held.add(target)
    return held


def remove_stale_temps(folder: str | os.PathLike[str], *, before: float | None = None) -> list[str]:
    """Delete the temporaries that killed atomic writes left in ``folder`` (not recursive); return their paths.

    Call it when the phase that owns ``folder`` starts. A file goes only when all of these hold:

    * its name is one of :func:`write_bytes_atomic`'s temporaries, ``.NAME.XXXXXXXX.tmp`` (nothing else in the
      folder is ever touched: foreign files survive);
    * it was last modified before ``before`` (default: when this process started), so a temporary that a
      concurrent writer is filling right now is left alone, even one on another host sharing the folder;
    * no process on this host holds it open (``/proc/*/fd``; a writer keeps its temporary open until the rename).
      Without ``/proc`` (macOS) the age rule alone decides.

    Object stores (``s3://``) have no temporaries: nothing to do. A missing folder is not an error.

    Args:
        folder: the folder to clean.
        before: a time (seconds since the epoch); default :func:`process_start_time`.
    """
    if is_url(folder):
        return []
    folder = os.path.abspath(os.fspath(folder))
    limit = process_start_time() if before is None else before
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    old: list[str] = []
    for name in names:
        if not _TEMP_NAME.fullmatch(name):
            continue
        p = os.path.join(folder, name)
        try:
            st = os.lstat(p)
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mtime < limit:
            old.append(p)
    if not old:
        return []
    held = _open_paths(set(old)) or set()
    removed = []
    for p in old:
        if p in held:
            continue
        try:
            os.unlink(p)
        except FileNotFoundError:
            continue
        removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writes in %s", len(removed), folder)
    return removed


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path`` (local or URL); None when the file is missing, unreadable, not JSON (e.g. cut
    short by a kill) or not an object: the bookkeeping files (``result.json``, ``job.json``, markers) read this way
    count as absent then, never as an error."""
    try:
        data = read_json(path) if exists(path) else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def torch_save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through an in-memory buffer, then an atomic write (local or URL)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())
