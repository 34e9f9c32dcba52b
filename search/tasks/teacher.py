"""Teacher recipes: train on first use, cache under results/teachers/, verify before reuse."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from search.tasks.decoder import DecoderSpec
from search.tasks.encoder import EncoderSpec
from search.tasks.models import EdgeNetSpec, ResNetSpec
from search.utils.atomic import atomic_write_bytes, atomic_write_text
from search.utils.files import sha256_file
from search.utils.progress import progress_bar

TeacherSpec = EdgeNetSpec | ResNetSpec | EncoderSpec | DecoderSpec


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 0.01
    label_smoothing: float = 0.05
    flip: bool = False  # horizontal flips (clothes yes, digits no)
    shift: int = 0  # random +-shift pixels
    seed: int = 0


def pick_device(train_on: str = "auto") -> torch.device:
    if train_on == "cuda" or (train_on == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from search.errors import UserError

            raise UserError("--train-on cuda: no CUDA device is available (use auto or cpu)")
        return torch.device("cuda")
    return torch.device("cpu")


def augment_batch(x: torch.Tensor, gen: torch.Generator, recipe: TrainRecipe) -> torch.Tensor:
    """The recipe's training augmentation of an image batch: random horizontal flips, one random shift."""
    if recipe.flip:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if recipe.shift:
        s = recipe.shift
        padded = F.pad(x, (s, s, s, s))
        dx, dy = (int(v) for v in torch.randint(0, 2 * s + 1, (2,), generator=gen))
        x = padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
    return x


def output_kind(spec: TeacherSpec) -> str:
    """What the teacher's output is: "tokens" for a language model, else class logits."""
    return getattr(spec, "output_kind", "classes")


def _loss(out: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe, kind: str) -> torch.Tensor:
    if kind == "tokens":  # (N, T, V) logits: every scored position is a sample; padding trains nothing
        from search.metrics import IGNORE_INDEX

        return F.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=recipe.label_smoothing)
    return F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, batch: int = 1000,
             kind: str = "classes") -> float:
    """The task's default metric (top-1, or next-token top-1 per sequence) averaged over the samples; `x` may hold
    several inputs ({name: array})."""
    from search.metrics import DEFAULT_METRIC
    from search.tasks.inputs import call, count, map_inputs, rows

    model.eval()
    x, y = map_inputs(torch.as_tensor, x), np.asarray(y)
    dev = next(model.parameters()).device
    metric = DEFAULT_METRIC[kind]
    scores = [metric(call(model, map_inputs(lambda t: t.to(dev), rows(x, slice(i, i + batch)))).cpu().numpy(),
                     y[i : i + batch]) for i in range(0, count(x), batch)]
    return float(np.concatenate(scores).mean())


