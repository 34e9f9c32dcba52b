"""Device profile: where and how a candidate model is measured, and the budgets it must meet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search.config.loader import load_model

Precision = Literal["fp32", "fp16", "int16", "int8", "int4"]

# Plan bit-widths and the profile precision each one needs.
BITS_TO_PRECISION: dict[int, str] = {32: "fp32", 16: "int16", 8: "int8", 4: "int4"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Runtime(_Strict):
    provider: Literal["CPUExecutionProvider"] = "CPUExecutionProvider"
    threads: int = Field(1, ge=1, le=256, description="intra-op threads (and cores pinned)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"


class Budgets(_Strict):
    latency_ms: float | None = Field(None, gt=0, le=1e6)
    memory_mb: float | None = Field(None, gt=0, le=1e7)
    model_mb: float | None = Field(None, gt=0, le=1e6)


class Measure(_Strict):
    backend: Literal["local", "remote"] = "local"
    url: str | None = Field(None, description="agent URL, remote backend only")
    token_env: str | None = Field(None, description="environment variable holding the token")
    warmup: int = Field(50, ge=0, le=100_000)
    repeats: int = Field(200, ge=1, le=1_000_000)
    batch: int = Field(1, ge=1, le=4096)
    statistic: Literal["p50", "p90", "mean"] = "p50"
    timeout_s: float = Field(120.0, gt=0, le=86_400, description="limit for one measurement round")
    rounds: int = Field(1, ge=1, le=100, description="fresh-process rounds per measurement")
    memory_batch: int | None = Field(None, ge=1, le=4096, description="memory probe batch (default: batch)")

    @model_validator(mode="after")
    def _remote_needs_url(self) -> Measure:
        if self.backend == "remote":
            if not self.url:
                raise ValueError("backend 'remote' needs url (e.g. http://raspberrypi.local:8765)")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("url must start with http:// or https://")
            if not self.token_env:
                raise ValueError("backend 'remote' needs token_env (the variable holding the token)")
        return self


class DeviceProfile(_Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    runtime: Runtime = Runtime()
    precisions: tuple[Precision, ...] = Field(("fp32", "int8"), min_length=1)
    channel_multiple: int = Field(8, ge=1, le=1024)
    budgets: Budgets = Budgets()
    measure: Measure = Measure()

    @model_validator(mode="after")
    def _fp32_present(self) -> DeviceProfile:
        if "fp32" not in self.precisions:
            raise ValueError("precisions must include fp32 (the teacher and unquantized layers run in it)")
        if len(set(self.precisions)) != len(self.precisions):
            raise ValueError("precisions lists a value twice")
        return self

    def bits(self) -> tuple[int, ...]:
        """The plan bit-widths this device can run (fp16 is a whole-model option, not per layer)."""
        return tuple(b for b, p in BITS_TO_PRECISION.items() if p in self.precisions)

    def digest(self) -> str:
        """Stable hash of everything that affects a measurement or a budget."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_profile(path: str | Path) -> DeviceProfile:
    return load_model(DeviceProfile, path)
