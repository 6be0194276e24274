"""Expansion of a weight chain to any width between the chain and the teacher (SPEC.md §3).

Per partition, ``allocate`` gives every student channel ``k`` a chain row ``to_chain[k]`` and a group of teacher
channels; a student tensor is then built with three vectorised ops (no Python loop over channels):

* rows (stacking): ``index_select`` of chain rows by ``to_chain``;
* columns (summing, no rescale): ``index_add`` of the teacher-width columns into their student channel;
* vectors (averaging): ``index_add`` of BN / LN / bias entries divided by the group sizes.

``materialise`` is shared with ``RefineModel`` (the S-Student is the allocation at chain width), so "expansion at
chain width equals the S-Student" holds by construction and is tested.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import weakref
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
        tuple((b.data_ptr(), b._version) for b in chain.labels.buffers()),
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
                if r.inp is not None:
                    self.tensors[r.param] = _prefix(chain, r)


def _prefix(chain: WeightChain, r) -> Tensor:
    """Within-cluster column prefix sums of row layer ``r``, column-major ``[N_in + 1, R, k]`` (last: zeros)."""
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
    # stored column-major ([N + 1, R, k]) so that gathering columns copies contiguous rows
    return seg.transpose(0, 1).contiguous().to(c.dtype)


def _cache_key(chain: WeightChain) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in chain.genes.values()) + tuple(
        (b.data_ptr(), b._version) for b in chain.labels.buffers()
    )


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
    """The student's backbone state dict (parameters and BN buffers) generated from ``chain``; see ``expand``."""
    return _expand_state_dict_reference(chain, spec, bn_stats=bn_stats, proj_bias=proj_bias)


