"""Export a PyTorch model to ONNX (TorchScript exporter, dynamo where it cannot) with a dynamic batch dimension.

A dynamo export's nodes keep `pkg.torch.onnx.name_scopes`, which maps them back to module names
(see `onnx_names`); the bulky per-node stack traces are dropped: they inflate small models several
times over and leak local file paths into a file meant for deployment.

`fast` (the default) uses the TorchScript exporter (0.09-0.13 s against dynamo's 2.0-2.3 s, benchmarks/bench_export.py):
its node names carry the module scopes (`onnx_names.scope_module`), and a file where a Conv/Gemm/MatMul does not
map to a module of the model is exported by dynamo instead. Its graphs ran 1-2% faster than the dynamo ones here
(0.0807 vs 0.0817 ms teacher, 0.0659 vs 0.0670 ms pruned), the same saving either way, so compare latencies of
files from one exporter; the trial record says which wrote each file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from search.errors import TrialFailure
from search.tasks.inputs import call, feed, parts, to_numpy
from search.tasks.outputs import OUTPUT_NAME, output_names, output_parts  # noqa: F401 - OUTPUT_NAME re-exported

INPUT_NAME = "input"
# Node metadata worth keeping: module scopes (layer mapping) and class names (debugging).
KEEP_METADATA = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's prints, warnings and log lines (it is chatty even on success)."""
    # torch's log handlers hold the original stderr, so redirecting it is not enough: mute
    # logging below ERROR for the duration (process-wide, but exports are short).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _no_onnx_log():
    """The TorchScript exporter turns torch's C++ ONNX log on whatever `verbose` says (torch 2.13 tests a function
    for truth in `setup_onnx_logging`), and that log prints the whole graph to the process's stderr when a trace
    fails, past any Python redirect. Keep it off while we export."""
    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:  # another torch layout: nothing to fix
        yield
        return
    original = utils.setup_onnx_logging
    utils.setup_onnx_logging = lambda verbose: contextlib.nullcontext()
    torch._C._jit_set_onnx_log_enabled(False)
    try:
        yield
    finally:
        utils.setup_onnx_logging = original


def _strip_metadata(model: onnx.ModelProto) -> None:
    del model.graph.metadata_props[:]  # the ExportedProgram's signature: kilobytes nobody reads
    for node in model.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key in KEEP_METADATA]
        del node.metadata_props[:]
        for k, v in keep:
            node.metadata_props.add(key=k, value=v)


def _examples(example, batch: int, seed: int = 0):
    """`batch` inputs: rows of the task's own `example` tensor (its dtype: token ids stay int64; {name: tensor}
    for a model with several inputs), or uniform [0, 1) floats for a bare shape (raw pixels)."""
    if isinstance(example, torch.Tensor):
        reps = -(-batch // example.shape[0])
        return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch] if reps > 1 else example[:batch]
    if isinstance(example, Mapping):
        return {k: _examples(v, batch, seed) for k, v in example.items()}
    return torch.rand(batch, *example, generator=torch.Generator().manual_seed(seed))


def input_names(example) -> list[str]:
    """The ONNX file's input names: "input" for one input, the task's names for several."""
    return list(example) if isinstance(example, Mapping) else [INPUT_NAME]


class Reexport:
    """One structure's dynamo export, kept (unoptimised) so that the same modules with new weights are written
    by `apply_weights` and the optimiser (0.3 s) instead of a fresh export (1.5-12 s): a trial exports its
    structure to measure it before training and again once trained. The weighted file is byte-identical to a
    fresh export of the trained model; one that does not reproduce PyTorch's outputs is exported afresh."""

    def __init__(self) -> None:
        self.program = None  # torch.onnx.ONNXProgram, optimize=False
        self.reused = 0

    def write(self, model: nn.Module, path: Path) -> bool:
        """Write `model`'s weights into the kept export at `path`; False when there is none or it fails."""
        program, self.program = self.program, None  # used once: apply_weights and optimize work in place
        if program is None:
            return False
        try:
            with _quiet(), torch.no_grad():
                program.apply_weights(model.state_dict())
                program.optimize()
                _save(program.model_proto, path)
        except Exception:  # noqa: BLE001 - the caller exports afresh and reports that export's failure
            return False
        return True

    def keep(self, program) -> object:
        """Keep `program` (unoptimised) for `write`; returns an optimised copy to save now."""
        from torch.onnx import ONNXProgram

        self.program = program
        model = program.model.clone()
        # The optimiser names the nodes it makes from the graph's counters, which a clone restarts: carry them,
        # so the saved file has a fresh export's node names (the teacher's, which pruning records refer to).
        model.graph._name_authority = copy.deepcopy(program.model.graph._name_authority)
        copy_ = ONNXProgram(model, program.exported_program)
        copy_.optimize()
        return copy_


def _save(proto: onnx.ModelProto, path: Path) -> None:
    _strip_metadata(proto)
    onnx.save_model(proto, str(path))


