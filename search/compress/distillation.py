"""Knowledge distillation: fine-tune a (pruned) student towards the teacher's soft targets.

The teacher's logits are best computed once per task (`teacher_logits`) and passed in: a trial
then costs only student forward/backward passes. Training is deterministic for a seed on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from search.errors import TrialFailure

ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass(frozen=True)
class DistillResult:
    steps: int
    epochs: float  # samples seen / training-set size
    final_loss: float  # mean loss over the last up-to-20 steps
    seconds: float


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al.); batch mean.
    """
    t = float(temperature)
    ce = F.cross_entropy(student_logits, labels)
    if alpha >= 1.0:
        return ce
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1.0 - alpha) * t * t * kl


def regression_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, targets: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """alpha * MSE(student, targets) + (1 - alpha) * MSE(student, teacher): a regression head's distillation
    (no temperature: there is no distribution to soften)."""
    s = student_out.reshape(len(student_out), -1)
    mse = F.mse_loss(s, targets.to(s.dtype).reshape(s.shape))
    if alpha >= 1.0:
        return mse
    return alpha * mse + (1.0 - alpha) * F.mse_loss(s, teacher_out.reshape(s.shape))


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                  temperature: float, alpha: float) -> torch.Tensor:
    """`kd_loss` per token of (N, T, V) logits, the temperature over V, averaged over the positions whose
    target is not IGNORE_INDEX (padding and unscored positions train nothing)."""
    from search.metrics import IGNORE_INDEX

    keep = targets.reshape(-1) != IGNORE_INDEX
    v = student_logits.shape[-1]
    s, t, y = student_logits.reshape(-1, v)[keep], teacher_logits.reshape(-1, v)[keep], targets.reshape(-1)[keep]
    if len(y) == 0:
        return student_logits.sum() * 0.0  # no scored position in the batch: a zero loss that still backprops
    return kd_loss(s, t, y, temperature, alpha)


def task_loss(output_kind: str) -> Callable[..., torch.Tensor]:
    """The distillation loss for a task's output kind, as (student, teacher, targets, temperature, alpha). For a
    model with several outputs, the kind's loss on the first plus the mean squared error of every other output to
    the teacher's (they have no targets of their own: the teacher is what they are trained towards)."""
    from search.tasks.outputs import output_parts, primary

    if output_kind == "regression":
        first = lambda s, t, y, _temperature, alpha: regression_loss(s, t, y, alpha)  # noqa: E731
    else:
        first = token_kd_loss if output_kind == "tokens" else kd_loss

    def loss(student_out, teacher_out, targets, temperature, alpha):
        value = first(primary(student_out), primary(teacher_out), targets, temperature, alpha)
        for s, t in zip(output_parts(student_out)[1:], output_parts(teacher_out)[1:], strict=True):
            value = value + F.mse_loss(s.float(), t.float())
        return value

    return loss


@torch.no_grad()
def teacher_logits(teacher: nn.Module, dataset: Dataset, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Logits of `teacher` for every sample of `dataset`, in index order (eval mode, no grad); a tuple of one
    such tensor per output for a teacher with several outputs. Small batches on a CPU: the Fashion-MNIST
    teacher's 55,000 images took 14-18 s in batches of 64, 19-22 s of 128 and 50 s of 1,000 (its depthwise
    convolutions fall out of cache), the ResNet-18-class teacher's 90 s against 144 s of 1,000."""
    from search.tasks.inputs import call, map_inputs
    from search.tasks.outputs import output_parts

    was_training = teacher.training
    teacher.eval().to(device)
    out, several = [], False
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            got = call(teacher, map_inputs(lambda t: t.to(device), batch[0]))
            several = isinstance(got, (tuple, list))
            out.append([o.float().cpu() for o in output_parts(got)])
    finally:
        teacher.train(was_training)
    if not out:
        return torch.empty(0)
    cat = tuple(torch.cat(column) for column in zip(*out, strict=True))
    return cat if several else cat[0]


class _Indexed(Dataset):
    """(x, y, index) so precomputed teacher logits line up with whatever sampler is used."""

    def __init__(self, base: Dataset, indices: torch.Tensor) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        x, y = self.base[j][:2]
        return x, y, j


def _batches(dataset: Dataset, indices: torch.Tensor, batch_size: int, steps: int, gen: torch.Generator):
    """Yield `steps` shuffled batches (x, y, idx), reshuffling every pass over `indices`."""
    from search.tasks.inputs import InputsDataset, rows

    tensors = dataset.tensors if isinstance(dataset, TensorDataset) else None
    if isinstance(dataset, InputsDataset):
        tensors = (dataset.inputs, dataset.targets)  # {name: tensor}, sliced alike
    made = 0
    while made < steps:
        order = indices[torch.randperm(len(indices), generator=gen)]
        if tensors is not None:  # fast path: slice tensors instead of collating single items
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                yield rows(tensors[0], idx), tensors[1][idx], idx
                made += 1
                if made == steps:
                    return
        else:
            loader = DataLoader(_Indexed(dataset, order), batch_size=batch_size, shuffle=False)
            for x, y, idx in loader:
                yield x, y, idx
                made += 1
                if made == steps:
                    return


