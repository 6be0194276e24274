"""Parsers for the standard ReID layouts (and a generic folder / CSV one), returning plain records.

Every path goes through :mod:`oskt.io`, so a root may be a local folder or an ``s3://`` URL. A layout is recognised
from the folder's contents; a wrong or incomplete one raises a :class:`~oskt.errors.DataError` naming the missing
part. See ../shared/BASELINES.md §3.2 for the layouts.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
import posixpath
import re
from collections.abc import Iterable

from PIL import Image, UnidentifiedImageError

from oskt import io
from oskt.config import DataConfig
from oskt.data.ownership import complete_manifest
from oskt.data.records import ImageRecord, ReIDDataset, holdout_split, relabel
from oskt.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_images",
    "LAYOUT_NAMES",
    "dataset_path",
    "detect_layout",
    "load_dataset",
    "load_layout",
    "parse_market_folder",
    "read_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LAYOUT_NAMES = ("market1501", "msmt17", "cuhk03", "folder", "csv")
MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
MSMT_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
FOLDER_SPLITS = ("train", "query", "gallery")
# pid (4 digits, -1 = junk, 0000 = distractor), camera c1.., optional sequence s1..: 0002_c1s1_000451_03.jpg
_MARKET_RE = re.compile(r"^(-?\d+)_c(\d+)(?:s(\d+))?")
_FOLDER_RE = re.compile(r"^c(\d+)(?:[_\-.]|$)")


def read_image(path: str) -> Image.Image:
    """Decode an image (local or URL) to RGB; an unreadable or corrupt file raises a DataError naming it."""
    try:
        data = io.read_bytes(path)
        img = Image.open(_io.BytesIO(data))
        return img.convert("RGB")  # forces the full decode, so truncated files fail here
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def _inside(base: str, target: str) -> bool:
    """True when ``target`` (a path or URL, after resolving ``.`` / ``..`` lexically) lies inside folder ``base``.

    Lexical on purpose: a symbolic link the user put inside the data folder is their choice, a ``../`` in a list
    file is not."""
    if io.is_url(base) or io.is_url(target):
        if not (io.is_url(base) and io.is_url(target)):
            return False
        (bs, brest), (ts, trest) = base.split("://", 1), target.split("://", 1)
        b, t = posixpath.normpath("/" + brest), posixpath.normpath("/" + trest)
        return bs == ts and (t == b or t.startswith(b.rstrip("/") + "/"))
    b, t = os.path.abspath(base), os.path.abspath(target)
    return os.path.commonpath([b, t]) == b


def _outside_error(where: str, value: str, base: str) -> DataError:
    return DataError(
        f"{where}: path {value!r} resolves outside the data set's folder {base}; rows must name files inside it "
        "(set data.allow_outside_root: true to allow files elsewhere)"
    )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise DataError(msg)


def _listdir(path: str) -> list[str]:
    try:
        return io.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path} does not exist or is not a folder") from None


def parse_market_folder(folder: str, *, keep_distractors: bool = False) -> list[ImageRecord]:
    """Parse one Market-style folder (``0002_c1s1_000451_03.jpg``): pid, 0-based camera, sequence.

    Junk (pid -1) is dropped; distractors (pid 0) are kept only when ``keep_distractors`` (the gallery).
    Non-image files (e.g. ``Thumbs.db``) are ignored; an image whose name does not match raises a DataError.
    """
    out: list[ImageRecord] = []
    for name in _listdir(folder):
        if not _is_image(name):
            continue
        m = _MARKET_RE.match(name)
        if m is None:
            raise DataError(
                f"file name {io.join(folder, name)} does not match the Market-1501 pattern "
                "<pid>_c<camera>[s<seq>]_... (e.g. 0002_c1s1_000451_03.jpg)"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        _require(cam >= 1, f"file name {io.join(folder, name)}: camera numbers start at c1")
        seq = int(m.group(3)) - 1 if m.group(3) else -1
        out.append(ImageRecord(io.join(folder, name), pid, cam - 1, seq))
    return out


def _check_splits(name: str, path: str, train: list, query: list, gallery: list, *, disjoint: bool = True) -> None:
    for split, recs in (("train", train), ("query", query), ("gallery", gallery)):
        _require(len(recs) > 0, f"data set {name!r} at {path}: the {split} split is empty")
    if disjoint:
        overlap = sorted({r.pid for r in train} & {r.pid for r in query})
        _require(
            not overlap,
            f"data set {name!r} at {path}: {len(overlap)} ids appear in both query and train "
            f"(e.g. {overlap[:5]}); test ids must be disjoint from training ids",
        )


def _market_like(name: str, root: str, what: str) -> ReIDDataset:
    names = set(_listdir(root))
    missing = [f for f in MARKET_FOLDERS if f not in names]
    _require(
        not missing,
        f"{root} is not a complete {what} layout: missing folder(s) {', '.join(missing)} "
        f"(expected {', '.join(MARKET_FOLDERS)})",
    )
    train = parse_market_folder(io.join(root, "bounding_box_train"))
    query = parse_market_folder(io.join(root, "query"))
    gallery = parse_market_folder(io.join(root, "bounding_box_test"), keep_distractors=True)
    _check_splits(name, root, train, query, gallery)
    return ReIDDataset(name, relabel(train), query, gallery)


def _read_list(path: str, image_root: str, allow_outside: bool = False) -> list[ImageRecord]:
    """MSMT17 list file: ``<relative/path.jpg> <pid>`` per line; camera = 3rd ``_`` field of the file name.

    A line whose path leads out of ``image_root`` (``../``, absolute) is an error unless ``allow_outside``."""
    try:
        text = io.read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"MSMT17 list {path} does not exist") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        fields = os.path.basename(parts[0]).split("_") if parts else []
        if len(parts) != 2 or len(fields) < 3 or not parts[1].lstrip("-").isdigit() or not fields[2].isdigit():
            raise DataError(
                f"{path} line {lineno}: {line.strip()!r} does not match the MSMT17 format "
                "'<pid>/<pid>_<idx>_<camera>_<...>.jpg <pid>'"
            )
        full = io.join(image_root, parts[0])
        if not allow_outside and (os.path.isabs(parts[0]) or io.is_url(parts[0]) or not _inside(image_root, full)):
            raise _outside_error(f"{path} line {lineno}", parts[0], image_root)
        out.append(ImageRecord(full, int(parts[1]), int(fields[2]) - 1))
    return out


def _msmt17(name: str, root: str, merge_val: bool, allow_outside: bool = False) -> ReIDDataset:
    names = set(_listdir(root))
    needed = [*MSMT_LISTS, "list_val.txt"] if merge_val else list(MSMT_LISTS)
    missing = [f for f in [*needed, "train", "test"] if f not in names]
    _require(
        not missing,
        f"{root} is not a complete MSMT17_V1 layout: missing {', '.join(missing)} "
        f"(expected train/, test/, {', '.join(needed)})",
    )
    train_dir, test_dir = io.join(root, "train"), io.join(root, "test")
    train = _read_list(io.join(root, "list_train.txt"), train_dir, allow_outside)
    if merge_val:
        # list_val holds more images of the training identities (same pid numbering)
        train += _read_list(io.join(root, "list_val.txt"), train_dir, allow_outside)
    query = _read_list(io.join(root, "list_query.txt"), test_dir, allow_outside)
    gallery = _read_list(io.join(root, "list_gallery.txt"), test_dir, allow_outside)
    # MSMT17 numbers test ids from 0 again, so train/query ids legitimately coincide: no disjointness check
    _check_splits(name, root, train, query, gallery, disjoint=False)
    return ReIDDataset(name, relabel(train), query, gallery)


def _cuhk03(name: str, root: str, split: str) -> ReIDDataset:
    names = set(_listdir(root))
    _require(
        split in names,
        f"{root} is not a complete CUHK03-NP layout: missing folder {split}/ "
        "(expected detected/ and/or labeled/, each with bounding_box_train, query, bounding_box_test)",
    )
    return _market_like(name, io.join(root, split), f"CUHK03-NP {split}")


def _folder(name: str, root: str) -> ReIDDataset:
    names = set(_listdir(root))
    missing = [s for s in FOLDER_SPLITS if s not in names]
    _require(
        not missing,
        f"{root} is not a complete folder layout: missing folder(s) {', '.join(missing)} "
        "(expected train/, query/, gallery/, each with one sub-folder per integer person id holding "
        "images named c<camera>_*.jpg)",
    )
    splits = {}
    for split in FOLDER_SPLITS:
        recs = []
        for pid_dir in _listdir(io.join(root, split)):
            folder = io.join(root, split, pid_dir)
            if pid_dir.startswith("."):
                continue
            _require(pid_dir.lstrip("-").isdigit(), f"folder {folder}: person folders must be integer ids")
            for fname in _listdir(folder):
                if not _is_image(fname):
                    continue
                m = _FOLDER_RE.match(fname)
                _require(
                    m is not None,
                    f"file name {io.join(folder, fname)} does not start with c<camera> (e.g. c1_0001.jpg)",
                )
                recs.append(ImageRecord(io.join(folder, fname), int(pid_dir), int(m.group(1)) - 1))  # type: ignore[union-attr]
        splits[split] = [r for r in recs if r.pid >= 0]
    _check_splits(name, root, splits["train"], splits["query"], splits["gallery"])
    return ReIDDataset(name, relabel(splits["train"]), splits["query"], splits["gallery"])


def _csv(name: str, path: str, allow_outside: bool = False) -> ReIDDataset:
    """CSV with header ``path,pid,camid,split[,seq]``; relative paths are relative to the CSV's folder.

    Every row must name a file inside the CSV's folder (the data set's root): an absolute path, a URL or a ``../``
    leading out of it is a DataError naming the line, unless ``allow_outside`` (``data.allow_outside_root``)."""
    try:
        text = io.read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"CSV file {path} does not exist") from None
    base = path.rsplit("/", 1)[0] if io.is_url(path) else os.path.dirname(path)
    reader = csv.DictReader(_io.StringIO(text))
    cols = set(reader.fieldnames or [])
    missing = [c for c in ("path", "pid", "camid", "split") if c not in cols]
    _require(not missing, f"CSV {path}: missing column(s) {', '.join(missing)} (header: path,pid,camid,split[,seq])")
    splits: dict[str, list[ImageRecord]] = {s: [] for s in FOLDER_SPLITS}
    for lineno, row in enumerate(reader, 2):
        try:
            pid, cam = int(row["pid"]), int(row["camid"])
            seq = int(row["seq"]) if row.get("seq") not in (None, "") else -1
        except (TypeError, ValueError):
            raise DataError(f"CSV {path} line {lineno}: pid / camid / seq must be integers: {row}") from None
        split = (row["split"] or "").strip()
        _require(split in splits, f"CSV {path} line {lineno}: split {split!r} is not one of {FOLDER_SPLITS}")
        p = row["path"] or ""
        full = p if (io.is_url(p) or os.path.isabs(p)) else io.join(base, p)
        if not allow_outside and not _inside(base or ".", full):
            raise _outside_error(f"CSV {path} line {lineno}", p, base or ".")
        if pid >= 0:
            splits[split].append(ImageRecord(full, pid, cam, seq))
    _check_splits(name, path, splits["train"], splits["query"], splits["gallery"])
    return ReIDDataset(name, relabel(splits["train"]), splits["query"], splits["gallery"])


def detect_layout(path: str) -> str:
    """Recognise a layout from a folder's contents (or a ``.csv`` file)."""
    if path.lower().endswith(".csv"):
        return "csv"
    names = set(_listdir(path))
    if names & {"list_train.txt", "list_query.txt", "list_gallery.txt"}:
        return "msmt17"
    if names & {"detected", "labeled"}:
        return "cuhk03"
    if names & set(MARKET_FOLDERS) - {"query"} or ("query" in names and not names & {"train", "gallery"}):
        return "market1501"
    if names & set(FOLDER_SPLITS):
        return "folder"
    raise DataError(
        f"cannot recognise the layout of {path}: expected Market-1501 (bounding_box_train/, query/, "
        "bounding_box_test/), MSMT17_V1 (list_train.txt, ...), CUHK03-NP (detected/, labeled/), a folder layout "
        "(train/, query/, gallery/) or a .csv file"
    )


