"""The one logging setup: plain text for people, or one JSON object a line for machines."""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("session", "room"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{key}={getattr(record, key)}" for key in ("room", "session") if hasattr(record, key))
        return f"{line} [{ids}]" if ids else line


class _RepeatFilter(logging.Filter):
    """At most ``per_second`` records of the same message a second: a fault that repeats in a
    tight loop (the operating system refusing every accept) must not bury the log or burn a
    core writing it. The next record let through says how many were held back."""

    def __init__(self, per_second: int = 5):
        super().__init__()
        self.per_second = per_second
        self._window: dict[tuple[str, object], tuple[int, int, int]] = {}  # key: (second, seen, suppressed)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        second = int(record.created)
        start, seen, suppressed = self._window.get(key, (second, 0, 0))
        if start != second:
            start, seen = second, 0
        seen += 1
        if seen > self.per_second:
            self._window[key] = (start, seen, suppressed + 1)
            return False
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this held back)"
        self._window[key] = (start, seen, 0)
        if len(self._window) > 10_000:
            self._window.clear()
        return True


def setup_logging(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RepeatFilter())
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # ONNX Runtime's own C++ logger: warnings and up only.
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass
