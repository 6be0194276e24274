"""Expansion of a weight chain to any width between the chain and the teacher (SPEC.md §3), behind ``Expander``.

``Expander(chain)`` owns everything expansions from one chain reuse; nothing is stored on the chain:

* the chain cache (``_ChainCache``): built on the first call, like the clustering once per chain state, and rebuilt
  when a gene, label or snapshot tensor is replaced or updated in place (so it follows an optimizer step or
  ``capture_teacher``). Per row layer with column summing: the within-cluster column prefix sums in float64 and the
  S-Student's column sums; the averaged vectors' sources;
* one plan per student (``StudentPlan``, ``oskt.chain.student_plan``): index tensors and scratch, built on that
  student's first call and kept (at most ``max_plans``).

The cache's lifetime is the Expander's. ``expand`` / ``expand_state_dict`` create a short-lived one (every call
pays for the cache: 0.08–0.35 s of CPU for ResNet-50 chains 8–32; it holds 2.1–2.3× the former float32 cache,
e.g. 157 MiB for chain 32); callers that expand many students from one chain (a service, the benchmark, a width
search) hold an ``Expander``.

Column sums (SPEC.md §3.2, no rescale): the group of a student channel is a contiguous run of one cluster's members
(SPEC.md §3.1). A whole cluster (a cluster with one copy) gives the S-Student's column sum bitwise (the same
``materialise.column_sums``), a single column the chain entry bitwise, any other run ``P[end] - P[before]``
subtracted in float64 and rounded once. The rule and its oracle are in ``oskt.chain.reference``; the tests hold the
two equal bitwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from oskt.chain.allocation import Alloc, allocations, check_labels, check_options, check_student
from oskt.chain.chain import WeightChain
from oskt.chain.materialise import column_sums, vit_stem
from oskt.chain.reference import expand_state_dict_reference
from oskt.chain.student_plan import ACC, StudentPlan
from oskt.errors import SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.heads import ReIDHead
from oskt.models.spec import ModelSpec, select_chain


def _version_key(tensors: Iterable[Tensor]) -> tuple:
    """Identity and in-place version of every tensor: changes when one is replaced or updated in place."""
    return tuple([(t.data_ptr(), t._version) for t in tensors])


def _labels_key(chain: WeightChain) -> tuple:
    return _version_key(chain.labels._buffers.values())


def _state_tensors(chain: WeightChain) -> list[Tensor]:
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


class _ChainCache:
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
        tensors = _state_tensors(chain)
        self.key = _version_key(tensors)
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


def _tensor_bytes(*objs: Any) -> int:
    """Bytes of the tensors reachable from ``objs`` (attributes, containers; each storage once)."""
    seen: set[int] = set()
    total = 0

    def walk(o: Any, depth: int) -> None:
        nonlocal total
        if isinstance(o, Tensor):
            st = o.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
        elif depth < 5 and isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif depth < 5 and isinstance(o, list | tuple):
            for v in o:
                walk(v, depth + 1)
        elif depth < 5 and hasattr(o, "__dict__") and not isinstance(o, type):
            for v in vars(o).values():
                walk(v, depth + 1)

    for o in objs:
        walk(o, 0)
    return total


class Expander:
    """Generates students of any width from one weight chain, keeping what every expansion reuses.

    Args:
        chain: the (refined) weight chain; it is read, never modified, and may be updated in place between calls.
        max_plans: student plans kept (each holds index tensors and scratch, up to ~10 MiB for ResNet-50 students);
            the oldest is dropped beyond that.

    Thread-safe: calls from several threads share the cache and the plans.
    """

    def __init__(self, chain: WeightChain, *, max_plans: int = 16) -> None:
        if max_plans < 1:
            raise SpecError(f"max_plans={max_plans}: expected at least 1")
        self._chain = chain
        self._max_plans = max_plans
        self._lock = threading.Lock()
        self._cache: _ChainCache | None = None
        self._plans: dict[tuple, StudentPlan] = {}
        self._allocs: dict[tuple, dict[str, Alloc]] = {}

    @property
    def chain(self) -> WeightChain:
        return self._chain

    def _device(self) -> torch.device:
        return self._chain.label(self._chain.plan.parts[0].name).device

    def allocations(self, spec: ModelSpec) -> dict[str, Alloc]:
        """Every partition's allocation for student ``spec`` (SPEC.md §3.1), memoised per labels and widths.

        Raises:
            SpecError: when the student does not fit between the chain and the teacher.
        """
        check_student(self._chain, spec)
        return self._allocations(spec)

    def _allocations(self, spec: ModelSpec) -> dict[str, Alloc]:
        device = self._device()
        key = (_labels_key(self._chain), spec.family, spec.layer_widths(), str(device))
        with self._lock:
            allocs = self._allocs.get(key)
            if allocs is None:
                if len(self._allocs) >= 64:
                    self._allocs.pop(next(iter(self._allocs)))
                allocs = self._allocs[key] = allocations(self._chain, spec, device)
        return allocs

    def _chain_cache(self) -> _ChainCache:
        key = _version_key(_state_tensors(self._chain))
        with self._lock:
            if self._cache is None or self._cache.key != key:
                self._cache = None  # drop the stale cache before building the new one (peak memory)
                self._cache = _ChainCache(self._chain)
            return self._cache

    def _plan(self, spec: ModelSpec, bn_stats: str, cache: _ChainCache) -> StudentPlan:
        key = (_labels_key(self._chain), spec, bn_stats, str(cache.device))
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            plan = StudentPlan(self._chain, spec, self._allocations(spec), cache, bn_stats)
            with self._lock:
                if key not in self._plans and len(self._plans) >= self._max_plans:
                    self._plans.pop(next(iter(self._plans)))
                plan = self._plans.setdefault(key, plan)
        return plan

    def state_dict(self, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher") -> dict[str, Tensor]:
        """The student's backbone state dict (parameters and BN buffers); see ``expand``. Every call returns fresh
        tensors.

        Raises:
            SpecError: before any work, when the student does not fit or an option is unknown.
        """
        chain = self._chain
        check_student(chain, spec)
        check_options(bn_stats, proj_bias)
        with torch.no_grad():
            cache = self._chain_cache()
            if cache.mixed:  # mixed floating dtypes: no single flat prefix buffer or vector source
                return expand_state_dict_reference(chain, spec, bn_stats=bn_stats, proj_bias=proj_bias)
            plan = self._plan(spec, bn_stats, cache)
            state = plan.run(chain, cache, proj_bias)
            if chain.plan.family == "vit":
                vit_stem(state, spec, {n: chain.snapshot.get(n) for n in chain.plan.shared}, copy=True)
            if bn_stats == "average":  # the reference lists the BN statistics after the stem
                state.update((b.param, state.pop(b.param)) for b in chain.plan.bn_buffers)
            elif plan.fresh is not None:
                fresh = plan.fresh.to(cache.dtype, copy=True)
                state.update(zip(plan.fresh_names, fresh.split(plan.fresh_sizes), strict=True))
            if plan.tracked:
                zeros = torch.zeros(len(plan.tracked), dtype=torch.long, device=cache.device).unbind(0)
                state.update(zip(plan.tracked, zeros, strict=True))
        return state

    def expand(
        self, spec: ModelSpec, num_classes: int, *, bn_stats: str = "reset", proj_bias: str = "teacher"
    ) -> ReIDModel:
        """A student of ``spec`` (SPEC.md §3.2) with fresh BNNeck(s) and classifier; see the function ``expand``."""
        state = self.state_dict(spec, bn_stats=bn_stats, proj_bias=proj_bias)
        with torch.device("meta"):  # no random init of weights that are overwritten anyway
            model = build_model(spec, num_classes)
        model.backbone.load_state_dict(state, strict=True, assign=True)
        model.head = ReIDHead(model.backbone.out_dim, num_classes, model.num_tokens).to(self._device())
        return model

    def clear(self, *, plans_only: bool = False) -> None:
        """Forget the student plans and allocations (and, unless ``plans_only``, the chain cache)."""
        with self._lock:
            self._plans.clear()
            self._allocs.clear()
            if not plans_only:
                self._cache = None

    def held_bytes(self, spec: ModelSpec | None = None) -> dict[str, int]:
        """Memory held between calls: ``chain_cache`` and ``student_plans`` (those of ``spec`` only, if given)."""
        with self._lock:
            plans = [p for k, p in self._plans.items() if spec is None or k[1] == spec]
            return {"chain_cache": _tensor_bytes(self._cache), "student_plans": _tensor_bytes(plans)}


def expand(
    chain: WeightChain, spec: ModelSpec, num_classes: int, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> ReIDModel:
    """Generate a student of ``spec`` from ``chain`` (SPEC.md §3.2), with fresh BNNeck(s) and classifier.

    A short-lived ``Expander``: hold one to expand several students from one chain.

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
    return Expander(chain, max_plans=1).expand(spec, num_classes, bn_stats=bn_stats, proj_bias=proj_bias)


def expand_state_dict(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """The student's backbone state dict (parameters and BN buffers) generated from ``chain``; see ``expand``."""
    return Expander(chain, max_plans=1).state_dict(spec, bn_stats=bn_stats, proj_bias=proj_bias)


def expand_from_chains(chains: list[WeightChain], spec: ModelSpec, num_classes: int, **options: str) -> ReIDModel:
    """Expand from the widest chain whose S-Student fits within ``spec`` in every layer (SPEC.md §3.3).

    Raises:
        SpecError: no chain given, chains from different teachers, or no chain fits ``spec``.
    """
    if not chains:
        raise SpecError("no chain given")
    teacher = chains[0].teacher_spec
    if any(
        c.teacher_spec.layer_widths() != teacher.layer_widths() or c.teacher_spec.arch != teacher.arch for c in chains
    ):
        raise SpecError("the chains come from different teachers")
    width = select_chain(spec, [c.width for c in chains], teacher)
    return expand(next(c for c in chains if c.width == width), spec, num_classes, **options)