def _expand_state_dict_planned(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """Experimental planned variant of ``expand_state_dict`` (same output, bitwise; tested and benchmarked, not
    the default: on the 2-core bench machine it was not reliably faster than the per-layer path).

    Runs a precomputed per-(chain, student) plan (``_StudentPlan``, built on the first call for a student shape)
    against the chain's flat buffer (``_ChainBuffer``, rebuilt when a gene, label or snapshot tensor changes). The
    result equals, bitwise, ``_expand_state_dict_reference`` (the per-layer implementation, kept for the tests).
    The returned tensors are views of one freshly allocated flat buffer (one ``long`` tensor for the BN counters).
    """
    _check_student(chain, spec)
    _check_options(bn_stats, proj_bias)
    with torch.no_grad():
        buf = _chain_buffer(chain)
        if buf is None:  # mixed dtypes: no single flat buffer
            return _expand_state_dict_reference(chain, spec, bn_stats=bn_stats, proj_bias=proj_bias)
        plans = chain.__dict__.setdefault("_expand_plans", {})
        key = (_labels_key(chain), spec, bn_stats)
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= 64:
                plans.pop(next(iter(plans)))
            plan = plans[key] = _StudentPlan(chain, spec, cached_allocations(chain, spec, buf.device), buf, bn_stats)
        state = plan.run(buf, proj_bias)
        if spec.family == "vit" and not has_dw(spec):  # fold dw into the teacher-width stem (small matmuls)
            _vit_stem(state, spec, {n: chain.snapshot.get(n) for n in chain.plan.shared}, "expand")
    return state


def _check_options(bn_stats: str, proj_bias: str) -> None:
    if bn_stats not in ("reset", "average") or proj_bias not in ("teacher", "gene"):
        raise SpecError(f"bn_stats={bn_stats!r} / proj_bias={proj_bias!r}: expected reset|average and teacher|gene")


def _labels_key(chain: WeightChain) -> tuple:
    return tuple((b.data_ptr(), b._version) for b in chain.labels.buffers())


class _ChainBuffer:
    """Per chain state, like ``PrefixCache``: one flat tensor ``buf`` holding, at fixed offsets, the genes of the
    rows without column summing (stem conv, ViT ``dw``), the within-cluster prefix sums (``_prefix``) of every
    other row layer, the shared ViT tensors, the constants 0 and 1, then a scratch tail where a student's
    subtracted column sums are written; plus the concatenated sources of the averaged vectors (per option).
    Offsets depend on the chain's structure only, so student plans (index tensors into ``buf``) survive a
    rebuild."""

    def __init__(self, chain: WeightChain) -> None:
        self.key = _buffer_key(chain)
        self.lock = threading.Lock()
        self.chain = weakref.ref(chain)
        self.offsets: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # prefix [N_in + 1, R, k] or gene shape
        pieces = []
        off = 0
        for r in chain.plan.rows:
            # prefix sums stored row-major ([R, N_in + 1, k]): a student row reads from one short chain row
            t = chain.gene(r.param).detach() if r.inp is None else _prefix(chain, r).transpose(0, 1).contiguous()
            self.offsets[r.param], self.shapes[r.param] = off, tuple(t.shape)
            pieces.append(t.reshape(-1))
            off += t.numel()
        for n in chain.plan.shared:  # copied by the same gather
            t = chain.snapshot.get(n)
            self.offsets[n], self.shapes[n] = off, tuple(t.shape)
            pieces.append(t.reshape(-1))
            off += t.numel()
        self.const = off  # a 0 and a 1: fresh BN statistics, gathered too
        pieces.append(torch.tensor([0.0, 1.0], dtype=pieces[0].dtype, device=pieces[0].device))
        self.base = off + 2  # start of the scratch tail
        self.buf = torch.cat(pieces)
        self.device, self.dtype = self.buf.device, self.buf.dtype
        self._views: dict[str, Tensor] = {}
        self.bound: dict[int, list[tuple]] = {}  # per student plan: its gathers bound to ``buf``'s storage
        self._sources: dict[tuple[str, str], Tensor] = {}

    def ensure_scratch(self, numel: int) -> None:
        if self.buf.numel() < self.base + numel:
            buf = torch.empty(self.base + numel, dtype=self.dtype, device=self.device)
            buf[: self.base].copy_(self.buf[: self.base])
            self.buf = buf
            self._views = {}
            self.bound = {}

    def prefix3d(self, param: str) -> Tensor:
        """Layer ``param``'s prefix sums ``[R, N_in + 1, k]`` (a view of ``buf``)."""
        v = self._views.get(param)
        if v is None:
            r, n, k = self.shapes[param]
            off = self.offsets[param]
            v = self._views[param] = self.buf[off : off + r * n * k].view(r, n, k)
        return v

    def sources(self, names: tuple[tuple[str, bool], ...], proj_bias: str) -> Tensor:
        """The averaged vectors' sources concatenated (``names``: (param, from gene))."""
        key = (names, proj_bias)
        s = self._sources.get(key)
        if s is None:
            chain = self.chain()
            s = self._sources[key] = torch.cat(
                [(chain.gene(n) if g else chain.snapshot.get(n)).detach().reshape(-1) for n, g in names]
            )
        return s


def _buffer_key(chain: WeightChain) -> tuple:
    return _cache_key(chain) + tuple((b.data_ptr(), b._version) for b in chain.snapshot.buffers())


def _chain_buffer(chain: WeightChain) -> _ChainBuffer | None:
    """The chain's flat buffer, rebuilt when a gene, label or snapshot tensor changed (``_version`` / pointer);
    None when the chain mixes floating dtypes."""
    buf = chain.__dict__.get("_expand_buffer")
    if buf is not None and buf.key == _buffer_key(chain):
        return buf
    dtypes = {t.dtype for t in chain.genes.values()} | {t.dtype for t in chain.snapshot.buffers()}
    if len(dtypes) != 1:
        return None
    buf = _ChainBuffer(chain)
    chain.__dict__["_expand_buffer"] = buf
    return buf


_PLAN_IDS = itertools.count()


class _StudentPlan:
    """Everything about expanding one student from one chain that does not depend on the chain's values.

    Output layout: one flat tensor ``[rows | shared ViT tensors | fresh BN statistics | averaged vectors (+ BN
    statistics with bn_stats=average)]``; the state dict lists them in the reference order. Per call:

    * for every row layer with non-first column groups (a run that does not start its cluster: SPEC.md §3.1
      splits a cluster over several student channels), the two prefix rows are gathered (``index_select`` of
      contiguous ``R·k`` blocks) into the buffer's scratch tail and a workspace, and subtracted in one op;
    * every row layer's weight, the shared ViT tensors and the fresh BN statistics are then one element gather
      from ``buf`` (``fidx``: stacked chain rows × summed columns × kernel, pointing at the prefix sum itself for
      a first group and at the scratch otherwise; copies; the constants);
    * all vectors are averaged by one ``index_add_`` and one division.
    """

    def __init__(
        self, chain: WeightChain, spec: ModelSpec, allocs: Mapping[str, Alloc], buf: _ChainBuffer, bn_stats: str
    ) -> None:
        plan, device = chain.plan, buf.device
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        gather: list[np.ndarray] = []
        nf_ops: list[tuple[str, np.ndarray, np.ndarray, int, tuple[int, int, int]]] = []
        scratch = 0
        for r in plan.rows:
            tc = allocs[r.out].rep(r.repeat, chain.num_clusters(r.out))[0].cpu().numpy()
            off, shape = buf.offsets[r.param], buf.shapes[r.param]
            if r.inp is None:  # rows of the gene itself
                row = int(np.prod(shape[1:], dtype=np.int64))
                idx = off + tc[:, None] * row + np.arange(row)[None]
                out_shape = (len(tc), *shape[1:])
            else:
                rows, n_in, k = shape
                gene_shape = chain.gene(r.param).shape
                ai = allocs[r.inp]
                end, before = ai.col_end.cpu().numpy(), ai.col_before.cpu().numpy()
                nf = np.flatnonzero(before != n_in - 1)  # n_in - 1: the zero column
                # element (o, i, j) of the student weight: buf[row_base[o] + col[i] + j]
                col, row_base = end * k, off + tc * (n_in * k)
                idx = row_base[:, None, None] + col[None, :, None] + np.arange(k)[None, None, :]
                if len(nf):  # non-first groups read the scratch [R, n_nf, k] instead
                    base = buf.base + scratch
                    idx[:, nf, :] = (
                        (base + tc * (len(nf) * k))[:, None, None]
                        + (np.arange(len(nf)) * k)[None, :, None]
                        + np.arange(k)[None, None, :]
                    )
                    nf_ops.append((r.param, end[nf], before[nf], scratch, (rows, len(nf), k)))
                    scratch += rows * len(nf) * k
                out_shape = (len(tc), ai.width, *gene_shape[2:])
            names.append(r.param)
            shapes.append(out_shape)
            gather.append(idx.reshape(-1))
        if plan.family == "vit" and has_dw(spec):  # shared teacher-width tensors: copies
            for n in plan.shared:
                names.append(n)
                shapes.append(buf.shapes[n])
                gather.append(buf.offsets[n] + np.arange(int(np.prod(buf.shapes[n], dtype=np.int64))))
        self.tracked: list[str] = []
        if plan.bn_buffers:
            if bn_stats == "reset":  # fresh statistics (SPEC.md §3.2): means 0, variances 1
                for b in plan.bn_buffers:
                    names.append(b.param)
                    shapes.append((allocs[b.part].width,))
                    gather.append(np.full(allocs[b.part].width, buf.const + b.param.endswith("var")))
            mods = sorted({b.param.rsplit(".", 1)[0] for b in plan.bn_buffers})
            self.tracked = [f"{n}.num_batches_tracked" for n in mods]
        buf.ensure_scratch(scratch)
        self.scratch = scratch
        index_dtype = torch.int32 if buf.base + scratch < 2**31 else torch.int64
        self.fidx = torch.as_tensor(np.concatenate(gather), device=device).to(index_dtype)
        self.nf_ops = [
            (p, torch.as_tensor(e, device=device), torch.as_tensor(b, device=device), lo, blk)
            for p, e, b, lo, blk in nf_ops
        ]
        self.n_gather = self.fidx.numel()

        n_gathered = len(names)
        grouped: dict[tuple[str, int], list] = {}
        for v in plan.vectors:
            grouped.setdefault((v.part, v.repeat), []).append(v)
        averaged = [(v, v.gene, v.expand_from_teacher) for items in grouped.values() for v in items]
        if bn_stats == "average":
            averaged += [(b, False, True) for b in plan.bn_buffers]
        slots, counts, srcs = [], [], []
        pos = 0
        for v, gene, from_teacher in averaged:
            _, sl, cnt = allocs[v.part].rep(v.repeat, chain.num_clusters(v.part))
            slots.append(sl + pos)
            counts.append(cnt)
            srcs.append((v.param, gene, from_teacher))
            names.append(v.param)
            shapes.append((cnt.numel(),))
            pos += cnt.numel()
        self.n_avg = pos
        self.slot = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long, device=device)
        self.counts = torch.cat(counts).to(buf.dtype) if counts else torch.zeros(0, dtype=buf.dtype, device=device)
        self.srcs = {  # (param, from gene) per proj_bias option (SPEC.md §3.2: the ViT proj-bias quirk)
            "teacher": tuple((p, g and not t) for p, g, t in srcs),
            "gene": tuple((p, g) for p, g, _ in srcs),
        }
        # the state dict keeps the reference order: rows, vectors, shared, BN statistics, BN counters
        n_rows, n_vec = len(plan.rows), len(plan.vectors)
        self.order = names[:n_rows] + names[n_gathered : n_gathered + n_vec] + names[n_rows:n_gathered]
        self.order += names[n_gathered + n_vec :]
        self.names, self.shapes = names, shapes
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        self.total = sum(self.sizes)
        self.device, self.dtype = device, buf.dtype
        self.uid = next(_PLAN_IDS)
        self.bws = torch.empty(scratch, dtype=buf.dtype, device=device)  # second prefix rows of non-first groups

    def _bind(self, buf: _ChainBuffer) -> list[tuple]:
        """The per-layer gathers bound to ``buf``'s storage (kept by ``buf``, dropped when it is reallocated)."""
        ops = buf.bound.get(self.uid)
        if ops is None:
            buf.ensure_scratch(self.scratch)  # a rebuilt chain buffer starts without scratch
            ops = []
            for p, end, before, lo, shape in self.nf_ops:
                n = shape[0] * shape[1] * shape[2]
                dst = buf.buf[buf.base + lo : buf.base + lo + n].view(shape)
                ops.append((buf.prefix3d(p), end, before, dst, self.bws[lo : lo + n].view(shape)))
            buf.bound[self.uid] = ops
        return ops

    def run(self, buf: _ChainBuffer, proj_bias: str) -> dict[str, Tensor]:
        out = torch.empty(self.total, dtype=self.dtype, device=self.device)
        src = buf.sources(self.srcs[proj_bias], proj_bias) if self.n_avg else None
        with buf.lock:  # the scratch tail is shared by the chain's plans
            ops = self._bind(buf)
            for p3d, end, before, dst, tmp in ops:
                torch.index_select(p3d, 1, end, out=dst)
                torch.index_select(p3d, 1, before, out=tmp)
            if ops:
                buf.buf[buf.base : buf.base + self.scratch].sub_(self.bws)
            torch.index_select(buf.buf, 0, self.fidx, out=out[: self.n_gather])
        if self.n_avg:
            out[self.n_gather :].zero_().index_add_(0, self.slot, src).div_(self.counts)
        views = {n: t.view(s) for n, t, s in zip(self.names, out.split(self.sizes), self.shapes, strict=True)}
        state = {n: views[n] for n in self.order}
        if self.tracked:
            zeros = torch.zeros(len(self.tracked), dtype=torch.long, device=self.device).unbind(0)
            state.update(zip(self.tracked, zeros, strict=True))
        return state


def _expand_state_dict_reference(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """The per-layer implementation of ``expand_state_dict`` (``materialise`` with the prefix cache): the
    reference the planned path is tested against, bitwise."""
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
