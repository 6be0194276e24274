"""TransReID / PASS-style ViT (SPEC.md §2.3, §3.2, §6.2): cls + 3 part tokens, optional ``dw`` projection.

Layout (PASS + the OSKT ``dw``): ``patch_embed`` (width ``E``) → prepend ``cls_token`` and 3 ``part_tokens`` →
add ``token_pos`` / ``pos_embed`` → ``dw: Linear(E → dim, no bias)`` → 12 blocks of width ``dim`` → final LN.

* ``vit_stem="teacher"`` (the authors' code): ``E`` = the arch's teacher width (384 / 768); the teacher's ``dw`` is
  initialised to the identity; students keep the teacher-width stem and project with ``dw`` (D → S).
* ``vit_stem="plain"`` (the README parameter table): ``E = dim`` and no ``dw`` (a plain width-S ViT). The full-width
  teacher always has the ``dw`` (identity at init), whatever ``vit_stem`` says, so chains can be built from it.

The head count is the arch's (6 / 12) at every width, so head_dim = dim / heads. Attention is our own module that
reshapes with ``-1`` (torch-pruning friendly: nothing caches sizes, BASELINES.md §1.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from oskt.models.spec import ModelSpec

DEPTH = 12
PATCH = 16
NUM_PARTS = 3


def has_dw(spec: ModelSpec) -> bool:
    """Whether a ViT spec has the ``dw`` projection (teacher-width stem, or the full-width teacher)."""
    return spec.vit_stem == "teacher" or spec.dim == spec.teacher_dim


def embed_width(spec: ModelSpec) -> int:
    """Width of the patch embedding / tokens / position embeddings."""
    return spec.teacher_dim if spec.vit_stem == "teacher" else spec.dim


def num_patches(spec: ModelSpec) -> int:
    return (spec.img_size[0] // PATCH) * (spec.img_size[1] // PATCH)


class Attention(nn.Module):
    """Multi-head self-attention; the head count is fixed, head_dim follows the width (reshape with -1)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        # scale = head_dim ** -0.5 of *this* width (SPEC.md §4.1: the S-Student uses the chain head dim)
        q, k, v = qkv.unbind(0)  # unbind (not indexing): torch-pruning maps qkv -> proj through it
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm / TransReID names: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)."""

    def __init__(self, dim: int, num_heads: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTBackbone(nn.Module):
    """Returns the final-LN tokens ``[B, 4, dim]`` (cls + 3 part tokens)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        e, d = embed_width(spec), spec.dim
        self.patch_embed = PatchEmbed(e)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.part_tokens = nn.Parameter(torch.zeros(1, NUM_PARTS, e))
        self.token_pos = nn.Parameter(torch.zeros(1, 1 + NUM_PARTS, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches(spec), e))
        self.dw: nn.Module = nn.Linear(e, d, bias=False) if has_dw(spec) else nn.Identity()
        dpr = [spec.drop_path * i / (DEPTH - 1) for i in range(DEPTH)]  # stochastic depth decay rule
        self.blocks = nn.ModuleList(Block(d, spec.num_heads, dpr[i]) for i in range(DEPTH))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.out_dim = d
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TransReID init: Linear trunc-normal 0.02 / bias 0, LN 1/0, tokens and positions trunc-normal 0.02;
        ``dw`` = identity when square (SPEC.md §2.3), else trunc-normal."""
        self.patch_embed.proj.reset_parameters()
        for p in (self.cls_token, self.part_tokens, self.token_pos, self.pos_embed):
            trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        if isinstance(self.dw, nn.Linear) and self.dw.in_features == self.dw.out_features:
            with torch.no_grad():
                self.dw.weight.copy_(torch.eye(self.dw.in_features))

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = self.patch_embed(x)
        tokens = torch.cat([self.cls_token, self.part_tokens], dim=1).expand(b, -1, -1)
        x = torch.cat([tokens, x], dim=1) + torch.cat([self.token_pos, self.pos_embed], dim=1)
        x = self.dw(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, : 1 + NUM_PARTS])  # LN is per token: only the 4 tokens are used
