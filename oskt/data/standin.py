"""Stand-in data sets: synthetic pedestrians written in the exact layouts of Market-1501, MSMT17_V1 and CUHK03-NP.

The real sets cannot be downloaded here, so a paper-scale rehearsal runs on stand-ins that the *real* parsers
(:func:`oskt.data.layouts.load_layout`, no special case) read. What is reproduced (../shared/BASELINES.md §3.2):

- **Market-1501-v15.09.15**: ``bounding_box_train/``, ``query/``, ``bounding_box_test/``; names
  ``pppp_cCsS_ffffff_bb.jpg`` (4-digit pid, camera c1..c6, sequence s1..s6, 6-digit frame, 2-digit box index);
  train and test ids interleaved in 1..1501 (so training ids must be relabelled); each id in 2-6 cameras; query =
  one image per (test id, camera), the rest gallery; junk ``-1_c…`` (bad detections: a body part or a tiny far-away
  person) and distractors ``0000_c…`` (other people) in the gallery only. JPEG.
- **MSMT17_V1**: ``train/<pid>/`` and ``test/<pid>/`` folders, ``list_train.txt``, ``list_val.txt``,
  ``list_query.txt``, ``list_gallery.txt`` with lines ``<pid>/<name>.jpg <pid>``; names
  ``pppp_iii_cc_<date><time>_ffff_k.jpg`` (camera = 3rd field, 01..15); train and test ids both numbered from 0;
  ``list_val`` holds further images of training ids (disjoint from ``list_train``); 15 cameras. JPEG.
- **CUHK03-NP**: ``detected/`` and ``labeled/``, each with ``bounding_box_train/``, ``query/``,
  ``bounding_box_test/``; Market-style names ``pppp_cC_i.png``; 2 cameras; query = one image per camera per test id
  (2 per id); variable-size crops (about 130-200 x 50-90 px); the same images in both, the detected crop looser than
  the labeled one, and, as in the release, a few more training images in ``labeled`` and a few more gallery images
  in ``detected``. PNG.

Sizes are small (tens of ids; ``ids`` / ``test_ids`` / ``images_per_cam``); stored at 256x128 unless ``size`` says
otherwise (CUHK03-NP: variable unless ``size``). Everything is drawn from generators keyed by (seed, kind, ...), so
the same arguments give byte-identical files. Each stand-in is an oskt-owned folder (``dataset.json`` manifest,
:mod:`oskt.data.ownership`): it is never written over a folder holding anything oskt did not write.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from oskt.data.ownership import check_owned, complete_manifest, write_owned
from oskt.data.records import ImageRecord, split_stats
from oskt.data.synthetic import _camera, _identity, _rng, render_person
from oskt.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["KINDS", "STANDIN_VERSION", "make_standin", "standin_is_complete", "standin_params"]

KINDS = ("market1501", "msmt17", "cuhk03")
"""The real layouts a stand-in can imitate (the names of their ``data.datasets`` entries in the default config)."""
STANDIN_VERSION = 1
_KIND_CODE = {"market1501": 1, "msmt17": 2, "cuhk03": 3}
_DOMAIN = {"market1501": "a", "msmt17": "b", "cuhk03": "a"}  # appearance palettes of oskt.data.synthetic
_NUM_CAMS = {"market1501": 6, "msmt17": 15, "cuhk03": 2}
_ID_RANGE = {"market1501": 1501, "cuhk03": 1467}  # the real sets' pid ranges (train and test ids interleaved)
_MSMT_DATES = ("0113", "0114", "0302", "0303")
_MSMT_TIMES = ("morning", "noon", "afternoon")
_DEFAULT_SIZE = (256, 128)
# image kinds: how the person is framed
_PERSON, _DISTRACTOR, _JUNK = 0, 1, 2
_FRESH = 10_000_000  # identity keys of one-off people (distractors, junk), above every pid


@dataclass(frozen=True)
class _Image:
    rel: str  # path inside the data set
    split: str  # train | val | query | gallery | junk
    pid: int  # the id the parser reads (-1 junk, 0 distractor)
    cam: int  # 0-based camera
    ident: int  # identity key (a person, or a fresh one per distractor / junk image)
    key: int  # this image's own generator key
    size: tuple[int, int]  # stored (height, width)
    frame: int = _PERSON
    loose: bool = False  # CUHK03-NP detected: the detector's box is looser than the hand-labelled one


def standin_params(
    kind: str,
    *,
    ids: int = 24,
    test_ids: int | None = None,
    images_per_cam: int = 3,
    seed: int = 0,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The validated generator parameters (what the manifest records and :func:`standin_is_complete` compares)."""
    if kind not in KINDS:
        raise ConfigError(f"stand-in kind {kind!r} is not allowed: expected one of {KINDS}")
    test_ids = ids if test_ids is None else test_ids
    if ids < 2 or test_ids < 2:
        raise ConfigError(f"stand-in ids={ids}, test_ids={test_ids} are not allowed: expected integers >= 2")
    limit = _ID_RANGE.get(kind, 9999)
    if kind != "msmt17" and ids + test_ids > limit:
        raise ConfigError(f"stand-in {kind}: ids + test_ids = {ids + test_ids} exceeds the real set's {limit} pids")
    if kind == "msmt17" and max(ids, test_ids) > 9999:
        raise ConfigError(f"stand-in msmt17: ids / test_ids must be <= 9999 (4-digit pids), got {ids} / {test_ids}")
    if images_per_cam < 1:
        raise ConfigError(f"stand-in images_per_cam={images_per_cam} is not allowed: expected an integer >= 1")
    if size is not None and (len(size) != 2 or min(size) < 16):
        raise ConfigError(f"stand-in size={size!r} is not allowed: expected (height, width), both >= 16")
    return {
        "kind": kind,
        "ids": int(ids),
        "test_ids": int(test_ids),
        "images_per_cam": int(images_per_cam),
        "seed": int(seed),
        "size": None if size is None else [int(size[0]), int(size[1])],
    }


