"""Expansion of a weight chain to any width between the chain and the teacher (SPEC.md §3).

Per partition, ``allocate`` gives every student channel ``k`` a chain row ``to_chain[k]`` and a group of teacher
channels; a student tensor is then built with vectorised ops (no Python loop over channels):

* rows (stacking): ``index_select`` of chain rows by ``to_chain``;
* columns (summing, no rescale): the sum of each student channel's group of teacher-width columns;
* vectors (averaging): ``index_add`` of BN / LN / bias entries divided by the group sizes.

``materialise`` is shared with ``RefineModel`` (the S-Student is the allocation at chain width), so "expansion at
chain width equals the S-Student" holds by construction and is tested. ``expand_state_dict`` runs the same
arithmetic from caches (``_ExpandCache`` per chain, ``_StudentPlan`` per student shape; see there) and is tested
bitwise against the per-layer ``_expand_state_dict_reference``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from oskt.chain.chain import WeightChain
from oskt.errors import SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.heads import ReIDHead
from oskt.models.spec import ModelSpec, select_chain
from oskt.models.vit import has_dw


def allocate(labels: np.ndarray, n_clusters: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Index allocation of one layer, exactly as SPEC.md §3.1.

    Greedy proportional copies (each step the cluster with the smallest ``copies / size``, ties → smallest cluster
    index) computed in closed form: the extra copies are the ``width - M`` smallest keys ``j / size[c]``
    (``j = 1 … size[c] - 1``) in (key, cluster) order, which is the greedy sequence. Each cluster's members
    (ascending) are split into contiguous chunks over its slots (ascending); the first ``size mod copies`` chunks
    get one extra member.

    Returns:
        ``to_chain[width]`` (chain row of each student channel) and ``slot[N]`` (student channel of each teacher
        channel; the group of ``k`` is ``{i : slot[i] == k}``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, m = len(labels), n_clusters
    if not m <= width <= n:
        raise SpecError(f"width {width} is outside [{m}, {n}] (chain clusters, teacher channels)")
    size = np.bincount(labels, minlength=m)
    rep = size - 1
    cand = np.repeat(np.arange(m), rep)
    j = np.arange(len(cand)) - np.repeat(np.cumsum(rep) - rep, rep) + 1
    picks = cand[np.lexsort((cand, j / size[cand]))[: width - m]]
    to_chain = np.concatenate([np.arange(m), picks])
    copies = np.bincount(to_chain, minlength=m)
    slots_by_cluster = np.argsort(to_chain, kind="stable")
    members = np.argsort(labels, kind="stable")
    lab = labels[members]
    r = np.arange(n) - (np.cumsum(size) - size)[lab]
    base, extra = size[lab] // copies[lab], size[lab] % copies[lab]
    big = extra * (base + 1)
    chunk = np.where(r < big, r // (base + 1), extra + (r - big) // base)
    slot = np.empty(n, dtype=np.int64)
    slot[members] = slots_by_cluster[(np.cumsum(copies) - copies)[lab] + chunk]
    return to_chain, slot


def groups(to_chain: np.ndarray, slot: np.ndarray) -> list[list[int]]:
    """The teacher channels of every student channel (for inspection and tests)."""
    out: list[list[int]] = [[] for _ in range(len(to_chain))]
    for i, k in enumerate(slot.tolist()):
        out[k].append(i)
    return out


@dataclasses.dataclass(frozen=True)
class Alloc:
    """Index tensors of one partition's allocation.

    ``to_chain[S]``, ``slot[N]``, ``counts[S]`` as in ``allocate``; ``identity``: S = M (the S-Student, no row
    gather). ``col_end`` / ``col_before`` index the chain's within-cluster column prefix sums (``PrefixCache``):
    the group of student channel ``k`` is the contiguous run ``(before, end]`` of its cluster's members, so its
    column sum is ``P[end] - P[before]`` (``before`` = the zero column when the run starts the cluster;
    ``all_first``: every run does, as at chain width).
    """

    to_chain: Tensor
    slot: Tensor
    counts: Tensor
    identity: bool
    col_end: Tensor | None = None
    col_before: Tensor | None = None
    all_first: bool = False

    @property
    def width(self) -> int:
        return self.to_chain.numel()

    def rep(self, repeat: int, n_clusters: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(to_chain, slot, counts)`` for a ``repeat``-fold (q / k / v) tensor."""
        if repeat == 1:
            return self.to_chain, self.slot, self.counts
        s = self.width
        tc = torch.cat([self.to_chain + j * n_clusters for j in range(repeat)])
        sl = torch.cat([self.slot + j * s for j in range(repeat)])
        return tc, sl, self.counts.repeat(repeat)


