"""Which chain row and which teacher channels every student channel takes (SPEC.md §3.1), and whether a student
fits a chain at all.

``allocate`` is the authors' rule for one layer; ``allocations`` applies it to every partition of a chain (per head
for the ViT qkv). Both depend on the chain's labels only, never on its values. The clusters' numbering is
scikit-learn's (``cluster.ward_labels``), so ties of ``copies / size`` go to the same clusters as in the authors'
code.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from oskt.chain.chain import WeightChain
from oskt.errors import SpecError
from oskt.models.spec import ModelSpec

BN_STATS = ("reset", "average")
PROJ_BIAS = ("teacher", "gene")


def allocate(labels: np.ndarray, n_clusters: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Index allocation of one layer, exactly as SPEC.md §3.1.

    Greedy proportional copies (each step the cluster with the smallest ``copies / size``, ties → smallest cluster
    index) computed in closed form: the extra copies are the ``width - M`` smallest keys ``j / size[c]``
    (``j = 1 … size[c] - 1``) in (key, cluster) order, which is the greedy sequence. Each cluster's members
    (ascending) are split into contiguous chunks over its slots (ascending); the first ``size mod copies`` chunks
    get one extra member.

    Args:
        labels: cluster of every teacher channel, ``[N]`` in ``[0, n_clusters)`` (scikit-learn's numbering: the
            tie order depends on it).
        n_clusters: ``M``.
        width: student width ``S``, ``M ≤ S ≤ N``.

    Returns:
        ``to_chain[width]`` (chain row of each student channel) and ``slot[N]`` (student channel of each teacher
        channel; the group of ``k`` is ``{i : slot[i] == k}``).

    Raises:
        SpecError: when ``width`` is outside ``[M, N]``.
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

    Attributes:
        to_chain: ``[S]`` chain row of every student channel (``allocate``).
        slot: ``[N]`` student channel of every teacher channel.
        counts: ``[S]`` group sizes (float32: they divide the averaged vectors).
        identity: ``S = M`` (the S-Student: every group is a whole cluster, student channel ``k`` = cluster ``k``).
    """

    to_chain: Tensor
    slot: Tensor
    counts: Tensor
    identity: bool

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


def check_labels(chain: WeightChain) -> None:
    """Every partition's labels lie in ``[0, M)`` with every cluster non-empty (``WeightChain.init_from_teacher``
    ensures it; a checkpoint edited by hand may not).

    Raises:
        SpecError: naming the partition.
    """
    for p in chain.plan.parts:
        labels, m = chain.label(p.name), chain.num_clusters(p.name)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= m):
            raise SpecError(f"chain labels of {p.name}: values outside [0, {m})")
        if int(torch.bincount(labels, minlength=m).min()) == 0:
            raise SpecError(f"chain labels of {p.name}: every one of the {m} clusters must be non-empty")


def allocations(chain: WeightChain, spec: ModelSpec, device: torch.device | str = "cpu") -> dict[str, Alloc]:
    """Allocations of every partition of ``chain`` for student ``spec`` (per head for the ViT qkv, SPEC.md §3.2).

    Raises:
        SpecError: when the chain's labels are invalid (``check_labels``), or a partition's student width is not
            divisible by its heads or lies outside [M, N].
    """
    check_labels(chain)
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
        tc, sl = np.concatenate(tcs), np.concatenate(sls)
        counts = np.bincount(sl, minlength=s).astype(np.float32)
        out[p.name] = Alloc(
            torch.as_tensor(tc, device=device),
            torch.as_tensor(sl, device=device),
            torch.as_tensor(counts, device=device),
            bool(s == m),
        )
    return out


def check_student(chain: WeightChain, spec: ModelSpec) -> None:
    """A student can be expanded from ``chain`` when it has the teacher's arch and lies between the chain's
    S-Student and the teacher in every layer (SPEC.md §3.3; ViT: same image size, the positions are shared).

    Raises:
        SpecError: naming the student's and the chain's / teacher's widths.
    """
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


def check_options(bn_stats: str, proj_bias: str) -> None:
    """The expansion options (``expand``).

    Raises:
        SpecError: for a value outside ``BN_STATS`` / ``PROJ_BIAS``.
    """
    if bn_stats not in BN_STATS or proj_bias not in PROJ_BIAS:
        raise SpecError(f"bn_stats={bn_stats!r} / proj_bias={proj_bias!r}: expected reset|average and teacher|gene")
