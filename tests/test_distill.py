"""Distillation: kd_loss is the textbook formula; fine-tuning recovers a pruned teacher; NaN fails fast."""

from __future__ import annotations

import archs
import pytest
import torch
import torch.nn.functional as F
from _compress_fixtures import digits, example_input, torch_threads
from torch.utils.data import Dataset, TensorDataset

from search.compress import distill, evaluate, kd_loss, prunable_layers, prune, teacher_logits
from search.errors import TrialFailure


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


def _reference_kd(s, t, y, temperature, alpha):
    """alpha*CE + (1-alpha)*T^2*KL(p_teacher || p_student), written out with softmax and log."""
    n = s.shape[0]
    p_student = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    ce = -torch.log(p_student[torch.arange(n), y]).mean()
    pt = torch.exp(t / temperature) / torch.exp(t / temperature).sum(1, keepdim=True)
    ps = torch.exp(s / temperature) / torch.exp(s / temperature).sum(1, keepdim=True)
    kl = (pt * (torch.log(pt) - torch.log(ps))).sum() / n
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_kd_loss_equals_the_formula(temperature, alpha):
    g = torch.Generator().manual_seed(int(temperature * 10 + alpha * 100))
    s = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    got = kd_loss(s, t, y, temperature, alpha)
    torch.testing.assert_close(got, _reference_kd(s, t, y, temperature, alpha), rtol=1e-10, atol=1e-10)


