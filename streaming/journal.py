"""The durable record of every room's finals: SQLite in WAL mode under the data directory.

A final is written (and synced) before anyone is sent it, so a final a client has seen survives
``kill -9`` of the server. Room ``seq`` numbers continue from the journal after a restart.
All calls block: the server runs them on its journal thread, never on the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS finals (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    session TEXT NOT NULL,
    speaker TEXT NOT NULL,
    segment INTEGER NOT NULL,
    text TEXT NOT NULL,
    language TEXT NOT NULL,
    start REAL NOT NULL,          -- session clock, seconds
    end REAL NOT NULL,
    wall_start REAL NOT NULL,     -- Unix time: the session's start + start
    wall_end REAL NOT NULL,
    written REAL NOT NULL,        -- Unix time the final was journaled
    revision INTEGER NOT NULL DEFAULT 0,  -- corrections made (text and speaker are the latest)
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS finals_by_time ON finals (written);
CREATE INDEX IF NOT EXISTS finals_by_session ON finals (session, written);
CREATE INDEX IF NOT EXISTS finals_by_segment ON finals (session, segment);
-- Sessions that ended (end, or their resume grace passed): never to be resumed.
CREATE TABLE IF NOT EXISTS ended_sessions (
    session TEXT PRIMARY KEY,
    ended REAL NOT NULL
) WITHOUT ROWID;
-- What each live session asked for, to revive it as it was after a restart; gone when it ends.
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    language TEXT NOT NULL,       -- as the session has it: auto, a code, or candidates "en,es"
    context TEXT,                 -- the publisher's own context as JSON; NULL: the room's
    started REAL NOT NULL
) WITHOUT ROWID;
-- Every correction of a final: who made it, when, and the text and speaker before and after.
CREATE TABLE IF NOT EXISTS revisions (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    revision INTEGER NOT NULL,    -- 1 for the first correction
    editor TEXT NOT NULL,
    at REAL NOT NULL,             -- Unix time
    text TEXT NOT NULL,
    speaker TEXT NOT NULL,
    before_text TEXT NOT NULL,
    before_speaker TEXT NOT NULL,
    PRIMARY KEY (room, seq, revision)
) WITHOUT ROWID;
-- Finals' translations (each final's text in another language), made after the final.
CREATE TABLE IF NOT EXISTS translations (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    language TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (room, seq, language)
) WITHOUT ROWID;
-- What a shadow model (serve --shadow) made of each final's audio, kept beside it.
CREATE TABLE IF NOT EXISTS shadow_finals (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    model TEXT NOT NULL,
    language TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (room, seq, model)
) WITHOUT ROWID;
-- Terms editors added to a room's context (learned from their corrections).
CREATE TABLE IF NOT EXISTS room_terms (
    room TEXT NOT NULL,
    term TEXT NOT NULL,
    editor TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (room, term)
) WITHOUT ROWID;
-- Tokens revoked before they expire (auth.token_id), until they would have expired.
CREATE TABLE IF NOT EXISTS revoked_tokens (
    id TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
-- The last seq of every room, kept when retention deletes old finals, so seq never restarts.
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
"""

_FIELDS = ("room", "seq", "session", "speaker", "segment", "text", "language", "start", "end", "wall_start", "wall_end", "written", "revision")
_REVISION_FIELDS = ("seq", "revision", "editor", "at", "text", "speaker", "before_text", "before_speaker")


class Conflict(Exception):
    """A correction made on a revision that is no longer the latest."""

    def __init__(self, revision: int, editor: str):
        super().__init__(f"corrected meanwhile (revision {revision}{' by ' + editor if editor else ''}): reload it and correct again")
        self.revision = revision


