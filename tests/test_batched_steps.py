"""The decoder's cache branch made to take rows of different lengths when the model is prepared
(issue 22's first step towards decoding several streams' tokens as one batch): on real
recordings, one batched step gives every row what its own step gives, and with neutral inputs
the prepared graph gives what the exported one does."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from decoder.api import transcribe
from decoder.models import DEFAULT_MODEL, MODELS
from decoder.moonshine import BOS
from decoder.optimize import CROSS_ATTENTION_BIAS, POSITION_IDS, SELF_ATTENTION_BIAS, make_float32_onnx
from tests.conftest import ENGLISH

PAD = -1e9


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


def _cache_names(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]


def _prompt(model, audio: np.ndarray, tokens: list[int]) -> dict[str, np.ndarray]:
    """The model's own first call (no cache) on ``tokens``: the cache it leaves, on the host."""
    _, cache = model.run(model.encode(audio), [tokens], None, 0)
    return {name: value.numpy() for name, value in cache.items()}


def _step(session: ort.InferenceSession, rows: list[tuple[dict[str, np.ndarray], int]]) -> np.ndarray:
    """One token for each row after its own cache, as one batch padded to the longest cache
    and audio; the last position's logits of every row."""
    names = _cache_names(session)
    longest = max(cache["past_key_values.0.decoder.key"].shape[2] for cache, _ in rows)
    frames = max(cache["past_key_values.0.encoder.key"].shape[2] for cache, _ in rows)
    count = len(rows)
    feeds = {
        "input_ids": np.array([[token] for _, token in rows], dtype=np.int64),
        "encoder_hidden_states": np.zeros((count, 1, 416), np.float32),  # unused by the cache branch
        "use_cache_branch": np.array([True]),
        POSITION_IDS: np.zeros((count, 1), np.int64),
        SELF_ATTENTION_BIAS: np.zeros((count, 1, 1, longest + 1), np.float32),
        CROSS_ATTENTION_BIAS: np.zeros((count, 1, 1, frames), np.float32),
    }
    for name in names:
        padded = np.zeros((count, 8, longest if ".decoder." in name else frames, 52), np.float32)
        for row, (cache, _) in enumerate(rows):
            padded[row, :, : cache[name].shape[2]] = cache[name][0]
        feeds[name] = padded
    for row, (cache, _) in enumerate(rows):
        length, audio = cache["past_key_values.0.decoder.key"].shape[2], cache["past_key_values.0.encoder.key"].shape[2]
        feeds[POSITION_IDS][row, 0] = length
        feeds[SELF_ATTENTION_BIAS][row, 0, 0, length:longest] = PAD
        feeds[CROSS_ATTENTION_BIAS][row, 0, 0, audio:] = PAD
    return session.run(["logits"], feeds)[0][:, -1]


def test_one_batched_step_gives_each_stream_its_own_step(model, batched_decoder):
    rows = []
    for clip, cut in zip(ENGLISH[:3], (2, 5, 9)):  # different audio lengths and different cache lengths
        audio = clip.audio
        tokens = list(transcribe(model, audio).tokens)
        assert len(tokens) > cut
        cache = _prompt(model, audio, [BOS, *tokens[:cut]])
        rows.append((cache, tokens[cut]))
    alone = np.concatenate([_step(batched_decoder, [row]) for row in rows])
    together = _step(batched_decoder, rows)
    assert np.abs(alone - together).max() < 1e-3
    assert (alone.argmax(-1) == together.argmax(-1)).all()


def test_neutral_inputs_leave_the_exported_decoder_as_it_was(model, batched_decoder, exported_decoder):
    audio = ENGLISH[0].audio
    tokens = list(transcribe(model, audio).tokens)
    cache = _prompt(model, audio, [BOS, *tokens[:4]])
    feeds = {"input_ids": np.array([[tokens[4]]], dtype=np.int64), "encoder_hidden_states": np.zeros((1, 1, 416), np.float32),
             "use_cache_branch": np.array([True]), **cache}
    exported = exported_decoder.run(["logits"], feeds)[0][0, -1]
    assert np.abs(_step(batched_decoder, [(cache, tokens[4])])[0] - exported).max() < 1e-4
