"""``expand_state_dict`` (the chain's ``_ExpandCache`` + a per-(chain, student) ``_StudentPlan``) equals the per-layer
reference implementation bitwise, keeps the state-dict order, and follows chain updates."""

from __future__ import annotations

import importlib

import pytest
import torch

from oskt.chain import build_chain, expand_state_dict
from oskt.chain.expand import _expand_state_dict_reference
from oskt.models import ModelSpec, build_model

EXPAND = importlib.import_module("oskt.chain.expand")  # the module (``oskt.chain.expand`` is also the function)

RES_T = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
VIT_T = ModelSpec(arch="vit_small", dim=96, img_size=(32, 16), drop_path=0.0)
RES_STUDENTS = [
    ModelSpec(in_planes=w, multipliers=m, img_size=RES_T.img_size)
    for w, m in [(2, (2, 4, 8)), (3, (2, 4, 6)), (4, (2, 4, 8)), (5, (2, 4, 5)), (7, (2, 4, 8)), (8, (2, 4, 8))]
]
VIT_STUDENTS = [
    ModelSpec(arch="vit_small", dim=d, img_size=VIT_T.img_size, vit_stem=s, drop_path=0.0)
    for d, s in [(48, "teacher"), (60, "teacher"), (72, "teacher"), (90, "plain"), (96, "teacher")]
]
OPTIONS = [{}, {"bn_stats": "average"}, {"proj_bias": "gene"}]


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)  # same keys, same order
    for k in a:
        x, y = a[k], b[k]
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if x.dtype.is_floating_point:
            x, y = x.contiguous().view(torch.int32), y.contiguous().view(torch.int32)
        assert torch.equal(x, y), k


@pytest.fixture(scope="module")
def resnet_chain():
    torch.manual_seed(0)
    return build_chain(build_model(RES_T, 5), 2)  # Ward clusters: uneven sizes, non-first groups


@pytest.fixture(scope="module")
def vit_chain():
    torch.manual_seed(0)
    return build_chain(build_model(VIT_T, 5), 48)


@pytest.fixture(params=[0, EXPAND._BATCH_NUMEL, 10**9], ids=["per-layer", "default", "all-batched"])
def batch_numel(request, monkeypatch):
    """Which row layers go through ``_Batch`` (the rest through the per-layer gathers)."""
    monkeypatch.setattr(EXPAND, "_BATCH_NUMEL", request.param)
    return request.param


def fresh_plans(chain):
    chain.__dict__.pop("_expand_plans", None)
    return chain


@pytest.mark.parametrize("options", OPTIONS)
def test_resnet_plan_matches_reference(resnet_chain, options, batch_numel) -> None:
    fresh_plans(resnet_chain)
    for spec in RES_STUDENTS:
        ref = _expand_state_dict_reference(resnet_chain, spec, **options)
        assert_bitwise(expand_state_dict(resnet_chain, spec, **options), ref)  # first call: builds the plan
        assert_bitwise(expand_state_dict(resnet_chain, spec, **options), ref)  # cached plan


@pytest.mark.parametrize("options", OPTIONS)
def test_vit_plan_matches_reference(vit_chain, options, batch_numel) -> None:
    fresh_plans(vit_chain)
    for spec in VIT_STUDENTS:
        ref = _expand_state_dict_reference(vit_chain, spec, **options)
        assert_bitwise(expand_state_dict(vit_chain, spec, **options), ref)
        assert_bitwise(expand_state_dict(vit_chain, spec, **options), ref)


def test_plan_follows_chain_updates_and_outputs_are_independent() -> None:
    torch.manual_seed(1)
    teacher = build_model(RES_T, 5)
    chain = build_chain(teacher, 2, init="random")
    specs = RES_STUDENTS[1], RES_STUDENTS[3]
    first = [expand_state_dict(chain, s) for s in specs]
    with torch.no_grad():  # in-place updates (optimizer steps, capture_teacher) bump the tensors' versions
        for g in chain.genes.values():
            g.mul_(1.5).add_(0.25)
        teacher.backbone.bn1.weight.mul_(2.0)
        chain.capture_teacher(teacher)
    for s, old in zip(specs, first, strict=True):
        new = expand_state_dict(chain, s)
        assert_bitwise(new, _expand_state_dict_reference(chain, s))
        assert not torch.equal(new["conv1.weight"], old["conv1.weight"])
        assert not torch.equal(new["bn1.weight"], old["bn1.weight"])
    a, b = expand_state_dict(chain, specs[0]), expand_state_dict(chain, specs[0])
    a["layer1.0.conv2.weight"].zero_()  # each call returns fresh storage
    assert b["layer1.0.conv2.weight"].abs().sum() > 0


def test_float64_chain_matches_reference() -> None:
    torch.manual_seed(2)
    chain = build_chain(build_model(RES_T, 5), 2, init="random").to(torch.float64)
    for spec in RES_STUDENTS[:3]:
        new = expand_state_dict(chain, spec)
        assert new["layer1.0.conv1.weight"].dtype == new["layer1.0.bn1.running_var"].dtype == torch.float64
        ref = _expand_state_dict_reference(chain, spec)
        assert list(new) == list(ref)
        assert all(torch.equal(new[k], ref[k]) for k in new)


def test_mixed_dtype_chain_falls_back_to_the_reference() -> None:
    torch.manual_seed(3)
    chain = build_chain(build_model(RES_T, 5), 2, init="random")
    chain.snapshot.put("bn1.weight", chain.snapshot.get("bn1.weight").double())
    spec = RES_STUDENTS[1]
    new, ref = expand_state_dict(chain, spec), _expand_state_dict_reference(chain, spec)
    assert chain.__dict__["_expand_cache"].mixed
    assert list(new) == list(ref) and all(torch.equal(new[k], ref[k]) for k in new)