def export_onnx(model: nn.Module, example: torch.Tensor | Sequence[int], path: str | os.PathLike,
                verify: bool = True, atol: float = 1e-4, fast: bool = True, reuse: Reexport | None = None) -> Path:
    """Write `model` (eval mode) as ONNX to `path`: input "input" [batch, ...] in the example's dtype,
    output "logits" (a model returning a tuple: "logits", "output_1", ...); one self-contained file. `example`
    is a batch of the task's inputs (preferred: it carries their dtype and valid values) or one sample's shape
    (float inputs). With `verify`, ONNX Runtime must reproduce PyTorch's outputs on those inputs (within `atol`
    relative to each output's scale) or this raises. Any failure raises TrialFailure with a short reason.
    `fast`: see the module docstring; a model the fast exporter cannot take goes the dynamo way. `reuse`: the
    export of this same structure kept by an earlier call with it is given `model`'s weights (see `Reexport`);
    this call's export is kept in it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _for_export(model.eval())
    # Batch 2: torch.export specialises a dimension whose example size is 1.
    traced = _examples(example, 2)
    with torch.no_grad():
        outputs = output_names(len(output_parts(call(model, traced))))
    if fast and _export_fast(model, traced, path, outputs):
        try:
            if verify:
                check_export(model, path, example, atol=atol)
            return path
        except TrialFailure:
            pass  # a trace that does not compute what the model computes: the dynamo export decides
    if reuse is not None and reuse.write(model, path):
        try:
            if verify:
                check_export(model, path, example, atol=atol)
            reuse.reused += 1
            return path
        except TrialFailure:
            pass  # exported afresh below: that export decides
    batch = torch.export.Dim("batch", min=1, max=65_536)
    inputs = parts(traced)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, inputs, dynamo=True, input_names=input_names(traced), output_names=outputs,
                dynamic_shapes=tuple({0: batch} for _ in inputs), verbose=False, report=False,
                optimize=reuse is None,
            )
            if reuse is not None:
                program = reuse.keep(program)
            _save(program.model_proto, path)
    except Exception as exc:
        raise TrialFailure(f"ONNX export failed{_step(exc)}: {short_reason(exc)}") from exc
    if verify:
        check_export(model, path, example, atol=atol)
    return path


def _export_fast(model: nn.Module, traced, path: Path, outputs: list[str]) -> bool:
    """The TorchScript exporter (deprecated, still shipped): True when it wrote `path`, the tracer did not warn
    that the trace may not generalise (Python control flow on data, a size turned into a constant), and every
    weighted node maps to a module of `model` (per-layer bits and `runs_as` need that)."""
    from search.compress.onnx_names import WEIGHTED_OPS, node_layer

    names = input_names(traced)
    try:
        with _quiet(), _no_onnx_log(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(model, parts(traced), str(path), dynamo=False, opset_version=17,
                              input_names=names, output_names=outputs,
                              dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]})
        proto = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - any failure: the dynamo exporter decides (and reports) instead
        return False
    if any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
        return False
    modules = {name for name, _ in model.named_modules()}
    inits = {i.name for i in proto.graph.initializer}
    return all(node_layer(n, inits) in modules for n in proto.graph.node
               if n.op_type in WEIGHTED_OPS and any(i in inits for i in n.input[1:]))


def _for_export(model: nn.Module) -> nn.Module:
    """The model to trace: on CPU (where it will be measured) and without in-place activations, whose
    functionalisation makes torch.export's decomposition ~1.5x slower (3.2 s vs 2.0 s on the Fashion-MNIST
    teacher) for an identical ONNX graph. A copy when anything changes; the caller's model is untouched."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    if on_cpu and not inplace:
        return model
    model = copy.deepcopy(model).cpu()
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


def check_export(model: nn.Module, path: str | os.PathLike, example: torch.Tensor | Sequence[int],
                 batch: int = 3, atol: float = 1e-4, seed: int = 0) -> float:
    """Max |ORT - PyTorch| on `batch` inputs (see `export_onnx`), scaled by each output's magnitude, over every
    output; raises TrialFailure above `atol` (a graph that does not compute what the model computes must not be
    scored)."""
    from search.utils.ort import cpu_session

    x = _examples(example, batch, seed)
    with torch.no_grad():
        refs = [r.float().numpy() for r in output_parts(call(model.eval(), x))]
    try:
        sess = cpu_session(path)
        got = sess.run(None, feed(sess, to_numpy(x)))
    except Exception as exc:
        raise TrialFailure(f"exported ONNX does not run in ONNX Runtime: {short_reason(exc)}") from exc
    if len(got) != len(refs) or any(g.shape != r.shape for g, r in zip(got, refs, strict=False)):
        raise TrialFailure(f"exported ONNX gives outputs of shapes {[g.shape for g in got]}, PyTorch "
                           f"{[r.shape for r in refs]}")
    err = max(float(np.max(np.abs(g - r), initial=0.0)) / max(1.0, float(np.max(np.abs(r), initial=0.0)))
              for g, r in zip(got, refs, strict=True))
    if not err <= atol:
        raise TrialFailure(f"exported ONNX differs from PyTorch (relative error {err:.2e} > {atol:g})")
    return err


def short_reason(exc: BaseException) -> str:
    """`RootCauseType: first line` of the innermost cause, without terminal colour codes."""
    root, seen = exc, {id(exc)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    text = [t.strip() for t in _ANSI.sub("", str(root)).splitlines() if t.strip()]
    return f"{type(root).__name__}: {text[0] if text else ''}"[:300].rstrip(": ")


def _step(exc: BaseException) -> str:
    """The exporter's stage ("step 1/3" is torch.export, "step 3/3" the ONNX translation)."""
    found = re.search(r"step \d/\d", _ANSI.sub("", str(exc)))
    return f" at {found.group(0)}" if found else ""
