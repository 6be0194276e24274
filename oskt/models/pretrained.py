"""Initialise a teacher backbone from a *local* pretrained file (never a hub; SPEC.md §8).

Supported layouts (detected from the keys):

* torchvision / LUPerson ResNet-50 (``conv1.weight``, ``layer1.0.downsample.0.weight`` …; ``fc.*`` skipped);
* timm ViT (``patch_embed.proj.weight``, ``cls_token``, ``pos_embed`` with a cls slot, ``blocks.*``, ``norm.*``;
  ``head.*`` skipped). The patch position embeddings are bicubically interpolated to ``spec.img_size``; the cls
  position is reused for the part-token positions and the cls token for the part tokens [inferred: timm weights have
  no part tokens];
* PASS-reID ViT (``part_token1..3``, ``cls_pos``, ``part1_pos..3``, ``pos_embed`` without a cls slot).

Common wrappers (``state_dict`` / ``model`` keys, ``module.`` / ``base.`` / ``backbone.`` prefixes) are removed.
"""

from __future__ import annotations

import io as _io
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from oskt import io
from oskt.errors import CheckpointError
from oskt.models.factory import ReIDModel
from oskt.models.vit import NUM_PARTS, embed_width, num_patches

_PREFIXES = ("module.", "base.", "backbone.")
_SKIP = ("fc.", "head.", "dist", "pre_logits", "classifier", "bottleneck")


def _read_state_dict(path: str) -> dict[str, Tensor]:
    from oskt.checkpoint import describe_file

    try:
        data = io.read_bytes(path)
    except FileNotFoundError:
        raise CheckpointError(f"pretrained file {path!r} does not exist") from None
    try:
        obj = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # foreign / truncated files raise several types: say what the file is
        raise CheckpointError(
            f"pretrained file {path!r} is {describe_file(data)}: expected torchvision / timm / PASS weights saved with "
            "torch.save (a state dict)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"pretrained file {path!r} is not a state dict of tensors")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        if not k.startswith(_SKIP):
            out[k] = v
    return out


def _resize_pos(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """Interpolate ``[1, n, E]`` patch position embeddings to ``grid`` (square source grid assumed unless equal)."""
    n = pos.shape[1]
    if n == grid[0] * grid[1]:
        return pos
    side = int(math.isqrt(n))
    if side * side != n:
        raise CheckpointError(f"pretrained pos_embed has {n} patch positions: not a square grid, cannot interpolate")
    p = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    p = F.interpolate(p, size=grid, mode="bicubic", align_corners=False)
    return p.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)


def _vit_map(sd: dict[str, Tensor], model: ReIDModel) -> dict[str, Tensor]:
    spec = model.spec
    grid = (spec.img_size[0] // 16, spec.img_size[1] // 16)
    out = {k: v for k, v in sd.items() if k.startswith(("patch_embed.proj.", "blocks.", "norm."))}
    cls = sd["cls_token"]
    if "part_token1" in sd:  # PASS-reID layout
        out["part_tokens"] = torch.cat([sd[f"part_token{i}"] for i in range(1, NUM_PARTS + 1)], dim=1)
        out["token_pos"] = torch.cat([sd["cls_pos"], *(sd[f"part{i}_pos"] for i in range(1, NUM_PARTS + 1))], dim=1)
        patch_pos = sd["pos_embed"]
    else:  # timm layout: pos_embed = [cls slot, patches]
        out["part_tokens"] = cls.expand(-1, NUM_PARTS, -1).clone()
        pe = sd["pos_embed"]
        extra = pe.shape[1] - int(math.isqrt(pe.shape[1])) ** 2
        out["token_pos"] = pe[:, :1].expand(-1, 1 + NUM_PARTS, -1).clone()
        patch_pos = pe[:, extra:]
    out["cls_token"] = cls
    out["pos_embed"] = _resize_pos(patch_pos, grid)
    if out["pos_embed"].shape[1] != num_patches(spec):
        raise CheckpointError("pretrained pos_embed cannot be matched to the model's patch grid")
    return out


def load_pretrained(model: ReIDModel, path: str) -> list[str]:
    """Copy a local torchvision / timm / PASS state dict into ``model.backbone`` (shapes must match exactly).

    Returns the backbone keys that the file did not provide (e.g. ``dw.weight``, which stays the identity).
    Raises CheckpointError for unreadable files, unknown layouts or shape mismatches.
    """
    sd = _read_state_dict(path)
    if model.spec.family == "resnet":
        if "conv1.weight" not in sd or "layer1.0.conv1.weight" not in sd:
            raise CheckpointError(f"pretrained file {path!r} is not a torchvision-style ResNet-50 state dict")
        mapped = {k: v for k, v in sd.items() if k.startswith(("conv1.", "bn1.", "layer"))}
    else:
        if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
            raise CheckpointError(f"pretrained file {path!r} is not a timm / PASS ViT state dict")
        if sd["cls_token"].shape[-1] != embed_width(model.spec):
            raise CheckpointError(
                f"pretrained ViT width {sd['cls_token'].shape[-1]} != model stem width {embed_width(model.spec)}"
            )
        mapped = _vit_map(sd, model)
    own = model.backbone.state_dict()
    unknown = sorted(set(mapped) - set(own))
    bad = sorted(k for k in mapped if k in own and own[k].shape != mapped[k].shape)
    if unknown or bad:
        raise CheckpointError(
            f"pretrained file {path!r} does not fit {model.spec.name}: unknown keys {unknown[:5]}, "
            f"shape mismatches {bad[:5]}"
        )
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v)
    return sorted(set(own) - set(mapped))
