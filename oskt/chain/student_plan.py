"""How one student is expanded from one chain: everything that does not depend on the chain's values (SPEC.md §3).

A ``StudentPlan`` is built once per (labels, student spec, ``bn_stats``) by ``Expander`` and run against the chain
cache (``oskt.chain.chain_cache.ChainCache``) on every call. Every row layer is written straight into the student's fresh tensor:

* no column summing (stem conv, ViT ``dw``): a row copy of the gene;
* input partition at chain width: a row copy of the S-Student's column sums (the cache's ``totals``);
* otherwise, in float64 scratch, one gather of every student column's ``block[end]`` (the layer's prefix sums, zero
  column and S-Student sums, see the cache); a group that does not start its cluster (student channels ≥ M of each
  partition, SPEC.md §3.1) then subtracts the prefix sum before it, which is the previous group's end, already
  gathered (read back, not gathered again); one copy rounds to the chain's dtype (subtract before rounding); the
  single columns whose float64 prefix rounded are written back from the chain (``fixes``, usually none);
* student rows 0…R-1 are chain rows 0…R-1 (the first copy of every cluster, SPEC.md §3.1), so the columns are
  computed for those rows only and the further copies are row copies of them (``index_select``);
* layers of at most ``BATCH_NUMEL`` elements do the same all together (``_Batch``);
* all averaged vectors are one ``index_add_`` and one division; fresh BN statistics one copy of a template.

Same values, bitwise, as ``reference.expand_state_dict_reference`` (same float64 operations in the same order).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from oskt.chain.allocation import Alloc
from oskt.chain.chain import WeightChain
from oskt.chain.chain_cache import ACC, ChainCache
from oskt.models.spec import ModelSpec

BATCH_NUMEL = 32768  # row layers up to this many student elements are expanded together (``_Batch``)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges covering the sorted, non-empty indices ``idx``."""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    lo = np.concatenate([idx[:1], idx[breaks + 1]])
    hi = np.concatenate([idx[breaks], idx[-1:]]) + 1
    return list(zip(lo.tolist(), hi.tolist(), strict=True))


@dataclasses.dataclass(frozen=True)
class _Columns:
    """Where every student column of one input partition reads its sum in a layer's cache block (columns: the
    ``N`` prefix sums in cluster order, the zero column ``N``, the S-Student's sums ``N + 1 + c``)."""

    end: np.ndarray  # [S]: the group's last member (its prefix sum), or N + 1 + c for a whole cluster c
    nf_cols: np.ndarray  # student columns whose group does not start its cluster (``before`` is not the zero column)
    prev_cols: np.ndarray  # for each of them, the student column whose ``end`` is its ``before``
    single_of: np.ndarray  # [N]: the student column of a teacher channel that is a group on its own, else -1


def _columns(labels: np.ndarray, a: Alloc, m: int) -> _Columns:
    n, s = len(labels), a.width
    slot = a.slot.cpu().numpy()
    order = np.argsort(labels, kind="stable")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)  # position in (cluster, index) order
    size = np.bincount(labels, minlength=m)
    start = np.cumsum(size) - size
    first, last = np.full(s, n), np.full(s, -1)
    np.minimum.at(first, slot, pos)
    np.maximum.at(last, slot, pos)
    assert (last - first + 1 == np.bincount(slot, minlength=s)).all(), "groups are contiguous runs (SPEC.md §3.1)"
    cluster = labels[order[first]]
    whole = np.bincount(cluster, minlength=m)[cluster] == 1  # a cluster with one copy: its S-Student column
    nf_cols = np.flatnonzero(first != start[cluster])
    col_of = np.full(n, -1)
    col_of[last] = np.arange(s)
    prev_cols = col_of[first[nf_cols] - 1]  # the previous chunk of the same cluster (never a whole cluster)
    single = (last == first) & ~whole
    single_of = np.full(n, -1)
    single_of[order[first[single]]] = np.flatnonzero(single)
    return _Columns(np.where(whole, n + 1 + cluster, last), nf_cols, prev_cols, single_of)


@dataclasses.dataclass(frozen=True)
class _RowOp:
    """How one row layer of one student is produced from the chain (see the module docstring)."""

    param: str
    source: str  # gene | totals | prefix
    shape: tuple[int, ...]
    chain_rows: int  # R
    rest: Tensor | None  # chain rows of the student rows after the first R (all rows when not ``head``)
    head: bool  # student rows 0…R-1 are chain rows 0…R-1 (otherwise the R chain rows are staged in scratch)
    k: int = 1  # kernel elements per column (conv k×k)
    end: Tensor | None = None  # prefix: where every student column reads its group's end (see ``_index``)
    nf: tuple[int, int] | Tensor | None = None  # columns of the groups not starting their cluster: a range or index
    prev: Tensor | None = None  # where each such group's previous group end is among the gathered columns (``_index``)


