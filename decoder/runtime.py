"""ONNX Runtime sessions: execution providers, devices, threads, I/O binding.

The only file that names an execution provider. ``onnxruntime-gpu`` lists the CUDA provider
even on machines without a GPU or CUDA libraries; creating a session then quietly falls back
to the CPU. So the provider actually used is read back from the session, never assumed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# With --device auto, whether CUDA really initialised the first time; later sessions reuse the
# answer instead of failing (and logging the failure) again.
_auto_cuda_works: bool | None = None


class DeviceUnavailable(RuntimeError):
    """An explicitly requested device could not be had."""


@dataclass(frozen=True)
class Device:
    """Where tensors live: ``kind`` is "cpu" or "cuda" (the names I/O binding uses)."""

    kind: str = "cpu"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(spec: str) -> tuple[str, int]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> (kind, index). Raises ValueError."""
    match = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", spec.strip().lower())
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    return match.group(1), int(match.group(2) or 0)


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"
    intra_op_threads: int = 0  # 0: ONNX Runtime's choice (all cores)
    # Calls a model runs at once (decoder/batching.py's lane): partials' calls take one place
    # fewer, so a final's call or a decoder step never waits behind a partial's.
    calls_at_once: int = 2


def create_session(path: Path | str, options: RuntimeOptions) -> tuple[ort.InferenceSession, Device]:
    """Open a model on the requested device and report the device it really got."""
    kind, index = parse_device(options.device)
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.intra_op_threads:
        session_options.intra_op_num_threads = options.intra_op_threads
    # Sessions serve many threads; spinning idle workers would steal the cores they need.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    global _auto_cuda_works
    providers: list = [CPU]
    if kind == "cuda" or (kind == "auto" and _auto_cuda_works is not False):
        if CUDA in ort.get_available_providers():
            providers = [(CUDA, {"device_id": index}), CPU]
        elif kind == "cuda":
            raise DeviceUnavailable(
                f"--device {options.device}: this onnxruntime has no CUDA provider "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
    probing = kind == "auto" and len(providers) > 1
    if probing:
        # A failed CUDA start-up is expected on CPU machines with --device auto; we report it
        # ourselves below in one line instead of ONNX Runtime's error dump.
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), session_options, providers=providers)
    finally:
        if probing:
            ort.set_default_logger_severity(3)
    got_cuda = CUDA in session.get_providers()
    if kind == "cuda" and not got_cuda:
        raise DeviceUnavailable(
            f"--device {options.device}: the CUDA provider could not be initialised "
            "(no GPU, or CUDA/cuDNN libraries missing); refusing to fall back to the CPU"
        )
    device = Device("cuda", index) if got_cuda else Device("cpu")
    if kind == "auto" and _auto_cuda_works is None:
        _auto_cuda_works = got_cuda
        if not got_cuda and len(providers) > 1:
            log.info("device auto: CUDA provider listed but not usable here; using the CPU")
    log.info("loaded %s on %s (providers: %s)", Path(path).name, device, ", ".join(session.get_providers()))
    return session, device


def available_devices() -> list[str]:
    """What this onnxruntime build could offer, for ``--help`` and the status page."""
    return ["cpu"] + (["cuda"] if CUDA in ort.get_available_providers() else [])
