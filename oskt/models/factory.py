"""``ReIDModel`` (backbone + BoT head), the ``MODELS`` registry and ``build_model`` (docs/contracts.md, Models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor, nn

from oskt.errors import SpecError
from oskt.models.heads import ReIDHead
from oskt.models.resnet import ResNetBackbone
from oskt.models.spec import ModelSpec
from oskt.models.vit import NUM_PARTS, ViTBackbone
from oskt.registry import Registry


class ReIDOutput(NamedTuple):
    """Training-mode output: identity logits and the pre-BNNeck feature (triplet / center losses)."""

    logits: Tensor
    feat: Tensor


NECK_FEATS = ("after", "before")


class ReIDModel(nn.Module):
    """A backbone and a BoT head.

    Training mode returns ``ReIDOutput(logits, feat)``; eval mode returns the retrieval feature selected by
    ``neck_feat`` (``"after"`` = BNNeck output, the CNN default; ``"before"`` = pre-BN feature, the ViT default,
    SPEC.md §7).

    Args:
        spec: the architecture.
        backbone: module mapping images to ``[B, C]`` (ResNet) or ``[B, 4, D]`` tokens (ViT).
        num_classes: classifier outputs.
        neck_feat: retrieval feature in eval mode (``None`` = the family default).
    """

    def __init__(self, spec: ModelSpec, backbone: nn.Module, num_classes: int, neck_feat: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.num_tokens = 1 if spec.family == "resnet" else 1 + NUM_PARTS
        self.head = ReIDHead(backbone.out_dim, num_classes, self.num_tokens)
        self.neck_feat = neck_feat or ("after" if spec.family == "resnet" else "before")
        if self.neck_feat not in NECK_FEATS:
            raise SpecError(f"neck_feat={self.neck_feat!r} is not allowed: expected one of {NECK_FEATS}")

    @property
    def num_classes(self) -> int:
        return self.head.classifier.out_features

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh BNNeck(s) (gamma=1, beta=0 frozen) and bias-free classifier N(0, 0.001) for ``num_classes``."""
        p = next(self.head.parameters())
        self.head = ReIDHead(self.backbone.out_dim, num_classes, self.num_tokens).to(device=p.device, dtype=p.dtype)

    def forward(self, x: Tensor) -> ReIDOutput | Tensor:
        z = self.backbone(x)
        if not self.training:
            return self.head.pre_bn(z) if self.neck_feat == "before" else self.head.post_bn(z)
        return ReIDOutput(self.head.classifier(self.head.post_bn(z)), self.head.pre_bn(z))


MODELS: Registry[Callable[[ModelSpec, int], ReIDModel]] = Registry("model family")


@MODELS.register("resnet")
def _build_resnet(spec: ModelSpec, num_classes: int) -> ReIDModel:
    return ReIDModel(spec, ResNetBackbone(spec), num_classes)


@MODELS.register("vit")
def _build_vit(spec: ModelSpec, num_classes: int) -> ReIDModel:
    return ReIDModel(spec, ViTBackbone(spec), num_classes)


def build_model(spec: ModelSpec, num_classes: int) -> ReIDModel:
    """Build the model a spec names, with scratch init (BASELINES.md §1.1) and a fresh BoT head."""
    if num_classes < 1:
        raise SpecError(f"num_classes={num_classes} is not allowed: expected a positive integer")
    return MODELS.get(spec.family)(spec, num_classes)


def count_params(module: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in module.parameters())
