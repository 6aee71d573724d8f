"""The store on Redis (``serve --store redis://HOST:6379/0``): rooms that span nodes.

Keys (``R`` a room, ``S`` a session):

- ``fc:{R}:seq``: the room's last seq (INCR, in the same script as the final's write: atomic
  across nodes). ``fc:{R}:finals``: a Redis Stream, one entry per final, its id ``0-SEQ`` (so a
  viewer's ``since`` is a stream position, and a node's blocking XREAD is the live tail).
  ``fc:{R}:ids``: session/segment -> seq (a final written twice, after a lost reply, is kept once).
- ``fc:{R}:current``: seq -> the latest correction of a corrected final; ``fc:{R}:revisions``,
  ``fc:{R}:translations``, ``fc:{R}:shadows``: sorted by seq. ``fc:terms:{R}``: learned terms.
- ``fc:session:S``: what the session asked for; ``fc:session:S:last``: its latest final;
  ``fc:session:S:ended``; ``fc:session:S:owner``: the node it is live or parked on. Session keys
  expire a day after their last use (nothing else reads them after the resume grace).
- ``fc:node:N``: a node's address and load, expiring unless the node renews it.
- Pub/sub ``fc:live:R``: partials and other live events between nodes (best effort).

When Redis cannot be reached, a final is written to a local outbox (SQLite, synced) instead and
sent on unnumbered; :meth:`RedisStore.flush` writes the outbox to Redis in order once it is back
(finals appended meanwhile go behind it, so order holds). Redis must persist with
``appendonly yes`` for an acknowledged final to survive its restart (README, more than one node).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streaming.journal import Conflict
from streaming.store import StoreUnavailable

log = logging.getLogger(__name__)

SESSION_TTL_S = 86400
# Row fields kept in a final's stream entry (room and seq are the key and the id; revision is in ``current``).
_ROW = ("session", "speaker", "segment", "text", "language", "start", "end", "wall_start", "wall_end", "written")

_APPEND = """
local found = redis.call('HGET', KEYS[3], ARGV[2])
if found then return tonumber(found) end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], '0-' .. seq, 'row', ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], seq)
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], ARGV[3] .. '\t' .. seq, 'EX', ARGV[4])
local top = tonumber(redis.call('GET', KEYS[6]) or '-1')
if tonumber(ARGV[5]) > top then redis.call('SET', KEYS[6], ARGV[5], 'EX', ARGV[4]) else redis.call('EXPIRE', KEYS[6], ARGV[4]) end
return seq
"""

# The latest revision of a final (from ``current``, else as captioned), checked against the
# revision the correction was made on, then the new one written: atomic.
_CORRECT = """
local cur = redis.call('HGET', KEYS[2], ARGV[1])
local text, speaker, revision, editor, language
if cur then
  local c = cjson.decode(cur)
  text, speaker, revision, editor, language = c.text, c.speaker, c.revision, c.editor, c.language
else
  local e = redis.call('XRANGE', KEYS[1], '0-' .. ARGV[1], '0-' .. ARGV[1])
  if #e == 0 then return {'missing'} end
  local row = cjson.decode(e[1][2][2])
  text, speaker, revision, editor, language = row.text, row.speaker, 0, '', row.language
end
if revision ~= tonumber(ARGV[5]) then return {'conflict', tostring(revision), editor} end
local new_speaker = speaker
if ARGV[7] == '1' then new_speaker = ARGV[3] end
local revised = cjson.encode({seq = tonumber(ARGV[1]), revision = revision + 1, editor = ARGV[4], at = tonumber(ARGV[6]), text = ARGV[2],
                              speaker = new_speaker, before_text = text, before_speaker = speaker, language = language})
