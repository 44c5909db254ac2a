"""The data collector: bench tests and their results into the database, each exactly once.

:func:`store_result` takes any message of a results topic (status or data) and is the one
way results reach the database, whether they came over MQTT or from an in-process run.
A data chunk is keyed by ``(test, seq)``: a redelivered chunk is recognised and not
stored again. A status never goes back: a ``started`` or ``in_progress`` that arrives
after the test finished changes nothing. A ``started`` message with the request makes the
test's record if there is none (results of a physical bench, published elsewhere).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import Connection, Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cloud.models import BenchTest, BenchTestChunk
from cloud.testbench.messages import (
    FINAL_STATUSES,
    VARIABLES,
    DataMessage,
    StatusMessage,
    TestRequest,
)

__all__ = ["Registered", "StoreOutcome", "claim_test", "register_test", "store_result"]

_log = logging.getLogger(__name__)
_TESTS = cast(Table, BenchTest.__table__)
_CHUNKS = cast(Table, BenchTestChunk.__table__)
_RANK = {"started": 0, "in_progress": 1, "completed": 2, "failed": 2, "stopped_by_safety": 2}

StoreOutcome = Literal["stored", "duplicate", "ignored"]


@dataclass(frozen=True)
class Registered:
    """A test's record: its id, whether this call made it, and its status now."""

    id: int
    uuid: str
    created: bool
    status: str


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _register(
    conn: Connection, request: TestRequest, *, requested_by_id: int | None, variables: Any
) -> Registered:
    if request.uuid is None or request.name is None or request.scheduled_at is None:
        raise ValueError("register a completed request (TestRequest.completed())")
    values = {
        "uuid": request.uuid,
        "name": request.name,
        "test_type": request.test_type,
        "level": request.level,
        "unit_under_test": request.unit_under_test,
        "bench": request.bench,
        "status": "started",
        "scheduled_at": request.scheduled_at,
        "created_at": _now(),
        "request": request.model_dump(mode="json"),
        "variables": variables,
        "n_samples": 0,
        "requested_by_id": requested_by_id,
    }
    statement = (
        _insert(conn, _TESTS)
        .values(values)
        .on_conflict_do_nothing(index_elements=["uuid"])
        .returning(_TESTS.c.id)
    )
    made = conn.execute(statement).scalar()
    if made is not None:
        return Registered(int(made), request.uuid, True, "started")
    row = conn.execute(
        select(_TESTS.c.id, _TESTS.c.status).where(_TESTS.c.uuid == request.uuid)
    ).one()
    return Registered(int(row.id), request.uuid, False, str(row.status))


def register_test(
    engine: Engine, request: TestRequest, *, requested_by_id: int | None = None
) -> Registered:
    """The test's record, made with status ``started`` unless its uuid is known.

    Args:
        engine: The database.
        request: A completed request (uuid, name and scheduled time set).
        requested_by_id: The user who asked for it over REST.
    """
    variables = [v.model_dump() for v in VARIABLES]
    with engine.begin() as conn:
        return _register(conn, request, requested_by_id=requested_by_id, variables=variables)


def claim_test(engine: Engine, uuid: str) -> bool:
    """Move a ``started`` test to ``in_progress``; False if it is not waiting (any more).

    Two benches (or two service processes) that both hold the request run it once: only
    the one whose claim succeeds.
    """
    with engine.begin() as conn:
        claimed = conn.execute(
            update(_TESTS)
            .where(_TESTS.c.uuid == uuid, _TESTS.c.status == "started")
            .values(status="in_progress", started_at=_now())
        )
        return claimed.rowcount == 1


def store_result(engine: Engine, message: StatusMessage | DataMessage) -> StoreOutcome:
    """Store one results-topic message: ``stored``, ``duplicate`` (nothing written) or
    ``ignored`` (a ``rejected`` answer, or a message of an unknown test)."""
    with engine.begin() as conn:
        if isinstance(message, DataMessage):
            return _store_data(conn, message)
        return _store_status(conn, message)


def _test_row(conn: Connection, uuid: str) -> Any:
    return conn.execute(select(_TESTS.c.id, _TESTS.c.status).where(_TESTS.c.uuid == uuid)).first()


def _store_data(conn: Connection, message: DataMessage) -> StoreOutcome:
    test = _test_row(conn, message.uuid)
    if test is None:
        _log.warning("data chunk %d of unknown test %s dropped", message.seq, message.uuid)
        return "ignored"
    n = len(message.time_s)
    statement = (
        _insert(conn, _CHUNKS)
        .values(
            test_id=test.id,
            seq=message.seq,
            t_start_s=message.time_s[0],
            t_end_s=message.time_s[-1],
            n=n,
            data=message.columns(),
        )
        .on_conflict_do_nothing(index_elements=["test_id", "seq"])
        .returning(_CHUNKS.c.id)
    )
    if conn.execute(statement).scalar() is None:
        return "duplicate"
    conn.execute(
        update(_TESTS).where(_TESTS.c.id == test.id).values(n_samples=_TESTS.c.n_samples + n)
    )
    return "stored"


def _store_status(conn: Connection, message: StatusMessage) -> StoreOutcome:
    if message.status == "rejected" or message.uuid is None:
        return "ignored"  # a request that was never accepted leaves no record
    test = _test_row(conn, message.uuid)
    created = False
    if test is None:
        if message.test is None:
            _log.warning("status of unknown test %s dropped (no request)", message.uuid)
            return "ignored"
        request = message.test.completed().model_copy(update={"uuid": message.uuid})
        variables = [v.model_dump() for v in message.variables or VARIABLES]
        registered = _register(conn, request, requested_by_id=None, variables=variables)
        test = _test_row(conn, registered.uuid)
        created = registered.created
    old, new = str(test.status), message.status
    if _RANK[new] < _RANK[old] or (old in FINAL_STATUSES):
        return "stored" if created else "duplicate"
    values: dict[str, Any] = {"status": new}
    if new == "started" and message.variables:
        values["variables"] = [v.model_dump() for v in message.variables]
    if new == "in_progress":
        if old == "started":
            values["started_at"] = message.ts
        if message.progress is not None:
            values["progress"] = message.progress
    if new in FINAL_STATUSES:
        values["finished_at"] = message.ts
        values["outcome"] = message.outcome
    if old == new and new == "started" and "variables" not in values:
        return "stored" if created else "duplicate"
    conn.execute(update(_TESTS).where(_TESTS.c.id == test.id).values(**values))
    return "stored"
