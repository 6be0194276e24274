"""A student's backbone parameters built from the chain with differentiable ops: the refinement path (SPEC.md §4.1).

``RefineModel`` materialises the S-Student (the allocation at chain width) every training step:

* columns (summing, no rescale): ``column_sums``, one ``scatter_add`` over each chain row's teacher-width columns;
* rows (stacking): ``index_select`` by ``to_chain`` (none at chain width);
* vectors (averaging): one ``scatter_add`` per partition over the stacked BN / LN / bias entries.

Every op is differentiable w.r.t. the chain and the teacher's tied tensors. Expansion (``oskt.chain.expander``) is a
separate no-grad path; it calls ``column_sums`` for the S-Student's column sums, so that a student channel whose
group is a whole cluster equals the S-Student's bitwise (SPEC.md §3.1: ``S = M`` reproduces the S-Student exactly).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from oskt.chain.allocation import Alloc
from oskt.chain.chain import WeightChain
from oskt.models.spec import ModelSpec
from oskt.models.vit import has_dw

SHARED = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "part_tokens", "token_pos", "pos_embed")


def column_sums(c: Tensor, slot: Tensor, width: int) -> Tensor:
    """``out[:, k] = Σ_{j : slot[j] = k} c[:, j]`` for a ``[R, N, ...]`` chain tensor -> ``[R, width, ...]``.

    One ``scatter_add`` (on CPU it adds the columns of a group in ascending order, in ``c``'s dtype). The S-Student's
    columns and expansion's whole-cluster columns both come from this function, hence bitwise equal."""
    idx = slot.view(1, -1, *[1] * (c.dim() - 2)).expand_as(c)
    return torch.scatter_add(c.new_zeros(c.shape[0], width, *c.shape[2:]), 1, idx, c)


def average_rows(v: Tensor, slot: Tensor, counts: Tensor) -> Tensor:
    """Group means of every row of ``v``: ``[V, N] -> [V, S]`` (scatter_add: one kernel, differentiable)."""
    sums = torch.scatter_add(v.new_zeros(v.shape[0], counts.numel()), 1, slot.expand(v.shape[0], -1), v)
    return sums / counts.to(v.dtype)


def average_vectors(
    chain: WeightChain, allocs: Mapping[str, Alloc], sources: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Group means of every vector of the chain's plan (``sources[param]``: its full-width values), one averaging op
    per (partition, repeat) — fewer small kernels than one per vector. Keys in that grouped order."""
    grouped: dict[tuple[str, int], list[str]] = {}
    for v in chain.plan.vectors:
        grouped.setdefault((v.part, v.repeat), []).append(v.param)
    out: dict[str, Tensor] = {}
    for (part, repeat), names in grouped.items():
        _, slot, counts = allocs[part].rep(repeat, chain.num_clusters(part))
        means = average_rows(torch.stack([sources[n] for n in names]), slot, counts)
        out.update(zip(names, means.unbind(0), strict=True))
    return out


def vit_stem(out: dict[str, Tensor], spec: ModelSpec, teacher: Mapping[str, Tensor], *, copy: bool) -> None:
    """Teacher stem: the teacher-width patch embedding / tokens / positions (shared, SPEC.md §3.2; cloned when
    ``copy``) and ``dw`` (D → S) as built. Plain stem: fold ``dw`` into them (exact: ``dw`` is linear and follows
    the position add)."""
    if has_dw(spec):
        for name in SHARED:
            out[name] = teacher[name].clone() if copy else teacher[name]
        return
    dw = out.pop("dw.weight")  # [S, E]
    w = teacher["patch_embed.proj.weight"]
    out["patch_embed.proj.weight"] = (dw @ w.reshape(w.shape[0], -1)).reshape(dw.shape[0], *w.shape[1:])
    out["patch_embed.proj.bias"] = dw @ teacher["patch_embed.proj.bias"]
    for name in SHARED[2:]:
        out[name] = teacher[name] @ dw.t()


def materialise(
    chain: WeightChain, spec: ModelSpec, allocs: Mapping[str, Alloc], teacher: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Student backbone parameters (names relative to ``backbone``), differentiable (SPEC.md §4.1).

    Args:
        chain: the weight chain.
        spec: the student spec (refinement: the chain's own, ``chain.chain_spec``).
        allocs: ``allocations(chain, spec)``.
        teacher: the live teacher parameters: tied vectors (CNN BN γ/β, SPEC.md §2.4) and shared ViT stem tensors.
            Vectors with a gene (ViT LN / biases) come from the gene.
    """
    out: dict[str, Tensor] = {}
    for r in chain.plan.rows:
        a, c = allocs[r.out], chain.gene(r.param)
        if r.inp is not None:  # column summing first: it reduces the tensor before the rows stack
            c = column_sums(c, allocs[r.inp].slot, allocs[r.inp].width)
        out[r.param] = c if a.identity else c.index_select(0, a.rep(r.repeat, chain.num_clusters(r.out))[0])
    sources = {v.param: chain.gene(v.param) if v.gene else teacher[v.param] for v in chain.plan.vectors}
    out.update(average_vectors(chain, allocs, sources))
    if chain.plan.family == "vit":
        vit_stem(out, spec, teacher, copy=False)
    return out
