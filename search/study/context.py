"""Everything a trial needs that does not change between trials, built once per process."""

from __future__ import annotations

import hashlib
import io
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from search.config import DeviceProfile, SearchSpace
from search.measure.cache import MeasurementCache
from search.study.sampling import SearchLayers
from search.tasks import Task
from search.tasks.arrays import example_batch, inputs_digest
from search.utils.atomic import atomic_write_bytes


def example_input(task: Task, n: int = 1) -> torch.Tensor:
    """The task's first `n` selection inputs, in their dtype: they trace the teacher's dependency graph
    for pruning (n=1) and export and check every model (n=3). Same in every study of the task."""
    return example_batch(task.val, n)


def teacher_fingerprint(teacher: torch.nn.Module, train) -> str:
    """Key of the logits cache: the teacher's weights and the content of the training inputs."""
    h = hashlib.sha256(inputs_digest(train).encode())
    for k, v in sorted(teacher.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def logits_path(task: Task, cache_dir: Path) -> Path:
    """Where the teacher's cached training-set logits live (keyed by teacher weights and training inputs)."""
    return cache_dir / f"logits-{task.name}-{teacher_fingerprint(task.teacher, task.train)}.pt"


def cached_teacher_logits(task: Task, cache_dir: Path, device: torch.device) -> torch.Tensor | tuple:
    """The teacher's logits on the training set (a tuple, one per output, for several outputs), computed once per
    teacher and kept on disk."""
    from search.compress import teacher_logits

    path = logits_path(task, cache_dir)
    if path.is_file():
        try:
            logits = torch.load(path, map_location="cpu", weights_only=True)
            first = logits[0] if isinstance(logits, tuple) and logits else logits
            if isinstance(first, torch.Tensor) and first.shape == (len(task.train), task.num_classes):
                return logits
        except Exception as e:  # a torn or foreign file: recompute, never trust it
            print(f"warning: ignoring unreadable logits cache {path} ({type(e).__name__})", file=sys.stderr)
    logits = teacher_logits(task.teacher, task.train, batch_size=1000 if device.type == "cuda" else 64, device=device)
    buf = io.BytesIO()
    torch.save(logits, buf)
    atomic_write_bytes(path, buf.getvalue())
    return logits


@dataclass
class Context:
    task: Task
    space: SearchSpace
    profile: DeviceProfile
    study_dir: Path
    reference_onnx: Path
    layers: SearchLayers
    bits: tuple[int, ...]
    teacher_metrics: dict
    calibration: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    cache: MeasurementCache
    backend: object
    device: torch.device
    seed: int
    logits_dir: Path
    threads: int | None = None  # torch threads for distillation (cores / workers: no oversubscription)
    planned_draws: int | None = None  # training samples the study's trials draw in all (StudyRun sets it)
    _logits: torch.Tensor | None = field(default=None, repr=False)
    _logits_on_disk: bool | None = field(default=None, repr=False)

    @property
    def example(self) -> torch.Tensor:
        return example_input(self.task)

    @property
    def step_guard(self):
        """CPU-heavy work (every distillation step and the other stages, `StageTimer`) pauses while a local
        measurement runs on this host (another worker's, or another study's): the latency recorded during a busy
        study is the idle machine's. None for a remote device."""
        if self.profile.measure.backend != "local":
            return None
        from search.measure.local import cpu_work

        return cpu_work

    @property
    def examples(self) -> torch.Tensor:
        """Inputs that export and check a student (export_onnx's `example`)."""
        return example_input(self.task, 3)

    def live_teacher_is_cheaper(self) -> bool:
        """Cached logits cost one teacher pass over the whole training set (kept on disk for later studies); a live
        teacher costs one forward per sample drawn. With none cached yet and fewer draws planned for the whole
        study than training samples, run it live (the wordnet-supersense test study drew 5,120 of 50,597: its
        logits took 37 s of a 100 s study)."""
        if self._logits is not None or self.planned_draws is None or self.planned_draws >= len(self.task.train):
            return False
        if self._logits_on_disk is None:
            self._logits_on_disk = logits_path(self.task, self.logits_dir).is_file()
        return not self._logits_on_disk

    def teacher_logits(self) -> torch.Tensor:
        if self._logits is None:
            with self.step_guard() if self.step_guard else nullcontext():  # a pass over the whole training set
                self._logits = cached_teacher_logits(self.task, self.logits_dir, self.device)
        return self._logits

    def quantize(self, fp32: Path, out: Path, bits: dict[str, int]):
        """`search.compress.quantize` with this study's calibration set, the space's quantization settings and
        the profile's dynamic op types: every stage quantizes the way a trial does."""
        from search.compress import quantize

        q = self.space.quantization
        return quantize(fp32, out, bits, self.calibration, per_channel=q.per_channel, method=q.calibration.method,
                        dynamic_ops=self.profile.dynamic_ops())

    def runs_as(self, quantized: Path, layer_nodes) -> tuple[dict, str]:  # noqa: ANN001 - runs_as's argument
        """({layer: LayerRun}, where it was read): what ONNX Runtime runs for each layer of `quantized`, read
        from the optimised graph of the device that measures it: this host's session for a local profile, the
        agent's own (POST /v1/optimize) for a remote one, whose ONNX Runtime build may pick other kernels. An
        agent too old to answer falls back to this host's view, and says so."""
        import onnx

        from search.compress import runs_as

        rt = self.profile.runtime
        board, where = None, "host"
        if self.profile.measure.backend == "remote":
            if (answer := self.backend.optimized_model(quantized)) is None:
                where = "host (the agent predates /v1/optimize)"
            else:
                board, where = onnx.load_from_string(answer[0]), f"device: {answer[1].get('device', '?')}"
        found = runs_as(quantized, layer_nodes, graph_optimization=rt.graph_optimization, threads=rt.threads,
                        optimized=board)
        return found, where

    def measure(self, onnx_path: Path, recheck: bool = False, kernels: str | None = None):
        """`recheck`: a cache hit is confirmed by one fresh round (MeasurementCache.measure); `kernels`: the
        file's `kernel_signature`, part of the cache key."""
        return self.cache.measure(onnx_path, self.profile, self.backend, self.reference_onnx, recheck=recheck,
                                  kernels=kernels)
