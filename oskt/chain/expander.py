"""Expansion of a weight chain to any width between the chain and the teacher (SPEC.md §3), behind ``Expander``.

``Expander(chain)`` owns everything expansions from one chain reuse; nothing is stored on the chain:

* the chain cache (``oskt.chain.chain_cache.ChainCache``): built on the first call, like the clustering once per chain state, and rebuilt
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
from typing import Any

import torch
from torch import Tensor

from oskt.chain.allocation import Alloc, allocations, check_options, check_student
from oskt.chain.chain import WeightChain
from oskt.chain.chain_cache import ChainCache, labels_key, state_key
from oskt.chain.materialise import vit_stem
from oskt.chain.reference import expand_state_dict_reference
from oskt.chain.student_plan import StudentPlan
from oskt.errors import SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.heads import ReIDHead
from oskt.models.spec import ModelSpec, select_chain


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
        self._cache: ChainCache | None = None
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
        key = (labels_key(self._chain), spec.family, spec.layer_widths(), str(device))
        with self._lock:
            allocs = self._allocs.get(key)
            if allocs is None:
                if len(self._allocs) >= 64:
                    self._allocs.pop(next(iter(self._allocs)))
                allocs = self._allocs[key] = allocations(self._chain, spec, device)
        return allocs

    def _chain_cache(self) -> ChainCache:
        key = state_key(self._chain)
        with self._lock:
            if self._cache is None or self._cache.key != key:
                self._cache = None  # drop the stale cache before building the new one (peak memory)
                self._cache = ChainCache(self._chain)
            return self._cache

    def _plan(self, spec: ModelSpec, bn_stats: str, cache: ChainCache) -> StudentPlan:
        key = (labels_key(self._chain), spec, bn_stats, str(cache.device))
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
