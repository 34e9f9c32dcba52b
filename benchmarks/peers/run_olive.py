"""Microsoft Olive's own search on the fp32 teacher; runs INSIDE benchmarks/peers/.venv-olive.

Olive 0.13 workflow: ONNX input model, LocalSystem CPU, pass `OnnxStaticQuantization` with its
options left as SEARCHABLE_VALUES (precision, per-channel, calibration method, QDQ/QOperator), TPE
search, Olive's OnnxEvaluator with top-1 (priority 1), latency avg/p90 (batch 1, one thread) and size
on disk. Copies every candidate on Olive's Pareto frontier (footprint.json) to OUT and writes
OUT/result.json: per model the pass config and Olive's own metrics, plus the search wall time.
Called by benchmarks/bench_peers.py; by hand:

    OLIVE_DISABLE_TELEMETRY=1 benchmarks/peers/.venv-olive/bin/python benchmarks/peers/run_olive.py \
        --model teacher_fp32.onnx --data peers_data.npz --out OUT [--max-iter 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
HERE = Path(__file__).resolve().parent
# Olive's own search space for the pass (each option's search_defaults; activation_type follows precision)
SEARCHED = ("precision", "per_channel", "reduce_range", "quant_preprocess", "calibrate_method", "quant_format")


def config(model: Path, data: Path, work: Path, max_iter: int) -> dict:
    def data_config(name: str, split: str, batch: int, limit: int | None = None) -> dict:
        return {"name": name, "user_script": str(HERE / "olive_data.py"),
                "load_dataset_config": {"type": "hwsearch_npz",
                                        "params": {"data_path": str(data), "split": split, "limit": limit}},
                "post_process_data_config": {"type": "argmax_logits"},
                "dataloader_config": {"batch_size": batch}}

    one_thread = {"onnx": {"session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}}
    metrics = [
        {"name": "accuracy", "type": "accuracy", "data_config": "eval_data",
         "sub_types": [{"name": "accuracy_score", "priority": 1,
                        "metric_config": {"task": "multiclass", "num_classes": 10}}]},
        # Latency at the deployment point (batch 1, one thread), no goal: FACTS notes a 5% latency goal
        # left Olive with no candidates at all.
        {"name": "latency", "type": "latency", "data_config": "latency_data",
         "sub_types": [{"name": "avg", "priority": 2, "metric_config": {"warmup_num": 50, "repeat_test_num": 200}},
                       {"name": "p90"}],
         "user_config": {"inference_settings": one_thread}},
        {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes"}]},
    ]
    quant = {"type": "OnnxStaticQuantization", "data_config": "calib_data",
             **{k: "SEARCHABLE_VALUES" for k in SEARCHED}}
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {"local_system": {"type": "LocalSystem",
                                     "accelerators": [{"device": "cpu",
                                                       "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [data_config("calib_data", "calib", 16), data_config("eval_data", "eval", 500),
                         data_config("latency_data", "eval", 1, limit=1)],
        "evaluators": {"common_evaluator": {"type": "OnnxEvaluator", "metrics": metrics}},
        "passes": {"quantization": quant},
        "search_strategy": {"execution_order": "joint", "sampler": "tpe", "max_iter": max_iter, "seed": 0},
        "evaluator": "common_evaluator", "evaluate_input_model": True,
        "host": "local_system", "target": "local_system",
        "cache_dir": str(work / "cache"), "output_dir": str(work / "output"), "log_severity_level": 3,
    }


def metric_values(node_metrics: dict | None) -> dict:
    """{'accuracy-accuracy_score': {'value': ..}, ...} -> {'accuracy-accuracy_score': ..}."""
    value = (node_metrics or {}).get("value") or {}
    return {k: v.get("value") if isinstance(v, dict) else v for k, v in value.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-iter", type=int, default=10)
    args = parser.parse_args()
    from olive.workflows import run as olive_run

    out = args.out.resolve()
    work = out / "olive-work"
    shutil.rmtree(work, ignore_errors=True)  # a stale cache would skip the search and fake its time
    work.mkdir(parents=True)
    cfg = config(args.model.resolve(), args.data.resolve(), work, args.max_iter)
    (work / "config.json").write_text(json.dumps(cfg, indent=2))
    start = time.perf_counter()
    olive_run(cfg)
    seconds = time.perf_counter() - start

    footprints = sorted((work / "output").rglob("footprint.json"))
    if not footprints:
        print(f"Olive wrote no footprint.json under {work / 'output'}", file=sys.stderr)
        return 1
    nodes = json.loads(footprints[0].read_text())  # model id -> node
    input_id = next((k for k, n in nodes.items() if not n.get("parent_model_id")), None)
    models, candidates = [], []
    for model_id, node in nodes.items():
        if model_id == input_id:
            continue
        pass_cfg = {k: v for k, v in (node.get("pass_run_config") or {}).items() if k in (*SEARCHED, "activation_type")}
        candidates.append({"config": pass_cfg, "peer_metrics": metric_values(node.get("metrics")),
                           "pareto": bool(node.get("is_pareto_frontier"))})
        if not node.get("is_pareto_frontier"):
            continue
        src = Path(node["model_config_data"]["config"]["model_path"])
        src = src if src.suffix == ".onnx" else next(src.glob("*.onnx"))
        dst = out / f"olive-{len(models) + 1}.onnx"
        shutil.copyfile(src, dst)
        bits = {"uint8": "u8", "int8": "s8"}.get(str(pass_cfg.get("precision")), pass_cfg.get("precision"))
        scope = "per-ch." if pass_cfg.get("per_channel") else "per-tensor"
        label = f"{pass_cfg.get('quant_format')} {bits}, {scope}, {pass_cfg.get('calibrate_method')}"
        models.append({"name": f"Olive {len(models) + 1} ({label})", "path": dst.name,
                       "config": pass_cfg,
                       "peer_metrics": metric_values(node.get("metrics"))})
    baseline = metric_values(nodes[input_id].get("metrics")) if input_id else {}
    result = {"tool": "olive-ai", "version": version("olive-ai"), "onnxruntime": version("onnxruntime"),
              "search_seconds": round(seconds, 2), "max_iter": args.max_iter,
              "candidates": len(candidates), "peer_baseline": baseline, "models": models,
              "all_candidates": candidates}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"olive: {len(models)} Pareto model(s) of {result['candidates']} candidates in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
