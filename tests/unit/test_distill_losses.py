"""OFA-KD and RSD losses against hand-computed cases, the KD++ warm-up clipping, the stage hooks (docs/methods.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oskt.config import KDPPConfig, OFAConfig, RSDConfig
from oskt.errors import ConfigError, SpecError
from oskt.models import build_model, parse_spec
from oskt.train.distill import (
    RSD_REFERENCE_RATIO,
    OFALoss,
    RSDLoss,
    StageTap,
    ViTBranch,
    ofa_branches,
    ofa_loss,
    rsd_kappa,
    rsd_loss,
)
from oskt.train.kd import KDPPLoss, kd_loss, kd_warmup, resize_for, teacher_outputs


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202 - a generator fixture
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------- OFA loss


def test_ofa_loss_hand_computed() -> None:
    # p_s = (1/2, 1/2), p_t = (3/4, 1/4), target 0, eps 2:
    # weights ((3/4 + 1)^2 - 1, (1/4)^2) = (2.0625, 0.0625) -> loss = 2.125 * ln 2
    z_s = torch.zeros(1, 2)
    z_t = torch.tensor([[math.log(3.0), 0.0]])
    mask = torch.tensor([[1, 0]])
    got = ofa_loss(z_s, z_t, mask, eps=2.0)
    assert got.item() == pytest.approx(2.125 * math.log(2.0), rel=1e-6)
    # the batch mean: a second sample with target 1 gives weights ((3/4)^2, (1/4 + 1)^2 - 1) = (0.5625, 0.5625)
    two = ofa_loss(z_s.repeat(2, 1), z_t.repeat(2, 1), torch.tensor([[1, 0], [0, 1]]), eps=2.0)
    assert two.item() == pytest.approx((2.125 + 1.125) / 2 * math.log(2.0), rel=1e-6)


def test_ofa_loss_with_eps_one_is_plain_kd() -> None:
    z_s = torch.randn(6, 5, requires_grad=True)
    z_t = torch.randn(6, 5)
    mask = F.one_hot(torch.tensor([0, 1, 2, 3, 4, 0]), 5)
    for t in (1.0, 4.0):
        ofa = ofa_loss(z_s, z_t, mask, eps=1.0, temperature=t)
        p_t = F.softmax(z_t / t, dim=1)
        entropy = -(p_t * p_t.log()).sum(1).mean()
        # -sum p_t log p_s = KL(p_t || p_s) + H(p_t); kd_loss carries the T^2 factor
        torch.testing.assert_close(ofa, kd_loss(z_s, z_t, t) / t**2 + entropy)
        g_ofa = torch.autograd.grad(ofa, z_s)[0]
        g_kd = torch.autograd.grad(kd_loss(z_s, z_t, t) / t**2, z_s)[0]
        torch.testing.assert_close(g_ofa, g_kd)  # same gradient: the mask plays no part at eps = 1
    # eps > 1 moves weight to the target class: the loss is no longer the KD loss
    assert not torch.isclose(ofa_loss(z_s, z_t, mask, eps=1.5), ofa_loss(z_s, z_t, mask, eps=1.0))


# --------------------------------------------------------------------------------------------------- RSD loss


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_rsd_loss_is_zero_for_equal_decorrelated_features() -> None:
    # columns 1..4 of an 8x8 Hadamard matrix: zero mean, unit (biased) variance, mutually orthogonal -> C = I
    x = _hadamard(8)[:, 1:5]
    assert rsd_loss(x, x.clone(), kappa=0.01).item() == pytest.approx(0.0, abs=1e-8)
    # standardisation: any per-dimension scale and shift gives the same (zero) loss
    assert rsd_loss(3.0 * x + 2.0, x - 1.0, kappa=0.01).item() == pytest.approx(0.0, abs=1e-8)


def test_rsd_loss_hand_computed() -> None:
    # t = [[1, 1], [-1, -1]], s = [[1, -1], [-1, 1]] -> C = t^T s / 2 = [[1, -1], [1, -1]]
    # diagonal (1 - 1)^2 + (-1 - 1)^2 = 4, off-diagonal kappa * (1 + 1)
    t = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    s = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    for kappa in (0.0, 0.01, 0.5):
        assert rsd_loss(s, t, kappa).item() == pytest.approx(4.0 + 2.0 * kappa, rel=1e-4)
    with pytest.raises(SpecError, match="teacher's width"):
        rsd_loss(torch.randn(4, 3), torch.randn(4, 5), 0.01)


def test_rsd_kappa_scaling_keeps_the_authors_noise_floor() -> None:
    assert rsd_kappa(0.01, 128, 768) == pytest.approx(0.01)  # the authors' regime: unchanged
    assert rsd_kappa(0.01, 1024, 256) == pytest.approx(0.01)  # full rank: never raised
    k = rsd_kappa(0.01, 64, 2048)  # a P x K batch of 64 against a ResNet-50 teacher
    rho = 2047 / 63
    assert k == pytest.approx(0.01 * RSD_REFERENCE_RATIO / rho)
    assert k * rho == pytest.approx(0.01 * RSD_REFERENCE_RATIO)  # the per-row floor kappa * rho of the authors
    assert rsd_kappa(0.01, 1, 2048) == 0.01  # degenerate batch: as configured


def test_rsd_floor_is_what_the_scaling_assumes() -> None:
    # unrelated standardised dimensions over B samples: per row sum_{j != i} C_ij^2 ~ (D - 1) / (B - 1)
    b, d = 64, 512
    t = torch.randn(b, d)
    c = (t - t.mean(0)) / t.std(0, unbiased=False)
    corr = c.t() @ c / b
    off_per_row = (corr.pow(2).sum() - torch.diagonal(corr).pow(2).sum()) / d
    assert off_per_row.item() == pytest.approx((d - 1) / (b - 1), rel=0.1)


def test_rsd_module_weight_and_gradients() -> None:
    teacher = build_model(parse_spec("r4-2-2-2", img_size=(32, 16)), 3)
    rsd = RSDConfig(kappa_rank_scaling=False)
    aux = RSDLoss(teacher, rsd, student_feat_dim=8, teacher_feat_dim=teacher.spec.feat_dim)
    layers = [m for m in aux.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in layers] == [(8, 16, None), (16, 32, None)]
    assert {n.split(".")[0] for n, _ in aux.named_parameters()} == {"projector"}  # the teacher stays outside
    x = torch.randn(6, 3, 32, 16)
    feat = torch.randn(6, 8, requires_grad=True)
    part = aux(x, torch.zeros(6, dtype=torch.long), (torch.randn(6, 3), feat), 0)["rsd"]
    _, t_feat = teacher_outputs(teacher, x)
    torch.testing.assert_close(part, 0.1 * rsd_loss(aux.projector(feat), t_feat, 0.01))
    part.backward()
    assert feat.grad is not None and all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------------------------------- KD++ warm-up


@pytest.mark.parametrize("epochs", [1, 2, 4, 10, 100])
def test_kd_weight_reaches_kd_weight_inside_the_fine_tune(epochs: int) -> None:
    kdpp = KDPPConfig(kd_weight=1.5)
    teacher = build_model(parse_spec("r4-2-2-2", img_size=(32, 16)), 3)
    aux = KDPPLoss(teacher, kdpp, 8, teacher.spec.feat_dim, torch.zeros(3, teacher.spec.feat_dim), total_epochs=epochs)
    weights = [aux.kd_factor(e) for e in range(epochs)]
    assert weights[-1] == pytest.approx(1.5)  # full weight in the last epoch at the latest
    assert weights == sorted(weights) and all(0.0 <= w <= 1.5 for w in weights)
    if epochs == 4:  # the quick fine-tune: 0, 1, 1, 1 (unclipped it was 0, 0.2, 0.4, 0.6 of kd_weight)
        assert weights == pytest.approx([0.0, 1.5, 1.5, 1.5])
    if epochs == 100:  # the paper's fine-tune keeps the authors' 5-epoch ramp
        assert weights[:6] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2, 1.5])


def test_kd_warmup_rule() -> None:
    assert kd_warmup(5, 0.1, None) == 5.0  # unknown run length: as configured
    assert kd_warmup(5, 0.1, 4) == pytest.approx(0.4)
    assert kd_warmup(5, 1.0, 4) == 3.0  # clipped to E - 1
    assert kd_warmup(5, 0.1, 1) == 0.0  # one epoch: full weight from the start
    assert kd_warmup(20, 0.1, 240) == 20.0
    with pytest.raises(ConfigError, match="total_epochs"):
        kd_warmup(5, 0.1, 0)


def test_baselines_config_validation() -> None:
    for cls, key, value, match in [
        (KDPPConfig, "warmup_fraction", 1.5, "baselines.kdpp.warmup_fraction"),
        (KDPPConfig, "temperature", 0.0, "baselines.kdpp.temperature"),
        (OFAConfig, "eps", 0.5, "baselines.ofa.eps"),
        (OFAConfig, "stages", (0, 2), "baselines.ofa.stages"),
        (OFAConfig, "vit_blocks", (1, 3, 9), "baselines.ofa.vit_blocks"),
        (RSDConfig, "kappa", -1.0, "baselines.rsd.kappa"),
        (RSDConfig, "hidden_factor", 0, "baselines.rsd.hidden_factor"),
    ]:
        with pytest.raises(ConfigError, match=match):
            cls(**{key: value})


def test_baselines_sections_load_from_yaml_keys() -> None:
    from oskt.config import load_config

    cfg = load_config(profile="smoke", overrides=["baselines.ofa.eps=1.2", "baselines.rsd.kappa_rank_scaling=false"])
    assert cfg.baselines.ofa.eps == 1.2 and cfg.baselines.rsd.kappa_rank_scaling is False
    with pytest.raises(ConfigError, match="baselines.ofa.eps"):
        load_config(profile="smoke", overrides=["baselines.ofa.eps=0.9"])
    with pytest.raises(ConfigError, match="unknown key 'baselines.rsd.lambda'"):
        load_config(profile="smoke", overrides=["baselines.rsd.lambda=1"])


# --------------------------------------------------------------------------------------------------- stage hooks


def test_stage_tap_keeps_only_the_current_training_step() -> None:
    model = build_model(parse_spec("r4-2-2-2", img_size=(32, 16)), 3)
    aux = OFALoss(build_model(parse_spec("r4-2-2-2", img_size=(32, 16)), 3), OFAConfig(), model.spec, 3, 32)
    x, pids = torch.randn(4, 3, 32, 16), torch.tensor([0, 1, 2, 0])
    with pytest.raises(RuntimeError, match="attach"):
        aux(x, pids, model(x), 0)
    aux.attach(model)
    tap: StageTap = aux._tap
    model.eval()
    with torch.no_grad():
        model(x)
    assert not tap._store  # evaluation forwards keep nothing
    model.train()
    with torch.no_grad():
        model(x)
    assert not tap._store  # nor do no-grad training forwards (e.g. fixed-batch checks)
    out = model(x)
    assert len(tap._store) == 4 and all(t.requires_grad for t in tap._store.values())
    parts = aux(x, pids, out, 0)
    assert not tap._store  # the loss took them: no graph outlives the step
    sum(parts.values()).backward()
    assert all(p.grad is not None for p in aux.branches.parameters() if p.requires_grad)
    aux.attach(model)  # attaching again replaces the hooks, it does not add a second set
    assert sum(len(getattr(model.backbone, f"layer{s}")._forward_hooks) for s in range(1, 5)) == 4
    aux.detach()
    assert sum(len(getattr(model.backbone, f"layer{s}")._forward_hooks) for s in range(1, 5)) == 0


def test_ofa_attach_checks_the_student() -> None:
    spec = parse_spec("r4-2-2-2", img_size=(32, 16))
    aux = OFALoss(build_model(spec, 3), OFAConfig(), spec, 3, 32)
    with pytest.raises(SpecError, match="built for student"):
        aux.attach(build_model(parse_spec("r8-2-2-2", img_size=(32, 16)), 3))


def test_ofa_needs_the_teachers_identities() -> None:
    spec = parse_spec("r4-2-2-2", img_size=(32, 16))
    aux = OFALoss(build_model(spec, 3), OFAConfig(), spec, 3, 32)
    student = build_model(spec, 5)  # e.g. fine-tuned on another data set
    aux.attach(student)
    x = torch.randn(4, 3, 32, 16)
    with pytest.raises(ConfigError, match="same identities: the teacher has 3 classes, the student 5"):
        aux(x, torch.tensor([0, 1, 2, 3]), student(x), 0)


# --------------------------------------------------------------------------------------------------- branches


def test_vit_branch_merges_non_square_grids() -> None:
    # 224x224 (14x14 patches) merges once to 7x7 as the official code; 256x128 (16x8) keeps its 128 patches,
    # 384x192 (24x12) merges once to 12x6; the heights and widths are never assumed equal
    for grid, merged in [((14, 14), (7, 7)), ((16, 8), None), ((24, 12), (12, 6)), ((2, 1), None)]:
        branch = ViTBranch(48, 6, grid, 4, 2, 7)
        assert len(branch.merges) == (0 if merged is None else 1)
        x = torch.randn(2, 4 + grid[0] * grid[1], 48)
        assert branch(x).shape == (2, 7)


def test_cnn_branches_take_any_input_size() -> None:
    spec = parse_spec("r4-2-3-4", img_size=(64, 32))
    branches = ofa_branches(spec, OFAConfig(), 7, teacher_feat_dim=96)
    assert list(branches) == ["stage1", "stage2", "stage3", "stage4"]
    model = build_model(spec, 7).train()
    tap = StageTap()
    tap.attach([getattr(model.backbone, f"layer{s}") for s in range(1, 5)])
    for size in ((64, 32), (96, 32)):  # non-square, and not the spec's size
        model(torch.randn(2, 3, *size))
        for s, f in zip(range(1, 5), tap.pop(), strict=True):
            assert branches[f"stage{s}"](f).shape == (2, 7)
    # CNN branches end at max(d_s, d_t) channels (official): here the teacher's 96 > the student's 64
    assert branches["stage1"][-1].in_features == 96


def test_resize_for_teacher_input_size() -> None:
    vit = build_model(parse_spec("vit48", "vit_small", img_size=(32, 16), drop_path=0.0), 3)
    x = torch.randn(2, 3, 64, 32)
    assert resize_for(vit, x).shape == (2, 3, 32, 16)
    same = torch.randn(2, 3, 32, 16)
    assert resize_for(vit, same) is same
    assert resize_for(torch.nn.Identity(), x) is x  # a module without a spec is left alone


def test_losses_compute_in_float32_under_autocast() -> None:
    s, t = torch.randn(16, 64), torch.randn(16, 64)
    want = rsd_loss(s, t, 0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = rsd_loss(s.bfloat16(), t, 0.01)
        ofa = ofa_loss(torch.randn(4, 5).bfloat16(), torch.randn(4, 5), F.one_hot(torch.arange(4), 5), 1.5)
    assert got.dtype == torch.float32 and ofa.dtype == torch.float32
    torch.testing.assert_close(got, rsd_loss(s.bfloat16().float(), t, 0.01))  # bf16 inputs, fp32 arithmetic
    assert want.item() == pytest.approx(got.item(), rel=0.05)
