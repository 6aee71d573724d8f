"""The decoder's cache branch made to take rows of different lengths when the model is prepared
(issue 22's first step towards decoding several streams' tokens as one batch): on real
recordings, one batched step gives every row what its own step gives, and with neutral inputs
the prepared graph gives what the exported one does; decodes on several threads are batched
and read what they read alone, and a step that breaks its batch fails alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from decoder.api import transcribe
from decoder.batching import URGENT
from decoder.models import DEFAULT_MODEL, MODELS
from decoder.moonshine import BOS
from decoder.optimize import POSITION_IDS, make_float32_onnx
from tests.conftest import ENGLISH


@pytest.fixture(scope="module")
def batched_decoder(model) -> ort.InferenceSession:
    """The decoder as the model was prepared (and as it serves)."""
    assert POSITION_IDS in {i.name for i in model.decoder.get_inputs()}
    return model.decoder


@pytest.fixture(scope="module")
def exported_decoder(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    """The decoder as exported, weights folded and nothing else."""
    path = tmp_path_factory.mktemp("exported") / "decoder.onnx"
    make_float32_onnx(MODELS[DEFAULT_MODEL].source_dir() / "decoder_model_merged.ort", path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _prompt(model, audio: np.ndarray, tokens: list[int]) -> dict[str, np.ndarray]:
    """The model's own first call (no cache) on ``tokens``: the cache it leaves, on the host."""
    _, cache = model.run(model.encode(audio), [tokens], None, 0)
    return {name: value.numpy() for name, value in cache.items()}


def _step(model, session: ort.InferenceSession, rows: list[tuple[dict[str, np.ndarray], int]]) -> np.ndarray:
    """One token for each row after its own cache, as one batch (the model's own padding);
    the last position's logits of every row."""
    return session.run(["logits"], model.batch_feeds(rows))[0][:, -1]


def test_one_batched_step_gives_each_stream_its_own_step(model, batched_decoder):
    rows = []
    for clip, cut in zip(ENGLISH[:3], (2, 5, 9)):  # different audio lengths and different cache lengths
        audio = clip.audio
        tokens = list(transcribe(model, audio).tokens)
        assert len(tokens) > cut
        cache = _prompt(model, audio, [BOS, *tokens[:cut]])
        rows.append((cache, tokens[cut]))
    alone = np.concatenate([_step(model, batched_decoder, [row]) for row in rows])
    together = _step(model, batched_decoder, rows)
    assert np.abs(alone - together).max() < 1e-3
    assert (alone.argmax(-1) == together.argmax(-1)).all()


def test_neutral_inputs_leave_the_exported_decoder_as_it_was(model, batched_decoder, exported_decoder):
    audio = ENGLISH[0].audio
    tokens = list(transcribe(model, audio).tokens)
    cache = _prompt(model, audio, [BOS, *tokens[:4]])
    feeds = {"input_ids": np.array([[tokens[4]]], dtype=np.int64), "encoder_hidden_states": np.zeros((1, 1, 416), np.float32),
             "use_cache_branch": np.array([True]), **cache}
    exported = exported_decoder.run(["logits"], feeds)[0][0, -1]
    assert np.abs(_step(model, batched_decoder, [(cache, tokens[4])])[0] - exported).max() < 1e-4


def test_concurrent_decodes_are_batched_and_each_reads_what_it_reads_alone(model):
    clips = [clip.audio for clip in ENGLISH[:6]]  # 3 to 11 s: decodes join and leave batches mid-way
    alone = [transcribe(model, audio).text for audio in clips]
    before = dict(model.lane.stats["decoder step"].sizes)
    together: list[str | None] = [None] * len(clips)

    def decode(index: int) -> None:
        with model.lane.request(index % 2 == 0):  # finals and partials share batches
            together[index] = transcribe(model, clips[index]).text

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == alone
    after = model.lane.stats["decoder step"].sizes
    assert any(after.get(rows, 0) > before.get(rows, 0) for rows in range(2, 9)), after


def test_a_step_that_breaks_its_batch_fails_alone(model):
    audio = ENGLISH[2].audio
    tokens = list(transcribe(model, audio).tokens)
    features = model.encode(audio)
    _, cache = model.run(features, [[BOS, *tokens[:3]]], None, 0)
    broken = {name: np.zeros((1, 3, 4, 5), np.float32) if ".decoder." in name else value for name, value in cache.items()}
    answers: dict[str, object] = {}

    def step(name: str, past) -> None:
        try:
            answers[name] = model.run(features, [[tokens[3]]], past, 4)[0]
        except Exception as error:  # the broken one
            answers[name] = error

    release = threading.Event()

    def hold() -> None:  # both places in the lane, so the two steps gather into one batch
        with model.lane.turn("hold", priority=URGENT):
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(model.lane.width)]
    for thread in holders:
        thread.start()
    time.sleep(0.2)
    retried = model.steps.retried
    steppers = [threading.Thread(target=step, args=(name, past)) for name, past in (("good", cache), ("broken", broken))]
    for thread in steppers:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in (*holders, *steppers):
        thread.join(60)
    assert model.steps.retried == retried + 1
    assert isinstance(answers["broken"], Exception)
    assert isinstance(answers["good"], np.ndarray) and int(answers["good"][0, -1].argmax()) == tokens[4]  # the token after tokens[3]