def load_layout(
    path: str,
    layout: str = "auto",
    *,
    name: str | None = None,
    cuhk03_split: str = "detected",
    merge_val: bool = False,
    allow_outside_root: bool = False,
) -> ReIDDataset:
    """Parse a data set at ``path`` (local or URL) in ``layout`` (``auto`` = recognise it).

    Args:
        path: the data set's folder (or CSV file).
        layout: ``auto``, ``market1501``, ``msmt17``, ``cuhk03``, ``folder``, ``csv`` (``synthetic`` = Market).
        name: the name recorded in the result (default: the folder's name).
        cuhk03_split: CUHK03-NP ``detected`` or ``labeled``.
        merge_val: MSMT17: add ``list_val.txt`` to the training split.
        allow_outside_root: let CSV rows / MSMT17 list lines name files outside the data set's folder.
    """
    name = name or path.rstrip("/").rsplit("/", 1)[-1]
    if layout == "auto":
        layout = detect_layout(path)
    if layout in ("market1501", "synthetic"):
        ds = _market_like(name, path, "Market-1501")
    elif layout == "msmt17":
        ds = _msmt17(name, path, merge_val, allow_outside_root)
    elif layout == "cuhk03":
        ds = _cuhk03(name, path, cuhk03_split)
    elif layout == "folder":
        ds = _folder(name, path)
    elif layout == "csv":
        ds = _csv(name, path, allow_outside_root)
    else:
        raise DataError(f"unknown layout {layout!r}: expected auto or one of {LAYOUT_NAMES}")
    log.info("loaded %s (%s) from %s: %s", name, layout, path, ds.stats())
    return ds


