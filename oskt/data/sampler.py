"""Identity-balanced P x K sampling (torchreid's ``RandomIdentitySampler``), seeded per epoch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from oskt.errors import DataError

__all__ = ["RandomIdentitySampler"]


class RandomIdentitySampler(Sampler[int]):
    """Yields indices so that every consecutive ``P * K`` block holds ``P`` distinct ids with ``K`` images each.

    Per epoch each id's images are shuffled and cut into groups of ``K`` (ids with fewer than ``K`` images are
    sampled with replacement); then random groups of ``P`` ids that still have groups left form the batches. The
    epoch's order depends only on (seed, epoch); the epoch advances at every ``iter()`` (or ``set_epoch``).

    Args:
        pids: the person id of every record (any integers).
        ids_per_batch: P.
        images_per_id: K.
        seed: base seed.
    """

    def __init__(self, pids: Sequence[int], ids_per_batch: int, images_per_id: int, seed: int = 0) -> None:
        self.p, self.k, self.seed, self.epoch = ids_per_batch, images_per_id, seed, 0
        index = defaultdict(list)
        for i, pid in enumerate(pids):
            index[int(pid)].append(i)
        self.index = dict(sorted(index.items()))
        if len(self.index) < self.p:
            raise DataError(
                f"P x K sampling needs at least ids_per_batch={self.p} identities; the training split has "
                f"{len(self.index)}"
            )
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch used by the next ``iter()``."""
        self.epoch = epoch

    def _indices(self, epoch: int) -> list[int]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[int, list[list[int]]] = {}
        for pid, idxs in self.index.items():
            idxs = np.asarray(idxs)
            if len(idxs) < self.k:
                idxs = rng.choice(idxs, size=self.k, replace=True)
            idxs = rng.permutation(idxs)
            n = len(idxs) // self.k
            groups[pid] = [idxs[j * self.k : (j + 1) * self.k].tolist() for j in range(n)]
        available = [pid for pid in groups if groups[pid]]
        out: list[int] = []
        while len(available) >= self.p:
            chosen = rng.choice(len(available), size=self.p, replace=False)
            for c in chosen:
                out.extend(groups[available[c]].pop())
            available = [pid for pid in available if groups[pid]]
        self._cache = (epoch, out)
        return out

    def __iter__(self) -> Iterator[int]:
        out = self._indices(self.epoch)
        self.epoch += 1
        return iter(out)

    def __len__(self) -> int:
        """Exact number of indices the next ``iter()`` yields (a multiple of P x K)."""
        return len(self._indices(self.epoch))
