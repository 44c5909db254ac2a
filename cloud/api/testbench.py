"""``/api/tests/``: ask the test bench for a test, and the analysis service over its results.

* ``POST /api/tests/``: a test request (``cloud.testbench.messages.TestRequest``); 201
  with the test's record. The bench runs it (over MQTT when the service has a broker).
* ``GET /api/tests/``: tests, filtered by status, type, unit, level, bench, scheduled time.
* ``GET /api/tests/analytics/``: how many tests per level, status and type.
* ``GET /api/tests/{id or uuid}/``: one test with its variables (and units) and outcome.
* ``GET /api/tests/{id or uuid}/results/``: the variables over time, for trend charts.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from cloud.api.deps import CurrentUser, SessionDep, SettingsDep
from cloud.api.resources import ALL_READERS
from cloud.models import BenchTest, BenchTestChunk, Role, User
from cloud.testbench.messages import DATA_VARIABLES, TestRequest
from cloud.testbench.service import BenchService

router = APIRouter(prefix="/api/tests", tags=["Test bench"])

TEST_WRITERS = frozenset({Role.admin, Role.operator, Role.service})
_ORDERING = {
    "id": BenchTest.id,
    "scheduled_at": BenchTest.scheduled_at,
    "status": BenchTest.status,
    "test_type": BenchTest.test_type,
}
MAX_POINTS = 100_000


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no offset: every stored time is UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _summary(test: BenchTest) -> dict[str, Any]:
    outcome = test.outcome or {}
    return {
        "id": test.id,
        "uuid": test.uuid,
        "name": test.name,
        "test_type": test.test_type,
        "level": test.level,
        "unit_under_test": test.unit_under_test,
        "bench": test.bench,
        "scheduled_at": _iso(test.scheduled_at),
        "status": test.status,
        "summary": outcome.get("summary"),
    }


def _details(test: BenchTest) -> dict[str, Any]:
    return {
        **_summary(test),
        "created_at": _iso(test.created_at),
        "started_at": _iso(test.started_at),
        "finished_at": _iso(test.finished_at),
        "progress": test.progress,
        "n_samples": test.n_samples,
        "variables": test.variables,
        "outcome": test.outcome,
        "request": test.request,
        "requested_by_id": test.requested_by_id,
    }


def _may_read(user: User) -> None:
    if user.role not in ALL_READERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not read tests"
        )


def _find(session: Session, ref: str) -> BenchTest:
    where = BenchTest.id == int(ref) if ref.isdigit() else BenchTest.uuid == ref.lower()
    test = session.scalar(select(BenchTest).where(where))
    if test is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"test {ref} not found")
    return test


def _conditions(
    *,
    status_: list[str] | None = None,
    test_type: list[str] | None = None,
    unit_under_test: str | None = None,
    level: str | None = None,
    bench: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if status_:
        where.append(BenchTest.status.in_(status_))
    if test_type:
        where.append(BenchTest.test_type.in_(test_type))
    if unit_under_test is not None:
        where.append(BenchTest.unit_under_test == unit_under_test)
    if level is not None:
        where.append(BenchTest.level == level)
    if bench is not None:
        where.append(BenchTest.bench == bench)
    if since is not None:
        where.append(BenchTest.scheduled_at >= since)
    if until is not None:
        where.append(BenchTest.scheduled_at < until)
    return where


StatusFilter = Annotated[
    list[str] | None,
    Query(alias="status", description="started, in_progress, completed, failed, ... (repeat)"),
]
TypeFilter = Annotated[list[str] | None, Query(description="capacity, hppc, ... (repeat)")]
Since = Annotated[dt.datetime | None, Query(description="scheduled at or after (UTC)")]
Until = Annotated[dt.datetime | None, Query(description="scheduled before (UTC)")]


@router.post("/", status_code=status.HTTP_201_CREATED)
async def request_test(body: TestRequest, request: Request, user: CurrentUser) -> dict[str, Any]:
    """Ask the bench for a test; the test's record (status ``started``) comes back."""
    if user.role not in TEST_WRITERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not request tests"
        )
    bench: BenchService | None = request.app.state.bench
    if bench is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the bench is not running")
    test_id = await bench.submit(body, requested_by_id=user.id)
    engine = request.app.state.engine

    def load() -> dict[str, Any]:
        with Session(engine) as fresh:  # this request's session began before the insert
            return _details(_find(fresh, str(test_id)))

    return await run_in_threadpool(load)


