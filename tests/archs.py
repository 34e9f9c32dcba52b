"""Three small test architectures that exercise what the compression stages must handle.

All take 1x8x8 images (scikit-learn digits) and return 10 logits:
- `TinyMobileNet`: inverted residuals with depthwise convs and residual adds.
- `TinyResNet`: basic blocks, a 1x1 projection shortcut and a two-branch block joined by torch.cat.
- `TinyViT`: patchify + Linear embedding, a CUSTOM multi-head attention (q/k/v Linear and a
  `num_heads` attribute, as in user code that is not `nn.MultiheadAttention`), an MLP and LayerNorms.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)


class Normalize(nn.Module):
    """Normalisation inside the graph, as the built-in teachers do (exported models take raw pixels)."""

    def __init__(self, mean: float = 0.3, std: float = 0.38) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1)
        self.dw = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class TinyMobileNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.stem = ConvBN(1, width, 3)
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, 3, 1),
            InvertedResidual(width, 24, 3, 2),
            InvertedResidual(24, 24, 3, 1),
            InvertedResidual(24, 32, 3, 1),
        )
        self.head = ConvBN(32, 64, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(self.normalize(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 3, stride)
        self.conv2 = ConvBN(cout, cout, 3, act=False)
        self.shortcut = ConvBN(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.conv2(self.conv1(x)) + skip)


class CatBlock(nn.Module):
    """Two branches joined by concatenation (Inception-style), then a 1x1 fuse conv."""

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__()
        self.branch3 = ConvBN(cin, branch, 3)
        self.branch1 = ConvBN(cin, branch, 1)
        self.fuse = ConvBN(2 * branch, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.branch3(x), self.branch1(x)], dim=1))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.stem = ConvBN(1, 16, 3)
        self.layers = nn.Sequential(
            BasicBlock(16, 16),
            CatBlock(16, 16, 32),
            BasicBlock(32, 48, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Attention(nn.Module):
    """Hand-written multi-head self-attention: separate q/k/v projections and a `num_heads` field."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q = self.q(x).reshape(shape).transpose(1, 2)
        k = self.k(x).reshape(shape).transpose(1, 2)
        v = self.v(x).reshape(shape).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(y)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, num_heads: int = 4, patch: int = 2,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.patch = patch
        tokens = (INPUT_SHAPE[1] // patch) * (INPUT_SHAPE[2] // patch)
        self.normalize = Normalize()
        self.embed = nn.Linear(INPUT_SHAPE[0] * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, num_heads, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        b, c, h, w = x.shape
        p = self.patch
        # (B, C, H, W) -> (B, tokens, C*p*p) without unfold, which exports to plain Reshape/Transpose.
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(dim=1))


ARCHS = {"mobilenet": TinyMobileNet, "resnet": TinyResNet, "vit": TinyViT}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHS[name]().eval()
