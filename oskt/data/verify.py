"""Decode every image of a data set once before training (issue #17), with a cache so reruns do not pay again.

A corrupt file in the query or gallery split used to surface only at the final evaluation, after every training
epoch. :func:`verify_images` decodes the train, query and gallery images up front (the same full decode as the
loaders, :func:`oskt.data.layouts.read_image`) and remembers each good file by (path, size, modification time) in
a JSON file the caller chooses; a file that changes is decoded again. The cache belongs in the run's own folders
(e.g. next to the outputs), never inside a data set folder, which oskt does not write into.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from oskt import io
from oskt.data.layouts import read_image
from oskt.data.records import ImageRecord, ReIDDataset, relabel
from oskt.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "ImageCheck", "verify_images"]

CACHE_VERSION = 1
_SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`verify_images` found.

    Attributes:
        dataset: the data set to use (unchanged, or with unreadable images dropped under ``policy="skip"``).
        bad: unreadable image paths (empty unless ``policy="skip"``).
        decoded: images decoded this time.
        cached: images known good from the cache (not decoded).
    """

    dataset: ReIDDataset
    bad: list[str]
    decoded: int
    cached: int


def _signatures(paths: Sequence[str]) -> dict[str, list[Any]]:
    """``path -> [size, mtime]`` for the files that exist (one listing per folder for object stores)."""
    out: dict[str, list[Any]] = {}
    local = [p for p in paths if not io.is_url(p)]
    for p in local:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[p] = [st.st_size, st.st_mtime_ns]
    by_folder: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        if io.is_url(p):
            by_folder[p.rsplit("/", 1)[0]].append(p)
    if by_folder:
        import fsspec

        for folder, members in by_folder.items():
            fs, _, (fp,) = fsspec.get_fs_token_paths(folder)
            try:  # one listing per folder instead of one request per image
                infos = {str(i["name"]).rstrip("/").rsplit("/", 1)[-1]: i for i in fs.ls(fp, detail=True)}
            except OSError:
                continue
            for p in members:
                i = infos.get(p.rsplit("/", 1)[-1])
                if i is not None:
                    mtime = i.get("LastModified") or i.get("mtime") or i.get("ETag") or i.get("created")
                    out[p] = [i.get("size"), str(mtime)]
    return out


def _load_cache(cache_file: str | None) -> dict[str, list[Any]]:
    if cache_file is None or not io.exists(cache_file):
        return {}
    try:
        blob = io.read_json(cache_file)
    except (OSError, ValueError, UnicodeDecodeError):
        log.warning("ignoring unreadable image-check cache %s", cache_file)
        return {}
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION or not isinstance(blob.get("images"), dict):
        return {}
    return blob["images"]


def _save_cache(cache_file: str, known: dict[str, list[Any]]) -> None:
    # the cache file may be shared by several data sets: keep every entry, replace the file atomically
    io.write_json_atomic(cache_file, {"version": CACHE_VERSION, "images": known})


def _decode(path: str) -> str | None:
    try:
        read_image(path)
    except DataError as e:
        return str(e)
    return None


def verify_images(
    ds: ReIDDataset, cache_file: str | None = None, policy: str = "fail", *, threads: int = 4
) -> ImageCheck:
    """Decode every train, query and gallery image of ``ds`` that the cache does not already vouch for.

    Args:
        ds: the data set (any layout; local paths or URLs).
        cache_file: JSON file remembering good images by (path, size, mtime); None = no cache. Choose a place of
            the run's own (e.g. ``<out_dir>/image_check.json``), not the data folder.
        policy: ``fail`` (``data.bad_images``) raises on the first unreadable image, ``skip`` drops them.
        threads: decoding threads (PIL releases the GIL while decoding; object stores overlap their reads).

    Returns:
        An :class:`ImageCheck`; under ``skip`` its data set lacks the unreadable images (training ids relabelled).

    Raises:
        DataError: ``fail`` and an unreadable image (naming the data set, the split and the file; the images
            verified so far are cached first), or ``skip`` left a split empty.
    """
    if policy not in ("fail", "skip"):
        raise DataError(f"image check policy {policy!r} is not allowed: expected 'fail' or 'skip' (data.bad_images)")
    order: list[tuple[str, str]] = []  # (split, path), first occurrence of every path
    seen: set[str] = set()
    for split in _SPLITS:
        for r in getattr(ds, split):
            if r.path not in seen:
                seen.add(r.path)
                order.append((split, r.path))
    known = _load_cache(cache_file)
    sigs = _signatures([p for _, p in order])
    todo = [(s, p) for s, p in order if not (p in sigs and known.get(p) == sigs[p])]
    cached = len(order) - len(todo)
    bad: list[str] = []
    decoded = 0
    changed = False
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for (split, path), err in zip(todo, pool.map(_decode, [p for _, p in todo]), strict=True):
                decoded += 1
                if err is None:
                    if path in sigs:
                        known[path] = sigs[path]
                        changed = True
                    continue
                known.pop(path, None)
                if policy == "fail":
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise DataError(
                        f"data set {ds.name!r}, {split} split: {err} "
                        "(replace the file, or set data.bad_images=skip to drop unreadable images)"
                    )
                bad.append(path)
    finally:
        if cache_file is not None and changed:
            _save_cache(cache_file, known)
    log.info(
        "checked %d images of %s: %d decoded, %d known good, %d unreadable",
        len(order),
        ds.label,
        decoded,
        cached,
        len(bad),
    )
    if not bad:
        return ImageCheck(ds, [], decoded, cached)
    log.warning("dropping %d unreadable images of %s (e.g. %s)", len(bad), ds.label, bad[0])
    drop = set(bad)
    splits: dict[str, list[ImageRecord]] = {s: [r for r in getattr(ds, s) if r.path not in drop] for s in _SPLITS}
    for s, recs in splits.items():
        if not recs:
            raise DataError(f"data set {ds.name!r}: every {s} image is unreadable (e.g. {bad[0]})")
    out = dataclasses.replace(ds, train=relabel(splits["train"]), query=splits["query"], gallery=splits["gallery"])
    return ImageCheck(out, bad, decoded, cached)