class Journal:
    """The SQLite store (streaming/store.py), one node's."""

    shared = False
    available = True

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each final is on disk when append() returns, not just in the OS cache.
        self._db.execute("PRAGMA synchronous=FULL")
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'finals'").fetchone():
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(finals)")}
            if "revision" not in columns:  # a journal from before corrections
                self._db.execute("ALTER TABLE finals ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")
        self._db.executescript(_SCHEMA)
        # Long reads (a backlog, an export) use a connection of their own: in WAL mode they
        # see a consistent snapshot and never wait for, or hold back, a final being written.
        self._reader = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()

    def last_seq(self, room: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT last_seq FROM rooms WHERE room = ?", (room,)).fetchone()
        return row[0] if row else 0

    def append(self, final: dict[str, Any], wall_start: float, wall_end: float) -> int:
        """Number a final (its room's next seq) and write it, synced; returns its seq. A final
        already written (the same session and segment) is not written again: its seq is returned."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            found = self._db.execute(
                "SELECT seq FROM finals WHERE session = ? AND segment = ? AND room = ?", (final["session"], final["segment"], final["room"])
            ).fetchone()
            if found:
                return int(found[0])
            last = self._db.execute("SELECT last_seq FROM rooms WHERE room = ?", (final["room"],)).fetchone()
            seq = (last[0] if last else 0) + 1
            row = (
                final["room"], seq, final["session"], final["speaker"], final["segment"], final["text"],
                final["language"], final["start"], final["end"], wall_start, wall_end, time.time(), 0,
            )
            self._db.execute(f"INSERT INTO finals ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})", row)
            self._db.execute(
                "INSERT INTO rooms (room, last_seq) VALUES (?, ?) ON CONFLICT (room) DO UPDATE SET last_seq = excluded.last_seq",
                (final["room"], seq),
            )
        return seq

    def finals(self, room: str, since: int = 0, limit: int | None = None, upto: int | None = None) -> list[dict[str, Any]]:
        """A room's finals with since < seq (<= upto), in order, at most ``limit``, as journal rows."""
        return self._seq_range("finals", _FIELDS, room, since, upto, "seq", limit)

    def _seq_range(
        self, table: str, fields: tuple[str, ...], room: str, since: int, upto: int | None, order: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A table's rows of ``room`` with since < seq (<= upto), by ``order``, at most ``limit``,
        read on the reading connection."""
        query = f"SELECT {', '.join(fields)} FROM {table} WHERE room = ? AND seq > ?"
        params: tuple[Any, ...] = (room, since)
        if upto is not None:
            query += " AND seq <= ?"
            params += (upto,)
        query += f" ORDER BY {order}"
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        with self._read_lock:
            rows = self._reader.execute(query, params).fetchall()
        return [dict(zip(fields, row)) for row in rows]

    def correct(self, room: str, seq: int, text: str, speaker: str | None, editor: str, base: int) -> dict[str, Any]:
        """Make revision ``base + 1`` of a final (synced before it returns): its text, and its
        speaker unless None. Raises KeyError if the room has no such final, Conflict if ``base``
        is not its latest revision. Returns the revision's row, and the final's language."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT text, speaker, revision, language FROM finals WHERE room = ? AND seq = ?", (room, seq)).fetchone()
            if row is None:
                raise KeyError(seq)
            before_text, before_speaker, revision, language = row
            if revision != base:
                last = self._db.execute("SELECT editor FROM revisions WHERE room = ? AND seq = ? AND revision = ?", (room, seq, revision)).fetchone()
                raise Conflict(revision, last[0] if last else "")
            speaker = before_speaker if speaker is None else speaker
            revised = (seq, revision + 1, editor, time.time(), text, speaker, before_text, before_speaker)
            self._db.execute("UPDATE finals SET text = ?, speaker = ?, revision = ? WHERE room = ? AND seq = ?",
                             (text, speaker, revision + 1, room, seq))
            self._db.execute(f"INSERT INTO revisions (room, {', '.join(_REVISION_FIELDS)}) VALUES (?{', ?' * len(_REVISION_FIELDS)})",
                             (room, *revised))
        return {**dict(zip(_REVISION_FIELDS, revised)), "language": language}

    def revisions(self, room: str, since: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        """Every correction of the room's finals with since < seq (<= upto), by seq then revision."""
        return self._seq_range("revisions", _REVISION_FIELDS, room, since, upto, "seq, revision")

    def corrected(self, room: str, since: int, upto: int) -> list[dict[str, Any]]:
        """The latest revision of each corrected final with since < seq <= upto (what a viewer
        that resumes may be showing an older text of)."""
        query = (f"SELECT {', '.join('r.' + f for f in _REVISION_FIELDS)} FROM finals f JOIN revisions r"
                 " ON r.room = f.room AND r.seq = f.seq AND r.revision = f.revision"
                 " WHERE f.room = ? AND f.seq > ? AND f.seq <= ? AND f.revision > 0 ORDER BY f.seq")
        with self._read_lock:
            rows = self._reader.execute(query, (room, since, upto)).fetchall()
        return [dict(zip(_REVISION_FIELDS, row)) for row in rows]

    def add_translation(self, room: str, seq: int, language: str, text: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO translations (room, seq, language, text) VALUES (?, ?, ?, ?)", (room, seq, language, text))

    def translations(self, room: str, since: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        """The room's translations of finals with since < seq (<= upto), by seq."""
        return self._seq_range("translations", ("seq", "language", "text"), room, since, upto, "seq, language")

    def add_shadow(self, room: str, seq: int, model: str, language: str, text: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO shadow_finals (room, seq, model, language, text) VALUES (?, ?, ?, ?, ?)",
                             (room, seq, model, language, text))

    def shadows(self, room: str, since: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        """What shadow models made of the room's finals with since < seq (<= upto), by seq."""
        return self._seq_range("shadow_finals", ("seq", "model", "language", "text"), room, since, upto, "seq, model")

    def revoke_token(self, token_id: str, until: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO revoked_tokens (id, until) VALUES (?, ?)", (token_id, until))

    def revoked_tokens(self) -> frozenset[str]:
        """Tokens revoked that have not expired yet (the expired ones are forgotten)."""
        with self._lock:
            self._db.execute("DELETE FROM revoked_tokens WHERE until < ?", (time.time(),))
            return frozenset(row[0] for row in self._db.execute("SELECT id FROM revoked_tokens"))

    def add_room_term(self, room: str, term: str, editor: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO room_terms (room, term, editor, at) VALUES (?, ?, ?, ?)", (room, term, editor, time.time()))

    def room_terms(self) -> dict[str, tuple[str, ...]]:
        """Every room's learned terms, in the order they were added."""
        with self._lock:
            rows = self._db.execute("SELECT room, term FROM room_terms ORDER BY at").fetchall()
        terms: dict[str, tuple[str, ...]] = {}
        for room, term in rows:
            terms[room] = (*terms.get(room, ()), term)
        return terms

    def recent_revisions(self, room: str, limit: int) -> list[dict[str, Any]]:
        """The room's latest ``limit`` corrections."""
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {', '.join(_REVISION_FIELDS)} FROM revisions WHERE room = ? ORDER BY at DESC LIMIT ?", (room, limit)
            ).fetchall()
        return [dict(zip(_REVISION_FIELDS, row)) for row in rows]

    def written_since(self, room: str, since: float) -> list[dict[str, Any]]:
        """The room's finals journaled after ``since`` (Unix time), in seq order."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_FIELDS)} FROM finals WHERE room = ? AND written > ? ORDER BY seq", (room, since)).fetchall()
        return [dict(zip(_FIELDS, row)) for row in rows]

    def keep_session(self, session: str, room: str, language: str, context: str | None) -> None:
        """Record (or, after ``configure``, update) what a session asked for; a ``context`` of
        None keeps the one recorded."""
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions (session, room, language, context, started) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (session) DO UPDATE SET language = excluded.language,"
                " context = COALESCE(excluded.context, sessions.context)",
                (session, room, language, context, time.time()),
            )

    def session_settings(self, session: str) -> dict[str, Any] | None:
        """``{"language", "context"}`` as :meth:`keep_session` last recorded them."""
        with self._lock:
            row = self._db.execute("SELECT language, context FROM sessions WHERE session = ?", (session,)).fetchone()
        return {"language": row[0], "context": row[1]} if row else None

    def end_session(self, session: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO ended_sessions (session, ended) VALUES (?, ?)", (session, time.time()))
            self._db.execute("DELETE FROM sessions WHERE session = ?", (session,))

    def last_of_session(self, session: str) -> dict[str, Any] | None:
        """The latest final of a session that has not ended (to resume it after a restart)."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM ended_sessions WHERE session = ?", (session,)).fetchone():
                return None
            row = self._db.execute(
                f"SELECT {', '.join(_FIELDS)} FROM finals WHERE session = ? ORDER BY written DESC LIMIT 1", (session,)
            ).fetchone()
            top = self._db.execute("SELECT MAX(segment) FROM finals WHERE session = ?", (session,)).fetchone()
        if not row:
            return None
        # The highest segment it numbered (words a final dropped are numbered when found, after
        # a later utterance may have been): a revival goes on after it, never reusing one.
        return {**dict(zip(_FIELDS, row)), "segment": max(row[_FIELDS.index("segment")], top[0])}

    def delete_older_than(self, cutoff: float) -> int:
        """Retention: drop finals journaled before ``cutoff`` (Unix time) with their corrections,
        terms editors added before it, and the settings of sessions that started before it and
        have no final left; seq numbering stays."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for table in ("revisions", "translations", "shadow_finals"):  # what was made of a final goes with it
                self._db.execute(
                    f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM finals f WHERE f.room = {table}.room"
                    f" AND f.seq = {table}.seq AND f.written < ?)", (cutoff,)
                )
            deleted = self._db.execute("DELETE FROM finals WHERE written < ?", (cutoff,)).rowcount
            self._db.execute("DELETE FROM room_terms WHERE at < ?", (cutoff,))  # editors' names go with the rest
            self._db.execute(
                "DELETE FROM sessions WHERE started < ? AND session NOT IN (SELECT session FROM finals)", (cutoff,)
            )
        return deleted

    def forget_sessions(self, cutoff: float, live: Iterable[str] = ()) -> int:
        """Drop what only a resume could use once a session's grace period is over: ended
        sessions' marks from before ``cutoff``, and the settings of sessions that are not
        ``live`` here and neither started nor journaled a final since then (their publisher
        dropped and the server stopped before it could end them). Returns the rows dropped."""
        live = set(live)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            dropped = self._db.execute("DELETE FROM ended_sessions WHERE ended < ?", (cutoff,)).rowcount
            stale = self._db.execute(
                "SELECT session FROM sessions WHERE started < ?"
                " AND NOT EXISTS (SELECT 1 FROM finals WHERE finals.session = sessions.session AND written >= ?)",
                (cutoff, cutoff),
            ).fetchall()
            gone = [(session,) for (session,) in stale if session not in live]  # in Python: any number of live sessions
            self._db.executemany("DELETE FROM sessions WHERE session = ?", gone)
            dropped += len(gone)
        return dropped

    def delete_room(self, room: str) -> int:
        """Forget a room entirely: its finals and its seq numbering."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            deleted = self._db.execute("DELETE FROM finals WHERE room = ?", (room,)).rowcount
            self._db.execute("DELETE FROM revisions WHERE room = ?", (room,))
            self._db.execute("DELETE FROM room_terms WHERE room = ?", (room,))
            self._db.execute("DELETE FROM translations WHERE room = ?", (room,))
            self._db.execute("DELETE FROM shadow_finals WHERE room = ?", (room,))
            self._db.execute("DELETE FROM rooms WHERE room = ?", (room,))
            self._db.execute("DELETE FROM sessions WHERE room = ?", (room,))
        return deleted

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()


def as_caption(row: dict[str, Any]) -> dict[str, Any]:
    """A journal row as the protocol's final message."""
    return {
        "type": "final", "room": row["room"], "session": row["session"], "speaker": row["speaker"],
        "segment": row["segment"], "text": row["text"], "start": row["start"], "end": row["end"],
        "language": row["language"], "seq": row["seq"], "wall_start": round(row["wall_start"], 3),
        **({"revision": row["revision"]} if row.get("revision") else {}),
    }
