"""Plain records: a data set is three lists of (path, pid, camid) (torchreid style), nothing more."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

__all__ = ["ImageRecord", "ReIDDataset", "relabel", "split_stats"]


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
    """

    name: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]

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
        lines = [f"data set {self.name}", f"  {'split':<8} {'ids':>7} {'images':>8} {'cameras':>8}"]
        for split, s in self.stats().items():
            lines.append(f"  {split:<8} {s['ids']:>7} {s['images']:>8} {s['cameras']:>8}")
        return "\n".join(lines)
