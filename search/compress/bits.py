"""Plan bit-widths: the one list of valid values and the precision (kernel) each one asks for.

32 = float32 (not quantized), 16 = A16W8, 8 = A8W8, 4 = A8W4 (MatMulNBits for a MatMul). Plans,
search spaces, device profiles, the quantizer and the what-runs check all read this module; it imports
nothing, so light modules (config, plan) may import it without loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

Bits = Literal[32, 16, 8, 4]
# The profile's precision names, in the same order: what each bit-width needs the device to run.
Precision = Literal["fp32", "int16", "int8", "int4"]

VALID_BITS: tuple[int, ...] = get_args(Bits)
BITS_TO_PRECISION: dict[int, str] = dict(zip(VALID_BITS, get_args(Precision), strict=True))
