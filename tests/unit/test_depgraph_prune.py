"""DepGraph (torch-pruning) to exact student widths; the pruned weights load into build_model(spec)."""

from __future__ import annotations

import pytest
import torch

from oskt.baselines.depgraph import prune_to_spec
from oskt.errors import SpecError
from oskt.models import ModelSpec, build_model, count_params, parse_spec

pytest.importorskip("torch_pruning")

RES_T = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
VIT_T = ModelSpec(arch="vit_small", dim=48, img_size=(32, 16), drop_path=0.0)


@pytest.mark.parametrize("name", ["r4-2-4-8", "r6-2-3-4"])
def test_resnet_prunes_to_exact_widths(name: str) -> None:
    teacher = build_model(RES_T, 5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    spec = parse_spec(name, img_size=RES_T.img_size)
    student = prune_to_spec(teacher, spec)
    assert student.spec == spec and student.num_classes == 5
    ref = build_model(spec, 5)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert count_params(student.backbone) == count_params(ref.backbone)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # teacher untouched
    student.train()
    out = student(torch.randn(2, 3, *RES_T.img_size))
    assert torch.isfinite(out.logits).all() and out.feat.shape == (2, spec.feat_dim)


@pytest.mark.parametrize(("dim", "stem"), [(24, "teacher"), (36, "plain")])
def test_vit_prunes_to_exact_widths(dim: int, stem: str) -> None:
    teacher = build_model(VIT_T, 5)
    spec = ModelSpec(arch="vit_small", dim=dim, img_size=VIT_T.img_size, vit_stem=stem, drop_path=0.0)
    student = prune_to_spec(teacher, spec)
    ref = build_model(spec, 5)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert student.backbone.blocks[0].attn.qkv.weight.shape == (3 * dim, dim)
    assert torch.isfinite(student.eval()(torch.randn(2, 3, *VIT_T.img_size))).all()


def test_errors_before_any_work() -> None:
    teacher = build_model(RES_T, 5)
    with pytest.raises(SpecError, match="no wider"):
        prune_to_spec(teacher, ModelSpec(in_planes=16, img_size=RES_T.img_size))
    with pytest.raises(SpecError, match="no wider"):
        prune_to_spec(teacher, ModelSpec(arch="vit_small", dim=48))
