"""The per-chain cache of expansion (``ChainCache``), owned by an ``oskt.chain.expander.Expander``: built once per
chain state, like the clustering, and read by every student plan (``oskt.chain.student_plan``).

It holds, per row layer with column summing, the within-cluster column prefix sums in float64 (``ACC``: differences
are taken before rounding to the chain's dtype) and the S-Student's column sums, plus the averaged vectors' sources.
Its key follows every gene, label and snapshot tensor (pointer and in-place version), so it is rebuilt when one is
replaced or updated.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from oskt.chain.allocation import check_labels
from oskt.chain.chain import WeightChain
from oskt.chain.materialise import column_sums

ACC = torch.float64  # accumulation dtype of the column prefix sums (subtract before rounding to the chain's dtype)


def version_key(tensors: Iterable[Tensor]) -> tuple:
    """Identity and in-place version of every tensor: changes when one is replaced or updated in place."""
    return tuple([(t.data_ptr(), t._version) for t in tensors])


def labels_key(chain: WeightChain) -> tuple:
    return version_key(chain.labels._buffers.values())


def state_tensors(chain: WeightChain) -> list[Tensor]:
    """Every tensor expansion reads (genes, labels, snapshot), from the modules' own dicts (no recursion: this runs
    on every call)."""
    return [*chain.genes._parameters.values(), *chain.labels._buffers.values(), *chain.snapshot._buffers.values()]


def _bits(t: Tensor) -> Tensor:
    """The bit patterns of a floating tensor (``-0.0`` and ``0.0`` differ; bitwise comparison)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


class _Sorted:
    """One input partition's channels in cluster order and its clusters bucketed by size, for the within-cluster
    cumulative sums: clusters of size ``(B/2, B]`` are gathered into ``[clusters, B, R, k]`` blocks (padding: the
    zero column) and summed along ``B`` by one ``cumsum`` each, which on CPU adds in ascending order from zero, as
    the reference does. Indices are along dim 0 of the column-major ``[N, R, k]`` layout the cache builds in."""

    def __init__(self, lab: Tensor, m: int) -> None:
        labels = lab.cpu().numpy()
        n = len(labels)
        order = np.argsort(labels, kind="stable")
        size = np.bincount(labels, minlength=m)
        start = np.cumsum(size) - size
        self.n, self.m = n, m
        self.order = torch.as_tensor(order, device=lab.device)
        self.starts = torch.as_tensor(start, device=lab.device)  # sorted positions starting a (non-empty) cluster
        self.buckets: list[tuple[int, Tensor, Tensor, Tensor]] = []
        log = np.ceil(np.log2(size)).astype(np.int64)
        for b in np.unique(log):
            cl, width = np.flatnonzero(log == b), 1 << int(b)
            t = np.arange(width)
            valid = t[None, :] < size[cl][:, None]
            src = np.where(valid, start[cl][:, None] + t[None, :], n)
            self.buckets.append(
                (
                    width,
                    torch.as_tensor(src.reshape(-1), device=lab.device),
                    torch.as_tensor(np.flatnonzero(valid.reshape(-1)), device=lab.device),
                    torch.as_tensor(src[valid], device=lab.device),
                )
            )


