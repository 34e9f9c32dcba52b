"""One way to open a plain CPU ONNX Runtime session for checks and probes."""

from __future__ import annotations

import os


def cpu_session(source: str | os.PathLike | bytes):
    """A CPU session of a file or serialized model that logs errors only: ONNX Runtime warns once per initializer
    its optimiser left unused (a Clip bound folded into a Conv), and that is not the user's concern."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), so,
                                providers=["CPUExecutionProvider"])
