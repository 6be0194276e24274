"""The OSKT ResNet-50 series (SPEC.md §6.1): stem width ``in_planes``, stage planes ``in_planes × [1, m1, m2, m3]``.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` …) so that
torchvision / LUPerson state dicts load directly and WTSel / DepGraph key matching is trivial.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from oskt.models.spec import ModelSpec

BLOCKS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """Bottleneck with the stride on the 3×3 conv (BoT / OSKT code) and an optional projection shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes * 4, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + residual)


class ResNetBackbone(nn.Module):
    """ResNet-50 trunk + global average pooling; returns the ``[B, 4·planes[3]]`` pre-BNNeck feature.

    Every stage's block 0 has a 1×1 projection shortcut, layer1 included (OSKT code), which is what makes the
    backbone counts equal the README table exactly.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.in_planes
        self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        strides = (1, 2, 2, spec.last_stride)
        in_planes = w
        for s, (planes, n, stride) in enumerate(zip(spec.planes, BLOCKS, strides, strict=True), start=1):
            blocks = [Bottleneck(in_planes, planes, stride, downsample=True)]
            blocks += [Bottleneck(planes * 4, planes) for _ in range(n - 1)]
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
            in_planes = planes * 4
        self.out_dim = in_planes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Scratch init of the OSKT code (``random_init``): conv N(0, sqrt(2 / (k·k·out))) (He fan-out), BN 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward_map(self, x: Tensor) -> Tensor:
        """The stage-4 feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_map(x).mean(dim=(2, 3))
