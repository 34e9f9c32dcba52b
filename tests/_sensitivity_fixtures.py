"""A small model built so the sensitivity order is known, and its (memoised) real sensitivity run.

`SignalNet` (8x8 digits): stem conv -> `idle` conv -> `signal` conv -> pool -> classifier. Half of `idle`'s
output channels are dead (zero filter, zero BatchNorm scale and shift, kept so through training): pruning
`idle` by 50% removes exactly those (they have the least L2 importance) and cannot change a prediction, while
every channel of `signal` carries signal. So `prune.idle.conv=0.5` costs 0 points and `prune.signal.conv=0.5`
costs many.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
from _study_fixtures import profile_text
from torch import nn

SPACE = """name: sens-tiny
distillation:
  temperature: {low: 1.0, high: 8.0, log: true}
  alpha: {low: 0.0, high: 0.7}
  budget: {steps: 40}
  refine: {steps: 80}
pruning:
  ratios: [0.0, 0.5]
  granularity: layer
quantization:
  bits: [32, 8]
  granularity: layer
  calibration: {samples: 64}
"""


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class SignalNet(nn.Module):
    DEAD = slice(8, 16)  # idle's dead output channels

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(1, 16)
        self.idle = ConvBN(16, 16)
        self.signal = ConvBN(16, 16)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.signal(self.idle(self.stem((x - 0.3) / 0.38)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    @torch.no_grad()
    def kill(self) -> None:
        self.idle.conv.weight[self.DEAD] = 0
        self.idle.bn.weight[self.DEAD] = 0
        self.idle.bn.bias[self.DEAD] = 0


def train_signal_net(train, epochs: int = 25, seed: int = 0) -> SignalNet:
    torch.manual_seed(seed)
    model = SignalNet()
    model.kill()
    x, y = train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            model.kill()
    return model.eval()


def signal_task(digits_task):
    from search import Task

    return Task(name="signal-net", teacher=train_signal_net(digits_task.train), train=digits_task.train,
                val=digits_task.val, input_shape=(1, 8, 8), num_classes=10)


def make_context(task, folder: Path, space_text: str = SPACE, seed: int = 0):
    """A real trial context (in-memory study, structure cache under `folder`), as a study builds it."""
    import optuna

    from search.config import load_profile, load_space
    from search.study.record import DIRECTIONS
    from search.study.setup import build_context

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space_text)
    (folder / "profile.yaml").write_text(profile_text())
    space, profile = load_space(folder / "space.yaml"), load_profile(folder / "profile.yaml")
    st = optuna.create_study(directions=list(DIRECTIONS))
    return build_context(st, task, space, profile, folder / "study", seed=seed, train_on="cpu", task_spec=task.name,
                         space_file=str(folder / "space.yaml"), profile_file=str(folder / "profile.yaml"))


@functools.cache
def _run(digits_task):
    from search.seeding.sensitivity import measure_sensitivity

    folder = Path(tempfile.mkdtemp(prefix="hwsearch-sens-"))
    atexit.register(shutil.rmtree, folder, True)
    ctx = make_context(signal_task(digits_task), folder)
    misses = ctx.cache.misses
    sens = measure_sensitivity(ctx, bn_batches=0)  # the tests compare with torch on the plainly pruned models
    return ctx, sens, ctx.cache.misses - misses


def signal_sensitivity(digits_task):
    """(context, Sensitivity, device measurements it took) of SignalNet, computed once per test session."""
    return _run(digits_task)