def _alloc(labels: np.ndarray, tc: np.ndarray, sl: np.ndarray, m: int, device: torch.device | str) -> Alloc:
    n, s = len(labels), len(tc)
    size = np.bincount(labels, minlength=m)
    pos = np.empty(n, dtype=np.int64)
    pos[np.argsort(labels, kind="stable")] = np.arange(n)  # position in (cluster, index) order
    first = (np.cumsum(size) - size)[labels]  # position of each channel's cluster start
    end = np.zeros(s, dtype=np.int64)
    start = np.full(s, n, dtype=np.int64)
    np.maximum.at(end, sl, pos)
    np.minimum.at(start, sl, pos)
    cluster_first = np.full(s, n, dtype=np.int64)
    np.minimum.at(cluster_first, sl, first)
    is_first = start == cluster_first
    before = np.where(is_first, n, start - 1)

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, device=device)

    counts = np.bincount(sl, minlength=s).astype(np.float32)
    return Alloc(t(tc), t(sl), t(counts), bool(s == m), t(end), t(before), bool(is_first.all()))


def cached_allocations(chain: WeightChain, spec: ModelSpec, device: torch.device | str = "cpu") -> dict[str, Alloc]:
    """``allocations`` memoised on the chain per (labels, student widths, device): index tensors are computed once
    per student shape (they depend on the labels only, not on the chain values)."""
    key = (
        _labels_key(chain),
        spec.family,
        spec.layer_widths(),
        str(device),
    )
    cache = chain.__dict__.setdefault("_alloc_cache", {})
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = allocations(chain, spec, device)
    return cache[key]


def allocations(chain: WeightChain, spec: ModelSpec, device: torch.device | str = "cpu") -> dict[str, Alloc]:
    """Allocations of every partition for student ``spec`` (per head for the ViT qkv, SPEC.md §3.2)."""
    out = {}
    for p in chain.plan.parts:
        labels = chain.label(p.name).cpu().numpy()
        m, s, n = chain.num_clusters(p.name), p.width(spec), len(labels)
        if s % p.heads:
            raise SpecError(f"width {s} of {p.name} is not divisible by {p.heads} heads")
        mh, sh, nh = m // p.heads, s // p.heads, n // p.heads
        tcs, sls = [], []
        for h in range(p.heads):  # heads never mix: allocate each head's clusters into its own slots
            tc, sl = allocate(labels[h * nh : (h + 1) * nh] - h * mh, mh, sh)
            tcs.append(tc + h * mh)
            sls.append(sl + h * sh)
        out[p.name] = _alloc(labels, np.concatenate(tcs), np.concatenate(sls), m, device)
    return out


class PrefixCache:
    """Per chain: every row layer's columns reordered by input cluster and prefix-summed within clusters (float64
    accumulation), plus a trailing zero column. Built once per chain state (like clustering, not per student),
    it turns column summing into two gathers of student size instead of a pass over the teacher-width chain."""

    def __init__(self, chain: WeightChain) -> None:
        self.key = _cache_key(chain)
        self.tensors: dict[str, Tensor] = {}
        with torch.no_grad():
            for r in chain.plan.rows:
                if r.inp is not None:  # column-major ([N + 1, R, k]): gathering columns copies contiguous rows
                    self.tensors[r.param] = _prefix(chain, r).transpose(0, 1).contiguous()


