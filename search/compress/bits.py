"""Plan bit-widths: the one list of valid values and the precision (kernel) each one asks for.

32 = float32 (not quantized), 16 = A16W8, 8 = A8W8, 4 = A8W4 (MatMulNBits for a MatMul). An 8-bit layer's
activations are quantized with calibrated static scales (QDQ, "int8"), or, on the op types whose profile lists
"int8-dynamic" instead, with scales ONNX Runtime computes from each input at run time (MatMulInteger /
DynamicQuantizeMatMul): what transformers need where static scales clip their outliers. Plans, search spaces,
device profiles, the quantizer and the what-runs check all read this module; it imports nothing, so light
modules (config, plan) may import it without loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

Bits = Literal[32, 16, 8, 4]
# The profile's precision names: what each bit-width needs the device to run.
Precision = Literal["fp32", "int16", "int8", "int4", "int8-dynamic"]
DYNAMIC_INT8 = "int8-dynamic"
DYNAMIC_OPS: tuple[str, ...] = ("MatMul",)  # a constant-weight MatMul becomes DynamicQuantizeMatMul

VALID_BITS: tuple[int, ...] = get_args(Bits)
BITS_TO_PRECISION: dict[int, str] = dict(zip(VALID_BITS, ("fp32", "int16", "int8", "int4"), strict=True))
PRECISION_BITS: dict[str, int] = {**{p: b for b, p in BITS_TO_PRECISION.items()}, DYNAMIC_INT8: 8}
