"""Device measurement: latency and peak memory of an ONNX model on the device a profile describes.

One interface, two backends chosen by `profile.measure.backend`: `local` (this machine, a fresh
subprocess per round) and `remote` (an agent on the device, see agent.py). Both return a `Measurement`.
Importing this package stays light: onnxruntime only ever loads in the measurement subprocesses.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from search.config.profile import DeviceProfile
from search.measure.record import LatencyStats, Measurement


class Backend(Protocol):
    def measure(self, onnx_path: str | os.PathLike, reference_path: str | os.PathLike | None = None, *,
                rounds: int | None = None, max_rounds: int | None = None) -> Measurement:
        """`rounds`/`max_rounds` override the profile's (a one-round check of a cached structure)."""
        ...


def get_backend(profile: DeviceProfile, *, reference_baseline: LatencyStats | None = None,
                sample: str | None = None) -> Backend:
    """A fresh backend for the profile (its reference baseline lives as long as it does). `sample`
    (`runner.encode_sample` of one task input) is what the model is fed."""
    if profile.measure.backend == "remote":
        from search.measure.remote import RemoteBackend

        return RemoteBackend(profile, reference_baseline=reference_baseline, sample=sample)
    from search.measure.local import LocalBackend

    return LocalBackend(profile, reference_baseline=reference_baseline, sample=sample)


_BACKENDS: dict[str, Backend] = {}
_LOCK = threading.Lock()


def measure(onnx_path: str | os.PathLike, profile: DeviceProfile,
            reference: str | os.PathLike | None = None) -> Measurement:
    """Measure with one backend per profile for the process's lifetime, so every candidate's drift-corrected
    latency refers to the same reference baseline."""
    with _LOCK:
        backend = _BACKENDS.get(profile.digest())
        if backend is None:
            backend = _BACKENDS[profile.digest()] = get_backend(profile)
    return backend.measure(onnx_path, reference)


__all__ = ["Backend", "LatencyStats", "Measurement", "get_backend", "measure"]
