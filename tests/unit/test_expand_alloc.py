"""Expansion index allocation (SPEC.md §3.1): the worked example, the greedy reference on random labels, and ties
in scikit-learn's cluster numbering (issue #19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oskt.chain import build_chain, expand
from oskt.chain.allocation import allocate, groups
from oskt.errors import SpecError
from oskt.models import ModelSpec, build_model, parse_spec


def reference(labels: list[int], m: int, s: int) -> tuple[list[int], list[list[int]]]:
    """SPEC.md §3.1 pseudo-code, literally (Python loops)."""
    size = [labels.count(c) for c in range(m)]
    copies = [1] * m
    to_chain = list(range(m))
    while len(to_chain) < s:
        c = min(range(m), key=lambda c: (copies[c] / size[c], c))
        to_chain.append(c)
        copies[c] += 1
    group: list[list[int]] = [[] for _ in range(s)]
    for c in range(m):
        members = [i for i, a in enumerate(labels) if a == c]
        slots = [k for k, t in enumerate(to_chain) if t == c]
        q, r = divmod(len(members), len(slots))
        start = 0
        for j, k in enumerate(slots):
            n = q + (1 if j < r else 0)
            group[k] = members[start : start + n]
            start += n
    return to_chain, group


WORKED = {
    3: ([0, 1, 2], [[0, 3, 5], [2], [1, 4]]),
    4: ([0, 1, 2, 0], [[0, 3], [2], [1, 4], [5]]),
    5: ([0, 1, 2, 0, 2], [[0, 3], [2], [1], [5], [4]]),
    6: ([0, 1, 2, 0, 2, 0], [[0], [2], [1], [3], [4], [5]]),
}


@pytest.mark.parametrize("s", sorted(WORKED))
def test_worked_example(s: int) -> None:
    to_chain, slot = allocate(np.array([0, 2, 1, 0, 2, 0]), 3, s)
    assert to_chain.tolist() == WORKED[s][0]
    assert groups(to_chain, slot) == WORKED[s][1]


@pytest.mark.parametrize("seed", range(6))
def test_matches_greedy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(8, 60)), int(rng.integers(2, 8))
    labels = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    rng.shuffle(labels)
    for s in sorted({m, (m + n) // 2, n - 1, n, int(rng.integers(m, n + 1))}):
        to_chain, slot = allocate(labels, m, s)
        ref_tc, ref_groups = reference(labels.tolist(), m, s)
        assert to_chain.tolist() == ref_tc
        assert groups(to_chain, slot) == ref_groups


def test_teacher_width_and_bounds() -> None:
    labels = np.array([1, 0, 1, 1, 0])
    to_chain, slot = allocate(labels, 2, 5)
    assert sorted(slot.tolist()) == list(range(5))  # every teacher channel its own group
    with pytest.raises(SpecError, match="outside"):
        allocate(labels, 2, 6)
    with pytest.raises(SpecError, match="outside"):
        allocate(labels, 2, 1)


# A tie written out by hand. scikit-learn numbered the clusters {2, 4, 5, 7} as 0 and {0, 1, 3, 6} as 1; both have 4
# members, so for 3 student channels copies / size ties at 1/4 and the authors' rule gives the extra copy to the
# smallest cluster index, 0: student channels (0, 1, 2) take chain rows (0, 1, 0); cluster 0's members split into the
# contiguous chunks [2, 4] and [5, 7] over its slots 0 and 2, cluster 1's members stay whole in slot 1.
TIE_LABELS = [1, 1, 0, 1, 0, 0, 1, 0]
TIE_TO_CHAIN = [0, 1, 0]
TIE_GROUPS = [[2, 4], [0, 1, 3, 6], [5, 7]]
# Numbering the clusters by first member (the old ``_relabel``) swaps 0 and 1: the copy went to {0, 1, 3, 6}.
TIE_GROUPS_FIRST_MEMBER = [[0, 1], [2, 4, 5, 7], [3, 6]]


def test_tie_goes_to_the_smallest_scikit_learn_index() -> None:
    to_chain, slot = allocate(np.array(TIE_LABELS), 2, 3)
    assert to_chain.tolist() == TIE_TO_CHAIN
    assert groups(to_chain, slot) == TIE_GROUPS
    assert reference(TIE_LABELS, 2, 3) == (TIE_TO_CHAIN, TIE_GROUPS)  # the pseudo-code, literally
    relabelled = [1 - a for a in TIE_LABELS]  # the first-member numbering of the same clusters
    assert groups(*allocate(np.array(relabelled), 2, 3)) == TIE_GROUPS_FIRST_MEMBER != TIE_GROUPS


def test_tie_through_expand_gives_the_authors_student() -> None:
    """The same teacher and labels through ``expand``: the stem rows, BN means and the next layer's column sums
    follow the hand-written groups (stem width 3 from chain 2, teacher 8)."""
    torch.manual_seed(0)
    teacher_spec = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
    teacher = build_model(teacher_spec, 5)
    chain = build_chain(teacher, 2, init="random")
    labels = {p.name: chain.label(p.name).clone() for p in chain.plan.parts}
    labels["stem"] = torch.tensor(TIE_LABELS)
    chain.init_from_teacher(teacher, labels)
    student = expand(chain, parse_spec("r3-2-4-8", img_size=teacher_spec.img_size), 4, bn_stats="average")
    gene = chain.gene("conv1.weight")
    assert torch.equal(student.backbone.conv1.weight, gene[TIE_TO_CHAIN])  # row stacking
    gamma = teacher.backbone.bn1.weight.detach()
    want = torch.stack([gamma[g].mean() for g in TIE_GROUPS])
    torch.testing.assert_close(student.backbone.bn1.weight, want, rtol=0, atol=1e-7)  # averaging
    c = chain.gene("layer1.0.conv1.weight").detach().double()  # reads the stem: column summing
    sums = torch.stack([c[:, g].sum(1) for g in TIE_GROUPS], 1).float()
    # (student rows 0, 1 are chain rows 0, 1: the first copy of every cluster of that layer's own partition)
    torch.testing.assert_close(student.backbone.layer1[0].conv1.weight[:2], sums, rtol=0, atol=1e-7)
