"""``Expander`` (the chain cache + a plan per student) equals the per-layer reference implementation bitwise, keeps
the state-dict order, follows chain updates, and stores nothing on the chain (issue #16)."""

from __future__ import annotations

import threading

import pytest
import torch

from oskt.chain import Expander, build_chain, expand_state_dict
from oskt.chain import student_plan as student_plan_module
from oskt.chain.reference import expand_state_dict_reference
from oskt.errors import SpecError
from oskt.models import ModelSpec, build_model

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
            bits = {4: torch.int32, 8: torch.int64}[x.element_size()]
            x, y = x.contiguous().view(bits), y.contiguous().view(bits)
        assert torch.equal(x, y), k


@pytest.fixture(scope="module")
def resnet_chain():
    torch.manual_seed(0)
    return build_chain(build_model(RES_T, 5), 2)  # Ward clusters: uneven sizes, non-first groups


@pytest.fixture(scope="module")
def vit_chain():
    torch.manual_seed(0)
    return build_chain(build_model(VIT_T, 5), 48)


@pytest.fixture(params=[0, student_plan_module.BATCH_NUMEL, 10**9], ids=["per-layer", "default", "all-batched"])
def batch_numel(request, monkeypatch):
    """Which row layers go through the batched path (the rest through the per-layer gathers)."""
    monkeypatch.setattr(student_plan_module, "BATCH_NUMEL", request.param)
    return request.param


@pytest.fixture(scope="module")
def references(resnet_chain, vit_chain) -> dict[tuple[str, str, int], dict[str, torch.Tensor]]:
    """The reference's state dicts, once per (family, student, option): they do not depend on the batching."""
    out = {}
    for fam, chain, specs in (("resnet", resnet_chain, RES_STUDENTS), ("vit", vit_chain, VIT_STUDENTS)):
        for spec in specs:
            for i, options in enumerate(OPTIONS):
                out[fam, spec.name, i] = expand_state_dict_reference(chain, spec, **options)
    return out


@pytest.mark.parametrize("option", range(len(OPTIONS)))
def test_resnet_plan_matches_reference(resnet_chain, references, option, batch_numel) -> None:
    expander = Expander(resnet_chain)
    for spec in RES_STUDENTS:
        ref = references["resnet", spec.name, option]
        assert_bitwise(expander.state_dict(spec, **OPTIONS[option]), ref)  # first call: builds the plan
        assert_bitwise(expander.state_dict(spec, **OPTIONS[option]), ref)  # kept plan


@pytest.mark.parametrize("option", range(len(OPTIONS)))
def test_vit_plan_matches_reference(vit_chain, references, option, batch_numel) -> None:
    expander = Expander(vit_chain)
    for spec in VIT_STUDENTS:
        ref = references["vit", spec.name, option]
        assert_bitwise(expander.state_dict(spec, **OPTIONS[option]), ref)
        assert_bitwise(expander.state_dict(spec, **OPTIONS[option]), ref)


def test_the_function_is_a_short_lived_expander(resnet_chain, vit_chain, references) -> None:
    for fam, chain, spec in (("resnet", resnet_chain, RES_STUDENTS[3]), ("vit", vit_chain, VIT_STUDENTS[1])):
        assert_bitwise(expand_state_dict(chain, spec), references[fam, spec.name, 0])


def test_nothing_is_stored_on_the_chain(resnet_chain) -> None:
    before = dict(vars(resnet_chain))
    expander = Expander(resnet_chain)
    for spec in RES_STUDENTS[:3]:
        expander.state_dict(spec)
        expand_state_dict(resnet_chain, spec)
    assert vars(resnet_chain).keys() == before.keys()
    assert all(vars(resnet_chain)[k] is v for k, v in before.items())
    held = expander.held_bytes()
    assert held["chain_cache"] > 0 and held["student_plans"] > 0
    assert expander.held_bytes(RES_STUDENTS[0])["student_plans"] < held["student_plans"]
    expander.clear(plans_only=True)
    assert expander.held_bytes() == {"chain_cache": held["chain_cache"], "student_plans": 0}
    expander.clear()
    assert expander.held_bytes() == {"chain_cache": 0, "student_plans": 0}
    assert expander.chain is resnet_chain


