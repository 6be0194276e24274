"""Parameter / MAC counting against the SPEC.md §6 tables, and the closed forms against the hook counts."""

from __future__ import annotations

import pytest
import torch

from oskt.errors import SpecError
from oskt.eval.complexity import count_complexity, count_macs, count_params, spec_macs, spec_params
from oskt.models import ModelSpec, build_model, parse_spec

# SPEC.md §6.1: backbone params (M, 3 decimals) and "my MACs" @256×128, last stride 2 / 1 (G)
RESNET_TABLE = {
    "S1": (0.374, 0.050, 0.072),
    "S2": (0.611, 0.133, 0.156),
    "S3": (1.481, 0.181, 0.268),
    "S4": (2.421, 0.493, 0.586),
    "S5": (5.893, 0.687, 1.033),
    "S6": (9.639, 1.896, 2.268),
    "T": (23.508, 2.669, 4.053),
}
# SPEC.md §6.2: (arch, name) -> (plain-stem params M, teacher-stem ("code's student") params M, plain linear GMACs)
VIT_TABLE = {
    ("vit_small", "S1"): (2.20, 2.49, 0.29),
    ("vit_small", "S2"): (4.24, 4.50, 0.55),
    ("vit_base", "S1"): (10.32, 10.98, 1.35),
    ("vit_base", "S2"): (16.61, 17.26, 2.18),
}
# the full-width teacher always has the (identity) dw projection: its count is the "code" column
VIT_TEACHER = {"vit_small": (21.79, 2.84), "vit_base": (86.34, 11.29)}


def _meta_model(spec: ModelSpec) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(spec, 10)


@pytest.mark.parametrize("name", list(RESNET_TABLE))
def test_resnet_counts_match_the_spec_table(name: str) -> None:
    params, macs2, macs1 = RESNET_TABLE[name]
    spec = parse_spec(name)
    assert round(count_params(_meta_model(spec)) / 1e6, 3) == params
    assert count_macs(spec, (256, 128), last_stride=2) / 1e9 == pytest.approx(macs2, rel=0.01)
    assert count_macs(spec, (256, 128), last_stride=1) / 1e9 == pytest.approx(macs1, rel=0.01)


@pytest.mark.parametrize("key", list(VIT_TABLE))
def test_vit_counts_match_the_spec_table(key: tuple[str, str]) -> None:
    plain, code, macs = VIT_TABLE[key]
    for stem, expected in (("plain", plain), ("teacher", code)):
        spec = parse_spec(key[1], key[0], vit_stem=stem)
        assert round(count_params(_meta_model(spec)) / 1e6, 2) == expected
    assert round(count_macs(parse_spec(key[1], key[0], vit_stem="plain"), None) / 1e9, 2) == macs  # listed precision


@pytest.mark.parametrize("arch", list(VIT_TEACHER))
def test_vit_teacher_counts(arch: str) -> None:
    params, macs = VIT_TEACHER[arch]
    spec = parse_spec("T", arch)
    assert round(count_params(_meta_model(spec)) / 1e6, 2) == params
    assert count_macs(spec, None) / 1e9 == pytest.approx(macs, rel=0.01)  # + the 384²/768² dw per token


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(in_planes=12, multipliers=(1, 3, 5), last_stride=2),
        ModelSpec(in_planes=8, multipliers=(3, 3, 9), img_size=(64, 32)),
        ModelSpec(in_planes=24, multipliers=(2, 2, 2), img_size=(97, 45)),
        ModelSpec(arch="vit_small", dim=54, img_size=(64, 32)),
        ModelSpec(arch="vit_small", dim=54, img_size=(64, 32), vit_stem="plain"),
        ModelSpec(arch="vit_base", dim=96, img_size=(48, 32)),
    ],
    ids=lambda s: f"{s.name}-{s.vit_stem}-{s.img_size[0]}x{s.img_size[1]}-ls{s.last_stride}",
)
def test_closed_forms_equal_the_hook_counts(spec: ModelSpec) -> None:
    assert spec_params(spec) == count_params(_meta_model(spec))
    for ls in (1, 2):
        assert spec_macs(spec, last_stride=ls) == count_macs(spec, None, last_stride=ls)
    assert spec_macs(spec, attention=True) == count_macs(spec, None, attention=True)


def test_count_on_a_live_model_and_options() -> None:
    spec = ModelSpec(in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
    model = build_model(spec, 7)
    model.train()
    assert count_macs(model, (64, 32)) == spec_macs(spec, (64, 32))
    both = {"params": spec_params(spec), "macs": spec_macs(spec, (32, 16), 2)}
    assert count_complexity(model, (32, 16), 2) == count_complexity(spec, (32, 16), 2) == both
    assert model.training  # the count leaves the mode alone
    head = sum(p.numel() for p in model.head.parameters())
    assert count_params(model, backbone_only=False) == count_params(model) + head
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 4, 5))
    assert count_macs(plain, (8, 4)) == 8 * 4 * 4 * 27 + 4 * 8 * 4 * 5
    with pytest.raises(SpecError, match="last_stride"):
        count_macs(plain, (8, 4), last_stride=2)
    with pytest.raises(SpecError, match="position embeddings"):
        count_macs(ModelSpec(arch="vit_small", dim=54, img_size=(64, 32)), (128, 64))