@torch.no_grad()
def perplexity(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """exp(mean cross-entropy over the scored positions) of a language model's (N, T, V) logits."""
    from search.metrics import IGNORE_INDEX

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        out, t = model(torch.as_tensor(x[i : i + batch])), torch.as_tensor(y[i : i + batch])
        total += F.cross_entropy(out.flatten(0, 1), t.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((t != IGNORE_INDEX).sum())
    return math.exp(total / max(count, 1))


def train_teacher(spec: TeacherSpec, recipe: TrainRecipe, data: dict[str, np.ndarray], *, label: str,
                  device: torch.device, progress: bool = True,
                  step_guard: Callable[[], AbstractContextManager] | None = None) -> tuple[nn.Module, dict]:
    """Train a teacher from `recipe`; each step runs inside `step_guard()` when given (see `distill`)."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = spec.build().to(device)
    kind = output_kind(spec)
    x, y = torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"])
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    t0 = time.perf_counter()
    with progress_bar(f"training {label} teacher", total=recipe.epochs * steps_per_epoch, enabled=progress,
                      every=steps_per_epoch) as bar:  # in a log: one line per epoch
        for _epoch in range(recipe.epochs):
            model.train()
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), recipe.batch_size):
                idx = order[i : i + recipe.batch_size]
                xb = augment_batch(x[idx], gen, recipe).to(device)
                with step_guard() if step_guard else nullcontext():
                    loss = _loss(model(xb), y[idx].to(device), recipe, kind)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                bar.advance(1, f"loss {loss.item():.3f}")
    seconds = time.perf_counter() - t0
    model = model.cpu().eval()
    stats = {"val_accuracy": evaluate(model, data["val_x"], data["val_y"], kind=kind),
             "train_seconds": round(seconds, 1)}
    if kind == "tokens":
        stats["val_perplexity"] = round(perplexity(model, data["val_x"], data["val_y"]), 3)
    return model, stats


def cache_key(name: str, spec: TeacherSpec, recipe: TrainRecipe, data_fp: str) -> str:
    return _key(name, spec.to_dict(), asdict(recipe), data_fp)


def _key(name: str, spec: dict, recipe: dict, data_fp: str) -> str:
    blob = json.dumps({"task": name, "spec": spec, "recipe": recipe, "data": data_fp}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_cached(weights: Path, meta_path: Path, spec: TeacherSpec) -> tuple[nn.Module, dict] | None:
    """The cached teacher, or None when absent; a corrupt cache is reported and ignored."""
    if not weights.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != sha256_file(weights):
            raise ValueError("checksum mismatch (half-written or modified file)")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = spec.build()
        model.load_state_dict(state)
        return model.eval(), meta
    except Exception as e:  # any failure means: do not trust it, rebuild
        print(f"warning: teacher cache {weights} is unusable ({type(e).__name__}: {e}); retraining",
              file=sys.stderr)
        return None


# Teachers the project trained and ships (issue: a fresh clone reaches a front in minutes, not after a
# 20-minute training run). Verified exactly like the cache: file name = recipe/data key, sha256 sidecar.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def _valid_meta(meta_path: Path, key: str) -> bool:
    """The sidecar describes this key: recomputing the key from its recipe, spec and data fingerprint
    gives the file name's key (a renamed or edited file does not pass)."""
    try:
        meta = json.loads(meta_path.read_text())
        return _key(meta["task"], meta["spec"], meta["recipe"], meta["data"]) == key == meta["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _from_shipped(name: str, key: str, spec: TeacherSpec, folder: Path, shipped: Path) -> tuple[nn.Module, dict] | None:
    """The shipped teacher for this exact key, verified, then copied into the cache; None if absent or bad."""
    weights, meta_path = shipped / f"{name}-{key}.pt", shipped / f"{name}-{key}.json"
    if not weights.exists():
        return None
    if not _valid_meta(meta_path, key):
        print(f"warning: shipped teacher {weights} does not match its recipe; retraining", file=sys.stderr)
        return None
    loaded = load_cached(weights, meta_path, spec)
    if loaded is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / weights.name, weights.read_bytes())
    atomic_write_text(folder / meta_path.name, meta_path.read_text())
    return loaded


def get_teacher(name: str, spec: TeacherSpec, recipe: TrainRecipe, data: dict[str, np.ndarray], *,
                data_fp: str, results_dir: str | Path = "results", train_on: str = "auto",
                progress: bool = True, retrain: bool = False, shipped: Path | None = SHIPPED_DIR
                ) -> tuple[nn.Module, dict]:
    """The teacher for this recipe and data: the cache, else the shipped file, else trained now (`retrain`
    trains regardless). Every source is checked (sha256, recipe key) before it is used."""
    folder = Path(results_dir) / "teachers"
    key = cache_key(name, spec, recipe, data_fp)
    weights, meta_path = folder / f"{name}-{key}.pt", folder / f"{name}-{key}.json"
    if not retrain:
        cached = load_cached(weights, meta_path, spec)
        if cached is not None:
            return cached
        if shipped is not None and (found := _from_shipped(name, key, spec, folder, shipped)) is not None:
            return found
    model, stats = train_teacher(spec, recipe, data, label=name, device=pick_device(train_on), progress=progress)
    import io

    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.from_numpy(data["val_x"][:1]))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights, buf.getvalue())
    meta = {"task": name, "key": key, "sha256": sha256_file(weights), "params": int(params), "macs": int(macs),
            "recipe": asdict(recipe), "spec": spec.to_dict(), "data": data_fp, "created": time.time(), **stats}
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return model, meta


def cached_meta(results_dir: str | Path, name: str) -> dict | None:
    """Newest cached teacher metadata for a task name, without loading torch weights."""
    folder = Path(results_dir) / "teachers"
    metas = sorted(folder.glob(f"{name}-*.json"), key=os.path.getmtime, reverse=True) if folder.is_dir() else []
    metas += sorted(SHIPPED_DIR.glob(f"{name}-*.json"))  # not trained here yet: the shipped one it will use
    for m in metas:
        try:
            return json.loads(m.read_text())
        except (OSError, ValueError):
            continue
    return None