def test_plans_are_bounded_and_rebuilt_equal(resnet_chain) -> None:
    expander = Expander(resnet_chain, max_plans=2)
    first = expander.state_dict(RES_STUDENTS[1])
    for spec in RES_STUDENTS[2:5]:
        expander.state_dict(spec)
    assert expander.held_bytes(RES_STUDENTS[1])["student_plans"] == 0  # dropped (the oldest)
    assert_bitwise(expander.state_dict(RES_STUDENTS[1]), first)
    with pytest.raises(SpecError, match="max_plans"):
        Expander(resnet_chain, max_plans=0)


def test_plan_follows_chain_updates_and_outputs_are_independent() -> None:
    torch.manual_seed(1)
    teacher = build_model(RES_T, 5)
    chain = build_chain(teacher, 2, init="random")
    expander = Expander(chain)
    specs = RES_STUDENTS[1], RES_STUDENTS[3]
    first = [expander.state_dict(s) for s in specs]
    with torch.no_grad():  # in-place updates (optimizer steps, capture_teacher) bump the tensors' versions
        for g in chain.genes.values():
            g.mul_(1.5).add_(0.25)
        teacher.backbone.bn1.weight.mul_(2.0)
        chain.capture_teacher(teacher)
    for s, old in zip(specs, first, strict=True):
        new = expander.state_dict(s)
        assert_bitwise(new, expand_state_dict_reference(chain, s))
        assert not torch.equal(new["conv1.weight"], old["conv1.weight"])
        assert not torch.equal(new["bn1.weight"], old["bn1.weight"])
    a, b = expander.state_dict(specs[0]), expander.state_dict(specs[0])
    a["layer1.0.conv2.weight"].zero_()  # each call returns fresh storage
    assert b["layer1.0.conv2.weight"].abs().sum() > 0


def test_threads_share_one_expander(resnet_chain) -> None:
    expander = Expander(resnet_chain)
    refs = {s.name: expand_state_dict_reference(resnet_chain, s) for s in RES_STUDENTS[1:4]}
    results: list[tuple[str, dict]] = []
    errors: list[BaseException] = []

    def work(spec: ModelSpec) -> None:
        try:
            for _ in range(3):
                results.append((spec.name, expander.state_dict(spec)))
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in RES_STUDENTS[1:4] for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 18
    for name, state in results:
        assert_bitwise(state, refs[name])


def test_float64_chain_matches_reference() -> None:
    torch.manual_seed(2)
    chain = build_chain(build_model(RES_T, 5), 2, init="random").to(torch.float64)
    expander = Expander(chain)
    for spec in RES_STUDENTS[:3]:
        new = expander.state_dict(spec)
        assert new["layer1.0.conv1.weight"].dtype == new["layer1.0.bn1.running_var"].dtype == torch.float64
        assert_bitwise(new, expand_state_dict_reference(chain, spec))


def test_mixed_dtype_chain_falls_back_to_the_reference() -> None:
    torch.manual_seed(3)
    chain = build_chain(build_model(RES_T, 5), 2, init="random")
    chain.snapshot.put("bn1.weight", chain.snapshot.get("bn1.weight").double())
    spec = RES_STUDENTS[1]
    expander = Expander(chain)
    new, ref = expander.state_dict(spec), expand_state_dict_reference(chain, spec)
    assert new["bn1.weight"].dtype == torch.float64
    assert list(new) == list(ref) and all(torch.equal(new[k], ref[k]) for k in new)
    assert expander.held_bytes() == {"chain_cache": 0, "student_plans": 0}  # nothing built for the fast path


def test_corrupt_labels_give_one_clear_error() -> None:
    torch.manual_seed(4)
    chain = build_chain(build_model(RES_T, 5), 2, init="random")
    chain.label("stem").fill_(0)  # cluster 1 of the stem is empty
    with pytest.raises(SpecError, match="labels of stem: every one of the 2 clusters must be non-empty"):
        Expander(chain).state_dict(RES_STUDENTS[1])
    chain.label("stem")[0] = 5
    with pytest.raises(SpecError, match=r"labels of stem: values outside \[0, 2\)"):
        expand_state_dict_reference(chain, RES_STUDENTS[1])
