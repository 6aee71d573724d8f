"""Device selection: what was asked for, what was had, and never a silent CPU run."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from decoder.models import MODELS, prepare_moonshine
from decoder.runtime import CUDA, DeviceUnavailable, RuntimeOptions, create_session, parse_device


def test_parse_device():
    assert parse_device("auto") == ("auto", 0)
    assert parse_device("CPU") == ("cpu", 0)
    assert parse_device("cuda:1") == ("cuda", 1)
    for bad in ("gpu", "cpu:1", "cuda:x", ""):
        with pytest.raises(ValueError):
            parse_device(bad)


def _encoder():
    return prepare_moonshine(MODELS["moonshine-base-en"]) / "encoder.onnx"


def _cuda_really_works() -> bool:
    if CUDA not in ort.get_available_providers():
        return False
    session = ort.InferenceSession(str(_encoder()), providers=[CUDA, "CPUExecutionProvider"])
    return CUDA in session.get_providers()


def test_cpu_is_cpu():
    session, device = create_session(_encoder(), RuntimeOptions(device="cpu"))
    assert session.get_providers() == ["CPUExecutionProvider"] and str(device) == "cpu"


def test_auto_reports_the_provider_it_really_got():
    session, device = create_session(_encoder(), RuntimeOptions(device="auto"))
    assert (device.kind == "cuda") == (CUDA in session.get_providers()) == _cuda_really_works()


def test_explicit_cuda_never_falls_back_silently():
    if _cuda_really_works():
        session, device = create_session(_encoder(), RuntimeOptions(device="cuda:0"))
        assert device.kind == "cuda" and session.get_providers()[0] == CUDA
    else:
        with pytest.raises(DeviceUnavailable, match="cuda"):
            create_session(_encoder(), RuntimeOptions(device="cuda"))
