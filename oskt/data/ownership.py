"""Folders the project owns: generated data sets carry a manifest listing every file oskt wrote there.

Rule (issue #17): nothing the project did not create is ever deleted or overwritten. A generated data set (the
embedded synthetic sets, the stand-ins of :mod:`oskt.data.standin`) lives in a folder whose ``dataset.json`` is an
oskt manifest with a ``files`` list; :func:`check_owned` refuses any other non-empty folder, and an oskt folder that
also holds something not on its list, naming the folder and a foreign file. :func:`write_owned` writes a new set
*beside* the old one and swaps it in:

- **Local folders**: the new set is written into a fresh hidden sibling (``.<name>.<random>.new``), then exchanged
  with the old folder in one ``renameat2(RENAME_EXCHANGE)`` call (Linux), so readers see the whole old set or the
  whole new one, never none. Where the kernel or file system cannot exchange, the old folder is renamed aside and
  the new one renamed into place right after (two renames: a moment with no folder). The old set is then removed
  file by file from its own list; anything else found there is left in place and logged.
- **Object stores** (``s3://``) have no rename. The old manifest is first replaced by a *pending* one (readers see
  "not generated", never a mix), objects are written in batches, each batch's names added to the pending list
  *before* it is written (an interrupted run leaves no object off the list), objects of the old list that the new
  set does not have are deleted, and the complete manifest is written last. Only listed objects are ever deleted.

Manifests of the first synthetic generator (version 1, no ``files`` list) are still recognised: their file list is
derived from the generator config they record.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from oskt import io
from oskt.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "check_owned", "complete_manifest", "listed_files", "read_manifest", "write_owned"]

MANIFEST = "dataset.json"
"""The manifest's file name, at the top of every generated data set."""
_BATCH = 256  # object-store writes between pending-manifest updates
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _fs(path: str) -> tuple[Any, str]:
    import fsspec  # a dependency of torch, always there; s3fs comes with the pipeline extra

    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    return fs, p


def read_manifest(path: str) -> dict[str, Any] | None:
    """The oskt manifest at the top of ``path`` (complete or pending), or None when there is none (or the
    ``dataset.json`` there is not one oskt wrote)."""
    mpath = io.join(path, MANIFEST)
    try:
        m = io.read_json(mpath)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(m, dict) or not str(m.get("generator", "")).startswith("oskt."):
        return None
    return m


def complete_manifest(path: str) -> dict[str, Any] | None:
    """The manifest of ``path`` when it marks a finished data set (not a pending, interrupted one), else None."""
    m = read_manifest(path)
    return None if m is None or m.get("pending") else m


LEGACY_LISTS: dict[str, Callable[[dict[str, Any]], set[str]]] = {}
"""Generators whose old manifests carry no ``files`` list register here how to derive it (``oskt.data.synthetic``:
from the generator config it records); the generator modules register themselves, this one imports none of them."""


def listed_files(manifest: dict[str, Any]) -> set[str]:
    """Relative (``/``-separated) paths of every file the manifest says oskt wrote, the manifest excluded."""
    if isinstance(manifest.get("files"), list):
        return {str(f) for f in manifest["files"]}
    legacy = LEGACY_LISTS.get(str(manifest.get("generator", "")))
    return legacy(manifest) if legacy is not None else set()


def _walk(path: str) -> tuple[list[str], list[str]]:
    """(files, folders) under ``path`` as relative ``/`` paths; symbolic links count as files (never followed)."""
    if io.is_url(path):
        fs, p = _fs(path)
        base = p.rstrip("/") + "/"
        return sorted(f[len(base) :] for f in fs.find(p) if f.startswith(base)), []
    files, dirs = [], []
    for here, dnames, fnames in os.walk(path):
        rel = os.path.relpath(here, path).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        for d in dnames:
            (files if os.path.islink(os.path.join(here, d)) else dirs).append(prefix + d)
        files.extend(prefix + f for f in fnames)
    return sorted(files), sorted(dirs)


def _parents(files: Iterable[str]) -> set[str]:
    out = set()
    for f in files:
        d = posixpath.dirname(f)
        while d:
            out.add(d)
            d = posixpath.dirname(d)
    return out


def check_owned(path: str) -> dict[str, Any] | None:
    """Make sure a generated data set may be written at ``path``: it must be missing, empty, or an oskt data set
    holding only the files its manifest lists.

    Returns:
        The manifest found there (None for a missing or empty folder).

    Raises:
        DataError: naming the folder and a file oskt did not write (a user's notes, a real data set, ...).
    """
    if not io.is_url(path):
        if not os.path.lexists(path):
            return None
        if not os.path.isdir(path):
            raise DataError(f"{path} exists and is not a folder: refusing to write a data set there")
    files, dirs = _walk(path)
    if not files and not dirs:
        return None
    manifest = read_manifest(path)
    if manifest is None:
        first = next(iter(files), None) or dirs[0] + "/"
        raise DataError(
            f"{path} holds {len(files) + len(dirs)} entries oskt did not write (e.g. {first}) and no oskt "
            f"{MANIFEST} manifest: refusing to write a data set there; move them away or choose another folder"
        )
    listed = listed_files(manifest)
    foreign = [f for f in files if f != MANIFEST and f not in listed]
    foreign += [d + "/" for d in dirs if d not in _parents(listed)]
    if foreign:
        raise DataError(
            f"{path} is an oskt data set but also holds {len(foreign)} file(s) oskt did not write "
            f"(e.g. {foreign[0]}): refusing to replace it; move them out of the folder first"
        )
    return manifest