def _prefix(chain: WeightChain, r) -> Tensor:
    """Within-cluster column prefix sums of row layer ``r``, ``[R, N_in + 1, k]`` (last column: zeros)."""
    c = chain.gene(r.param)
    c3 = c.reshape(c.shape[0], c.shape[1], -1)
    lab = chain.label(r.inp)
    order = torch.argsort(lab, stable=True)
    size = torch.bincount(lab, minlength=chain.num_clusters(r.inp))
    first = (torch.cumsum(size, 0) - size)[lab[order]]  # cluster start of each sorted column
    cs = c3.index_select(1, order).double().cumsum(1)
    cs = torch.cat([cs.new_zeros(cs.shape[0], 1, cs.shape[2]), cs], 1)
    seg = cs[:, 1:] - cs.index_select(1, first)  # restart the sum at every cluster
    seg = torch.cat([seg, seg.new_zeros(seg.shape[0], 1, seg.shape[2])], 1)
    return seg.to(c.dtype)


def _version_key(tensors: list[Tensor]) -> tuple:
    """Identity and in-place version of every tensor: changes when one is replaced or updated in place."""
    return tuple([(t.data_ptr(), t._version) for t in tensors])


def _cache_key(chain: WeightChain) -> tuple:
    return _version_key([*chain.genes._parameters.values(), *chain.labels._buffers.values()])


def prefix_cache(chain: WeightChain) -> PrefixCache:
    """The chain's prefix cache, rebuilt when a gene or label changed (in-place updates bump ``_version``)."""
    cache = getattr(chain, "_prefix_cache", None)
    if cache is None or cache.key != _cache_key(chain):
        cache = PrefixCache(chain)
        chain.__dict__["_prefix_cache"] = cache
    return cache


def _average(v: Tensor, slot: Tensor, counts: Tensor) -> Tensor:
    return v.new_zeros(counts.numel()).index_add(0, slot, v) / counts.to(v.dtype)


def _average_rows(v: Tensor, slot: Tensor, counts: Tensor) -> Tensor:
    """Group means of every row of ``v``: ``[V, N] -> [V, S]`` (scatter_add: one kernel, differentiable)."""
    sums = torch.scatter_add(v.new_zeros(v.shape[0], counts.numel()), 1, slot.expand(v.shape[0], -1), v)
    return sums / counts.to(v.dtype)


def _rows(chain: WeightChain, r, allocs: Mapping[str, Alloc], cache: PrefixCache | None) -> Tensor:
    a = allocs[r.out]
    c = chain.gene(r.param)
    tc = None if a.identity else a.rep(r.repeat, chain.num_clusters(r.out))[0]
    if r.inp is None:
        return c.index_select(0, tc) if tc is not None else (c.clone() if cache is not None else c)
    ai = allocs[r.inp]
    if cache is None:  # differentiable path (refinement): column summing first, it reduces before rows stack
        idx = ai.slot.view(1, -1, *[1] * (c.dim() - 2)).expand_as(c)
        c = torch.scatter_add(c.new_zeros(c.shape[0], ai.width, *c.shape[2:]), 1, idx, c)
        return c.index_select(0, tc) if tc is not None else c
    p = cache.tensors[r.param]  # [N_in + 1, R, k]
    out = p.index_select(0, ai.col_end)  # [S_in, R, k]: group column sums of every chain row
    if not ai.all_first:
        out.sub_(p.index_select(0, ai.col_before))
    out = out.transpose(0, 1)  # [R, S_in, k]
    out = out.index_select(0, tc) if tc is not None else out.contiguous()
    return out.reshape(out.shape[0], ai.width, *c.shape[2:])