@router.get("/")
def list_tests(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    status_: StatusFilter = None,
    test_type: TypeFilter = None,
    unit_under_test: str | None = None,
    level: str | None = None,
    bench: str | None = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    ordering: Annotated[str, Query(description="id, scheduled_at, status, test_type; '-' desc")] = (
        "-id"
    ),
) -> JSONResponse:
    """Tests (newest first by default), ``limit``/``offset`` paged with a ``Link`` header."""
    _may_read(user)
    if limit > settings.page_size_max:
        raise HTTPException(
            422, detail=[{"loc": ["query", "limit"], "msg": f"must be <= {settings.page_size_max}"}]
        )
    column = _ORDERING.get(ordering.lstrip("-"))
    if column is None:
        raise HTTPException(
            422,
            detail=[{"loc": ["query", "ordering"], "msg": f"one of {', '.join(_ORDERING)}"}],
        )
    query = select(BenchTest).where(
        *_conditions(
            status_=status_,
            test_type=test_type,
            unit_under_test=unit_under_test,
            level=level,
            bench=bench,
            since=since,
            until=until,
        )
    )
    query = query.order_by(column.desc() if ordering.startswith("-") else column.asc())
    query = query.order_by(BenchTest.id.desc() if ordering.startswith("-") else BenchTest.id)
    rows = session.scalars(query.limit(limit + 1).offset(offset)).all()
    headers = {}
    if len(rows) > limit:
        nxt = request.url.include_query_params(offset=offset + limit, limit=limit)
        headers["Link"] = f'<{nxt}>; rel="next"'
    return JSONResponse([_summary(t) for t in rows[:limit]], headers=headers)


@router.get("/analytics/")
def analytics(
    session: SessionDep,
    user: CurrentUser,
    unit_under_test: str | None = None,
    since: Since = None,
    until: Until = None,
) -> dict[str, Any]:
    """How many tests per level, per status, per type, and per level and status."""
    _may_read(user)
    query = (
        select(BenchTest.level, BenchTest.status, BenchTest.test_type, func.count())
        .where(*_conditions(unit_under_test=unit_under_test, since=since, until=until))
        .group_by(BenchTest.level, BenchTest.status, BenchTest.test_type)
    )
    by_level: dict[str, int] = {}
    by_status: dict[str, int] = {}
    by_type: dict[str, int] = {}
    by_level_status: dict[str, dict[str, int]] = {}
    total = 0
    for level, status_, test_type, n in session.execute(query):
        total += n
        by_level[level] = by_level.get(level, 0) + n
        by_status[status_] = by_status.get(status_, 0) + n
        by_type[test_type] = by_type.get(test_type, 0) + n
        cell = by_level_status.setdefault(level, {})
        cell[status_] = cell.get(status_, 0) + n
    return {
        "total": total,
        "by_level": by_level,
        "by_status": by_status,
        "by_type": by_type,
        "by_level_and_status": by_level_status,
    }


@router.get("/{ref}/")
def get_test(ref: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """One test by id or uuid: what, where, when, its status, variables and outcome."""
    _may_read(user)
    return _details(_find(session, ref))


@router.get("/{ref}/results/")
def get_results(
    ref: str,
    session: SessionDep,
    user: CurrentUser,
    variables: Annotated[
        str | None, Query(description="comma-separated, e.g. voltage_v,current_a (default all)")
    ] = None,
    since_s: Annotated[float | None, Query(description="from this test time (s)")] = None,
    until_s: Annotated[float | None, Query(description="up to this test time (s)")] = None,
    max_points: Annotated[int, Query(ge=2, le=MAX_POINTS)] = 5000,
) -> JSONResponse:
    """Variables over time; more than ``max_points`` samples are thinned evenly (the
    first and last kept)."""
    _may_read(user)
    test = _find(session, ref)
    units = {v["name"]: v["unit"] for v in test.variables}
    wanted = list(DATA_VARIABLES[1:]) if variables is None else _names(variables)
    unknown = [name for name in wanted if name not in units or name == "time_s"]
    if unknown:
        known = ", ".join(n for n in units if n != "time_s")
        raise HTTPException(
            422,
            detail=[{"loc": ["query", "variables"], "msg": f"unknown {unknown}; known: {known}"}],
        )
    query = select(BenchTestChunk.data).where(BenchTestChunk.test_id == test.id)
    if since_s is not None:
        query = query.where(BenchTestChunk.t_end_s >= since_s)
    if until_s is not None:
        query = query.where(BenchTestChunk.t_start_s <= until_s)
    columns: dict[str, list[Any]] = {name: [] for name in ["time_s", *wanted]}
    for data in session.scalars(query.order_by(BenchTestChunk.seq)):
        for name, values in columns.items():
            values.extend(data.get(name, [None] * len(data["time_s"])))
    time_s = np.asarray(columns["time_s"], dtype=float)
    keep = np.ones(time_s.size, dtype=bool)
    if since_s is not None:
        keep &= time_s >= since_s
    if until_s is not None:
        keep &= time_s <= until_s
    index = np.flatnonzero(keep)
    n = int(index.size)
    if n > max_points:
        index = index[np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.intp))]
    data = {name: [values[i] for i in index] for name, values in columns.items()}
    return JSONResponse(
        {
            "id": test.id,
            "uuid": test.uuid,
            "status": test.status,
            "n_samples": n,
            "n_points": int(index.size),
            "units": {name: units.get(name, "") for name in columns},
            "data": data,
        }
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