def _check_rel(rel: str) -> str:
    norm = posixpath.normpath(rel)
    if rel != norm or norm.startswith(("/", "../")) or norm in (".", "..", MANIFEST):
        raise ValueError(f"generated file name {rel!r} must be a plain relative path inside the data set")
    return norm


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def _remove_listed_local(folder: str, manifest: dict[str, Any] | None) -> None:
    """Delete the files ``manifest`` lists (and the manifest), then the folders they leave empty; keep the rest."""
    listed = listed_files(manifest) if manifest else set()
    for rel in sorted(listed) + [MANIFEST]:
        p = os.path.join(folder, *rel.split("/"))
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
    for rel in sorted(_parents(listed), key=lambda d: -d.count("/")):
        with contextlib.suppress(OSError):  # not empty: something else lives there
            os.rmdir(os.path.join(folder, *rel.split("/")))
    try:
        os.rmdir(folder)
    except OSError:
        left, _ = _walk(folder)
        log.warning("kept %s: it holds %d file(s) oskt did not write (e.g. %s)", folder, len(left), left[:1])


def _write_local(path: str, manifest: dict[str, Any], files: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    path = os.path.realpath(path)  # a symlinked data set folder: swap the folder it points to, keep the link
    old = check_owned(path)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".new", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~io._umask())  # mkdtemp makes it owner-only; the data set is an ordinary folder
        written: list[str] = []
        for rel, data in files:
            rel = _check_rel(rel)
            full = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "xb") as f:  # a fresh private folder: atomic as a whole, no per-file fsync
                f.write(data)
            written.append(rel)
        final = {**manifest, "files": sorted(written)}
        final.pop("pending", None)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(final, f, indent=2, sort_keys=True)
        if os.path.lexists(path):
            if _exchange(tmp, path):
                aside = tmp  # the old set now sits in the temporary folder
            else:
                aside = tmp[: -len(".new")] + ".old"
                os.rename(path, aside)
                os.rename(tmp, path)
            _remove_listed_local(aside, old)
        else:
            os.rename(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)  # our own fresh folder (or, after a swap, already gone)
        raise
    return final


def _write_url(path: str, manifest: dict[str, Any], files: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    old = check_owned(path)
    fs, p = _fs(path)
    mpath = io.join(path, MANIFEST)
    keep = listed_files(old) if old else set()  # objects of the old set not yet overwritten: still on the list
    written: list[str] = []

    def pending(extra: Iterable[str]) -> None:
        io.write_json_atomic(mpath, {**manifest, "pending": True, "files": sorted(keep | set(written) | set(extra))})

    pending(())  # withdraws the old manifest: readers see "not generated" from here on
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        pending(rel for rel, _ in batch)  # list the names before the objects exist
        for rel, data in batch:
            io.write_bytes_atomic(io.join(path, rel), data)
            written.append(rel)
        batch.clear()

    for rel, data in files:
        batch.append((_check_rel(rel), data))
        if len(batch) >= _BATCH:
            flush()
    flush()
    for rel in sorted(keep - set(written)):  # only objects an oskt manifest listed
        target = p.rstrip("/") + "/" + rel
        if fs.exists(target):
            fs.rm_file(target)
    keep.clear()
    final = {k: v for k, v in manifest.items() if k != "pending"}
    final["files"] = sorted(written)
    io.write_json_atomic(mpath, final)
    return final


def write_owned(path: str, manifest: dict[str, Any], files: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    """Write a generated data set at ``path`` and mark it as oskt's: ``files`` (relative ``/`` path, bytes) plus
    ``dataset.json`` = ``manifest`` with the list of written files added.

    The old set at ``path`` (if any) is replaced only when :func:`check_owned` accepts it; see the module docstring
    for how the swap works locally and on object stores.

    Args:
        path: the data set folder (local or URL).
        manifest: what describes the set (``generator`` must start with ``oskt.``; ``files`` is filled in).
        files: the files to write, produced lazily (rendered while writing).

    Returns:
        The manifest written.
    """
    if not str(manifest.get("generator", "")).startswith("oskt."):
        raise ValueError("a manifest's generator must name an oskt module")
    path = str(path).rstrip("/")
    return _write_url(path, manifest, files) if io.is_url(path) else _write_local(path, manifest, files)
