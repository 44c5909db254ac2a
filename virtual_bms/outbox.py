"""Store-and-forward: the BMS's on-disk queue of uplink messages and its sequence counter.

Every message the BMS sends goes through an :class:`Outbox` first, a SQLite file that
survives a restart of the BMS. The uplink publishes from its head in order and removes a
message only once the broker has acknowledged it; while the broker or the cloud is
unreachable, messages wait here and go out in order on reconnect. Telemetry and EIS
messages carry a ``seq`` from a persistent counter, allocated in the same transaction
that stores the message, so a seq is never reused, even across restarts, and the cloud
stores a redelivered message once.

Overflow policy (the buffer is bounded by ``max_messages``): when full, the oldest
*telemetry* messages are dropped first, since newer samples supersede them; EIS sweeps,
events and acknowledgements are dropped only when no telemetry is left to drop. Every
drop is counted (:attr:`Outbox.dropped`) and the seqs of dropped telemetry are simply
missing in the cloud (a gap, never a reordering).

Example::

    outbox = Outbox("bms-7.outbox.sqlite", max_messages=100_000)
    seq = outbox.put_sequenced("telemetry", lambda seq: make_payload(seq))
    for item in outbox.peek(100):
        ...  # publish item.payload on item.channel, then
        outbox.remove([item.id])
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outbox", "OutboxItem"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS handled_commands (command_id INTEGER PRIMARY KEY);
INSERT OR IGNORE INTO counters (name, value) VALUES ('next_seq', 0), ('dropped', 0);
"""
_INSERT = "INSERT INTO outbox (channel, payload) VALUES (?, ?)"
_HANDLED_KEEP = 10_000  # command ids remembered for de-duplication


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int  # position in the queue (increasing)
    channel: str
    payload: bytes


class Outbox:
    """A bounded, persistent FIFO of uplink messages (one per device).

    Args:
        path: SQLite file (created); ``":memory:"`` for a buffer that does not survive.
        max_messages: Bound of the queue; see the module docstring for what is dropped.
        durable: ``True`` syncs every write to disk (survives power loss, slower);
            ``False`` (default) survives a crash of the process, as SQLite's WAL with
            ``synchronous=NORMAL`` does.
    """

    def __init__(
        self, path: str | Path, *, max_messages: int = 100_000, durable: bool = False
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self.path = str(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._size = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __len__(self) -> int:
        return self._size

    @property
    def dropped(self) -> int:
        """Messages dropped by the overflow policy since the file was created."""
        return self._counter("dropped")

    @property
    def next_seq(self) -> int:
        """The seq the next sequenced message will get."""
        return self._counter("next_seq")

    def put(self, channel: str, payload: bytes) -> None:
        """Queue a message that carries no seq (events, status, acks)."""
        with self._lock, self._transaction():
            self._make_room()
            self._db.execute(
                "INSERT INTO outbox (channel, payload) VALUES (?, ?)", (channel, payload)
            )
            self._size += 1

    def put_sequenced(self, channel: str, build: Callable[[int], bytes]) -> int:
        """Allocate the next seq, build the payload with it and queue it, atomically.

        Returns:
            The seq used.
        """
        with self._lock, self._transaction():
            seq = int(
                self._db.execute(
                    "UPDATE counters SET value = value + 1 WHERE name = 'next_seq' "
                    "RETURNING value - 1"
                ).fetchone()[0]
            )
            payload = build(seq)
            self._make_room()
            self._db.execute(
                "INSERT INTO outbox (channel, payload) VALUES (?, ?)", (channel, payload)
            )
            self._size += 1
        return seq

    def peek(self, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` messages, oldest first, without removing them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, channel, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxItem(int(i), str(c), bytes(p)) for i, c, p in rows]

    def remove(self, ids: Iterable[int]) -> None:
        """Forget messages the broker has acknowledged."""
        keys = [(i,) for i in ids]
        if not keys:
            return
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE id = ?", keys)
            self._size -= self._db.total_changes - before

    def first_time(self, command_id: int) -> bool:
        """Record a command as handled; False if it was handled before (a redelivery)."""
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO handled_commands (command_id) VALUES (?)", (command_id,)
            )
            self._db.execute(
                "DELETE FROM handled_commands WHERE command_id <= "
                "(SELECT max(command_id) FROM handled_commands) - ?",
                (_HANDLED_KEEP,),
            )
            return cursor.rowcount == 1

    def _counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _make_room(self) -> None:
        """Apply the overflow policy for one more message (inside a transaction)."""
        excess = self._size + 1 - self.max_messages
        if excess <= 0:
            return
        victims = [
            row[0]
            for row in self._db.execute(
                "SELECT id FROM outbox WHERE channel = 'telemetry' ORDER BY id LIMIT ?", (excess,)
            )
        ]
        if len(victims) < excess:
            victims += [
                row[0]
                for row in self._db.execute(
                    "SELECT id FROM outbox WHERE channel != 'telemetry' ORDER BY id LIMIT ?",
                    (excess - len(victims),),
                )
            ]
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(v,) for v in victims])
        self._db.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'dropped'", (len(victims),)
        )
        self._size -= len(victims)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
