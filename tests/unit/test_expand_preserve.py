"""Expansion (SPEC.md §3.2): widths, errors, chain choice, and function preservation on cluster-constant teachers."""

from __future__ import annotations

import pytest
import torch

from oskt.chain import WeightChain, build_chain, expand, expand_from_chains
from oskt.chain.allocation import allocations
from oskt.errors import SpecError
from oskt.models import ModelSpec, build_model, count_params, parse_spec

RES_T = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
VIT_T = ModelSpec(arch="vit_small", dim=96, img_size=(32, 16), drop_path=0.0)


@torch.no_grad()
def make_cluster_constant(teacher, chain: WeightChain, zero_q: bool = False) -> None:
    """Make every teacher row equal its chain row and every norm / bias constant within clusters."""
    params = dict(teacher.backbone.named_parameters())
    for r in chain.plan.rows:
        params[r.param].copy_(chain.gene(r.param)[chain.row_labels(r.out, r.repeat)])
    for v in chain.plan.vectors:
        lab = chain.row_labels(v.part, v.repeat)
        p = params[v.param]
        p.uniform_(0.5, 1.5) if v.param.endswith("weight") else p.normal_(0, 0.1)
        means = torch.zeros(int(lab.max()) + 1).index_add_(0, lab, p) / torch.bincount(lab)
        p.copy_(means[lab])
        if v.gene:
            chain.gene(v.param).copy_(p)
    bufs = dict(teacher.backbone.named_buffers())
    for b in chain.plan.bn_buffers:
        lab = chain.label(b.part)
        vals = (
            torch.rand(int(lab.max()) + 1) + 0.5 if b.param.endswith("var") else torch.randn(int(lab.max()) + 1) * 0.1
        )
        bufs[b.param].copy_(vals[lab])
    if zero_q:  # uniform attention: scores do not depend on how many copies a q / k dim has
        for blk in teacher.backbone.blocks:
            n = blk.attn.qkv.in_features
            blk.attn.qkv.weight[:n] = 0
            blk.attn.qkv.bias[:n] = 0
    chain.init_from_teacher(teacher, {p.name: chain.label(p.name).clone() for p in chain.plan.parts})


def compare(teacher, chain: WeightChain, spec: ModelSpec, last_part: str, x: torch.Tensor) -> None:
    student = expand(chain, spec, 3, bn_stats="average").eval()
    teacher.eval()
    slot = allocations(chain, spec)[last_part].slot
    rep = torch.empty(int(slot.max()) + 1, dtype=torch.long).scatter_(0, slot, torch.arange(slot.numel()))
    with torch.no_grad():
        t, s = teacher.backbone(x), student.backbone(x)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, t[..., rep], rtol=1e-4, atol=1e-4 * float(t.abs().max()))


@pytest.fixture(scope="module")
def resnet_constant() -> tuple[torch.nn.Module, WeightChain]:
    torch.manual_seed(0)
    teacher = build_model(RES_T, 5)
    chain = build_chain(teacher, 4)
    make_cluster_constant(teacher, chain)
    return teacher, chain


@pytest.mark.parametrize("width_spec", ["r4-2-4-8", "r6-2-4-8", "r4-3-5-9", "r8-2-4-8"])
def test_resnet_function_preservation(resnet_constant, width_spec: str) -> None:
    teacher, chain = resnet_constant
    spec = parse_spec(width_spec, img_size=RES_T.img_size)
    compare(teacher, chain, spec, "layer4", torch.randn(2, 3, *RES_T.img_size))


def _vit_equal_clusters(teacher, width: int, zero_q: bool) -> WeightChain:
    """A chain with equal-size clusters (contiguous runs), so copies stay proportional at widths k·M."""
    chain = WeightChain(teacher.spec, width)
    labels = {}
    for p in chain.plan.parts:
        n, m = p.width(teacher.spec), p.width(chain.chain_spec)
        labels[p.name] = torch.arange(n) // (n // m)
    chain.init_from_teacher(teacher, labels)
    make_cluster_constant(teacher, chain, zero_q=zero_q)
    return chain


def test_vit_function_preservation() -> None:
    """Exact at every width when attention is uniform (q = 0): LN statistics and attention logits scale with the
    copy counts, so ViT function preservation needs proportional copies (equal clusters, widths k·M)."""
    teacher = build_model(VIT_T, 5)
    chain = _vit_equal_clusters(teacher, 24, zero_q=True)
    x = torch.randn(2, 3, *VIT_T.img_size)
    for dim, stem in ((24, "teacher"), (48, "plain"), (48, "teacher"), (96, "plain")):
        spec = ModelSpec(arch="vit_small", dim=dim, img_size=VIT_T.img_size, vit_stem=stem, drop_path=0.0)
        compare(teacher, chain, spec, "stream", x)


def test_vit_teacher_width_preserves_full_attention() -> None:
    teacher = build_model(VIT_T, 5)
    chain = build_chain(teacher, 48)
    make_cluster_constant(teacher, chain, zero_q=False)
    compare(teacher, chain, VIT_T, "stream", torch.randn(2, 3, *VIT_T.img_size))


def test_expand_widths_params_and_errors(resnet_constant) -> None:
    _, chain = resnet_constant
    for name in ("r4-2-4-8", "r5-2-4-7", "r8-2-4-8"):
        spec = parse_spec(name, img_size=RES_T.img_size)
        model = expand(chain, spec, 11)
        assert count_params(model.backbone) == count_params(build_model(spec, 11).backbone)
        assert model.num_classes == 11 and torch.all(model.head.bnneck[0].weight == 1)
        assert torch.all(model.backbone.layer1[0].bn1.running_var == 1)  # fresh statistics (SPEC.md §3.2)
        model.train()
        out = model(torch.randn(2, 3, *RES_T.img_size))
        out.logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(SpecError, match="narrower than chain"):
        expand(chain, ModelSpec(in_planes=4, multipliers=(2, 3, 4), img_size=RES_T.img_size), 3)
    with pytest.raises(SpecError, match="wider than the teacher"):
        expand(chain, ModelSpec(in_planes=16, img_size=RES_T.img_size), 3)
    with pytest.raises(SpecError, match="arch"):
        expand(chain, ModelSpec(arch="vit_small", dim=48), 3)
    with pytest.raises(SpecError, match="divisible"):
        ModelSpec(arch="vit_small", dim=50)


def test_expand_from_several_chains_picks_widest_fitting() -> None:
    teacher = build_model(RES_T, 5)
    chains = [build_chain(teacher, 2, init="random"), build_chain(teacher, 4, init="random")]
    spec = ModelSpec(in_planes=4, multipliers=(2, 3, 4), img_size=RES_T.img_size)  # stage 4 = 16 < chain-4's 32
    model = expand_from_chains(chains, spec, 3)
    assert model.spec == spec
    assert expand_from_chains(chains, ModelSpec(in_planes=6, img_size=RES_T.img_size), 3).spec.in_planes == 6
    with pytest.raises(SpecError, match="narrower than every chain"):
        expand_from_chains(chains, ModelSpec(in_planes=1, multipliers=(1, 1, 1), img_size=RES_T.img_size), 3)