def test_kd_loss_at_alpha_one_is_cross_entropy_and_zero_kl_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    torch.testing.assert_close(kd_loss(s, t, y, 3.0, 1.0), F.cross_entropy(s, y))
    torch.testing.assert_close(kd_loss(s, s, y, 3.0, 0.0), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_fine_tune_recovers_a_half_pruned_digits_teacher(digits_task):
    teacher = digits_task.teacher
    x = example_input()
    res = prune(teacher, x, {n: 0.5 for n in prunable_layers(teacher, x)})
    assert res.params_after < 0.4 * res.params_before  # the frozen teacher really was pruned
    student = res.model
    assert evaluate(student, digits_task.val) < 0.5  # pruning alone destroys it
    logits = teacher_logits(teacher, digits_task.train)
    assert logits.shape == (len(digits_task.train), 10)
    out = distill(student, digits_task.train, logits, temperature=4.0, alpha=0.3, epochs=2,
                  lr=0.02, batch_size=64, seed=0)
    assert out.steps == -(-2 * len(digits_task.train) // 64)  # two epochs of 64-image batches, rounded up
    assert out.epochs == pytest.approx(2.0, abs=0.03)
    assert not student.training
    assert evaluate(student, digits_task.val) >= 0.90
    assert all(not p.requires_grad for p in teacher.parameters())  # the task's teacher stays frozen


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU())
        self.digit, self.extra = torch.nn.Linear(32, 10), torch.nn.Linear(32, 3)

    def forward(self, x):
        h = self.body(x)
        return self.digit(h), self.extra(h)


@pytest.mark.parametrize("cached", [True, False])
def test_a_second_output_is_distilled_towards_the_teachers(cached):
    """A model returning (logits, extra): the logits train as usual and the extra output, which has no targets,
    is trained by mean squared error to the teacher's, from cached (a tuple per output) or live logits."""
    torch.manual_seed(0)
    teacher = _TwoHeads().eval()
    data = _tiny_data(256)
    student = _TwoHeads()
    student.load_state_dict(teacher.state_dict())
    torch.nn.init.normal_(student.extra.weight, std=1.0)  # only the extra head is off
    x = data.tensors[0]

    def gap() -> float:
        with torch.no_grad():
            return float(F.mse_loss(student.eval()(x)[1], teacher(x)[1]))

    before = gap()
    logits = teacher_logits(teacher, data) if cached else None
    if cached:
        assert isinstance(logits, tuple) and [t.shape for t in logits] == [(256, 10), (256, 3)]
    distill(student, data, logits, None if cached else teacher, temperature=2.0, alpha=0.5, steps=150, lr=0.01,
            batch_size=64, seed=0)
    assert gap() < before / 10, (before, gap())


def _tiny_data(n: int = 96) -> TensorDataset:
    d = digits()
    return TensorDataset(torch.from_numpy(d["train_x"][:n]), torch.from_numpy(d["train_y"][:n]))


def test_same_seed_same_student_and_teacher_module_path():
    data = _tiny_data()
    teacher = archs.build("resnet", seed=3)
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    runs = []
    for _ in range(2):
        student = archs.build("mobilenet", seed=1)
        r = distill(student, data, teacher=teacher, temperature=2.0, alpha=0.5, steps=4, max_samples=64,
                    lr=1e-3, batch_size=16, seed=5)
        runs.append((student.state_dict(), r))
    assert runs[0][1].steps == 4 and runs[0][1].epochs == pytest.approx(1.0)
    assert all(torch.equal(v, runs[1][0][k]) for k, v in runs[0][0].items())
    assert runs[0][1].final_loss == runs[1][1].final_loss
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in snapshot.items())
    assert not teacher.training
    seen = []
    distill(archs.build("mobilenet"), data, teacher=teacher, temperature=2.0, alpha=0.5, steps=3,
            lr=1e-3, batch_size=32, progress=lambda step, total, loss: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


class _Recording(torch.nn.Module):
    """A teacher that keeps every batch it is shown."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.inner(x)


def test_augment_feeds_the_live_teacher_and_student_the_same_transformed_batch():
    data = _tiny_data()
    teacher = _Recording(archs.build("resnet", seed=3))
    shown_to_student = []
    student = archs.build("mobilenet", seed=1)
    student.register_forward_pre_hook(lambda _m, args: shown_to_student.append(args[0].clone()))

    def flip(x, gen):
        assert isinstance(gen, torch.Generator)
        return x.flip(-1) + 1.0

    distill(student, data, teacher=teacher, augment=flip, temperature=2.0, alpha=0.5, steps=3, lr=1e-3,
            batch_size=16, seed=5)
    raw = data.tensors[0]
    assert len(teacher.seen) == len(shown_to_student) == 3
    for t, s in zip(teacher.seen, shown_to_student, strict=True):
        assert torch.equal(t, s)  # the same augmented batch
        undone = (t - 1.0).flip(-1)
        assert any(torch.equal(undone[0], r) for r in raw)  # ... of real training images, transformed
        assert not any(torch.equal(t[0], r) for r in raw)
    with pytest.raises(ValueError, match="live teacher"):  # cached logits are of unaugmented images
        distill(archs.build("mobilenet"), data, teacher_logits=torch.zeros(len(data), 10), augment=flip,
                temperature=2.0, alpha=0.5, steps=1)


def test_non_finite_loss_raises_trial_failure_naming_the_step():
    data = _tiny_data()
    with pytest.raises(TrialFailure, match=r"non-finite loss at step \d+"):
        distill(archs.build("mobilenet"), data, torch.zeros(len(data), 10), temperature=2.0, alpha=0.5,
                steps=30, lr=1e30, batch_size=16)
    bad = torch.zeros(len(data), 10)
    bad[:, 3] = float("inf")
    with pytest.raises(TrialFailure, match="non-finite loss at step 1 "):
        distill(archs.build("mobilenet"), data, bad, temperature=2.0, alpha=0.5, steps=5, lr=1e-3,
                batch_size=16)
    with pytest.raises(ValueError, match="teacher_logits has 3 rows"):
        distill(archs.build("mobilenet"), data, torch.zeros(3, 10), temperature=2.0, alpha=0.5, steps=1)


class _ListDataset(Dataset):
    """A map-style dataset that is not a TensorDataset (the DataLoader path)."""

    def __init__(self, base: TensorDataset) -> None:
        self.items = [base[i] for i in range(len(base))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_generic_dataset_lines_up_precomputed_logits():
    base = _tiny_data(64)
    teacher = archs.build("resnet", seed=3)
    logits = teacher_logits(teacher, base, batch_size=16)
    results = []
    for data in (base, _ListDataset(base)):
        student = archs.build("mobilenet", seed=1)
        results.append(distill(student, data, logits, temperature=2.0, alpha=0.5, epochs=1, lr=1e-3,
                               batch_size=16, seed=2))
    # Same samples, same order, same teacher rows: the two paths train identically.
    assert results[0].steps == results[1].steps == 4
    assert results[0].final_loss == pytest.approx(results[1].final_loss, rel=1e-6)