def materialise(
    chain: WeightChain,
    spec: ModelSpec,
    allocs: Mapping[str, Alloc],
    teacher: Mapping[str, Tensor],
    mode: str = "expand",
) -> dict[str, Tensor]:
    """Student backbone parameters (names relative to ``backbone``).

    Args:
        chain: the weight chain.
        spec: the student spec (widths between the chain's and the teacher's).
        allocs: ``allocations(chain, spec)``.
        teacher: teacher tensors for tied vectors and shared tensors: the live teacher parameters (refinement) or
            ``chain.snapshot`` values (expansion).
        mode: ``refine`` (the S-Student, differentiable w.r.t. chain and teacher; genes everywhere a gene exists,
            SPEC.md §4.1) or ``expand`` (no grad, prefix-cache column sums; vectors flagged ``expand_from_teacher``
            come from the teacher: CNN BN, the ViT proj-bias quirk, SPEC.md §3.2).
    """
    plan = chain.plan
    cache = prefix_cache(chain) if mode == "expand" else None
    out: dict[str, Tensor] = {r.param: _rows(chain, r, allocs, cache) for r in plan.rows}
    grouped: dict[tuple[str, int], list[tuple[str, Tensor]]] = {}
    for v in plan.vectors:
        src = teacher[v.param] if (not v.gene or (mode == "expand" and v.expand_from_teacher)) else chain.gene(v.param)
        grouped.setdefault((v.part, v.repeat), []).append((v.param, src))
    for (part, repeat), items in grouped.items():  # one averaging op per partition (fewer small kernels)
        _, slot, counts = allocs[part].rep(repeat, chain.num_clusters(part))
        means = _average_rows(torch.stack([src for _, src in items]), slot, counts)
        out.update(zip((name for name, _ in items), means.unbind(0), strict=True))
    if plan.family == "vit":
        _vit_stem(out, spec, teacher, mode)
    return out


def _vit_stem(out: dict[str, Tensor], spec: ModelSpec, teacher: Mapping[str, Tensor], mode: str) -> None:
    """Teacher stem: copy the teacher-width patch embedding / tokens / positions (shared, SPEC.md §3.2) and keep
    ``dw`` (D → S). Plain stem: fold ``dw`` into them (exact: ``dw`` is linear and follows the position add)."""
    shared = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "part_tokens", "token_pos", "pos_embed")
    if has_dw(spec):
        for name in shared:
            out[name] = teacher[name].clone() if mode == "expand" else teacher[name]
        return
    dw = out.pop("dw.weight")  # [S, E]
    w = teacher["patch_embed.proj.weight"]
    out["patch_embed.proj.weight"] = (dw @ w.reshape(w.shape[0], -1)).reshape(dw.shape[0], *w.shape[1:])
    out["patch_embed.proj.bias"] = dw @ teacher["patch_embed.proj.bias"]
    for name in shared[2:]:
        out[name] = teacher[name] @ dw.t()


def _check_student(chain: WeightChain, spec: ModelSpec) -> None:
    t = chain.teacher_spec
    if spec.arch != t.arch:
        raise SpecError(f"student arch {spec.arch} does not match the chain's teacher arch {t.arch}")
    if not spec.fits_within(t):
        raise SpecError(
            f"student {spec.name} {spec.layer_widths()} is wider than the teacher {t.name} {t.layer_widths()}"
        )
    if not chain.chain_spec.fits_within(spec):
        raise SpecError(
            f"student {spec.name} {spec.layer_widths()} is narrower than chain {chain.width} "
            f"{chain.chain_spec.layer_widths()} in some layer"
        )
    if spec.family == "vit" and spec.img_size != t.img_size:
        raise SpecError(
            f"ViT student img_size {spec.img_size} differs from the teacher's {t.img_size} "
            "(position embeddings are shared)"
        )