def distill(
    student: nn.Module,
    train_dataset: Dataset,
    teacher_logits: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    *,
    temperature: float,
    alpha: float,
    epochs: float | None = None,
    steps: int | None = None,
    max_samples: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | ProgressFn = False,
    weight_decay: float = 1e-4,
    num_threads: int | None = None,
    step_guard: Callable[[], AbstractContextManager] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    output_kind: str = "classes",
) -> DistillResult:
    """Fine-tune `student` in place with `kd_loss` (AdamW, warm-up + cosine); leaves it in eval mode.

    Give `teacher_logits` (aligned with `train_dataset` indices) or a `teacher` (run frozen, eval
    mode). Budget: `steps`, else `epochs` (default 1) over at most `max_samples` samples, a subset
    fixed by `seed`. A non-finite loss raises TrialFailure naming the step. `num_threads` caps
    torch's CPU threads for the run: small models train faster on one thread, and much faster
    when other processes share the cores (OpenMP workers spin against them). Each step runs inside
    `step_guard()` when given (a study holds its steps off while a latency measurement runs).
    `augment(batch, generator)` transforms each input batch before both models see it; it needs a live
    `teacher` (cached logits belong to the unaugmented inputs). `output_kind` "regression" distils by mean
    squared error (`regression_loss`) instead of `kd_loss`, "tokens" per token (`token_kd_loss`).
    """
    from search.tasks.inputs import call, map_inputs
    from search.tasks.outputs import primary

    if teacher_logits is None and teacher is None:
        raise ValueError("distill needs teacher_logits or a teacher")
    if augment is not None and teacher is None:
        raise ValueError("distill with augment needs a live teacher: cached logits are of unaugmented inputs")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0 (got alpha={alpha}, T={temperature})")
    live = teacher_logits is None or augment is not None  # run the teacher on each (transformed) batch
    loss_fn = task_loss(output_kind)
    n_total = len(train_dataset)
    if teacher_logits is not None and len(primary(teacher_logits)) != n_total:
        raise ValueError(f"teacher_logits has {len(primary(teacher_logits))} rows for {n_total} samples")
    gen = torch.Generator().manual_seed(seed)
    indices = torch.arange(n_total)
    if max_samples is not None and max_samples < n_total:
        indices = torch.randperm(n_total, generator=gen)[:max_samples].sort().values
    n = len(indices)
    if steps is None:
        steps = max(1, math.ceil((1.0 if epochs is None else epochs) * n / batch_size))
    student.to(device).train()
    for p in student.parameters():  # a copy of a frozen teacher arrives with requires_grad off
        p.requires_grad_(True)
    teacher_was_training = teacher is not None and teacher.training
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
    bar = _progress_bar(progress, steps)
    recent: list[float] = []
    seen = 0
    start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    # Seed dropout & co. without disturbing the caller's global CPU random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            for step, (x, y, idx) in enumerate(_batches(train_dataset, indices, batch_size, steps, gen), 1):
                if augment is not None:
                    x = augment(x, gen)
                x, y = map_inputs(lambda t: t.to(device), x), y.to(device)
                if live:
                    with torch.no_grad():
                        t_logits = call(teacher, x)
                else:
                    t_logits = map_inputs(lambda t, i=idx: t[i].to(device), teacher_logits)
                with step_guard() if step_guard else nullcontext():
                    loss = loss_fn(call(student, x), t_logits, y, temperature, alpha)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrialFailure(f"non-finite loss at step {step} of {steps} ({value}; lr={lr:g}, "
                                           f"T={temperature:g}, alpha={alpha:g})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                seen += len(y)
                recent = (recent + [value])[-20:]
                if bar is not None:
                    bar(step, steps, value)
        finally:
            student.eval()
            if teacher is not None:
                teacher.train(teacher_was_training)
            if hasattr(bar, "close"):
                bar.close()
            torch.set_num_threads(threads_before)
    return DistillResult(steps=steps, epochs=seen / max(n, 1), final_loss=sum(recent) / max(len(recent), 1),
                         seconds=time.perf_counter() - start)


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up over the first 10% of steps, then cosine to zero. Unlike
    OneCycleLR it is defined for any number of steps, including one."""
    warm = max(1, round(0.1 * steps))

    def factor(i: int) -> float:
        if steps <= 1:
            return 1.0
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))

    return factor


class _Tqdm:
    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm  # only when asked for: tqdm is an optional nicety

        self.bar = tqdm(total=total, desc="distill", leave=False)

    def __call__(self, step: int, total: int, loss: float) -> None:
        self.bar.update(1)
        if step % 10 == 0 or step == total:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        self.bar.close()


def _progress_bar(progress: bool | ProgressFn, total: int) -> ProgressFn | None:
    if callable(progress):
        return progress
    return _Tqdm(total) if progress else None


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of a PyTorch model's first output (for tests and sanity checks; trials score the ONNX
    file)."""
    from search.tasks.inputs import call, map_inputs
    from search.tasks.outputs import primary

    model.eval().to(device)
    correct = total = 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            pred = primary(call(model, map_inputs(lambda t: t.to(device), batch[0]))).argmax(-1).cpu()
            correct += int((pred == batch[1]).sum())
            total += len(batch[1])
    return correct / max(total, 1)