def _kind_seed(p: dict[str, Any]) -> int:
    return int(np.random.SeedSequence([p["seed"], _KIND_CODE[p["kind"]], 0x5EED]).generate_state(1)[0])


def _pick_ids(rng: np.random.Generator, p: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Train and test pids, interleaved in the real set's range (Market: 1..1501, CUHK03-NP: 1..1467)."""
    pool = rng.choice(np.arange(1, _ID_RANGE[p["kind"]] + 1), size=p["ids"] + p["test_ids"], replace=False)
    return sorted(int(x) for x in pool[: p["ids"]]), sorted(int(x) for x in pool[p["ids"] :])


def _per_cam(rng: np.random.Generator, p: dict[str, Any], test: bool) -> int:
    """Images of one id in one camera: 1..2k-1 (mean k) for training ids, one more for test ids (one is a query)."""
    return int(rng.integers(1, 2 * p["images_per_cam"])) + (1 if test else 0)


def _cams_of(rng: np.random.Generator, num_cams: int) -> list[int]:
    k = int(rng.integers(2, min(6, num_cams) + 1))  # every id is seen by at least two cameras
    return sorted(int(c) for c in rng.permutation(num_cams)[:k])


def _size(p: dict[str, Any]) -> tuple[int, int]:
    return tuple(p["size"]) if p["size"] else _DEFAULT_SIZE  # type: ignore[return-value]


def _market_plan(p: dict[str, Any], ks: int) -> list[_Image]:
    rng = _rng(ks, 0)
    train, test = _pick_ids(rng, p)
    size, used, out = _size(p), set(), []
    key = iter(range(1, 1 << 30))

    def name(pid: int, cam: int, seq: int, frame: int) -> str:
        while True:  # frame numbers of one camera sequence are unique per box index
            n = f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam + 1}s{seq}_{frame:06d}_{int(rng.integers(1, 9)):02d}.jpg"
            if n not in used:
                used.add(n)
                return n
            frame += 1

    for split, pids in (("train", train), ("test", test)):
        for pid in pids:
            for cam in _cams_of(rng, 6):
                seq, frame = int(rng.integers(1, 7)), int(rng.integers(0, 150_000))
                for j in range(_per_cam(rng, p, split == "test")):
                    frame += int(rng.integers(5, 80))  # one walk through the camera's view
                    folder, s = (
                        ("bounding_box_train", "train")
                        if split == "train"
                        else (("query", "query") if j == 0 else ("bounding_box_test", "gallery"))
                    )
                    out.append(_Image(f"{folder}/{name(pid, cam, seq, frame)}", s, pid, cam, pid, next(key), size))
    n_extra = max(3, math.ceil(p["test_ids"] / 3))
    for pid, kind, s in ((0, _DISTRACTOR, "gallery"), (-1, _JUNK, "junk")):
        for _ in range(n_extra):
            cam = int(rng.integers(6))
            n = name(pid, cam, int(rng.integers(1, 7)), int(rng.integers(0, 150_000)))
            k = next(key)
            out.append(_Image(f"bounding_box_test/{n}", s, pid, cam, _FRESH + k, k, size, frame=kind))
    return out


