"""WTSel element selection (BASELINES.md §1.2): the official uniform rule and the q/k/v-aware variant."""

from __future__ import annotations

import pytest
import torch

from oskt.baselines.wtsel import fold_dw, select_indices, select_qkv, select_state, select_tensor
from oskt.errors import SpecError


def test_divisible_widths_use_a_stride() -> None:
    assert select_indices(384, 192).tolist() == list(range(0, 384, 2))
    assert select_indices(64, 8).tolist() == list(range(0, 64, 8))
    assert select_indices(7, 7).tolist() == list(range(7))


def test_non_divisible_widths_use_rounded_linspace_to_t_minus_1() -> None:
    # the post-fix rule (upstream commit 8bbb7a0): round(linspace(0, T-1, S)); first and last rows always kept
    idx = select_indices(256, 48)
    assert idx[:8].tolist() == [0, 5, 11, 16, 22, 27, 33, 38]
    assert idx[-1].item() == 255 and idx.unique().numel() == 48
    assert select_indices(384, 120)[:6].tolist() == [0, 3, 6, 10, 13, 16]


def test_student_wider_than_teacher_is_an_error() -> None:
    with pytest.raises(SpecError, match="cannot select"):
        select_indices(8, 16)
    with pytest.raises(SpecError, match="rank"):
        select_tensor(torch.zeros(4, 4), (2,))


def test_every_dimension_is_selected() -> None:
    w = torch.arange(8 * 6 * 3 * 3, dtype=torch.float32).reshape(8, 6, 3, 3)
    torch.testing.assert_close(select_tensor(w, (4, 3, 3, 3)), w[::2, ::2])
    torch.testing.assert_close(select_tensor(w, (8, 6, 3, 3)), w)


def _fused_rows(t: int) -> torch.Tensor:
    """A fused qkv weight [3T, 2] whose rows carry (part, row-within-part)."""
    part = torch.arange(3).repeat_interleave(t)
    return torch.stack([part, torch.arange(t).repeat(3)], dim=1).float()


def test_official_rule_misaligns_q_and_k_for_384_to_120() -> None:
    # Official WTSel treats the 3T = 1152 rows as one dimension: 1152 -> 360 is not an integer ratio, so the rows are
    # round(linspace(0, 1151, 360)) (step 3.206). Student row i of q is teacher q row round(3.206 i): 0, 3, 6, 10, ...;
    # student row i of k is row round(3.206 (120 + i)) - 384: 1, 4, 7, 10, ... and v starts 1, 5, 8, 11 — each part
    # reads different teacher dimensions (the misalignment of BASELINES.md §0.5 / §1.2).
    w = _fused_rows(384)
    s = select_tensor(w, (360, 2))
    q, k, v = s[:120], s[120:240], s[240:]
    assert (q[:, 0] == 0).all() and (k[:, 0] == 1).all() and (v[:, 0] == 2).all()  # the parts stay in their thirds
    assert q[:4, 1].tolist() == [0, 3, 6, 10]
    assert k[:4, 1].tolist() == [1, 4, 7, 10]
    assert v[:4, 1].tolist() == [1, 5, 8, 11]
    assert not torch.equal(q[:, 1], k[:, 1])
    assert not torch.equal(q[:, 1], select_indices(384, 120).float())  # nor the residual stream's selection


def test_qkv_aware_rule_aligns_q_k_v_with_the_residual_stream() -> None:
    w = _fused_rows(384)
    s = select_qkv(w, (360, 2))
    rows = select_indices(384, 120).float()
    for i in range(3):
        part = s[120 * i : 120 * (i + 1)]
        assert (part[:, 0] == i).all()
        torch.testing.assert_close(part[:, 1], rows)


def test_both_rules_agree_when_s_divides_t() -> None:
    w = _fused_rows(384)
    torch.testing.assert_close(select_tensor(w, (576, 2)), select_qkv(w, (576, 2)))


def test_select_state_skips_the_classifier_and_keeps_the_bnneck() -> None:
    teacher = {
        "backbone.conv.weight": torch.randn(8, 3),
        "backbone.bn.num_batches_tracked": torch.tensor(7),
        "backbone.blocks.0.attn.qkv.weight": _fused_rows(6),
        "head.bnneck.0.running_mean": torch.arange(8.0),
        "head.classifier.weight": torch.randn(5, 8),
    }
    shapes = {
        "backbone.conv.weight": (4, 3),
        "backbone.bn.num_batches_tracked": (),
        "backbone.blocks.0.attn.qkv.weight": (9, 2),
        "head.bnneck.0.running_mean": (4,),
        "head.classifier.weight": (3, 4),
    }
    out = select_state(teacher, shapes, qkv_aware=True)
    assert "head.classifier.weight" not in out
    assert out["head.bnneck.0.running_mean"].tolist() == [0, 2, 4, 6]
    assert out["backbone.bn.num_batches_tracked"].item() == 7
    assert out["backbone.blocks.0.attn.qkv.weight"][:, 1].tolist() == [0, 2, 4] * 3
    with pytest.raises(SpecError, match="no teacher counterpart"):
        select_state(teacher, {"backbone.other.weight": (1,)})


def test_fold_dw_is_exact_for_the_stem() -> None:
    torch.manual_seed(0)
    e = 6
    state = {
        "backbone.patch_embed.proj.weight": torch.randn(e, 3, 2, 2),
        "backbone.patch_embed.proj.bias": torch.randn(e),
        "backbone.cls_token": torch.randn(1, 1, e),
        "backbone.part_tokens": torch.randn(1, 3, e),
        "backbone.token_pos": torch.randn(1, 4, e),
        "backbone.pos_embed": torch.randn(1, 2, e),
        "backbone.dw.weight": torch.randn(e, e),
    }
    out = fold_dw(state)
    assert "backbone.dw.weight" not in out
    x = torch.randn(3 * 2 * 2)
    dw = state["backbone.dw.weight"]
    want = dw @ (state["backbone.patch_embed.proj.weight"].reshape(e, -1) @ x + state["backbone.patch_embed.proj.bias"])
    got = out["backbone.patch_embed.proj.weight"].reshape(e, -1) @ x + out["backbone.patch_embed.proj.bias"]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(out["backbone.pos_embed"][0, 1], dw @ state["backbone.pos_embed"][0, 1])