def _index(rows: int, cols: np.ndarray, n_cols: int, k: int, device: torch.device) -> Tensor:
    """Gather index of columns ``cols`` of an ``[R, n_cols·k]`` tensor: ``[R, len(cols)]`` element columns for
    ``torch.gather`` (k = 1; one row, expanded), else ``[R·len(cols)]`` ``k``-blocks for ``index_select`` of its
    ``[R·n_cols, k]`` view (a 3×3 column is 9 contiguous values: block copies beat element gathers)."""
    if k == 1:
        return torch.as_tensor(cols.reshape(1, -1), device=device).expand(rows, -1)
    return torch.as_tensor((np.arange(rows)[:, None] * n_cols + cols[None, :]).reshape(-1), device=device)


def _take(src: Tensor, idx: Tensor, k: int, out: Tensor) -> Tensor:
    """``out[r, c·k + j] = src[r, idx_c·k + j]`` with an index from ``_index``."""
    if k == 1:
        return torch.gather(src, 1, idx, out=out)
    torch.index_select(src.view(-1, k), 0, idx, out=out.view(-1, k))
    return out


class _Batch:
    """The small column-summed row layers of one student, expanded together: four element-wise ops over all of
    them instead of five or six per layer (per-op overhead, a few µs, dominates layers of a few thousand elements,
    as in the narrow early stages of small students). Into one fresh float64 tensor holding every such layer:
    gather each element's group end from the cache's flat blocks (row ``to_chain[o]``); gather, for every group
    that does not start its cluster, the previous group's end (already in the output); subtract it (``index_add_``,
    alpha −1: the same rounding as ``sub_``); round to the chain's dtype. The layers are views of the result."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self._end: list[np.ndarray] = []
        self._prev: list[np.ndarray] = []
        self._nf: list[np.ndarray] = []
        self.numel = 0

    def add(
        self, name: str, shape: tuple[int, ...], offset: int, tc: np.ndarray, width: int, k: int, cols: _Columns
    ) -> None:
        """Layer ``name`` of student ``shape``; its cache block starts at ``offset`` with rows of ``width·k``."""
        s_in = shape[1]
        j = np.arange(k)
        row = self.numel + np.arange(len(tc))[:, None, None] * (s_in * k)
        self._end.append((offset + tc[:, None, None] * (width * k) + cols.end[None, :, None] * k + j).reshape(-1))
        self._nf.append((row + cols.nf_cols[None, :, None] * k + j).reshape(-1))
        self._prev.append((row + cols.prev_cols[None, :, None] * k + j).reshape(-1))
        self.numel += len(tc) * s_in * k
        self.names.append(name)
        self.shapes.append(shape)

    def finish(self, flat_numel: int) -> None:
        dtype = torch.int32 if max(flat_numel, self.numel) < 2**31 else torch.int64

        def t(parts: list[np.ndarray]) -> Tensor:
            return torch.as_tensor(np.concatenate([np.zeros(0, np.int64), *parts]), device=self.device).to(dtype)

        self.end, self.prev, self.nf = t(self._end), t(self._prev), t(self._nf)
        del self._end, self._prev, self._nf
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    def run(self, flat: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
        out = torch.index_select(flat, 0, self.end)
        if self.nf.numel():
            out.index_add_(0, self.nf, out.index_select(0, self.prev), alpha=-1)
        out = out.to(dtype)
        return {n: t.view(s) for n, t, s in zip(self.names, out.split(self.sizes), self.shapes, strict=True)}


class StudentPlan:
    """The plan of one student (see the module docstring); ``run`` returns the backbone's row layers and averaged
    vectors, ``Expander.state_dict`` adds the ViT stem and the BN statistics (``fresh``, ``tracked``)."""

    def __init__(
        self, chain: WeightChain, spec: ModelSpec, allocs: Mapping[str, Alloc], cache: ChainCache, bn_stats: str
    ) -> None:
        device = cache.device
        self.device = device
        self.lock = threading.Lock()  # the scratch is shared by the calls of this plan
        self.ops: list[_RowOp | str] = []  # a name: that layer comes from ``batch``
        self.batch = _Batch(device)
        self.singles: dict[str, tuple[np.ndarray, int, int, np.ndarray]] = {}
        acc = stage = 0  # scratch sizes (float64 columns + previous ends; chain-dtype staging), reused layer by layer
        columns: dict[str, _Columns] = {}
        for r in chain.plan.rows:
            rows = chain.num_clusters(r.out) * r.repeat
            tc = allocs[r.out].rep(r.repeat, chain.num_clusters(r.out))[0].cpu().numpy()
            head = len(tc) >= rows and bool((tc[:rows] == np.arange(rows)).all())
            rest_np = tc[rows:] if head else tc
            rest = torch.as_tensor(rest_np, device=device) if len(rest_np) else None
            gshape = tuple(chain.gene(r.param).shape)
            if r.inp is None:
                self.ops.append(_RowOp(r.param, "gene", (len(tc), *gshape[1:]), rows, rest, head))
                continue
            ai = allocs[r.inp]
            shape = (len(tc), ai.width, *gshape[2:])
            if ai.identity:  # every group is a whole cluster, in cluster order
                self.ops.append(_RowOp(r.param, "totals", shape, rows, rest, head))
                continue
            m_in = chain.num_clusters(r.inp)
            if r.inp not in columns:
                columns[r.inp] = _columns(chain.label(r.inp).cpu().numpy(), ai, m_in)
            cols = columns[r.inp]
            k = int(np.prod(gshape[2:], dtype=np.int64))
            n_in, s_in = gshape[1], ai.width
            width = n_in + 1 + m_in
            if (cols.single_of >= 0).any():
                self.singles[r.param] = (cols.single_of, s_in, k, tc)
            if len(tc) * s_in * k <= BATCH_NUMEL:
                self.batch.add(r.param, shape, cache.offset[r.param], tc, width, k, cols)
                self.ops.append(r.param)
                continue
            nf = prev = None
            if len(cols.nf_cols):
                prev = _index(rows, cols.prev_cols, s_in, k, device)
                runs = _runs(cols.nf_cols)  # one range: sub_ on a slice; several (per head): one index_add_
                nf = (
                    (runs[0][0] * k, runs[0][1] * k) if len(runs) == 1 else torch.as_tensor(cols.nf_cols, device=device)
                )
            acc = max(acc, rows * (s_in + len(cols.nf_cols)) * k)
            if not head:
                stage = max(stage, rows * s_in * k)
            end = _index(rows, cols.end, width, k, device)
            self.ops.append(_RowOp(r.param, "prefix", shape, rows, rest, head, k, end, nf, prev))
        self.acc_numel, self.stage_numel = acc, stage
        self.batch.finish(cache.flat.numel())
        self._acc: Tensor | None = None
        self._stage: Tensor | None = None
        self._fixes: tuple[tuple, list[tuple[str, Tensor, Tensor]]] | None = None

        plan = chain.plan
        grouped: dict[tuple[str, int], list] = {}
        for v in plan.vectors:  # the reference's order: grouped by (partition, repeat)
            grouped.setdefault((v.part, v.repeat), []).append(v)
        averaged = [(v, v.gene, v.expand_from_teacher) for items in grouped.values() for v in items]
        if bn_stats == "average":
            averaged += [(b, False, True) for b in plan.bn_buffers]
        slots, counts = [], []
        pos = 0
        for v, _, _ in averaged:
            _, sl, cnt = allocs[v.part].rep(v.repeat, chain.num_clusters(v.part))
            slots.append(sl + pos)
            counts.append(cnt)
            pos += cnt.numel()
        self.avg_names = [v.param for v, _, _ in averaged]
        self.avg_sizes = [c.numel() for c in counts]
        self.n_avg = pos
        self.slot = torch.cat(slots) if slots else None
        self.counts = torch.cat(counts) if counts else None
        self.srcs = {  # (param, from the gene) per proj_bias option (SPEC.md §3.2: the ViT proj-bias quirk)
            "teacher": tuple((v.param, g and not t) for v, g, t in averaged),
            "gene": tuple((v.param, g) for v, g, _ in averaged),
        }
        self.fresh_names: list[str] = []
        self.fresh: Tensor | None = None
        if plan.bn_buffers and bn_stats == "reset":  # fresh statistics (SPEC.md §3.2): means 0, variances 1
            self.fresh_names = [b.param for b in plan.bn_buffers]
            self.fresh_sizes = [allocs[b.part].width for b in plan.bn_buffers]
            self.fresh = torch.tensor(
                [float(b.param.endswith("var")) for b in plan.bn_buffers], device=device
            ).repeat_interleave(torch.tensor(self.fresh_sizes, device=device))
        self.tracked = [
            f"{n}.num_batches_tracked" for n in sorted({b.param.rsplit(".", 1)[0] for b in plan.bn_buffers})
        ]

    def run(self, chain: WeightChain, cache: ChainCache, proj_bias: str) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        dtype = cache.dtype
        with self.lock:
            if self.acc_numel and self._acc is None:
                self._acc = torch.empty(self.acc_numel, dtype=ACC, device=self.device)
            if self.stage_numel and (self._stage is None or self._stage.dtype != dtype):
                self._stage = torch.empty(self.stage_numel, dtype=dtype, device=self.device)
            small = self.batch.run(cache.flat, dtype) if self.batch.names else {}
            for op in self.ops:
                if isinstance(op, str):
                    state[op] = small[op]
                else:
                    state[op.param] = self._row(op, chain, cache, dtype)
            for name, idx, vals in self._fix_index(cache):
                state[name].view(-1).index_copy_(0, idx, vals)
        if self.n_avg:
            src = cache.sources(chain, self.srcs[proj_bias])
            flat = src.new_zeros(self.n_avg).index_add_(0, self.slot, src).div_(self.counts.to(src.dtype))
            state.update(zip(self.avg_names, flat.split(self.avg_sizes), strict=True))
        return state

    def _row(self, op: _RowOp, chain: WeightChain, cache: ChainCache, dtype: torch.dtype) -> Tensor:
        r = op.chain_rows
        if op.source == "prefix":
            out = torch.empty(op.shape, dtype=dtype, device=self.device)
            out2 = out.view(op.shape[0], -1)
            width = out2.shape[1]
            top = self._acc[: r * width].view(r, width)
            _take(cache.prefix[op.param], op.end, op.k, top)
            if op.prev is not None:  # minus the previous group's end, read before any column changes
                n = op.prev.numel() * op.k
                prev = _take(top, op.prev, op.k, self._acc[r * width : r * width + n].view(r, -1))
                if isinstance(op.nf, tuple):
                    top[:, op.nf[0] : op.nf[1]].sub_(prev)
                else:
                    top.view(r, -1, op.k).index_add_(1, op.nf, prev.view(r, -1, op.k), alpha=-1)
            if op.head:
                out2[:r].copy_(top)  # rounded once, to the chain's dtype
                if op.rest is not None:
                    torch.index_select(out2[:r], 0, op.rest, out=out2[r:])
            else:
                stage = self._stage[: r * width].view(r, width)
                stage.copy_(top)
                torch.index_select(stage, 0, op.rest, out=out2)
            return out
        src = chain.gene(op.param).detach().reshape(r, -1) if op.source == "gene" else cache.totals[op.param]
        if op.rest is None:
            return src.clone().view(op.shape)
        out = torch.empty(op.shape, dtype=src.dtype, device=src.device)
        out2 = out.view(op.shape[0], -1)
        if op.head:
            out2[:r].copy_(src)
        torch.index_select(src, 0, op.rest, out=out2[r:] if op.head else out2)
        return out

    def _fix_index(self, cache: ChainCache) -> list[tuple[str, Tensor, Tensor]]:
        """Where the cache's ``fixes`` land in this student (single-column groups of the chain rows concerned, in
        every student row copying them), memoised per cache state; usually empty."""
        if self._fixes is not None and self._fixes[0] == cache.key:
            return self._fixes[1]
        out = []
        for param, (single_of, s_in, k, tc) in self.singles.items():
            fix = cache.fixes.get(param)
            if fix is None:
                continue
            rows, chans, elems, vals = fix
            col = single_of[chans]
            keep = np.flatnonzero(col >= 0)
            if not len(keep):
                continue
            order = np.argsort(tc, kind="stable")  # student rows grouped by the chain row they copy
            n_copies = np.bincount(tc, minlength=int(rows.max()) + 1)
            first = np.cumsum(n_copies) - n_copies
            r = rows[keep]
            rep = n_copies[r]
            which = np.repeat(np.arange(len(keep)), rep)
            nth = np.arange(len(which)) - np.repeat(np.cumsum(rep) - rep, rep)
            student_rows = order[first[r][which] + nth]
            idx = (student_rows * s_in + col[keep][which]) * k + elems[keep][which]
            sel = torch.as_tensor(keep[which], device=vals.device)
            out.append((param, torch.as_tensor(idx, device=self.device), vals.index_select(0, sel)))
        self._fixes = (cache.key, out)
        return out
