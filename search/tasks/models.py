"""Teacher architectures: compact MobileNetV2-style networks (depthwise convs, residual adds).

Module names are the layer names a Plan uses (`stem.conv`, `blocks.2.expand.conv`, ...), so they
are kept short and stable. Normalisation is a module inside the network, so the exported ONNX
graph takes raw pixels in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    expand: int  # expansion factor t of the inverted residual
    out: int  # output channels
    stride: int


@dataclass(frozen=True)
class EdgeNetSpec:
    in_channels: int
    num_classes: int
    stem: int
    blocks: tuple[BlockSpec, ...]
    head: int
    mean: float
    std: float
    stem_stride: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project, with a residual add when shapes allow."""

    def __init__(self, cin: int, spec: BlockSpec) -> None:
        super().__init__()
        hidden = cin * spec.expand
        self.expand = ConvBNAct(cin, hidden, 1)
        self.dw = ConvBNAct(hidden, hidden, 3, spec.stride, groups=hidden)
        self.project = ConvBNAct(hidden, spec.out, 1, act=False)
        self.residual = spec.stride == 1 and cin == spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class EdgeNet(nn.Module):
    def __init__(self, spec: EdgeNetSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.stem = ConvBNAct(spec.in_channels, spec.stem, 3, spec.stem_stride)
        blocks, cin = [], spec.stem
        for b in spec.blocks:
            blocks.append(InvertedResidual(cin, b))
            cin = b.out
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(cin, spec.head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(spec.head, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(self.normalize(x))))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


B = BlockSpec

# 16 prunable convs; 60.5k parameters and 5.6M MACs at 28x28 (benchmarks/results/teacher.json).
FASHION_SPEC = EdgeNetSpec(
    in_channels=1, num_classes=10, stem=16, head=128, mean=0.2860, std=0.3530,
    blocks=(B(4, 24, 2), B(4, 24, 1), B(4, 40, 2), B(4, 40, 1), B(4, 64, 1)),
)

# 8x8 digits: same family, smaller; 13 prunable convs.
DIGITS_SPEC = EdgeNetSpec(
    in_channels=1, num_classes=10, stem=16, head=64, mean=0.30, std=0.38,
    blocks=(B(3, 16, 1), B(3, 24, 2), B(3, 24, 1), B(3, 32, 1)),
)
