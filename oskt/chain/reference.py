"""The per-layer reference implementation of expansion (SPEC.md §3.2): the oracle ``Expander`` is tested against.

Written for reading, not speed: every row layer's columns are summed from the chain tensor itself, with no cache,
no plan and no batching, by the rule that defines a student's column sums (SPEC.md §3.1: the group of a student
channel is a contiguous run of one cluster's members, ascending):

* a whole cluster (its cluster has one copy): the S-Student's column sum, ``materialise.column_sums`` (``S = M``
  reproduces the S-Student exactly);
* a single column: the chain entry itself;
* any other run ``(before, end]``: ``P[end] - P[before]`` in float64, rounded once to the chain's dtype, where ``P``
  is the within-cluster prefix sum accumulated in float64 from zero in ascending channel order and
  ``P[before] = 0`` for the run that starts its cluster (no subtraction then).

The fast path computes the same float64 operations in the same order, hence equal bitwise (tested). The cost of
exactness is float64 prefix sums; the float32 difference of float64 prefix sums (the previous rule) was off by up to
one float32 ulp of the prefix, i.e. relative errors up to 0.17 on near-zero entries.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from oskt.chain.allocation import Alloc, allocations, check_options, check_student
from oskt.chain.chain import WeightChain
from oskt.chain.materialise import average_vectors, column_sums, vit_stem
from oskt.models.spec import ModelSpec


def reference_column_sums(c: Tensor, labels: Tensor, n_clusters: int, alloc: Alloc) -> Tensor:
    """Column sums of one chain tensor ``[R, N, ...]`` over the groups of ``alloc`` -> ``[R, S, ...]`` (the rule in
    the module docstring). Works on columns as rows of the transposed tensor (``[N, R·k]``)."""
    rows, n = c.shape[0], c.shape[1]
    x = c.reshape(rows, n, -1).transpose(0, 1).reshape(n, -1)  # [N, R·k]: column j of every chain row
    lab = labels.cpu().numpy()
    slot = alloc.slot.cpu().numpy()
    s = alloc.width
    order = np.argsort(lab, kind="stable")  # members of every cluster, ascending
    prev = np.full(n, -1)  # the previous member of each channel's cluster (-1: it starts the cluster)
    same = lab[order[1:]] == lab[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    size_of = np.bincount(lab, minlength=n_clusters)
    rank = pos - (np.cumsum(size_of) - size_of)[lab]  # position within its cluster
    p = torch.zeros(n, x.shape[1], dtype=torch.float64, device=c.device)
    for t in range(int(rank.max()) + 1 if n else 0):  # one member of every cluster per step: P_t = P_{t-1} + x_t
        idx = torch.as_tensor(np.flatnonzero(rank == t), device=c.device)
        base = p[torch.as_tensor(prev[idx.cpu().numpy()], device=c.device)] if t else torch.zeros_like(p[idx])
        p[idx] = base + x[idx].double()
    first = np.full(s, n)
    last = np.full(s, -1)
    np.minimum.at(first, slot, np.arange(n))
    np.maximum.at(last, slot, np.arange(n))
    size = np.bincount(slot, minlength=s)
    cluster = lab[first]
    copies = np.bincount(cluster, minlength=n_clusters)
    whole = copies[cluster] == 1
    single = (size == 1) & ~whole
    other = np.flatnonzero(~whole & ~single)
    out = torch.empty(s, x.shape[1], dtype=c.dtype, device=c.device)
    if whole.any():  # the S-Student's sums (the same function refinement calls), one column per cluster
        sums = column_sums(c, labels, n_clusters).reshape(rows, n_clusters, -1).transpose(0, 1).reshape(n_clusters, -1)
        out[np.flatnonzero(whole)] = sums[cluster[whole]]
    out[np.flatnonzero(single)] = x[first[single]]
    val = p[last[other]]
    before = prev[first[other]]
    nf = before >= 0
    val[nf] = val[nf] - p[before[nf]]
    out[other] = val.to(c.dtype)
    return out.reshape(s, rows, -1).transpose(0, 1).reshape(rows, s, *c.shape[2:])


def _average(v: Tensor, a: Alloc) -> Tensor:
    return v.new_zeros(a.width).index_add(0, a.slot, v) / a.counts.to(v.dtype)


def expand_state_dict_reference(
    chain: WeightChain, spec: ModelSpec, *, bn_stats: str = "reset", proj_bias: str = "teacher"
) -> dict[str, Tensor]:
    """``expand_state_dict`` computed per layer from the chain tensors (see the module docstring); same keys in
    the same order, same values bitwise."""
    check_student(chain, spec)
    check_options(bn_stats, proj_bias)
    plan = chain.plan
    device = chain.label(plan.parts[0].name).device
    with torch.no_grad():
        allocs = allocations(chain, spec, device)
        state: dict[str, Tensor] = {}
        for r in plan.rows:
            a, c = allocs[r.out], chain.gene(r.param).detach()
            if r.inp is not None:
                c = reference_column_sums(c, chain.label(r.inp), chain.num_clusters(r.inp), allocs[r.inp])
            state[r.param] = c.index_select(0, a.rep(r.repeat, chain.num_clusters(r.out))[0])
        snap = {n: chain.snapshot.get(n) for n in chain.snapshot_names()}
        # SPEC.md §3.2: CNN BN and (``proj_bias="teacher"``, the authors' quirk) the ViT proj bias come from the
        # refined teacher; every other vector with a gene from the gene
        from_teacher = {
            v.param for v in plan.vectors if not v.gene or (proj_bias == "teacher" and v.expand_from_teacher)
        }
        sources = {v.param: snap[v.param] if v.param in from_teacher else chain.gene(v.param) for v in plan.vectors}
        state.update(average_vectors(chain, allocs, sources))
        if plan.family == "vit":
            vit_stem(state, spec, snap, copy=True)
        bufs = plan.bn_buffers
        if bufs:
            widths = [allocs[b.part].width for b in bufs]
            if bn_stats == "average":
                vals = [_average(snap[b.param], allocs[b.part]) for b in bufs]
            else:  # fresh statistics (SPEC.md §3.2): disjoint views of one tensor, means 0 and variances 1
                is_var = torch.tensor([b.param.endswith("var") for b in bufs], device=device)
                flat = is_var.repeat_interleave(torch.tensor(widths, device=device)).to(snap[bufs[0].param].dtype)
                vals = list(flat.split(widths))
            state.update(zip((b.param for b in bufs), vals, strict=True))
            names = sorted({b.param.rsplit(".", 1)[0] for b in bufs})
            tracked = torch.zeros(len(names), dtype=torch.long, device=device).unbind(0)
            state.update(zip((f"{n}.num_batches_tracked" for n in names), tracked, strict=True))
    return state
