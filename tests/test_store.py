"""One suite, two stores: the SQLite journal (the embedded default) and Redis (a real
redis-server), through the same interface (streaming/store.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from streaming.evaluation.redis_server import RedisServer
from streaming.journal import Conflict, Journal
from streaming.redis_store import RedisStore
from streaming.store import Store


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened: Store = Journal(tmp_path / "journal.sqlite3")
        yield opened
        opened.close()
        return
    server = RedisServer(tmp_path / "redis").start()
    opened = RedisStore(server.url, "node-a", outbox=tmp_path / "outbox.sqlite3")
    yield opened
    opened.close()
    server.stop()


def final(room: str, session: str, segment: int, text: str, start: float = 0.0) -> dict:
    return {"room": room, "session": session, "speaker": "Ada", "segment": segment, "text": text, "language": "en",
            "start": start, "end": start + 1.0}


def test_finals_are_numbered_per_room_in_order_and_kept_once(store):
    assert store.last_seq("hall") == 0
    seqs = [store.append(final("hall", "s1", i, f"line {i}", i), 100.0 + i, 101.0 + i) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5] and store.last_seq("hall") == 5
    assert store.append(final("lobby", "s2", 0, "other room"), 1.0, 2.0) == 1
    # The same final again (a write whose answer was lost, retried): kept once, same seq.
    assert store.append(final("hall", "s1", 2, "line 2", 2), 102.0, 103.0) == 3 and store.last_seq("hall") == 5
    rows = store.finals("hall")
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["text"] == "line 0" and rows[0]["wall_start"] == 100.0
    assert {k: rows[1][k] for k in ("room", "session", "speaker", "segment", "language", "start", "end", "revision")} == {
        "room": "hall", "session": "s1", "speaker": "Ada", "segment": 1, "language": "en", "start": 1.0, "end": 2.0, "revision": 0}
    assert [r["seq"] for r in store.finals("hall", since=2)] == [3, 4, 5]
    assert [r["seq"] for r in store.finals("hall", since=1, limit=2)] == [2, 3]
    assert [r["seq"] for r in store.finals("hall", since=1, upto=3)] == [2, 3]
    assert store.finals("hall", since=5) == [] and store.finals("nowhere") == []
    assert [r["seq"] for r in store.written_since("hall", time.time() - 60)] == [1, 2, 3, 4, 5]
    assert store.written_since("hall", time.time() + 1) == []


def test_corrections_are_checked_against_the_revision_they_were_made_on(store):
    for i in range(3):
        store.append(final("hall", "s1", i, f"line {i}"), 1.0, 2.0)
    row = store.correct("hall", 2, "line two", None, "Grace", 0)
    assert (row["revision"], row["before_text"], row["text"], row["speaker"], row["language"]) == (1, "line 1", "line two", "Ada", "en")
    with pytest.raises(Conflict) as conflict:
        store.correct("hall", 2, "line 2!", None, "Ada", 0)
    assert conflict.value.revision == 1 and "Grace" in str(conflict.value)
    store.correct("hall", 2, "line II", "Bob", "Ada", 1)
    with pytest.raises(KeyError):
        store.correct("hall", 9, "nothing", None, "Ada", 0)
    rows = store.finals("hall")
    assert [(r["text"], r["speaker"], r["revision"]) for r in rows] == [("line 0", "Ada", 0), ("line II", "Bob", 2), ("line 2", "Ada", 0)]
    assert [(r["seq"], r["revision"], r["editor"]) for r in store.revisions("hall")] == [(2, 1, "Grace"), (2, 2, "Ada")]
    assert [(r["seq"], r["revision"], r["text"]) for r in store.corrected("hall", 0, 3)] == [(2, 2, "line II")]
    assert store.corrected("hall", 2, 3) == []
    assert [r["revision"] for r in store.recent_revisions("hall", 10)] == [2, 1]


def test_translations_shadows_and_terms_are_kept_by_seq(store):
    for i in range(3):
        store.append(final("hall", "s1", i, f"line {i}"), 1.0, 2.0)
    store.add_translation("hall", 1, "en", "one")
    store.add_translation("hall", 3, "en", "three")
    store.add_shadow("hall", 2, "whisper-base", "en", "line too")
    assert [(r["seq"], r["text"]) for r in store.translations("hall")] == [(1, "one"), (3, "three")]
    assert [(r["seq"], r["text"]) for r in store.translations("hall", 1, 3)] == [(3, "three")]
    assert [(r["seq"], r["model"], r["text"]) for r in store.shadows("hall")] == [(2, "whisper-base", "line too")]
    store.add_room_term("hall", "Hester Prynne", "Grace")
    store.add_room_term("hall", "Sintra", "Grace")
    store.add_room_term("hall", "Hester Prynne", "Ada")  # once
    assert store.room_terms() == {"hall": ("Hester Prynne", "Sintra")}


def test_sessions_are_kept_for_a_resume_until_they_end(store):
    store.keep_session("s1", "hall", "auto", '{"terms": ["Sintra"]}')
    store.keep_session("s1", "hall", "en", None)  # a configure: the context stays
    assert store.session_settings("s1") == {"language": "en", "context": '{"terms": ["Sintra"]}'}
    assert store.last_of_session("s1") is None  # no final yet
    store.append(final("hall", "s1", 0, "first"), 1.0, 2.0)
    store.append(final("hall", "s1", 1, "second"), 3.0, 4.0)
    last = store.last_of_session("s1")
    assert last is not None and (last["seq"], last["segment"], last["text"], last["room"]) == (2, 1, "second", "hall")
    # Words a final dropped get a segment when found, after a later utterance got its own: a
    # revival goes on after the highest segment, whichever final was written last.
    store.append(final("hall", "s1", 3, "dropped words"), 5.0, 6.0)
    store.append(final("hall", "s1", 2, "later utterance"), 5.0, 7.0)
    last = store.last_of_session("s1")
    assert last is not None and (last["text"], last["segment"]) == ("later utterance", 3)
    store.end_session("s1")
    assert store.last_of_session("s1") is None and store.session_settings("s1") is None
    assert store.session_settings("nobody") is None


def test_retention_keeps_the_numbering_and_deleting_a_room_resets_it(store):
    for i in range(3):
        store.append(final("hall", "s1", i, f"line {i}"), 1.0, 2.0)
    store.add_translation("hall", 1, "en", "one")
    store.add_room_term("hall", "Sintra", "Grace")
    assert store.delete_older_than(time.time() + 1) == 3
    assert store.finals("hall") == [] and store.translations("hall") == [] and store.room_terms() == {}
    assert store.append(final("hall", "s2", 0, "after"), 1.0, 2.0) == 4  # numbering goes on
    assert store.delete_room("hall") == 1 and store.finals("hall") == []
    # One node forgets a deleted room's numbering; nodes sharing a store go on from it (another
    # node may hold the room in memory, where a seq that went back would be taken for a repeat).
    expected = 5 if store.shared else 1
    assert store.last_seq("hall") == expected - 1 and store.append(final("hall", "s3", 0, "anew"), 1.0, 2.0) == expected


def test_revoked_tokens_are_listed_until_they_would_have_expired(store):
    assert store.revoked_tokens() == frozenset()
    store.revoke_token("a" * 32, time.time() + 60)
    store.revoke_token("b" * 32, time.time() - 1)  # expired already: forgotten
    assert store.revoked_tokens() == frozenset({"a" * 32})
