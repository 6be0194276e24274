"""Model complexity: parameter and multiply-accumulate (MAC) counts (SPEC.md §6, BASELINES.md §0).

Two ways to count, which the tests keep equal:

* :func:`count_params` / :func:`count_macs` measure a module: parameters are summed, MACs are collected with forward
  hooks on ``Conv2d`` / ``Linear`` (and, when asked, the attention matmuls) during one batch-1 forward. A spec (or a
  model that carries one) is counted on the ``meta`` device: no memory, no arithmetic, any input size.
* :func:`spec_params` / :func:`spec_macs` are closed forms of the same numbers for the OSKT ResNet / ViT families,
  cheap enough to rank tens of thousands of width-grid candidates (``oskt.deploy.pick``).

Conventions (the README table's, SPEC.md §6): parameters are the backbone's (no BNNeck / classifier) unless
``backbone_only=False``; MACs count the backbone's convolutions and linear layers only (no BN, activations,
pooling, additions; attention matmuls off by default), per image. The README "FLOPs" are these MACs at 256×128
with the standard last stride 2, while OSKT trains with last stride 1 — pass ``last_stride`` to choose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from oskt.errors import SpecError
from oskt.models.factory import build_model
from oskt.models.resnet import BLOCKS
from oskt.models.spec import ModelSpec
from oskt.models.vit import DEPTH, NUM_PARTS, PATCH, Attention, embed_width, has_dw

__all__ = ["count_complexity", "count_macs", "count_params", "spec_macs", "spec_params"]


def count_params(model: nn.Module, backbone_only: bool = True) -> int:
    """Number of parameters of ``model`` (of ``model.backbone`` when ``backbone_only`` and it has one).

    Args:
        model: a ``ReIDModel`` or any module.
        backbone_only: leave out the BNNeck(s) and classifier (the README / SPEC.md §6 convention).
    """
    module = model.backbone if backbone_only and isinstance(getattr(model, "backbone", None), nn.Module) else model
    return sum(p.numel() for p in module.parameters())


def _resolve(spec: ModelSpec, input_size: Sequence[int] | None, last_stride: int | None) -> ModelSpec:
    """``spec`` with the counting input size / last stride (a ViT's positions fix its input size)."""
    changes: dict[str, object] = {}
    if input_size is not None:
        size = (int(input_size[0]), int(input_size[1]))
        if spec.family == "vit" and size != tuple(spec.img_size):
            raise SpecError(
                f"ViT {spec.name} takes {tuple(spec.img_size)} inputs (position embeddings); "
                f"input_size={size} is not allowed"
            )
        changes["img_size"] = size
    if last_stride is not None and spec.family == "resnet":
        changes["last_stride"] = int(last_stride)
    return dataclasses.replace(spec, **changes) if changes else spec


def count_macs(
    model_or_spec: nn.Module | ModelSpec,
    input_size: Sequence[int] | None = (256, 128),
    last_stride: int | None = None,
    *,
    backbone_only: bool = True,
    attention: bool = False,
) -> int:
    """MACs of one image's forward, counted with forward hooks.

    Args:
        model_or_spec: a ``ModelSpec``, a model carrying ``.spec`` (counted from its spec on the meta device, so
            ``last_stride`` can be changed), or any other module (run as is on a zero input).
        input_size: ``(height, width)``; ``None`` = the spec's ``img_size``. A ViT only takes its own ``img_size``.
        last_stride: ResNet stage-4 stride for the count (``None`` = the model's). README figures use 2.
        backbone_only: count the backbone only (the classifier is a training-time head).
        attention: also count the two attention matmuls (``Q·Kᵀ`` and ``A·V``: ``2·N²·dim`` per block).

    Returns:
        The MAC count (an integer; divide by 1e9 for "GMACs", the README's "G FLOPs").
    """
    spec = model_or_spec if isinstance(model_or_spec, ModelSpec) else getattr(model_or_spec, "spec", None)
    if isinstance(spec, ModelSpec):
        spec = _resolve(spec, input_size, last_stride)
        with torch.device("meta"):
            module: nn.Module = build_model(spec, 1)
        size = spec.img_size
        device = torch.device("meta")
    else:
        if last_stride is not None:
            raise SpecError("last_stride can only be changed for a ModelSpec or a model that carries .spec")
        if input_size is None:
            raise SpecError("input_size is required for a module without a .spec")
        assert isinstance(model_or_spec, nn.Module)
        module, size = model_or_spec, (int(input_size[0]), int(input_size[1]))
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    target = module.backbone if backbone_only and isinstance(getattr(module, "backbone", None), nn.Module) else module
    total = [0]

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += out[0].numel() * k

    def linear_hook(m: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        total[0] += out[0].numel() * m.in_features

    def attn_hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        n, dim = inp[0].shape[-2], inp[0].shape[-1]
        total[0] += 2 * n * n * dim

    handles = []
    for m in target.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif attention and isinstance(m, Attention):
            handles.append(m.register_forward_hook(attn_hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            target(torch.zeros(1, 3, *size, device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return int(total[0])


def count_complexity(
    model_or_spec: nn.Module | ModelSpec, input_size: Sequence[int] | None = None, last_stride: int | None = None
) -> dict[str, int]:
    """``{"params", "macs"}`` of the backbone (the retrieval path) at ``input_size`` (``None`` = the spec's).

    Args:
        model_or_spec: a ``ModelSpec`` or a model (parameters are counted on the model itself).
        input_size: ``(height, width)``.
        last_stride: ResNet stage-4 stride for the MAC count (``None`` = the model's).
    """
    if isinstance(model_or_spec, ModelSpec):
        return {"params": spec_params(model_or_spec), "macs": spec_macs(model_or_spec, input_size, last_stride)}
    if input_size is None and not isinstance(getattr(model_or_spec, "spec", None), ModelSpec):
        raise SpecError("input_size is required for a module without a .spec")
    return {"params": count_params(model_or_spec), "macs": count_macs(model_or_spec, input_size, last_stride)}


# ------------------------------------------------------------------------------------------------ closed forms
def spec_params(spec: ModelSpec) -> int:
    """Backbone parameters of ``spec`` in closed form (equals ``count_params(build_model(spec, n))``)."""
    if spec.family == "resnet":
        w = spec.in_planes
        total = 3 * 49 * w + 2 * w  # stem conv + BN affine
        c_in = w
        for p, n in zip(spec.planes, BLOCKS, strict=True):
            total += c_in * p + 2 * p + 9 * p * p + 2 * p + 4 * p * p + 8 * p  # block 0 conv1..bn3
            total += 4 * p * c_in + 8 * p  # block 0 projection shortcut + BN
            total += (n - 1) * (4 * p * p + 2 * p + 9 * p * p + 2 * p + 4 * p * p + 8 * p)
            c_in = 4 * p
        return total
    e, s = embed_width(spec), spec.dim
    n_patch = (spec.img_size[0] // PATCH) * (spec.img_size[1] // PATCH)
    total = e * 3 * PATCH * PATCH + e + (1 + NUM_PARTS) * e * 2 + n_patch * e  # stem, tokens, token_pos, pos_embed
    total += e * s if has_dw(spec) else 0
    return total + DEPTH * (12 * s * s + 13 * s) + 2 * s


def _out(size: int, stride: int) -> int:
    """Output length of a conv / pool with 'same'-style padding (k=2p+1) and ``stride``."""
    return (size - 1) // stride + 1


def spec_macs(
    spec: ModelSpec, input_size: Sequence[int] | None = None, last_stride: int | None = None, attention: bool = False
) -> int:
    """Backbone MACs of ``spec`` in closed form (equals :func:`count_macs` with the same arguments).

    Args:
        spec: the model.
        input_size: ``(height, width)``; ``None`` = ``spec.img_size``.
        last_stride: ResNet stage-4 stride (``None`` = the spec's).
        attention: include the attention matmuls (ViT).
    """
    spec = _resolve(spec, input_size, last_stride)
    h, w_ = spec.img_size
    if spec.family == "resnet":
        w = spec.in_planes
        h, w_ = _out(h, 2), _out(w_, 2)
        total = h * w_ * 3 * 49 * w
        h, w_ = _out(h, 2), _out(w_, 2)  # max pool
        c_in = w
        for p, n, s in zip(spec.planes, BLOCKS, (1, 2, 2, spec.last_stride), strict=True):
            total += h * w_ * c_in * p  # block 0 conv1 at the input resolution
            h, w_ = _out(h, s), _out(w_, s)
            total += h * w_ * (9 * p * p + 4 * p * p + c_in * 4 * p)  # conv2 (strided), conv3, shortcut
            total += (n - 1) * h * w_ * (4 * p * p + 9 * p * p + 4 * p * p)
            c_in = 4 * p
        return total
    e, s = embed_width(spec), spec.dim
    n_patch = (h // PATCH) * (w_ // PATCH)
    n = n_patch + 1 + NUM_PARTS
    total = n_patch * e * 3 * PATCH * PATCH + (n * e * s if has_dw(spec) else 0)
    per_block = 12 * n * s * s + (2 * n * n * s if attention else 0)
    return total + DEPTH * per_block