def _msmt_plan(p: dict[str, Any], ks: int) -> tuple[list[_Image], dict[str, list[str]]]:
    rng = _rng(ks, 0)
    size, out = _size(p), []
    lists: dict[str, list[str]] = {
        "list_train.txt": [],
        "list_val.txt": [],
        "list_query.txt": [],
        "list_gallery.txt": [],
    }
    key = iter(range(1, 1 << 30))
    val_added = False
    for split, n_ids, offset in (("train", p["ids"], 0), ("test", p["test_ids"], 100_000)):
        for pid in range(n_ids):  # MSMT17 numbers the training and the test ids from 0 each
            imgs: list[tuple[int, int, str]] = []  # (camera, index within the camera, file name)
            idx = 0
            for cam in _cams_of(rng, 15):
                when = f"{_MSMT_DATES[int(rng.integers(4))]}{_MSMT_TIMES[int(rng.integers(3))]}"
                for j in range(_per_cam(rng, p, split == "test")):
                    fname = f"{pid:04d}_{idx:03d}_{cam + 1:02d}_{when}_{int(rng.integers(10_000)):04d}_{j % 2}.jpg"
                    imgs.append((cam, j, fname))
                    idx += 1
            # list_val: more images of training ids; keep at least two in list_train for P x K sampling
            val_last = split == "train" and len(imgs) >= 3 and (rng.random() < 0.4 or not val_added)
            val_added |= val_last
            id_cams = sorted({c for c, _, _ in imgs})
            query_cams = set(id_cams[: max(1, len(id_cams) // 2)])
            for i, (cam, j, fname) in enumerate(imgs):
                if split == "train":
                    s = "val" if val_last and i == len(imgs) - 1 else "train"
                else:
                    # query: the first image in half of the id's cameras; every camera keeps gallery images
                    s = "query" if j == 0 and cam in query_cams else "gallery"
                rel = f"{pid:04d}/{fname}"
                lists[f"list_{s}.txt"].append(f"{rel} {pid}")
                out.append(_Image(f"{split}/{rel}", s, pid, cam, offset + pid, next(key), size))
    return out, lists


def _cuhk_plan(p: dict[str, Any], ks: int) -> list[_Image]:
    rng = _rng(ks, 0)
    train, test = _pick_ids(rng, p)
    base: list[tuple[str, str, int, int, int, int, tuple[int, int], tuple[int, int]]] = []
    for split, pids in (("train", train), ("test", test)):
        for pid in pids:
            for cam in (0, 1):  # CUHK03: every id seen by the two cameras of its camera pair
                for j in range(_per_cam(rng, p, split == "test")):
                    if p["size"]:
                        lab = det = (int(p["size"][0]), int(p["size"][1]))
                    else:  # variable-size crops, the detector's box a little off the labelled one
                        h = int(rng.integers(130, 201))
                        lab = (h, int(h * rng.uniform(0.36, 0.46)))
                        det = (int(lab[0] * rng.uniform(0.95, 1.1)), int(lab[1] * rng.uniform(0.95, 1.15)))
                    s = "train" if split == "train" else ("query" if j == 0 else "gallery")
                    base.append((s, f"{pid:04d}_c{cam + 1}_{j + 1}.png", pid, cam, j, len(base) + 1, lab, det))
    # as in the release, a detection is missing now and then (fewer detected training images) and a few labelled
    # gallery boxes are missing (fewer labelled gallery images); never an id's last image in a camera's split
    miss_det = [i for i, b in enumerate(base) if b[0] == "train" and b[4] >= 1]
    miss_lab = [i for i, b in enumerate(base) if b[0] == "gallery" and b[4] >= 2]
    drop_det = {i for i in miss_det if rng.random() < 0.06} or set(miss_det[:1])
    drop_lab = {i for i in miss_lab if rng.random() < 0.06} or set(miss_lab[:1])
    folder = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    out: list[_Image] = []
    for i, (s, fname, pid, cam, _, k, lab, det) in enumerate(base):
        if i not in drop_det:
            out.append(_Image(f"detected/{folder[s]}/{fname}", s, pid, cam, pid, k, det, loose=True))
        if i not in drop_lab:
            out.append(_Image(f"labeled/{folder[s]}/{fname}", s, pid, cam, pid, k, lab))
    return out


def _render(img: _Image, ks: int, domain: str, cams: list[dict[str, Any]], image_format: str) -> bytes:
    ident = _identity(_rng(ks, 1, img.ident), domain)
    cam = cams[img.cam]
    if img.loose:
        cam = {**cam, "scale": cam["scale"] * 0.88}  # a looser box: the person fills less of the crop
    if img.frame == _JUNK:
        r = _rng(ks, 3, img.key)
        # bad detections: a body part (box far too tight) or a tiny far-away person
        cam = {**cam, "scale": float(r.uniform(1.4, 2.2) if r.random() < 0.5 else r.uniform(0.2, 0.4))}
    return render_person(ident, cam, _rng(ks, 2, img.key), img.size[0], img.size[1], image_format=image_format)


def _stats(imgs: list[_Image], split: str) -> dict[str, int]:
    return split_stats([ImageRecord(i.rel, i.pid, i.cam) for i in imgs if i.split == split])


def _counts(kind: str, imgs: list[_Image]) -> dict[str, Any]:
    """Per split ids / images / cameras as the layout parser reports them (``ReIDDataset.stats``)."""
    if kind == "cuhk03":
        return {
            v: {s: _stats([i for i in imgs if i.rel.startswith(v + "/")], s) for s in ("train", "query", "gallery")}
            for v in ("detected", "labeled")
        }
    out: dict[str, Any] = {s: _stats(imgs, s) for s in ("train", "query", "gallery")}
    if kind == "market1501":
        out["junk"] = sum(i.split == "junk" for i in imgs)
        out["distractors"] = sum(i.pid == 0 for i in imgs)
    else:
        out["val"] = _stats(imgs, "val")
    return out


def standin_is_complete(path: str, params: dict[str, Any]) -> bool:
    """True when ``path`` holds a finished stand-in made with exactly ``params`` (:func:`standin_params`)."""
    m = complete_manifest(path)
    return (
        m is not None
        and m.get("generator") == "oskt.data.standin"
        and m.get("version") == STANDIN_VERSION
        and m.get("params") == params
    )


def make_standin(
    kind: str,
    out: str,
    *,
    ids: int = 24,
    test_ids: int | None = None,
    images_per_cam: int = 3,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write a stand-in of the real data set ``kind`` at ``out`` (its top folder, e.g. ``data/MSMT17_V1``).

    Args:
        kind: ``market1501``, ``msmt17`` or ``cuhk03``.
        out: the data set folder (local or ``s3://``); missing, empty or an oskt data set holding nothing else.
        ids: training identities.
        test_ids: test identities (default: ``ids``).
        images_per_cam: mean images per id per camera of training ids (1..2k-1; test ids one more, the query).
        seed: same seed, same bytes.
        size: stored ``(height, width)``; default 256x128 (CUHK03-NP: variable-size crops).
        force: regenerate even when an identical stand-in is there.

    Returns:
        ``{"kind", "path", "generated", "files", <split>: {"ids", "images", "cameras"}, ...}``: the per-split
        figures the parser reports (Market-1501 adds ``junk`` / ``distractors`` image counts, MSMT17 a ``val``
        split; CUHK03-NP has them per ``detected`` / ``labeled``).

    Raises:
        ConfigError: a bad argument.
        DataError: ``out`` holds something oskt did not write (nothing is written or deleted then).
    """
    params = standin_params(kind, ids=ids, test_ids=test_ids, images_per_cam=images_per_cam, seed=seed, size=size)
    path = str(out).rstrip("/")
    if not force and standin_is_complete(path, params):
        m = complete_manifest(path) or {}
        return {"kind": kind, "path": path, "generated": False, "files": len(m.get("files", [])), **m["counts"]}
    check_owned(path)  # before rendering anything
    ks = _kind_seed(params)
    domain = _DOMAIN[kind]
    cams = [_camera(ks, domain, c) for c in range(_NUM_CAMS[kind])]
    lists: dict[str, list[str]] = {}
    if kind == "market1501":
        imgs = _market_plan(params, ks)
    elif kind == "msmt17":
        imgs, lists = _msmt_plan(params, ks)
    else:
        imgs = _cuhk_plan(params, ks)
    image_format = "PNG" if kind == "cuhk03" else "JPEG"
    counts = _counts(kind, imgs)

    def files():
        for name, lines in lists.items():
            yield name, "".join(line + "\n" for line in lines).encode()
        for img in imgs:
            yield img.rel, _render(img, ks, domain, cams, image_format)

    manifest = {
        "generator": "oskt.data.standin",
        "version": STANDIN_VERSION,
        "layout": kind,
        "params": params,
        "counts": counts,
    }
    written = write_owned(path, manifest, files())
    log.info("wrote a %s stand-in at %s: %s", kind, path, counts)
    return {"kind": kind, "path": path, "generated": True, "files": len(written["files"]), **counts}
