"""onnx-neural-compressor's auto-tuning on the fp32 teacher; runs INSIDE benchmarks/peers/.venv-onc.

`tuning.autotune` over `StaticQuantConfig.get_config_set_for_tuning()` (its default: QOperator, uint8
activations / int8 weights, op-type and per-channel variants) with tolerable_loss=0.01 (relative top-1)
and an eval_fn that is ONNX Runtime top-1 on the evaluation images. It stops at the first config within
the tolerance and returns that one model (or none). Writes OUT/onc-1.onnx and OUT/result.json (the
tool's baseline and per-trial top-1 as its eval_fn saw them, search wall time). Called by
benchmarks/bench_peers.py; by hand:

    benchmarks/peers/.venv-onc/bin/python benchmarks/peers/run_onc.py \
        --model teacher_fp32.onnx --data peers_data.npz --out OUT [--max-trials 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx_neural_compressor.quantization import config, tuning


class Reader:
    """Calibration batches in the shape onnx-neural-compressor's CalibrationDataReader protocol wants."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self.x, self.batch, self.pos = x, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {"input": chunk}

    def rewind(self) -> None:
        self.pos = 0


def _plain(value: object) -> object:
    """Enum members and ONNX type codes as readable JSON values."""
    if isinstance(value, (list, tuple)):
        return sorted(_plain(v) for v in value)
    name = getattr(value, "name", None)
    if name is None and isinstance(value, int) and not isinstance(value, bool):
        name = onnx.TensorProto.DataType.Name(value).lower()
    return name if name is not None else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--tolerable-loss", type=float, default=0.01)
    args = parser.parse_args()
    with np.load(args.data) as npz:
        calib = np.ascontiguousarray(npz["calib_x"], dtype=np.float32)
        x, y = np.ascontiguousarray(npz["eval_x"], dtype=np.float32), npz["eval_y"]

    seen: list[float] = []  # every eval_fn result in call order: the fp32 baseline first, then each trial

    def eval_fn(path: str) -> float:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        preds = np.concatenate([sess.run(None, {"input": x[i:i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
        seen.append(float((preds == y).mean()))
        return seen[-1]

    tried: list[dict] = []  # the config of each trial, in order (autotune reports only the model)
    full: set[str] = set()
    quantize = tuning._quantize

    def recording_quantize(model_input: str, quant_config: config.StaticQuantConfig, **kwargs: object) -> object:
        keys = (*quant_config.params_list, "quant_format", "reduce_range", "quant_last_matmul")
        ops = set(quant_config.op_types_to_quantize or ())
        full.update(ops if not tried else ())  # the first config quantizes every op type the tool supports
        tried.append({**{k: _plain(getattr(quant_config, k, None)) for k in keys},
                      "op_types_left_fp32": sorted(full - ops)})
        return quantize(model_input, quant_config=quant_config, **kwargs)

    tuning._quantize = recording_quantize
    tune = tuning.TuningConfig(config_set=config.StaticQuantConfig.get_config_set_for_tuning(),
                               tolerable_loss=args.tolerable_loss, max_trials=args.max_trials)
    start = time.perf_counter()
    try:
        best = tuning.autotune(str(args.model), tune, eval_fn=eval_fn, calibration_data_reader=Reader(calib))
    except SystemExit:  # autotune calls exit(0) when no config meets the tolerance
        best = None
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    models = []
    if best is not None:
        onnx.save_model(best, str(args.out / "onc-1.onnx"))
        chosen = tried[-1] if tried else {}
        label = f"{chosen.get('quant_format')}, {'per-ch.' if chosen.get('per_channel') else 'per-tensor'}"
        models.append({"name": f"onnx-neural-compressor ({label})", "path": "onc-1.onnx",
                       "config": chosen,
                       "peer_metrics": {"accuracy": seen[-1]},
                       # autotune also returns the LAST trial's model when max_trials runs out, met or not
                       "meets_tolerance": seen[-1] >= seen[0] * (1 - args.tolerable_loss)})
    trials = [{"config": c, "accuracy": a} for c, a in zip(tried, seen[1:], strict=False)]
    result = {"tool": "onnx-neural-compressor", "version": version("onnx-neural-compressor"),
              "onnxruntime": version("onnxruntime"), "search_seconds": round(seconds, 2),
              "tolerable_loss": args.tolerable_loss, "max_trials": args.max_trials, "candidates": len(seen[1:]),
              "peer_baseline": {"accuracy": seen[0]} if seen else {}, "trials": trials,
              "models": models}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    found = "1 model" if models else "no model within the tolerance"
    print(f"onnx-neural-compressor: {found} after {len(seen[1:])} trial(s) in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
