"""Device profile: where and how a candidate model is measured, and the budgets it must meet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from search.compress.bits import DYNAMIC_INT8, DYNAMIC_OPS, PRECISION_BITS, Precision
from search.config.loader import load_model

# The op types a per-layer bit-width applies to (a layer's Conv/Gemm/MatMul nodes in the ONNX graph).
OpType = Literal["Conv", "Gemm", "MatMul"]
OP_TYPES: tuple[str, ...] = ("Conv", "Gemm", "MatMul")

# One list for every op type, or a list per op type. A tagged union, so that an error names the field as
# written ("precisions.Conv[1]") instead of listing both alternatives (the "<...>" tags are dropped).
Precisions = Annotated[
    Annotated[tuple[Precision, ...], Field(min_length=1), Tag("<list>")]
    | Annotated[dict[OpType, Annotated[tuple[Precision, ...], Field(min_length=1)]], Field(min_length=1),
                Tag("<per op type>")],
    Discriminator(lambda v: "<per op type>" if isinstance(v, dict) else "<list>"),
]


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
    tls_sha256: str | None = Field(None, description="SHA-256 of the agent's TLS certificate (https:// only): "
                                   "the client trusts that certificate alone")
    pool: tuple[str, ...] = Field((), max_length=64, description="more agents on boards of the same model as url's: "
                                  "each worker starts at its own and fails over to the next")
    warmup: int = Field(50, ge=0, le=100_000)
    repeats: int = Field(200, ge=1, le=1_000_000)
    batch: int = Field(1, ge=1, le=4096)
    statistic: Literal["p50", "p90", "mean"] = "p50"
    timeout_s: float = Field(120.0, gt=0, le=86_400, description="limit for one measurement round")
    # One fresh process can land in a slow mode (11-25% off); rounds run until a majority (>= 2) of the
    # per-round ratios lie within `agree` of their median, between `rounds` and `max_rounds` of them.
    rounds: int = Field(2, ge=1, le=100, description="fewest fresh-process rounds per measurement")
    max_rounds: int = Field(5, ge=1, le=100, description="most rounds, while the rounds disagree")
    agree: float = Field(0.03, gt=0, le=1, description="relative tolerance of rounds that agree")
    memory_batch: int | None = Field(None, ge=1, le=4096, description="memory probe batch (default: batch)")

    @model_validator(mode="after")
    def _rounds_in_order(self) -> Measure:
        if self.max_rounds < self.rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) must be at least rounds ({self.rounds})")
        return self

    @model_validator(mode="after")
    def _remote_needs_url(self) -> Measure:
        if self.backend == "remote":
            if not self.url:
                raise ValueError("backend 'remote' needs url (e.g. http://raspberrypi.local:8765)")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("url must start with http:// or https://")
            if not self.token_env:
                raise ValueError("backend 'remote' needs token_env (the variable holding the token)")
        if self.pool and self.backend != "remote":
            raise ValueError("pool lists more agents of a remote backend; this backend is local")
        if any(not u.startswith(("http://", "https://")) for u in self.pool):
            raise ValueError("every pool url must start with http:// or https://")
        if self.tls_sha256 is not None and not all(u.startswith("https://") for u in (self.url or "", *self.pool)):
            raise ValueError("tls_sha256 pins the certificate of an https:// agent; the url is not https://")
        return self

    @field_validator("tls_sha256")
    @classmethod
    def _pin(cls, v: str | None) -> str | None:
        from search.measure.agent_tls import normalize_pin

        return None if v is None else normalize_pin(v)


class DeviceProfile(_Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    runtime: Runtime = Runtime()
    # What the device runs as real kernels: one list for every op type, or a list per op type (an op type
    # left out runs fp32 only). The search proposes for each layer only what its op types run.
    precisions: Precisions = Field(("fp32", "int8"))
    channel_multiple: int = Field(8, ge=1, le=1024)
    budgets: Budgets = Budgets()
    measure: Measure = Measure()

    @field_validator("precisions")
    @classmethod
    def _fp32_present(cls, v: tuple | dict) -> tuple | dict:
        for op, precisions in v.items() if isinstance(v, dict) else [("", v)]:
            where = f" ({op})" if op else ""
            if "fp32" not in precisions:
                raise ValueError(f"must include fp32{where}: the teacher and unquantized layers run in it")
            if len(set(precisions)) != len(precisions):
                raise ValueError(f"lists a value twice{where}")
            if DYNAMIC_INT8 in precisions:
                if not op or op not in DYNAMIC_OPS:
                    raise ValueError(f"{DYNAMIC_INT8} is declared per op type, for {', '.join(DYNAMIC_OPS)} only "
                                     f"(its constant-weight products run as DynamicQuantizeMatMul){where}")
                if "int8" in precisions:
                    raise ValueError(f"lists int8 and {DYNAMIC_INT8}{where}: an 8-bit layer runs one of them "
                                     "(int8: static QDQ scales; int8-dynamic: scales computed at run time)")
        return v

    def precisions_for(self, op_type: str) -> tuple[str, ...]:
        """What the device runs for one op type (fp32 only for an op type a per-op list leaves out)."""
        if isinstance(self.precisions, dict):
            return tuple(self.precisions.get(op_type, ("fp32",)))  # type: ignore[call-overload]
        return tuple(self.precisions)

    def bits(self, op_types: tuple[str, ...] | list[str] | None = None) -> tuple[int, ...]:
        """Plan bit-widths the device runs as real kernels for every one of `op_types` (a layer's nodes);
        without op types, those it runs for at least one op type."""
        ops = list(op_types) if op_types else list(OP_TYPES)
        runs = [{PRECISION_BITS[p] for p in self.precisions_for(op)} for op in ops]
        ok = set.intersection(*runs) if op_types else set.union(*runs)
        return tuple(dict.fromkeys(b for b in PRECISION_BITS.values() if b in ok))  # 32, 16, 8, 4 order

    def dynamic_ops(self) -> frozenset[str]:
        """The op types whose 8-bit layers quantize their activations at run time (profile: int8-dynamic)."""
        return frozenset(op for op in OP_TYPES if DYNAMIC_INT8 in self.precisions_for(op))

    def digest(self) -> str:
        """Stable hash of everything that affects a measurement or a budget. The TLS pin and the pool are
        transport, not measurement: pinning an agent or adding a board must not orphan a study or its caches."""
        dump = self.model_dump(mode="json")
        dump["measure"].pop("tls_sha256")
        dump["measure"].pop("pool")  # boards of the same model: adding one does not change what is measured
        blob = json.dumps(dump, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_profile(path: str | Path) -> DeviceProfile:
    """A profile file by path, or a shipped one by name (`local-1core`)."""
    from search.config.shipped import resolve

    return load_model(DeviceProfile, resolve(path, "profile"))
