"""A zoo of the architectures users bring, small, each with a `make_<arch>()` returning a trained `search.Task`.

Used by tests/test_coverage_matrix.py through the CLI (`hwsearch run --task tests/zoo.py:make_resnet ...`), so
every process (run, front, export --verify) loads the task again and must get the SAME teacher. Teachers are
trained deterministically (fixed seed, one thread) and, when $HWSEARCH_ZOO_CACHE names a folder, their
state_dict is cached there keyed by the arch name and a hash of this file (an edit here retrains).

Images: scikit-learn digits, float32 [1, 8, 8] in [0, 1], normalisation inside the network. Tokens: a synthetic,
deterministic keyword task over int64 ids (0 = padding). Teacher val top-1 (seed 0, CPU, torch 2.13), measured
when written; each row's floor in the test is well under it:
- resnet        (Wrapped(pre=Normalize, net=ResNet), BasicBlocks, strided 1x1 downsample):  98.9% (chance 10%)
- mobilenetv3   (inverted residuals, depthwise, SE with hardsigmoid, hardswish):             97.8%
- efficientnet  (MBConv, SiLU, SE, stochastic depth):                                       97.8%
- shufflenet    (channel split, two branches, concat, channel shuffle):                      96.3%
- vit           (nn.MultiheadAttention batch_first, conv patch embed, cls token):           95.2%
- bert          (token + position embeddings, padding mask, 2 post-LN encoder layers):      100%  (chance 25%)
- regression    (MLP on scikit-learn's diabetes data, mean squared error, metric NEG_MAE): val MAE 0.60 of the
                target's standard deviation (a constant predictor: 0.84)
- twohead       (the ResNet body with two heads, digit and parity, a tuple out; metric: both right):     98.1%
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from search import Task
from search.tasks.base import InputSpec
from search.tasks.models import Normalize

CACHE_ENV = "HWSEARCH_ZOO_CACHE"
SEED = 0
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
MEAN, STD = 0.3, 0.38  # digits pixels, normalised inside each model


# ------------------------------------------------------------------------------------------------ shared parts
class Wrapped(nn.Module):
    """Preprocessing baked in front of an unmodified network: how users ship a torchvision-like model."""

    def __init__(self, pre: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.pre = pre
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pre(x))


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------ 1. ResNet
class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-bn-relu-conv-bn, plus an identity or strided 1x1 conv + BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet() -> nn.Module:
    return Wrapped(pre=Normalize(MEAN, STD), net=ResNet())


class TwoHeads(nn.Module):
    """A multi-task model: the ResNet body with two heads, the digit's class (10 logits) and its parity (2 logits),
    returned as a tuple; judged by `BOTH_RIGHT`, which needs both."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = Normalize(MEAN, STD)
        self.body = ResNet()
        self.body.fc = nn.Identity()
        self.digit = nn.Linear(32, NUM_CLASSES)
        self.parity = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(self.pre(x))
        return self.digit(features), self.parity(features)


def both_right(outputs: tuple[np.ndarray, np.ndarray], targets: np.ndarray) -> np.ndarray:
    """1 where the class head's arg-max is the digit and the parity head's is its parity, else 0."""
    digits, parity = outputs
    return ((digits.argmax(1) == targets) & (parity.argmax(1) == targets % 2)).astype(np.int8)