class ChainCache:
    """Per chain state (see the module docstring). For every row layer with column summing, ``[R, N_in, k]`` chain
    tensor with an input partition of ``M_in`` clusters, and ``P`` its within-cluster prefix sums in float64 over the
    columns in cluster order:

    * ``prefix[param]``: ``[R, (N_in + 1 + M_in)·k]`` float64, a view of ``flat``: ``P``, a zero column, then the
      S-Student's column sums (exactly: float64 holds every float32), so that every student column is
      ``block[end] - block[before]`` with both indices in one tensor (``before`` = the zero column when the group
      starts its cluster, always for a whole cluster);
    * ``totals[param]``: ``[R, M_in·k]`` the S-Student's column sums in the chain's dtype (``column_sums``), what a
      student whose input partition is at chain width copies;
    * ``fixes[param]``: ``(rows, channels, kernel elements, values)`` of the chain entries that a single-column
      group would not reproduce bitwise from ``P`` (where the float64 sum rounded, or a ``-0.0``; rare), which the
      plans write back.

    Plus the concatenated sources of the averaged vectors, per option (``sources``)."""

    def __init__(self, chain: WeightChain) -> None:
        tensors = state_tensors(chain)
        self.key = version_key(tensors)
        self.mixed = len({t.dtype for t in tensors if t.is_floating_point()}) > 1
        self.totals: dict[str, Tensor] = {}
        self.prefix: dict[str, Tensor] = {}
        self.offset: dict[str, int] = {}
        self.fixes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, Tensor]] = {}
        self._sources: dict[tuple, Tensor] = {}
        if self.mixed:  # expansion falls back to the reference path: nothing to build
            return
        check_labels(chain)  # once per chain state, not per call
        rows = [r for r in chain.plan.rows if r.inp is not None]
        first = chain.gene(chain.plan.rows[0].param)
        self.dtype, self.device = first.dtype, first.device
        shapes = {}
        total = 0
        for r in rows:
            g = chain.gene(r.param)
            k = int(np.prod(g.shape[2:], dtype=np.int64))
            shapes[r.param] = (g.shape[0], g.shape[1] + 1 + chain.num_clusters(r.inp), k)
            self.offset[r.param] = total
            total += int(np.prod(shapes[r.param]))
        self.flat = torch.empty(total, dtype=ACC, device=self.device)
        parts: dict[str, _Sorted] = {}
        for r in rows:
            if r.inp not in parts:
                parts[r.inp] = _Sorted(chain.label(r.inp), chain.num_clusters(r.inp))
            o = self.offset[r.param]
            block = self.flat[o : o + int(np.prod(shapes[r.param]))].view(shapes[r.param])
            self._build(chain, r.param, r.inp, parts[r.inp], block)
            self.prefix[r.param] = block.view(block.shape[0], -1)

    def _build(self, chain: WeightChain, param: str, inp: str, part: _Sorted, block: Tensor) -> None:
        c = chain.gene(param).detach()
        rows, n, m, k = c.shape[0], part.n, part.m, block.shape[2]
        totals = column_sums(c, chain.label(inp), m)  # the S-Student's arithmetic (refinement calls the same)
        self.totals[param] = totals.reshape(rows, -1)
        # column-major while building ([N, R, k]: gathering / scattering columns copies contiguous blocks)
        xs = c.reshape(rows, n, k).transpose(0, 1).index_select(0, part.order)  # columns in cluster order
        padded = torch.empty(n + 1, rows, k, dtype=ACC, device=c.device)
        padded[:n] = xs
        padded[n] = 0  # pads the buckets
        p = torch.empty(n, rows, k, dtype=ACC, device=c.device)
        for width, src, keep, dst in part.buckets:
            sums = padded.index_select(0, src).view(-1, width, rows, k).cumsum(1).view(-1, rows, k)
            p.index_copy_(0, dst, sums.index_select(0, keep))
        block[:, :n] = p.transpose(0, 1)
        block[:, n] = 0
        block[:, n + 1 :] = totals.reshape(rows, m, k)
        # single columns: what the plans compute, P[j] - P[j - 1] (P[j] at a cluster start), vs the chain entry
        single = torch.empty_like(p)
        torch.sub(p[1:], p[:-1], out=single[1:])
        single.index_copy_(0, part.starts, p.index_select(0, part.starts))  # (position 0 starts a cluster)
        bad = (_bits(single.to(c.dtype)) != _bits(xs)).nonzero()
        if len(bad):
            j, r, e = bad.unbind(1)
            self.fixes[param] = (r.cpu().numpy(), part.order[j].cpu().numpy(), e.cpu().numpy(), xs[j, r, e])

    def sources(self, chain: WeightChain, names: tuple[tuple[str, bool], ...]) -> Tensor:
        """The averaged vectors' sources concatenated (``names``: (param, from the gene))."""
        s = self._sources.get(names)
        if s is None:
            s = self._sources[names] = torch.cat(
                [(chain.gene(n) if g else chain.snapshot.get(n)).detach().reshape(-1) for n, g in names]
            )
        return s


def state_key(chain: WeightChain) -> tuple:
    """The key the cache of ``chain`` is valid for (every tensor expansion reads)."""
    return version_key(state_tensors(chain))
