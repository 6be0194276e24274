"""Few-shot subsets of the target identities (10 / 30 / 50 %), seeded; the caller records / caches the ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from oskt.data.records import ImageRecord
from oskt.errors import ConfigError, DataError

__all__ = ["few_shot_ids", "subset_records"]


def few_shot_ids(pids: Iterable[int], fraction: float, seed: int) -> list[int]:
    """A seeded random ``fraction`` of the distinct ids in ``pids`` (sorted; at least 2, all when fraction = 1).

    Args:
        pids: ids of the training records (repeats allowed).
        fraction: share of identities to keep, in (0, 1].
        seed: the same seed and ids give the same subset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"few_shot={fraction!r} is not allowed: expected a fraction in (0, 1]")
    ids = sorted({int(p) for p in pids})
    if not ids:
        raise DataError("few-shot selection: no identities to choose from")
    if fraction == 1.0:
        return ids
    n = min(len(ids), max(2, int(round(fraction * len(ids)))))  # triplets need two ids at least
    rng = np.random.default_rng([seed, len(ids), int(round(fraction * 1e6))])
    return sorted(int(ids[i]) for i in rng.choice(len(ids), size=n, replace=False))


def subset_records(records: Sequence[ImageRecord], ids: Iterable[int]) -> list[ImageRecord]:
    """The records of ``ids`` with pids relabelled 0..len(ids)-1 (in the order of the sorted ids)."""
    mapping = {p: i for i, p in enumerate(sorted({int(i) for i in ids}))}
    out = [replace(r, pid=mapping[r.pid]) for r in records if r.pid in mapping]
    if not out:
        raise DataError(f"few-shot subset is empty: none of the {len(mapping)} chosen ids has training images")
    return out