def dataset_path(name: str, data: DataConfig) -> str:
    """Where ``data.datasets[name]`` lives: its path under ``data.root`` (absolute paths / URLs as they are)."""
    if name not in data.datasets:
        raise DataError(f"unknown data set {name!r}; data.datasets has {sorted(data.datasets)}")
    p = data.datasets[name].path or name
    return p if (io.is_url(p) or os.path.isabs(p)) else io.join(data.root, p)


def load_dataset(name: str, data: DataConfig) -> ReIDDataset:
    """Load ``data.datasets[name]`` (resolved under ``data.root``).

    Synthetic data sets must have been generated first (``oskt data make`` or
    :func:`oskt.data.synthetic.make_synthetic`); a missing one raises a DataError saying so. With
    ``data.val_ids`` > 0 the result is the validation protocol (:func:`holdout_split`): the test split is dropped.
    """
    path = dataset_path(name, data)
    entry = data.datasets[name]
    if entry.layout == "synthetic" and complete_manifest(path) is None:
        raise DataError(
            f"synthetic data set {name!r} is not generated at {path}: run `oskt data make --dataset {name}`"
        )
    ds = load_layout(
        path,
        entry.layout,
        name=name,
        cuhk03_split=entry.cuhk03_split,
        merge_val=entry.merge_val,
        allow_outside_root=data.allow_outside_root,
    )
    return holdout_split(ds, data.val_ids) if data.val_ids else ds


def check_images(records: Iterable[ImageRecord], policy: str = "fail") -> tuple[list[ImageRecord], list[str]]:
    """Decode every image up front; returns (readable records, unreadable paths).

    ``policy="fail"`` raises a DataError naming the first bad file; ``"skip"`` drops and counts them.
    """
    good, bad = [], []
    for r in records:
        try:
            read_image(r.path)
        except DataError:
            if policy == "fail":
                raise
            bad.append(r.path)
            continue
        good.append(r)
    if bad:
        log.warning("skipped %d unreadable images (e.g. %s)", len(bad), bad[0])
    return good, bad
