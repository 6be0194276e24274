"""BoT-style heads: BNNeck(s) and a bias-free classifier (SPEC.md §4.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ReIDHead(nn.Module):
    """BNNeck + bias-free classifier over one (ResNet) or ``1 + parts`` (ViT, PASS-style) token features.

    ResNet: input ``[B, C]``; ``feat`` = input, BNNeck on it, classifier ``C -> num_classes``.
    ViT: input ``[B, 4, D]`` (cls + 3 part tokens); ``feat = concat(cls, mean(parts))`` (``2D``); one BNNeck per token
    and the classifier on ``concat(BN(cls), mean_i BN(part_i))`` (SPEC.md §4.2, PASS/TransReID).

    Args:
        dim: per-token feature width.
        num_classes: classifier outputs (identities).
        num_tokens: 1 for a pooled CNN feature, 4 for cls + 3 part tokens.
    """

    def __init__(self, dim: int, num_classes: int, num_tokens: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.num_tokens = num_tokens
        self.bnneck = nn.ModuleList(nn.BatchNorm1d(dim) for _ in range(num_tokens))
        in_features = dim if num_tokens == 1 else 2 * dim
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BNNeck gamma=1, beta=0 (beta frozen); classifier N(0, 0.001) (BoT, BASELINES.md §1.1)."""
        for bn in self.bnneck:
            bn.reset_parameters()
            bn.bias.requires_grad_(False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def pre_bn(self, x: Tensor) -> Tensor:
        """The pre-BNNeck feature used by the metric losses."""
        if self.num_tokens == 1:
            return x
        return torch.cat([x[:, 0], x[:, 1:].mean(dim=1)], dim=1)

    def post_bn(self, x: Tensor) -> Tensor:
        """The BNNeck feature the classifier consumes."""
        if self.num_tokens == 1:
            return self.bnneck[0](x)
        # a sum of BN outputs (not torch.stack) keeps the channel dependency graph simple for torch-pruning
        parts = sum(self.bnneck[i](x[:, i]) for i in range(1, self.num_tokens)) / (self.num_tokens - 1)
        return torch.cat([self.bnneck[0](x[:, 0]), parts], dim=1)
