"""Exact column sums (issue #19): a single-column group reproduces the chain entry bitwise, a whole-cluster group
equals the S-Student bitwise, any other run is its float64 sum rounded once — checked from first principles (the
groups of ``allocate``), not against the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oskt.chain import Expander, RefineModel, WeightChain, build_chain
from oskt.chain.allocation import allocate, allocations, groups
from oskt.models import ModelSpec, build_model, parse_spec

RES_T = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
VIT_T = ModelSpec(arch="vit_small", dim=48, img_size=(32, 16), drop_path=0.0)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def s_student(teacher, chain: WeightChain) -> dict[str, torch.Tensor]:
    """The S-Student's backbone parameters, as refinement computes them."""
    with torch.no_grad():
        params = RefineModel(teacher, chain, 3).student_params()
    return {k.removeprefix("backbone."): v for k, v in params.items()}


def check_columns(chain: WeightChain, spec: ModelSpec, state: dict, s_params: dict) -> dict[str, int]:
    """Every column-summed entry of ``state`` by the rule; returns how many columns of each kind were checked."""
    allocs = allocations(chain, spec)
    seen = {"whole": 0, "single": 0, "run": 0}
    for r in chain.plan.rows:
        if r.inp is None:
            continue
        lab = chain.label(r.inp).numpy()
        to_chain, slot = allocs[r.inp].to_chain.numpy(), allocs[r.inp].slot.numpy()
        copies = np.bincount(to_chain, minlength=chain.num_clusters(r.inp))
        tc = allocs[r.out].rep(r.repeat, chain.num_clusters(r.out))[0]  # the student rows' chain rows
        gene, whole = chain.gene(r.param).detach()[tc], s_params[r.param][tc]
        got = state[r.param]
        for k, g in enumerate(groups(to_chain, slot)):
            c = int(lab[g[0]])
            if copies[c] == 1:
                want, kind = whole[:, c], "whole"
            elif len(g) == 1:
                want, kind = gene[:, g[0]], "single"
            else:
                want, kind = gene[:, g].double().sum(1).float(), "run"
            assert torch.equal(bits(got[:, k]), bits(want)), (r.param, k, kind)
            seen[kind] += 1
    return seen


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.nn.Module, WeightChain]:
    torch.manual_seed(0)
    teacher = build_model(RES_T, 5)
    return teacher, build_chain(teacher, 2)


def test_resnet_columns_follow_the_rule(resnet) -> None:
    teacher, chain = resnet
    expander, s_params = Expander(chain), s_student(teacher, chain)
    seen = {"whole": 0, "single": 0, "run": 0}
    for name in ("r3-2-4-6", "r5-2-4-5", "r6-2-4-8", "r8-2-4-8"):
        spec = parse_spec(name, img_size=RES_T.img_size)
        for kind, n in check_columns(chain, spec, expander.state_dict(spec), s_params).items():
            seen[kind] += n
    assert all(seen.values()), seen  # every kind of group occurred


def test_vit_columns_follow_the_rule() -> None:
    torch.manual_seed(1)
    teacher = build_model(VIT_T, 5)
    chain = build_chain(teacher, 24)
    spec = ModelSpec(arch="vit_small", dim=36, img_size=VIT_T.img_size, drop_path=0.0)
    seen = check_columns(chain, spec, Expander(chain).state_dict(spec), s_student(teacher, chain))
    assert all(seen.values())


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_expansion_at_chain_width_is_the_s_student_bitwise(family: str) -> None:
    torch.manual_seed(2)
    teacher = build_model(RES_T if family == "resnet" else VIT_T, 5)
    chain = build_chain(teacher, 2 if family == "resnet" else 24)
    state = Expander(chain).state_dict(chain.chain_spec)
    for k, v in s_student(teacher, chain).items():
        assert torch.equal(bits(state[k]), bits(v)), k


def test_single_columns_are_exact_where_float64_prefix_sums_round() -> None:
    """Entries 1e-3 and 1e-30 next to 1e3 in a cluster, and -0.0: the float32 difference of prefix sums (the old
    rule) is off by 2 % on 1e-3 and returns 0 for 1e-30; float64 prefix sums round on 1e-30 too (the plan writes the
    entry back); -0.0 survives. Student at teacher width: every group is a single column (or a whole cluster)."""
    torch.manual_seed(3)
    teacher = build_model(RES_T, 5)
    chain = WeightChain(teacher.spec, 2)
    labels = {p.name: torch.arange(p.width(RES_T)) % chain.num_clusters(p.name) for p in chain.plan.parts}
    chain.init_from_teacher(teacher, labels)
    gene = chain.gene("layer1.0.conv1.weight")  # [2, 8, 1, 1]: reads the stem, clusters {0, 2, 4, 6}, {1, 3, 5, 7}
    with torch.no_grad():
        gene[:, [0, 2, 4, 6], 0, 0] = torch.tensor([[1e3, 1e-3, 1e-30, -0.0], [-0.0, 1e3, -1e3, 1e-30]])
    prefix = gene.detach().double()[:, [0, 2, 4, 6], 0, 0].cumsum(1)
    old = prefix.float()[:, 1:] - prefix.float()[:, :-1]  # the previous rule's single columns 2, 4, 6
    assert not torch.equal(bits(old), bits(gene.detach()[:, [2, 4, 6], 0, 0]))
    state = Expander(chain).state_dict(RES_T)
    got = state["layer1.0.conv1.weight"]
    to_chain = allocate(chain.label("layer1.0.conv1").numpy(), 2, 8)[0]
    slot = allocate(chain.label("stem").numpy(), 2, 8)[1]  # student column of every teacher channel
    assert torch.equal(bits(got[:, slot]), bits(gene.detach()[to_chain]))  # every column: the chain entry, bitwise
    check_columns(chain, RES_T, state, s_student(teacher, chain))