redis.call('HSET', KEYS[2], ARGV[1], revised)
redis.call('ZADD', KEYS[3], tonumber(ARGV[1]), revised)
return {'ok', revised}
"""

# A session's end, unless another node has taken it over meanwhile.
_END_SESSION = """
local owner = redis.call('GET', KEYS[1])
if owner and ARGV[1] ~= '' and string.sub(owner, 1, #ARGV[1] + 1) ~= ARGV[1] .. '\t' then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('DEL', KEYS[1])
return 1
"""

_HOLD_SESSION = """
local owner = redis.call('GET', KEYS[1])
if ARGV[2] == 'parked' and owner and string.sub(owner, 1, #ARGV[1] + 1) ~= ARGV[1] .. '\t' then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. '\t' .. ARGV[2], 'EX', ARGV[3])
return 1
"""

_OUTBOX = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    final TEXT NOT NULL,
    wall_start REAL NOT NULL,
    wall_end REAL NOT NULL
);
"""


def _key(room: str, what: str) -> str:
    return f"fc:{{{room}}}:{what}"


class RedisStore:
    shared = True

    def __init__(self, url: str, node: str, outbox: Path, timeout_s: float = 2.0):
        self.url = url
        self.node = node
        # Fail fast when Redis is away (captions go on from the outbox), rather than retry for seconds.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1), decode_responses=True
        )
        self._append = self._redis.register_script(_APPEND)
        self._correct = self._redis.register_script(_CORRECT)
        self._end_session = self._redis.register_script(_END_SESSION)
        self._hold = self._redis.register_script(_HOLD_SESSION)
        outbox.parent.mkdir(parents=True, exist_ok=True)
        self._outbox = sqlite3.connect(str(outbox), check_same_thread=False, isolation_level=None)
        self._outbox.execute("PRAGMA journal_mode=WAL")
        self._outbox.execute("PRAGMA synchronous=FULL")
        self._outbox.executescript(_OUTBOX)
        self._outbox_lock = threading.Lock()
        self.outbox_count = 0  # as last counted (the tail thread counts it a few times a second)
        self.available = True
        try:
            self._redis.ping()
        except redis.RedisError as error:
            self.available = False
            log.error("store %s cannot be reached (%s): finals wait on local disk until it can", _safe(url), error)

    # -- calls -------------------------------------------------------------------------------
    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A Redis call; StoreUnavailable if Redis cannot be reached (and ``available`` says so)."""
        try:
            result = function(*args, **kwargs)
        except redis.RedisError as error:
            # Not only a connection lost: out of memory, read-only after a failover, a disk
            # error: whatever it is, finals wait in the outbox rather than be lost.
            if self.available:
                log.error("store %s went away: %s", _safe(self.url), error)
            self.available = False
            raise StoreUnavailable(f"the store (Redis) cannot be reached or refused a write: {error}") from error
        if not self.available:
            log.warning("store %s is back", _safe(self.url))
        self.available = True
        return result

    def last_seq(self, room: str) -> int:
        return int(self._call(self._redis.get, _key(room, "seq")) or 0)

    def append(self, final: dict[str, Any], wall_start: float, wall_end: float) -> int | None:
        """The final's seq; None if Redis cannot be reached: it is then in the local outbox, on
        disk, to be written in order by :meth:`flush`."""
        # While Redis is known to be away, straight to the outbox (a black-holed connection would
        # hold each final for the timeout); the tail's flush finds out when it is back.
        if self.available and self.outbox_pending() == 0:
            try:
                return self._write(final, wall_start, wall_end)
            except StoreUnavailable:
                pass
        with self._outbox_lock:
            self._outbox.execute("INSERT INTO outbox (final, wall_start, wall_end) VALUES (?, ?, ?)",
                                 (json.dumps(final, ensure_ascii=False), wall_start, wall_end))
        return None

    def _write(self, final: dict[str, Any], wall_start: float, wall_end: float) -> int:
        row = {k: final[k] for k in _ROW if k in final} | {"wall_start": wall_start, "wall_end": wall_end, "written": time.time()}
        room, session = final["room"], final["session"]
        keys = [_key(room, "seq"), _key(room, "finals"), _key(room, "ids"), "fc:rooms", f"fc:session:{session}:last", f"fc:session:{session}:segment"]
        args = [json.dumps(row, ensure_ascii=False), f"{session}/{final['segment']}", room, SESSION_TTL_S, final["segment"]]
        return int(self._call(self._append, keys=keys, args=args))

    def outbox_pending(self) -> int:
        with self._outbox_lock:
            self.outbox_count = int(self._outbox.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return self.outbox_count

    def flush(self) -> int:
        """Write the outbox to Redis, oldest first, until it is empty or Redis fails; returns
        how many were written. A final written whose reply was lost is kept once (its session
        and segment name it)."""
        written = 0
        while True:
            with self._outbox_lock:
                row = self._outbox.execute("SELECT id, final, wall_start, wall_end FROM outbox ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return written
            identity, final, wall_start, wall_end = row
            try:
                self._write(json.loads(final), wall_start, wall_end)
            except StoreUnavailable:
                return written
            with self._outbox_lock:
                self._outbox.execute("DELETE FROM outbox WHERE id = ?", (identity,))
            written += 1

    def _rows(self, room: str, entries: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
        rows = [{"room": room, "seq": int(entry_id.split("-")[1]), **json.loads(fields["row"]), "revision": 0} for entry_id, fields in entries]
        if rows:
            current = self._call(self._redis.hmget, _key(room, "current"), [r["seq"] for r in rows])
            for row, latest in zip(rows, current):
                if latest:
                    revision = json.loads(latest)
                    row.update(text=revision["text"], speaker=revision["speaker"], revision=revision["revision"])
        return rows

    def finals(self, room: str, since: int = 0, limit: int | None = None, upto: int | None = None) -> list[dict[str, Any]]:
        if upto is not None and upto <= since:
            return []
        entries = self._call(self._redis.xrange, _key(room, "finals"), f"0-{since + 1}", f"0-{upto}" if upto is not None else "+", limit)
        return self._rows(room, entries)

    def tail(self, positions: dict[str, int], block_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Finals after each room's position, waiting up to ``block_ms`` for one: (room, row)."""
        if not positions:
            time.sleep(block_ms / 1000)
            return []
        streams = {_key(room, "finals"): f"0-{seq}" for room, seq in positions.items()}
        found = self._call(self._redis.xread, streams, count=100, block=block_ms) or []
        out: list[tuple[str, dict[str, Any]]] = []
        for key, entries in found:
            room = key[len("fc:{") : -len("}:finals")]
            out.extend((room, row) for row in self._rows(room, entries))
        return out

    def correct(self, room: str, seq: int, text: str, speaker: str | None, editor: str, base: int) -> dict[str, Any]:
        keys = [_key(room, "finals"), _key(room, "current"), _key(room, "revisions")]
        result = self._call(self._correct, keys=keys, args=[seq, text, speaker or "", editor, base, time.time(), "1" if speaker is not None else "0"])
        if result[0] == "missing":
            raise KeyError(seq)
        if result[0] == "conflict":
            raise Conflict(int(result[1]), result[2])
        return dict(json.loads(result[1]))

    def _by_seq(self, key: str, since: int, upto: int | None) -> list[dict[str, Any]]:
        members = self._call(self._redis.zrangebyscore, key, f"({since}", upto if upto is not None else "+inf")
        return [json.loads(m) for m in members]

    def revisions(self, room: str, since: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        rows = self._by_seq(_key(room, "revisions"), since, upto)
        return sorted(map(_revision_row, rows), key=lambda r: (r["seq"], r["revision"]))

    def corrected(self, room: str, since: int, upto: int) -> list[dict[str, Any]]:
        current = self._call(self._redis.hgetall, _key(room, "current"))
        rows = [json.loads(v) for k, v in current.items() if since < int(k) <= upto]
        return sorted(map(_revision_row, rows), key=lambda r: r["seq"])

    def recent_revisions(self, room: str, limit: int) -> list[dict[str, Any]]:
        members = self._call(self._redis.zrevrange, _key(room, "revisions"), 0, limit - 1)
        return sorted((_revision_row(json.loads(m)) for m in members), key=lambda r: -r["at"])

    def add_translation(self, room: str, seq: int, language: str, text: str) -> None:
        member = json.dumps({"seq": seq, "language": language, "text": text}, ensure_ascii=False)
        self._call(self._redis.zadd, _key(room, "translations"), {member: seq})

    def translations(self, room: str, since: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        rows = {(r["seq"], r["language"]): r for r in self._by_seq(_key(room, "translations"), since, upto)}
        return [rows[k] for k in sorted(rows)]

    def add_shadow(self, room: str, seq: int, model: str, language: str, text: str) -> None:
        member = json.dumps({"seq": seq, "model": model, "language": language, "text": text}, ensure_ascii=False)
        self._call(self._redis.zadd, _key(room, "shadows"), {member: seq})

    def shadows(self, room: str, since: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        rows = {(r["seq"], r["model"]): r for r in self._by_seq(_key(room, "shadows"), since, upto)}
        return [rows[k] for k in sorted(rows)]

    def revoke_token(self, token_id: str, until: float) -> None:
        self._call(self._redis.hset, "fc:revoked", token_id, str(until))

    def revoked_tokens(self) -> frozenset[str]:
        found = self._call(self._redis.hgetall, "fc:revoked")
        expired = [token for token, until in found.items() if float(until) < time.time()]
        if expired:
            self._call(self._redis.hdel, "fc:revoked", *expired)
        return frozenset(token for token in found if token not in expired)

    def add_room_term(self, room: str, term: str, editor: str) -> None:
        pipe = self._redis.pipeline()
        pipe.hsetnx(f"fc:terms:{room}", term, json.dumps({"editor": editor, "at": time.time()}))
        pipe.sadd("fc:terms", room)
        self._call(pipe.execute)

    def room_terms(self) -> dict[str, tuple[str, ...]]:
        terms: dict[str, tuple[str, ...]] = {}
        for room in sorted(self._call(self._redis.smembers, "fc:terms")):
            found = self._call(self._redis.hgetall, f"fc:terms:{room}")
            if found:
                terms[room] = tuple(sorted(found, key=lambda t: json.loads(found[t])["at"]))
        return terms

    def written_since(self, room: str, since: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        newest = "+"
        while True:  # newest first, a page at a time, until one was written before ``since``
            page = self._rows(room, self._call(self._redis.xrevrange, _key(room, "finals"), newest, "-", 200))
            rows.extend(r for r in page if r["written"] > since)
            if len(page) < 200 or page[-1]["written"] <= since:
                return sorted(rows, key=lambda r: r["seq"])
            newest = f"0-{page[-1]['seq'] - 1}"

    def keep_session(self, session: str, room: str, language: str, context: str | None) -> None:
        key = f"fc:session:{session}"
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, "started", str(time.time()))
        pipe.hset(key, mapping={"room": room, "language": language, **({"context": context} if context is not None else {})})
        pipe.expire(key, SESSION_TTL_S)
        self._call(pipe.execute)

    def session_settings(self, session: str) -> dict[str, Any] | None:
        language, context = self._call(self._redis.hmget, f"fc:session:{session}", ["language", "context"])
        return {"language": language, "context": context} if language is not None else None

    def end_session(self, session: str) -> None:
        self.end_session_of(session, "")

    def end_session_of(self, session: str, node: str) -> bool:
        """End a session unless a node other than ``node`` ("": any) holds it now; True if ended."""
        keys = [f"fc:session:{session}:owner", f"fc:session:{session}:ended", f"fc:session:{session}"]
        return bool(self._call(self._end_session, keys=keys, args=[node, SESSION_TTL_S]))

    def hold_session(self, session: str, node: str, state: str) -> None:
        """Say which node has the session, and whether it is ``live`` there or ``parked`` (a node
        parks only a session it still holds: another may have resumed it meanwhile)."""
        self._call(self._hold, keys=[f"fc:session:{session}:owner"], args=[node, state, SESSION_TTL_S])

    def ping(self) -> bool:
        try:
            return bool(self._call(self._redis.ping))
        except StoreUnavailable:
            return False

    def session_holder(self, session: str) -> tuple[str, str] | None:
        value = self._call(self._redis.get, f"fc:session:{session}:owner")
        if not value:
            return None
        node, _, state = value.partition("\t")
        return node, state

    def last_of_session(self, session: str) -> dict[str, Any] | None:
        ended, last, top = self._call(self._redis.mget, [f"fc:session:{session}:ended", f"fc:session:{session}:last", f"fc:session:{session}:segment"])
        if ended or not last:
            return None
        room, _, seq = last.partition("\t")
        rows = self.finals(room, int(seq) - 1, 1, int(seq))
        # The highest segment it numbered (words a final dropped are numbered when found, after
        # a later utterance may have been): a revival goes on after it, never reusing one.
        return {**rows[0], "segment": max(rows[0]["segment"], int(top or -1))} if rows else None

    def delete_older_than(self, cutoff: float) -> int:
        deleted = 0
        for room in self._call(self._redis.smembers, "fc:rooms"):
            while True:  # a page at a time, oldest first, until a final is newer than the cutoff
                page = self._rows(room, self._call(self._redis.xrange, _key(room, "finals"), "-", "+", 1000))
                old = [r for r in page if r["written"] < cutoff]
                if not old:
                    break
                deleted += self._delete_rows(room, old)
                if len(old) < len(page):
                    break
        for room in self._call(self._redis.smembers, "fc:terms"):
            found = self._call(self._redis.hgetall, f"fc:terms:{room}")
            stale = [t for t, v in found.items() if json.loads(v)["at"] < cutoff]
            if stale:
                self._call(self._redis.hdel, f"fc:terms:{room}", *stale)
        return deleted

    def _delete_rows(self, room: str, old: list[dict[str, Any]]) -> int:
        """Retention: these finals, and what was made of them, go."""
        last = max(r["seq"] for r in old)
        pipe = self._redis.pipeline()
        pipe.xdel(_key(room, "finals"), *[f"0-{r['seq']}" for r in old])
        pipe.hdel(_key(room, "ids"), *[f"{r['session']}/{r['segment']}" for r in old])
        pipe.hdel(_key(room, "current"), *[r["seq"] for r in old])
        for what in ("revisions", "translations", "shadows"):
            pipe.zremrangebyscore(_key(room, what), "-inf", last)
        self._call(pipe.execute)
        return len(old)

    def forget_sessions(self, cutoff: float, live: Iterable[str] = ()) -> int:
        return 0  # session keys expire by themselves (SESSION_TTL_S)

    def delete_room(self, room: str) -> int:
        count = int(self._call(self._redis.xlen, _key(room, "finals")))
        pipe = self._redis.pipeline()
        # Its seq key stays: other nodes may hold the room in memory, and a seq that went back would
        # be taken there for finals they have already sent.
        pipe.delete(*[_key(room, what) for what in ("finals", "ids", "current", "revisions", "translations", "shadows")], f"fc:terms:{room}")
        pipe.srem("fc:rooms", room)
        pipe.srem("fc:terms", room)
        self._call(pipe.execute)
        return count

    # -- live events between nodes --------------------------------------------------------------
    def publish(self, room: str, text: str) -> None:
        self._call(self._redis.publish, f"fc:live:{room}", f"{self.node}\n{text}")

    def listen(self, deliver: Callable[[str, str], None], stop: threading.Event) -> None:
        """Deliver other nodes' live events (room, text) until ``stop``; reconnects by itself."""
        while not stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe("fc:live:*")
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None or message["type"] != "pmessage":
                        continue
                    node, _, text = message["data"].partition("\n")
                    if node != self.node:
                        deliver(message["channel"][len("fc:live:") :], text)
            except (redis.RedisError, OSError, ValueError):
                stop.wait(0.5)
            finally:
                pubsub.close()

    # -- nodes ---------------------------------------------------------------------------------
    def register_node(self, info: dict[str, Any], ttl_s: float) -> None:
        pipe = self._redis.pipeline()
        pipe.set(f"fc:node:{self.node}", json.dumps({"node": self.node, **info, "at": time.time()}), px=int(ttl_s * 1000))
        pipe.sadd("fc:nodes", self.node)
        self._call(pipe.execute)

    def nodes(self) -> list[dict[str, Any]]:
        names = sorted(self._call(self._redis.smembers, "fc:nodes"))
        values = self._call(self._redis.mget, [f"fc:node:{n}" for n in names]) if names else []
        gone = [n for n, v in zip(names, values) if v is None]
        if gone:
            self._call(self._redis.srem, "fc:nodes", *gone)
        return [json.loads(v) for v in values if v is not None]

    def close(self) -> None:
        self._redis.close()
        with self._outbox_lock:
            self._outbox.close()


def _revision_row(kept: dict[str, Any]) -> dict[str, Any]:
    """A kept revision as the journal's revision rows are (the final's language is kept with it
    only for the correction's answer)."""
    return {k: v for k, v in kept.items() if k != "language"}


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://…@{rest.rpartition('@')[2]}"
    return url