def expand(
    chain: WeightChain, spec: ModelSpec, num_classes: int, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> ReIDModel:
    """Generate a student of ``spec`` from ``chain`` (SPEC.md §3.2), with fresh BNNeck(s) and classifier.

    Args:
        chain: the (refined) weight chain.
        spec: any student spec with chain width ≤ every layer ≤ teacher width (ViT: divisible by the heads).
        num_classes: classifier outputs.
        bn_stats: ``reset`` (fresh 0/1 running statistics, the authors' code) or ``average`` (group means of the
            teacher's running statistics [option]).
        proj_bias: ``teacher`` (the authors' quirk: ViT ``attn.proj`` bias from the refined teacher) or ``gene``.

    Raises:
        SpecError: before any work, when the student does not fit between the chain and the teacher.
    """
    state = expand_state_dict(chain, spec, bn_stats=bn_stats, proj_bias=proj_bias)
    device = chain.label(chain.plan.parts[0].name).device
    with torch.device("meta"):  # no random init of weights that are overwritten anyway
        model = build_model(spec, num_classes)
    model.backbone.load_state_dict(state, strict=True, assign=True)
    model.head = ReIDHead(model.backbone.out_dim, num_classes, model.num_tokens).to(device)
    return model


def expand_state_dict(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """The student's backbone state dict (parameters and BN buffers) generated from ``chain``; see ``expand``.

    The first call for a chain builds its ``_ExpandCache`` (prefix sums and cluster totals, like the clustering a
    one-off per chain: 0.05–0.15 s for ResNet-50; it holds about the chain's size plus its S-Student's, e.g.
    44.8 + 22.4 MiB for chain 32) and the first call for a student shape its ``_StudentPlan`` (6–14 ms); later
    calls reuse both (they follow in-place updates of the chain). Thread-safe."""
    return _expand_state_dict_fast(chain, spec, bn_stats=bn_stats, proj_bias=proj_bias)


def _check_options(bn_stats: str, proj_bias: str) -> None:
    if bn_stats not in ("reset", "average") or proj_bias not in ("teacher", "gene"):
        raise SpecError(f"bn_stats={bn_stats!r} / proj_bias={proj_bias!r}: expected reset|average and teacher|gene")


def _labels_key(chain: WeightChain) -> tuple:
    return _version_key(list(chain.labels._buffers.values()))


def _state_tensors(chain: WeightChain) -> list[Tensor]:
    """Every tensor expansion reads (genes, labels, snapshot), from the modules' own dicts (no recursion: this runs
    on every call)."""
    return [*chain.genes._parameters.values(), *chain.labels._buffers.values(), *chain.snapshot._buffers.values()]


def _state_key(chain: WeightChain) -> tuple:
    return _version_key(_state_tensors(chain))


class _ExpandCache:
    """Per chain state, built once like clustering (not per student) and rebuilt when a gene, label or snapshot
    tensor changes (pointer / ``_version``). For every row layer with column summing:

    * ``prefix[param]``: the within-cluster column prefix sums (``_prefix``) row-major, ``[R, (N_in + 1)·k]``;
    * ``totals[param]``: the whole-cluster column sums, ``[R, M_in·k]`` — the S-Student's weights, which is what a
      student whose input partition is at chain width reads (every group is a whole cluster).

    Plus the concatenated sources of the averaged vectors, per option (``sources``)."""

    def __init__(self, chain: WeightChain) -> None:
        tensors = _state_tensors(chain)
        self.key = _version_key(tensors)
        self.mixed = len({t.dtype for t in tensors if t.is_floating_point()}) > 1
        self.totals: dict[str, Tensor] = {}
        self._sources: dict[tuple, Tensor] = {}
        if self.mixed:  # expansion falls back to the reference path: nothing to build
            return
        pieces = []
        for r in chain.plan.rows:
            if r.inp is None:
                continue
            p = _prefix(chain, r)  # [R, N_in + 1, k]
            size = torch.bincount(chain.label(r.inp), minlength=chain.num_clusters(r.inp))
            self.totals[r.param] = p.index_select(1, torch.cumsum(size, 0) - 1).reshape(p.shape[0], -1)
            pieces.append((r.param, p.reshape(p.shape[0], -1)))
        # the prefix sums of all layers in one flat tensor (``_Batch`` gathers from several layers in one op)
        self.flat = torch.cat([p.reshape(-1) for _, p in pieces])
        self.offset: dict[str, int] = {}
        self.prefix: dict[str, Tensor] = {}
        off = 0
        for name, p in pieces:
            self.offset[name] = off
            self.prefix[name] = self.flat[off : off + p.numel()].view(p.shape)
            off += p.numel()

    def sources(self, chain: WeightChain, names: tuple[tuple[str, bool], ...]) -> Tensor:
        """The averaged vectors' sources concatenated (``names``: (param, from the gene))."""
        s = self._sources.get(names)
        if s is None:
            s = self._sources[names] = torch.cat(
                [(chain.gene(n) if g else chain.snapshot.get(n)).detach().reshape(-1) for n, g in names]
            )
        return s


def _expand_cache(chain: WeightChain) -> _ExpandCache:
    cache = chain.__dict__.get("_expand_cache")
    if cache is None or cache.key != _state_key(chain):
        cache = chain.__dict__["_expand_cache"] = _ExpandCache(chain)
    return cache


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges covering the sorted, non-empty indices ``idx``."""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    lo = np.concatenate([idx[:1], idx[breaks + 1]])
    hi = np.concatenate([idx[breaks], idx[-1:]]) + 1
    return list(zip(lo.tolist(), hi.tolist(), strict=True))


@dataclasses.dataclass(frozen=True)
class _RowOp:
    """How one row layer of one student is produced from the chain (see ``_StudentPlan``)."""

    param: str
    source: str  # gene | totals | prefix
    shape: tuple[int, ...]
    chain_rows: int  # R
    rest: Tensor | None  # chain rows of the student rows after the first R (all rows when not ``head``)
    head: bool  # student rows 0…R-1 are chain rows 0…R-1 (otherwise the R chain rows are staged in the scratch)
    k: int = 1  # kernel elements per column (conv k×k)
    end: Tensor | None = None  # prefix: where every student column reads its group's prefix end (see ``_index``)
    nf: tuple[int, int] | Tensor | None = None  # columns of the groups not starting their cluster: a range or index
    prev: Tensor | None = None  # where each such group's previous group end is among the gathered columns (``_index``)
    stage: int = -1  # scratch offset of the [R, S_in·k] staging block when not ``head``
    tmp: int = -1  # scratch offset of the [R, n_nf·k] previous-group ends


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


_BATCH_NUMEL = 32768  # row layers up to this many student elements are expanded together (``_Batch``)


class _Batch:
    """The small column-summed row layers of one student, expanded together: three element-wise ops over all of
    them instead of four or five ops per layer (per-op overhead, a few µs, dominates layers of a few thousand
    elements, as in the narrow early stages of small students). Into one fresh tensor holding every such layer:
    gather each element's group end from the cache's flat prefix sums (row ``to_chain[o]``); gather, for every
    group that does not start its cluster, the previous group's end (already in the output); subtract it
    (``index_add_``, alpha −1: the same rounding as ``sub_``). The layers are views of that tensor."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self._end: list[np.ndarray] = []
        self._prev: list[np.ndarray] = []
        self._nf: list[np.ndarray] = []
        self.numel = 0

    def add(
        self,
        name: str,
        shape: tuple[int, ...],
        offset: int,
        tc: np.ndarray,
        n_in: int,
        k: int,
        end: np.ndarray,
        nf_cols: np.ndarray,
        prev_cols: np.ndarray,
    ) -> None:
        s_in = shape[1]
        j = np.arange(k)
        row = self.numel + np.arange(len(tc))[:, None, None] * (s_in * k)
        self._end.append((offset + tc[:, None, None] * ((n_in + 1) * k) + end[None, :, None] * k + j).reshape(-1))
        self._nf.append((row + nf_cols[None, :, None] * k + j).reshape(-1))
        self._prev.append((row + prev_cols[None, :, None] * k + j).reshape(-1))
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

    def run(self, flat: Tensor) -> dict[str, Tensor]:
        out = torch.index_select(flat, 0, self.end)
        if self.nf.numel():
            out.index_add_(0, self.nf, out.index_select(0, self.prev), alpha=-1)
        return {n: t.view(s) for n, t, s in zip(self.names, out.split(self.sizes), self.shapes, strict=True)}


class _StudentPlan:
    """Everything about expanding one student from one chain that does not depend on the chain's values, built
    once per (labels, student spec, bn_stats). Per call, every row layer is written straight into the student's
    fresh tensor:

    * input partition at chain width: the rows of the cluster totals (a row copy);
    * otherwise one gather of the prefix sums at every student column's group end; a group that does not start
      its cluster (student channels ≥ M of each partition, SPEC.md §3.1) then subtracts the prefix sum before it,
      which is the previous group's end, already gathered (read back from the output, not from the chain);
    * student rows 0…R-1 are chain rows 0…R-1 (the first copy of every cluster, SPEC.md §3.1), so the columns are
      computed for those rows only and the further copies are row copies of them (``index_select``);
    * layers of at most ``_BATCH_NUMEL`` elements do the same all together (``_Batch``);
    * all averaged vectors are one ``index_add_`` and one division; fresh BN statistics one copy of a template.

    Same values, bitwise, as ``_expand_state_dict_reference`` (same prefix sums, same subtraction, same sums).
    """

    def __init__(
        self, chain: WeightChain, spec: ModelSpec, allocs: Mapping[str, Alloc], cache: _ExpandCache, bn_stats: str
    ) -> None:
        device = cache.flat.device
        self.lock = threading.Lock()  # the scratch is shared by the calls of this plan
        self.ops: list[_RowOp | str] = []  # a name: that layer comes from ``batch``
        self.batch = _Batch(device)
        scratch = 0
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
            k = int(np.prod(gshape[2:], dtype=np.int64))
            n_in, s_in = gshape[1], ai.width
            end, before = ai.col_end.cpu().numpy(), ai.col_before.cpu().numpy()
            nf_cols = np.flatnonzero(before != n_in)  # before = n_in: the zero column (the group starts its cluster)
            col_of = np.full(n_in, -1)
            col_of[end] = np.arange(s_in)
            prev_cols = col_of[before[nf_cols]]
            assert (prev_cols >= 0).all(), "chunks of a cluster are contiguous (SPEC.md §3.1)"
            if len(tc) * s_in * k <= _BATCH_NUMEL:
                self.batch.add(r.param, shape, cache.offset[r.param], tc, n_in, k, end, nf_cols, prev_cols)
                self.ops.append(r.param)
                continue
            stage = tmp = -1
            if not head:
                stage, scratch = scratch, scratch + rows * s_in * k
            nf = prev = None
            if len(nf_cols):
                tmp, scratch = scratch, scratch + rows * len(nf_cols) * k
                prev = _index(rows, prev_cols, s_in, k, device)
                runs = _runs(nf_cols)  # one range: sub_ on a slice; several (per head): one index_add_
                nf = (runs[0][0] * k, runs[0][1] * k) if len(runs) == 1 else torch.as_tensor(nf_cols, device=device)
            end_t = _index(rows, end, n_in + 1, k, device)
            self.ops.append(_RowOp(r.param, "prefix", shape, rows, rest, head, k, end_t, nf, prev, stage, tmp))
        self.scratch_numel = scratch
        self.batch.finish(cache.flat.numel())
        self._scratch: Tensor | None = None

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
        self.device = device

    def run(self, chain: WeightChain, cache: _ExpandCache, proj_bias: str, dtype: torch.dtype) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        with self.lock:
            if self.scratch_numel and (self._scratch is None or self._scratch.dtype != dtype):
                self._scratch = torch.empty(self.scratch_numel, dtype=dtype, device=self.device)
            small = self.batch.run(cache.flat) if self.batch.names else {}
            for op in self.ops:
                if isinstance(op, str):
                    state[op] = small[op]
                else:
                    state[op.param] = self._row(op, chain, cache)
        if self.n_avg:
            src = cache.sources(chain, self.srcs[proj_bias])
            flat = src.new_zeros(self.n_avg).index_add_(0, self.slot, src).div_(self.counts.to(src.dtype))
            state.update(zip(self.avg_names, flat.split(self.avg_sizes), strict=True))
        return state

    def _row(self, op: _RowOp, chain: WeightChain, cache: _ExpandCache) -> Tensor:
        r = op.chain_rows
        if op.source == "prefix":
            p = cache.prefix[op.param]
            out = torch.empty(op.shape, dtype=p.dtype, device=p.device)
            out2 = out.view(op.shape[0], -1)
            width = out2.shape[1]
            top = out2[:r] if op.head else self._scratch[op.stage : op.stage + r * width].view(r, width)
            _take(p, op.end, op.k, top)
            if op.prev is not None:  # minus the previous group's end, read before any column changes
                n = op.prev.numel() * op.k
                prev = _take(top, op.prev, op.k, self._scratch[op.tmp : op.tmp + n].view(r, -1))
                if isinstance(op.nf, tuple):
                    top[:, op.nf[0] : op.nf[1]].sub_(prev)
                else:
                    top.view(r, -1, op.k).index_add_(1, op.nf, prev.view(r, -1, op.k), alpha=-1)
            if op.rest is not None:
                torch.index_select(top, 0, op.rest, out=out2[r:] if op.head else out2)
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


def _expand_state_dict_fast(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """``expand_state_dict`` through the chain's ``_ExpandCache`` and a per-(chain, student) ``_StudentPlan``."""
    _check_student(chain, spec)
    _check_options(bn_stats, proj_bias)
    with torch.no_grad():
        cache = _expand_cache(chain)
        if cache.mixed:  # mixed floating dtypes: no single flat prefix buffer or vector source
            return _expand_state_dict_reference(chain, spec, bn_stats=bn_stats, proj_bias=proj_bias)
        device = cache.flat.device
        plans = chain.__dict__.setdefault("_expand_plans", {})
        key = (_labels_key(chain), spec, bn_stats, str(device))
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= 16:  # a plan holds index tensors and scratch (up to ~10 MiB for ResNet-50 students)
                plans.pop(next(iter(plans)))
            plan = plans[key] = _StudentPlan(chain, spec, cached_allocations(chain, spec, device), cache, bn_stats)
        state = plan.run(chain, cache, proj_bias, cache.flat.dtype)
        if chain.plan.family == "vit":
            _vit_stem(state, spec, {n: chain.snapshot.get(n) for n in chain.plan.shared}, "expand")
        if bn_stats == "average":  # the reference lists the BN statistics after the stem
            state.update((b.param, state.pop(b.param)) for b in chain.plan.bn_buffers)
        elif plan.fresh is not None:
            fresh = plan.fresh.to(cache.flat.dtype, copy=True)
            state.update(zip(plan.fresh_names, fresh.split(plan.fresh_sizes), strict=True))
        if plan.tracked:
            zeros = torch.zeros(len(plan.tracked), dtype=torch.long, device=device).unbind(0)
            state.update(zip(plan.tracked, zeros, strict=True))
    return state


def _expand_state_dict_reference(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """The per-layer implementation of ``expand_state_dict`` (``materialise`` with the prefix cache): the
    reference ``expand_state_dict`` is tested against, bitwise."""
    _check_student(chain, spec)
    _check_options(bn_stats, proj_bias)
    device = chain.label(chain.plan.parts[0].name).device
    with torch.no_grad():
        allocs = cached_allocations(chain, spec, device)
        snap = {n: chain.snapshot.get(n) for n in chain.snapshot_names()}
        if proj_bias == "gene":
            snap.update({v.param: chain.gene(v.param) for v in chain.plan.vectors if v.gene})
        state = materialise(chain, spec, allocs, snap, "expand")
        bufs = chain.plan.bn_buffers
        if bufs:
            widths = [allocs[b.part].width for b in bufs]
            if bn_stats == "average":
                vals = [_average(snap[b.param], allocs[b.part].slot, allocs[b.part].counts) for b in bufs]
            else:  # fresh statistics (SPEC.md §3.2): disjoint views of one tensor, means 0 and variances 1
                is_var = torch.tensor([b.param.endswith("var") for b in bufs], device=device)
                flat = is_var.repeat_interleave(torch.tensor(widths, device=device)).to(snap[bufs[0].param].dtype)
                vals = list(flat.split(widths))
            state.update(zip((b.param for b in bufs), vals, strict=True))
            names = sorted({b.param.rsplit(".", 1)[0] for b in bufs})
            tracked = torch.zeros(len(names), dtype=torch.long, device=device).unbind(0)
            state.update(zip((f"{n}.num_batches_tracked" for n in names), tracked, strict=True))
    return state


def expand_from_chains(chains: list[WeightChain], spec: ModelSpec, num_classes: int, **options: str) -> ReIDModel:
    """Expand from the widest chain whose S-Student fits within ``spec`` in every layer (SPEC.md §3.3)."""
    if not chains:
        raise SpecError("no chain given")
    teacher = chains[0].teacher_spec
    if any(
        c.teacher_spec.layer_widths() != teacher.layer_widths() or c.teacher_spec.arch != teacher.arch for c in chains
    ):
        raise SpecError("the chains come from different teachers")
    width = select_chain(spec, [c.width for c in chains], teacher)
    return expand(next(c for c in chains if c.width == width), spec, num_classes, **options)
