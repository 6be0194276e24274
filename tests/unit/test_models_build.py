"""Models: parameter counts (SPEC.md §6), forward contract, gradients, checkpoints, pretrained loading."""

from __future__ import annotations

import pytest
import torch

from oskt.checkpoint import save_checkpoint
from oskt.errors import CheckpointError, SpecError
from oskt.models import (
    MODELS,
    ModelSpec,
    ReIDOutput,
    build_model,
    count_params,
    load_model,
    load_pretrained,
    parse_spec,
    save_model,
)

# SPEC.md §6.1: backbone parameters (excl. BNNeck / classifier), exact
RESNET_COUNTS = {"S1": 374152, "S2": 611088, "S3": 1480976, "S4": 2421280, "S5": 5892640, "S6": 9638976, "T": 23508032}
# SPEC.md §6.2 in millions: (teacher stem = the authors' code, plain stem = the README table)
VIT_COUNTS = {
    ("vit_small", "S1"): (2.49, 2.20),
    ("vit_small", "S2"): (4.50, 4.24),
    ("vit_small", "T"): (21.79, 21.79),
    ("vit_base", "S1"): (10.98, 10.32),
    ("vit_base", "S2"): (17.26, 16.61),
    ("vit_base", "T"): (86.34, 86.34),
}

SMALL = {
    "resnet": ModelSpec(arch="resnet50", in_planes=4, multipliers=(2, 3, 4), img_size=(64, 32)),
    "vit": ModelSpec(arch="vit_small", dim=48, img_size=(32, 16), drop_path=0.1),
}


@pytest.mark.parametrize("name", list(RESNET_COUNTS))
def test_resnet_backbone_params_equal_spec(name: str) -> None:
    model = build_model(parse_spec(name), 751)
    assert count_params(model.backbone) == RESNET_COUNTS[name]
    assert model.spec.feat_dim == model.backbone.out_dim


@pytest.mark.parametrize("key", list(VIT_COUNTS))
def test_vit_backbone_params_equal_spec(key: tuple[str, str]) -> None:
    arch, name = key
    for stem, expected in zip(("teacher", "plain"), VIT_COUNTS[key], strict=True):
        spec = parse_spec(name, arch, vit_stem=stem)
        with torch.device("meta"):
            model = build_model(spec, 751)
        assert round(count_params(model.backbone) / 1e6, 2) == expected


@pytest.mark.parametrize("family", MODELS.names())
def test_forward_contract_and_gradients(family: str) -> None:
    spec = SMALL[family]
    model = build_model(spec, 7)
    x = torch.randn(4, 3, *spec.img_size)
    out = model(x)
    assert isinstance(out, ReIDOutput)
    assert out.logits.shape == (4, 7) and out.feat.shape == (4, spec.feat_dim)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.feat).all()
    (out.logits.sum() + out.feat.pow(2).sum()).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    model.eval()
    feat = model(x)
    assert feat.shape == (4, spec.feat_dim)
    assert model.neck_feat == ("after" if family == "resnet" else "before")


def test_reset_classifier_is_fresh() -> None:
    model = build_model(SMALL["resnet"], 5)
    with torch.no_grad():
        model.head.bnneck[0].weight.fill_(3.0)
    model.reset_classifier(9)
    assert model.num_classes == 9 and model.head.classifier.bias is None
    assert torch.all(model.head.bnneck[0].weight == 1) and torch.all(model.head.bnneck[0].bias == 0)
    assert not model.head.bnneck[0].bias.requires_grad
    assert model.head.classifier.weight.std() < 0.01


@pytest.mark.parametrize("family", MODELS.names())
def test_checkpoint_round_trip(tmp_path, family: str) -> None:
    model = build_model(SMALL[family], 6).eval()
    path = save_model(str(tmp_path / "m.pt"), model, "student", config={"a": 1})
    loaded, ckpt = load_model(path, kind="student")
    assert loaded.spec == model.spec and ckpt["config"] == {"a": 1}
    x = torch.randn(2, 3, *model.spec.img_size)
    assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(CheckpointError, match="holds a 'student'"):
        load_model(path, kind="teacher")


def test_load_rejects_foreign_files(tmp_path) -> None:
    p = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="plain state dict of 1 key .*expected an oskt checkpoint"):
        load_model(str(p))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError):
        load_model(str(tmp_path / "junk.pt"))
    save_checkpoint(str(tmp_path / "c.pt"), kind="chain", state_dict={}, spec={"arch": "resnet50"})
    with pytest.raises(CheckpointError, match="classifier"):
        load_model(str(tmp_path / "c.pt"))


def test_bad_specs_raise() -> None:
    with pytest.raises(SpecError, match="divisible"):
        ModelSpec(arch="vit_small", dim=100)
    with pytest.raises(SpecError):
        build_model(SMALL["resnet"], 0)


def test_load_pretrained_torchvision_resnet(tmp_path) -> None:
    torchvision = pytest.importorskip("torchvision")
    sd = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(sd, tmp_path / "r50.pth")
    model = build_model(parse_spec("T", img_size=(64, 32)), 3)
    missing = load_pretrained(model, str(tmp_path / "r50.pth"))
    assert missing == []
    assert torch.equal(model.backbone.layer3[2].conv2.weight, sd["layer3.2.conv2.weight"])
    assert torch.equal(model.backbone.layer1[0].downsample[1].running_var, sd["layer1.0.downsample.1.running_var"])
    small = build_model(SMALL["resnet"], 3)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained(small, str(tmp_path / "r50.pth"))


def test_load_pretrained_timm_vit(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=10
    )
    torch.save({"model": vit.state_dict()}, tmp_path / "vit.pth")
    model = build_model(ModelSpec(arch="vit_small", img_size=(32, 16)), 3)
    missing = load_pretrained(model, str(tmp_path / "vit.pth"))
    assert missing == ["dw.weight"]
    bb = model.backbone
    assert torch.equal(bb.blocks[5].attn.qkv.weight, vit.blocks[5].attn.qkv.weight)
    assert bb.pos_embed.shape == (1, 2, 384) and torch.equal(bb.cls_token, vit.cls_token)
    assert torch.equal(bb.dw.weight, torch.eye(384))
    # timm ViT with our attention gives the same block output
    x = torch.randn(2, 10, 384)
    assert torch.allclose(bb.blocks[0](x), vit.blocks[0](x), atol=1e-5)
