"""Plain records: a data set is three lists of (path, pid, camid) (torchreid style), nothing more."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from oskt.errors import ConfigError

__all__ = ["ImageRecord", "ReIDDataset", "holdout_split", "relabel", "split_stats"]


@dataclass(frozen=True)
class ImageRecord:
    """One image of one person.

    Attributes:
        path: local path or URL of the image file.
        pid: person id (train splits: relabelled 0..N-1; query / gallery: the original ids, 0 = distractor).
        camid: 0-based camera id.
        seq: sequence / video id when the layout has one, else -1.
    """

    path: str
    pid: int
    camid: int
    seq: int = -1


def relabel(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Map pids to 0..N-1 in increasing order of the original ids (the classifier's labels)."""
    records = list(records)
    mapping = {p: i for i, p in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid]) for r in records]


def split_stats(records: Sequence[ImageRecord]) -> dict[str, int]:
    """``{"ids": ..., "images": ..., "cameras": ...}`` of one split."""
    return {
        "ids": len({r.pid for r in records}),
        "images": len(records),
        "cameras": len({r.camid for r in records}),
    }


@dataclass(frozen=True)
class ReIDDataset:
    """A ReID data set: a training split and a query / gallery test split.

    Attributes:
        name: the data set's name in ``data.datasets``.
        train: training images, pids relabelled 0..num_train_pids-1.
        query: query images (original pids).
        gallery: gallery images (original pids; distractors kept).
        protocol: ``test`` (the data set's own query / gallery) or ``valN`` (:func:`holdout_split`: N training
            identities held out as query / gallery; the test split is not read).
    """

    name: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    protocol: str = "test"

    @property
    def label(self) -> str:
        """``name`` plus the protocol when it is not the test split (``synth_a[val30]``), for logs."""
        return self.name if self.protocol == "test" else f"{self.name}[{self.protocol}]"

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_cams(self) -> int:
        return len({r.camid for split in (self.train, self.query, self.gallery) for r in split})

    def stats(self) -> dict[str, dict[str, int]]:
        """Ids / images / cameras per split."""
        return {
            "train": split_stats(self.train),
            "query": split_stats(self.query),
            "gallery": split_stats(self.gallery),
        }

    def describe(self) -> str:
        """A small table (what ``oskt data info`` prints)."""
        lines = [f"data set {self.label}", f"  {'split':<8} {'ids':>7} {'images':>8} {'cameras':>8}"]
        for split, s in self.stats().items():
            lines.append(f"  {split:<8} {s['ids']:>7} {s['images']:>8} {s['cameras']:>8}")
        return "\n".join(lines)


def holdout_split(ds: ReIDDataset, val_ids: int, seed: int = 0) -> ReIDDataset:
    """A validation data set carved out of ``ds.train``, for choosing a recipe without touching the test split.

    ``val_ids`` training identities (a seeded random choice) are held out: one image per (identity, camera) becomes
    a query and the rest of their images the gallery; the other identities stay the training split (relabelled).
    Held-out pids are shifted by one so none of them reads as a distractor (pid 0).

    Args:
        ds: the data set; only its training split is used.
        val_ids: identities to hold out; at least 2, and at least 2 must remain for training.
        seed: the same seed and data set give the same split.
    """
    ids = sorted({r.pid for r in ds.train})
    if not 2 <= val_ids <= len(ids) - 2:
        raise ConfigError(
            f"data.val_ids={val_ids} is not allowed for {ds.name}: expected 2..{len(ids) - 2} "
            f"(the training split has {len(ids)} identities)"
        )
    rng = np.random.default_rng([seed, len(ids), val_ids])
    held = {ids[i] for i in rng.choice(len(ids), size=val_ids, replace=False)}
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    seen: set[tuple[int, int]] = set()
    for i in rng.permutation(len(ds.train)):
        r = ds.train[int(i)]
        if r.pid not in held:
            continue
        r = replace(r, pid=r.pid + 1)
        key = (r.pid, r.camid)
        (gallery if key in seen else query).append(r)
        seen.add(key)
    query.sort(key=lambda r: (r.pid, r.camid, r.path))
    gallery.sort(key=lambda r: (r.pid, r.camid, r.path))
    train = relabel(r for r in ds.train if r.pid not in held)
    return ReIDDataset(name=ds.name, train=train, query=query, gallery=gallery, protocol=f"val{val_ids}")
