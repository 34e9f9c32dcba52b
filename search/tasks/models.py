"""Teacher architectures: compact MobileNetV2-style networks (depthwise convs, residual adds) and a
ResNet-18 (basic blocks, BatchNorm, 1x1 downsampling shortcuts) for the realistic-size task.

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
        return asdict(self)  # part of the teacher cache key: adding a field retrains every shipped teacher

    def build(self) -> nn.Module:
        return EdgeNet(self)


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


@dataclass(frozen=True)
class ResNetSpec:
    """ResNet-18 topology (basic blocks per stage) at `width` stem channels, doubling per stage; the
    input is zero-padded by `pad` inside the graph (28x28 Fashion-MNIST -> 32x32, as LeNet-5 did)."""

    in_channels: int
    num_classes: int
    width: int
    blocks: tuple[int, ...]
    mean: float
    std: float
    pad: int = 0

    def to_dict(self) -> dict:
        return {"arch": "resnet", **asdict(self)}

    def build(self) -> nn.Module:
        return ResNet(self)


class Preprocess(nn.Module):
    def __init__(self, mean: float, std: float, pad: int) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.pad = nn.ZeroPad2d(pad) if pad else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pad(self.normalize(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, stages at strides 1, 2, 2, 2."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        w = spec.width
        self.pre = Preprocess(spec.mean, spec.std, spec.pad)
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        stages, cin = [], w
        for i, n in enumerate(spec.blocks):
            cout = w * 2**i
            first = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock(cin if j == 0 else cout, cout, first if j == 0 else 1)
                                          for j in range(n))))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(self.pre(x)))), 1))


# ResNet-18 at half width (32-64-128-256 channels), 28x28 padded to 32x32: 2.8M parameters, ~1.2 ms on one
# core of this machine with ONNX Runtime (benchmarks/results/teacher.json).
FASHION_RESNET_SPEC = ResNetSpec(in_channels=1, num_classes=10, width=32, blocks=(2, 2, 2, 2),
                                 mean=0.2860, std=0.3530, pad=2)