# ------------------------------------------------------------------------------------------------ 2. MobileNetV3
class SqueezeExcite(nn.Module):
    """avgpool -> 1x1 reduce -> act -> 1x1 expand -> gate -> multiply (MobileNetV3: ReLU, hardsigmoid)."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool,
                 act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn(cin, hidden, 1, act=act))
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.normalize = Normalize(MEAN, STD)
        self.stem = conv_bn(1, 16, 3, act=nn.Hardswish)
        self.features = nn.Sequential(
            InvertedResidualV3(16, 16, 16, 3, 1, se=True, act=nn.ReLU),
            InvertedResidualV3(16, 48, 24, 3, 2, se=False, act=nn.ReLU),
            InvertedResidualV3(24, 64, 24, 3, 1, se=True, act=nn.Hardswish),
            InvertedResidualV3(24, 64, 32, 3, 1, se=True, act=nn.Hardswish),
        )
        self.last = conv_bn(32, 64, 1, act=nn.Hardswish)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(64, 64), nn.Hardswish(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.features(self.stem(self.normalize(x))))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


# ------------------------------------------------------------------------------------------------ 3. EfficientNet
class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, in training only."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, drop: float) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.SiLU))
        layers += [conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
                   SqueezeExcite(hidden, max(8, cin // 4), act=nn.SiLU, gate=nn.Sigmoid),
                   conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.drop_path = DropPath(drop) if self.use_res else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + self.drop_path(y) if self.use_res else y


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, drop_path: float = 0.1) -> None:
        super().__init__()
        self.normalize = Normalize(MEAN, STD)
        self.stem = conv_bn(1, 16, 3, act=nn.SiLU)
        cfg = [(16, 16, 1, 3, 1), (16, 24, 4, 3, 2), (24, 24, 4, 3, 1), (24, 32, 4, 5, 1), (32, 32, 4, 3, 1)]
        self.blocks = nn.Sequential(*[MBConv(*c, drop=drop_path * i / len(cfg)) for i, c in enumerate(cfg)])
        self.head = conv_bn(32, 64, 1, act=nn.SiLU)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(self.normalize(x))))
        return self.classifier(self.dropout(torch.flatten(self.avgpool(x), 1)))


# ------------------------------------------------------------------------------------------------ 4. ShuffleNetV2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    return x.transpose(1, 2).contiguous().reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's InvertedResidual of ShuffleNetV2: split + one branch (stride 1) or two branches (stride 2),
    concatenated, then a 2-group channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        else:
            self.branch1 = nn.Sequential()
        bin_ = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(bin_, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.normalize = Normalize(MEAN, STD)
        self.conv1 = conv_bn(1, 16, 3)
        self.stage2 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(32, 48, 2), ShuffleUnit(48, 48, 1))
        self.conv5 = conv_bn(48, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage3(self.stage2(self.conv1(self.normalize(x)))))
        return self.fc(x.mean([2, 3]))


# ------------------------------------------------------------------------------------------------ 5. ViT
class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """torchvision's VisionTransformer in small: conv patch embedding, class token, learned positions."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, patch: int = 2,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        tokens = (IMAGE_SHAPE[1] // patch) * (IMAGE_SHAPE[2] // patch)
        self.normalize = Normalize(MEAN, STD)
        self.conv_proj = nn.Conv2d(IMAGE_SHAPE[0], dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.layers = nn.Sequential(*[ViTBlock(dim, heads, 2 * dim) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(self.normalize(x)).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


# ------------------------------------------------------------------------------------------------ 6. BERT
VOCAB = 64
SEQ_LEN = 16
KEYWORDS = (1, 2)  # class = has 1 + 2 * has 2: four classes
TOKEN_CLASSES = 4


def TinyBert() -> nn.Module:  # noqa: N802 (a model class to the recipes table)
    """The real-text teacher's architecture (search.tasks.encoder: post-LN layers, padding mask from the ids) in
    small: 2 layers of width 32, 4 heads."""
    from search.tasks.encoder import EncoderSpec

    return EncoderSpec(vocab=VOCAB, max_len=SEQ_LEN, dim=32, heads=4, ff=64, depth=2,
                       num_classes=TOKEN_CLASSES).build()


def TwoInputBert() -> nn.Module:  # noqa: N802 (a model class to the recipes table)
    """TinyBert taking the ids and an attention mask (1 = token, 0 = padding) as two inputs, as such models ship."""
    from search.tasks.encoder import EncoderSpec

    return EncoderSpec(vocab=VOCAB, max_len=SEQ_LEN, dim=32, heads=4, ff=64, depth=2, num_classes=TOKEN_CLASSES,
                       mask_input=True).build()


def two_inputs(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two-input row's inputs: the ids and their attention mask."""
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


# ------------------------------------------------------------------------------------------- 7. causal LM
LM_VOCAB, LM_LEN = 32, 12  # id 0: padding; sequences of 6-12 tokens


def TinyLM() -> nn.Module:  # noqa: N802 (a model class to the recipes table)
    """The wordnet-lm teacher's architecture (search.tasks.decoder: GPT's pre-LN blocks under a causal mask) in
    small: (N, T) ids -> (N, T, V) next-token logits, 2 layers of width 32, 4 heads."""
    from search.tasks.decoder import DecoderSpec

    return DecoderSpec(vocab=LM_VOCAB, max_len=LM_LEN, dim=32, heads=4, ff=64, depth=2).build()


def lm_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Counting sequences: x_t = 1 + (a + b t) mod 31, 6-12 tokens, padded with 0; the target of position t is
    x_{t+1}, IGNORE_INDEX at the last token and the padding (from the second token on, a and b fix the rest)."""
    from search.metrics import IGNORE_INDEX

    rng = np.random.default_rng(seed)
    ids = np.zeros((n, LM_LEN), np.int64)
    targets = np.full((n, LM_LEN), IGNORE_INDEX, np.int64)
    for i in range(n):
        length, a, b = int(rng.integers(6, LM_LEN + 1)), int(rng.integers(0, 31)), int(rng.integers(1, 4))
        seq = 1 + (a + b * np.arange(length)) % (LM_VOCAB - 1)
        ids[i, :length] = seq
        targets[i, : length - 1] = seq[1:]
    return ids, targets


class RegressionMLP(nn.Module):
    """A regression head over tabular features: scikit-learn's diabetes data (10 standardised features)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def keyword_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n, 16], labels int64 [n]): lengths 6..16 padded with 0, filler ids in [3, VOCAB); label c
    puts keyword 1 in the sequence when c & 1 and keyword 2 when c & 2, at random positions."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, SEQ_LEN), np.int64)
    labels = rng.integers(0, TOKEN_CLASSES, n).astype(np.int64)
    for i in range(n):
        length = int(rng.integers(6, SEQ_LEN + 1))
        ids[i, :length] = rng.integers(len(KEYWORDS) + 1, VOCAB, length)
        slots = rng.choice(length, size=len(KEYWORDS), replace=False)
        for bit, (kw, slot) in enumerate(zip(KEYWORDS, slots, strict=True)):
            if labels[i] >> bit & 1:
                ids[i, slot] = kw
    return ids, labels


# ------------------------------------------------------------------------------------------------ training
RECIPES = {  # arch -> (builder, epochs, lr, batch size)
    "resnet": (resnet, 12, 3e-3, 64),
    "mobilenetv3": (MobileNetV3, 15, 5e-3, 64),
    "efficientnet": (EfficientNet, 15, 5e-3, 64),
    "shufflenet": (ShuffleNetV2, 15, 5e-3, 64),
    "vit": (ViT, 25, 3e-3, 64),
    "bert": (TinyBert, 8, 3e-3, 64),
    "bert2": (TwoInputBert, 8, 3e-3, 64),
    "regression": (RegressionMLP, 20, 3e-3, 32),
    "lm": (TinyLM, 10, 3e-3, 64),
    "twohead": (TwoHeads, 12, 3e-3, 64),
}
REGRESSION = {"regression"}  # trained and distilled by mean squared error, judged by the negated MAE


def _file_key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


@torch.no_grad()
def accuracy(model: nn.Module, x, y: torch.Tensor) -> float:
    from search.tasks.inputs import call
    from search.tasks.outputs import primary

    model.eval()
    return float((primary(call(model, x)).argmax(1) == y).float().mean())


def _train(arch: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Deterministic: fixed seed, one thread, a fixed order of batches."""
    from search.tasks.inputs import call, count, rows

    build, epochs, lr, batch = RECIPES[arch]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        gen = torch.Generator().manual_seed(SEED)
        model = build()
        steps = epochs * math.ceil(count(x) / batch)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(count(x), generator=gen)
            for i in range(0, count(x), batch):
                idx = order[i : i + batch]
                out = call(model, rows(x, idx))
                if arch in REGRESSION:
                    loss = F.mse_loss(out, y[idx])
                elif isinstance(out, tuple):  # the two heads: the digit and its parity
                    loss = F.cross_entropy(out[0], y[idx]) + F.cross_entropy(out[1], y[idx] % 2)
                elif out.dim() == 3:  # token logits: flattened, padding ignored (-100)
                    loss = F.cross_entropy(out.flatten(0, 1), y[idx].flatten(), ignore_index=-100)
                else:
                    loss = F.cross_entropy(out, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def teacher(arch: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """The trained teacher: from $HWSEARCH_ZOO_CACHE/<arch>-<hash of this file>.pt when there, else trained
    (and written there, atomically, when the variable is set)."""
    folder = os.environ.get(CACHE_ENV)
    path = Path(folder) / f"{arch}-{_file_key()}.pt" if folder else None
    if path is not None and path.is_file():
        torch.manual_seed(SEED)
        model = RECIPES[arch][0]()
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = _train(arch, x, y)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------ tasks
def _image_task(arch: str, **fields) -> Task:
    from search.tasks.data import load_digits_split

    d = {k: torch.from_numpy(v) for k, v in load_digits_split().items()}
    model = teacher(arch, d["train_x"], d["train_y"])
    acc = accuracy(model, d["val_x"], d["val_y"])
    return Task(**fields,
        name=f"zoo-{arch}",
        teacher=model,
        train=TensorDataset(d["train_x"], d["train_y"]),
        val=TensorDataset(d["val_x"], d["val_y"]),
        test=TensorDataset(d["test_x"], d["test_y"]),
        input_shape=IMAGE_SHAPE,
        num_classes=NUM_CLASSES,
        class_names=tuple(str(i) for i in range(NUM_CLASSES)),
        description=f"{arch} on scikit-learn digits 8x8 (tests/zoo.py)",
        teacher_info={"arch": arch, "key": _file_key(), "val_accuracy": acc},
    )


def make_resnet() -> Task:
    return _image_task("resnet")


def make_mobilenetv3() -> Task:
    return _image_task("mobilenetv3")


def make_efficientnet() -> Task:
    return _image_task("efficientnet")


def make_shufflenet() -> Task:
    return _image_task("shufflenet")


def make_vit() -> Task:
    return _image_task("vit")


def make_twohead() -> Task:
    """Two outputs, a metric that reads both (`Metric(..., every_output=True)`): the second head is distilled by
    mean squared error to the teacher's and exported as `output_1`."""
    from search.metrics import Metric

    return _image_task("twohead", metric=Metric("digit and parity right", both_right, every_output=True))


BERT_SPLITS = (("train", 2048, 1), ("val", 512, 2), ("test", 512, 3))  # (split, samples, seed)


def make_bert() -> Task:
    splits = {name: keyword_data(n, seed) for name, n, seed in BERT_SPLITS}
    t = {name: (torch.from_numpy(ids), torch.from_numpy(y)) for name, (ids, y) in splits.items()}
    model = teacher("bert", *t["train"])
    acc = accuracy(model, *t["val"])
    return Task(
        name="zoo-bert",
        teacher=model,
        train=TensorDataset(*t["train"]),
        val=TensorDataset(*t["val"]),
        test=TensorDataset(*t["test"]),
        input_shape=(SEQ_LEN,),
        num_classes=TOKEN_CLASSES,
        class_names=("none", "kw1", "kw2", "both"),
        input_spec=InputSpec(name="input", dtype="int64", value_range=(0, VOCAB - 1),
                             normalisation="token ids; 0 = padding"),
        description="BERT-style encoder on a synthetic keyword task over int64 token ids (tests/zoo.py)",
        teacher_info={"arch": "bert", "key": _file_key(), "val_accuracy": acc},
    )


def make_bert2() -> Task:
    """The BERT row with two inputs, the ids and an attention mask, as such models ship: samples hold
    {name: tensor} (an InputsDataset), one InputSpec per input."""
    from search.tasks.inputs import InputsDataset

    splits = {name: keyword_data(n, seed) for name, n, seed in BERT_SPLITS}
    t = {name: (two_inputs(torch.from_numpy(ids)), torch.from_numpy(y)) for name, (ids, y) in splits.items()}
    model = teacher("bert2", *t["train"])
    acc = accuracy(model, *t["val"])
    return Task(
        name="zoo-bert2",
        teacher=model,
        train=InputsDataset(*t["train"]),
        val=InputsDataset(*t["val"]),
        test=InputsDataset(*t["test"]),
        input_shape=((SEQ_LEN,), (SEQ_LEN,)),
        num_classes=TOKEN_CLASSES,
        class_names=("none", "kw1", "kw2", "both"),
        input_spec=(InputSpec(name="input_ids", value_range=(0, VOCAB - 1), normalisation="token ids; 0 = padding"),
                    InputSpec(name="attention_mask", value_range=(0, 1), normalisation="1 = token, 0 = padding")),
        description="two-input BERT-style encoder (ids, attention mask) on the synthetic keyword task (tests/zoo.py)",
        teacher_info={"arch": "bert2", "key": _file_key(), "val_accuracy": acc},
    )


def diabetes_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled diabetes data (442 patients): standardised features and target (disease
    progression after a year), split 300/70/72 in a fixed random order."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float32)
    y = ((d.target - d.target.mean()) / d.target.std()).astype(np.float32).reshape(-1, 1)
    order = np.random.default_rng(SEED).permutation(len(x))
    cuts = {"train": order[:300], "val": order[300:370], "test": order[370:]}
    return {k: (torch.from_numpy(x[i]), torch.from_numpy(y[i])) for k, i in cuts.items()}


def make_regression() -> Task:
    """A regression head with the default regression metric (NEG_MAE): distilled by mean squared error."""
    t = diabetes_splits()
    model = teacher("regression", *t["train"])
    with torch.no_grad():
        mae = float((model(t["val"][0]) - t["val"][1]).abs().mean())
    return Task(
        name="zoo-regression",
        teacher=model,
        train=TensorDataset(*t["train"]),
        val=TensorDataset(*t["val"]),
        test=TensorDataset(*t["test"]),
        input_shape=(10,),
        num_classes=1,
        output_kind="regression",
        input_spec=InputSpec(name="input", dtype="float32", value_range=(-5.0, 5.0),
                             normalisation="standardised features (z-scores)"),
        description="MLP regression head on scikit-learn's diabetes data (tests/zoo.py)",
        teacher_info={"arch": "regression", "key": _file_key(), "val_mae": mae},
    )


LM_SPLITS = (("train", 2048, 11), ("val", 512, 12), ("test", 512, 13))


def make_lm() -> Task:
    """A causal LM: token logits (N, T, V), distilled per token, judged by next-token top-1."""
    from search.metrics import TOKEN_TOP1

    t = {name: tuple(torch.from_numpy(a) for a in lm_data(n, seed)) for name, n, seed in LM_SPLITS}
    model = teacher("lm", *t["train"])
    with torch.no_grad():
        val = float(TOKEN_TOP1(model(t["val"][0]).numpy(), t["val"][1].numpy()).mean())
    return Task(
        name="zoo-lm",
        teacher=model,
        train=TensorDataset(*t["train"]),
        val=TensorDataset(*t["val"]),
        test=TensorDataset(*t["test"]),
        input_shape=(LM_LEN,),
        num_classes=LM_VOCAB,
        output_kind="tokens",
        description="causal LM over counting sequences of int64 token ids (tests/zoo.py)",
        teacher_info={"arch": "lm", "key": _file_key(), "val_token_top1": val},
    )


def val_split(arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The val inputs and targets of `arch`'s task, without its teacher."""
    if arch in REGRESSION:
        return diabetes_splits()["val"]
    if arch == "bert":
        _, n, seed = BERT_SPLITS[1]
        return tuple(torch.from_numpy(a) for a in keyword_data(n, seed))
    if arch == "lm":
        _, n, seed = LM_SPLITS[1]
        return tuple(torch.from_numpy(a) for a in lm_data(n, seed))
    from search.tasks.data import load_digits_split

    d = load_digits_split()
    return torch.from_numpy(d["val_x"]), torch.from_numpy(d["val_y"])


MAKERS = {"resnet": make_resnet, "mobilenetv3": make_mobilenetv3, "efficientnet": make_efficientnet,
          "shufflenet": make_shufflenet, "vit": make_vit, "bert": make_bert,
          "regression": make_regression, "lm": make_lm, "twohead": make_twohead}
