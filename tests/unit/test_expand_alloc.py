"""Expansion index allocation (SPEC.md §3.1): the worked example and the greedy reference on random labels."""

from __future__ import annotations

import numpy as np
import pytest

from oskt.chain.expand import allocate, groups
from oskt.errors import SpecError


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
