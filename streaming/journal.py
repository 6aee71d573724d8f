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
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS finals_by_time ON finals (written);
CREATE INDEX IF NOT EXISTS finals_by_session ON finals (session, written);
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
-- The last seq of every room, kept when retention deletes old finals, so seq never restarts.
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
"""

_FIELDS = ("room", "seq", "session", "speaker", "segment", "text", "language", "start", "end", "wall_start", "wall_end", "written")


class Journal:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each final is on disk when append() returns, not just in the OS cache.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # Long reads (a backlog, an export) use a connection of their own: in WAL mode they
        # see a consistent snapshot and never wait for, or hold back, a final being written.
        self._reader = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()

    def last_seq(self, room: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT last_seq FROM rooms WHERE room = ?", (room,)).fetchone()
        return row[0] if row else 0

    def append(self, final: dict[str, Any], wall_start: float, wall_end: float) -> None:
        row = (
            final["room"], final["seq"], final["session"], final["speaker"], final["segment"], final["text"],
            final["language"], final["start"], final["end"], wall_start, wall_end, time.time(),
        )
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(f"INSERT INTO finals ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})", row)
            self._db.execute(
                "INSERT INTO rooms (room, last_seq) VALUES (?, ?) ON CONFLICT (room) DO UPDATE SET last_seq = excluded.last_seq",
                (final["room"], final["seq"]),
            )

    def finals(self, room: str, since: int = 0, limit: int | None = None, upto: int | None = None) -> list[dict[str, Any]]:
        """A room's finals with since < seq (<= upto), in order, at most ``limit``, as journal rows."""
        query = f"SELECT {', '.join(_FIELDS)} FROM finals WHERE room = ? AND seq > ?"
        params: tuple[Any, ...] = (room, since)
        if upto is not None:
            query += " AND seq <= ?"
            params += (upto,)
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        with self._read_lock:
            rows = self._reader.execute(query, params).fetchall()
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
        return dict(zip(_FIELDS, row)) if row else None

    def delete_older_than(self, cutoff: float) -> int:
        """Retention: drop finals journaled before ``cutoff`` (Unix time), and the settings of
        sessions that started before it and have no final left; seq numbering stays."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            deleted = self._db.execute("DELETE FROM finals WHERE written < ?", (cutoff,)).rowcount
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
    }
