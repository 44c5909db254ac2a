"""``/api/dashboard/``: read-only views shaped for the dashboard's pages.

Who sees what mirrors the REST resources (:mod:`cloud.api.resources`): admins and
services every battery, a manufacturer its own batteries, an operator the batteries it
operates; device accounts read nothing here. Device fields (online, last seen, pillar)
are shown only to the roles that may read ``/api/devices/`` (not to manufacturers).

Units: ``soc`` and ``soh`` are fractions 0..1 (values stored in percent, > 1.5, are
divided by 100, as :mod:`cloud.estimators.sow` reads them); voltages in V, temperatures
in degC, impedances in ohm, times in UTC.

Every view reads the latest rows through the ``(cell_id, measured_at)``,
``(battery_id, estimated_at)`` and ``(battery_id, occurred_at)`` indexes, one query per
concern, so the cost grows with the number of cells and batteries shown, not with the
rows stored.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel
from sqlalchemy import BigInteger, ColumnElement, Select, case, cast, extract, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.resources import DATA_READERS, scope_battery
from cloud.estimators.jobs import DRT_SOURCE_PREFIX
from cloud.models import (
    Battery,
    Cell,
    Device,
    EcmParameterSet,
    EisRecord,
    Event,
    Measurement,
    Module,
    Role,
    SoxEstimate,
    User,
)

router = APIRouter(prefix="/api/dashboard", tags=["Dashboard"])

DEVICE_READERS = frozenset({Role.admin, Role.operator, Role.service})
"""Roles that may read devices (``/api/devices/``), so see online status and last seen."""
COMMAND_ISSUERS = frozenset({Role.admin, Role.operator, Role.service})
"""Roles that may send commands (``/api/commands/``)."""
LIVE_POLL_S = 1.0  # s between two reads of the newest measurements for a live stream
KEEPALIVE_S = 15.0  # s of silence after which a live stream sends a comment
MAX_POINTS = 2_000  # points per trend series at most
TELEMETRY_WINDOW = dt.timedelta(days=7)  # default trend window of the edge-reported SoX


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


Utc = Annotated[dt.datetime, AfterValidator(_utc)]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fraction(column: Any) -> ColumnElement[Any]:
    """A SoC/SoH column as a fraction (values above 1.5 are percent)."""
    return case((column > 1.5, column / 100.0), else_=column)


# --- response models ------------------------------------------------------------------


class Me(BaseModel):
    username: str
    role: str
    models_access: str


class SowView(BaseModel):
    """The newest State of Warranty: D1.2's state, its message, severity and colour."""

    state: str
    message: str
    severity: str
    colour: str
    rw: float | None
    rh: float | None
    ruw: float | None
    estimated_at: Utc


class EventView(BaseModel):
    id: int
    severity: str
    kind: str
    detail: str
    occurred_at: Utc


class DeviceView(BaseModel):
    id: int
    name: str
    pillar: int
    online: bool
    last_seen: Utc | None
    reporting_interval_s: float


class FleetRow(BaseModel):
    """One battery and its BMS as the fleet table shows it."""

    battery_id: int
    battery_name: str
    serial_number: str
    status: str
    chemistry: str | None
    device_id: int | None
    device_name: str | None
    devices: int
    pillar: int | None
    online: bool | None
    last_seen: Utc | None
    soc: float | None
    soc_at: Utc | None
    soh: float | None
    soh_at: Utc | None
    sow: SowView | None
    alarms: int
    warnings: int
    newest_event: EventView | None
    """The newest alarm in the window, else the newest warning."""


class Fleet(BaseModel):
    generated_at: Utc
    window_hours: float
    """Alarms and warnings count when they occurred within this many hours."""
    rows: list[FleetRow]


class BatteryView(FleetRow):
    """A fleet row plus what the battery page needs: its devices and cell count."""

    model: str | None
    cells: int
    device_list: list[DeviceView]
    can_command: bool


class CellReading(BaseModel):
    cell_id: int
    position: int | None
    cell_name: str
    measured_at: Utc | None
    voltage: float | None
    temperature: float | None
    current: float | None
    soc: float | None


class CellSnapshot(BaseModel):
    """The newest measurement of every cell, in position order."""

    battery_id: int
    updated_at: Utc | None
    cells: list[CellReading]


class TrendPoint(BaseModel):
    at: Utc
    soc: float | None
    soh: float | None
    sot: float | None
    sos: float | None
    n: int
    """Rows averaged into this point (cells, and samples when downsampled)."""


class SowPoint(BaseModel):
    at: Utc
    state: str
    severity: str
    colour: str
    rw: float | None
    rh: float | None
    ruw: float | None


class Trends(BaseModel):
    """Cloud estimates and edge-reported states over time, each at most ``limit`` points
    (averaged over equal time buckets when longer), and the SoW states."""

    battery_id: int
    limit: int
    estimates: list[TrendPoint]
    estimates_rows: int
    telemetry: list[TrendPoint]
    telemetry_rows: int
    telemetry_since: Utc
    downsampled: bool
    sow: list[SowPoint]


class EcmFitView(BaseModel):
    ecm_id: int
    source: str | None
    created_at: Utc
    linked_by: str
    """``source``: fitted from this sweep; ``time``: the cell's newest set after it."""
    parameters: dict[str, float | None]
    z_re_ohm: list[float]
    z_im_ohm: list[float]


class EisSweep(BaseModel):
    cell_id: int
    position: int | None
    cell_name: str
    event_id: str
    measured_at: Utc
    frequency_hz: list[float]
    z_re_ohm: list[float | None]
    z_im_ohm: list[float | None]
    fit: EcmFitView | None


class EisSweepRef(BaseModel):
    event_id: str
    measured_at: Utc
    cells: int


class EisView(BaseModel):
    battery_id: int
    event_id: str | None
    sweeps: list[EisSweep]
    available: list[EisSweepRef]
    """The newest sweeps of the battery (newest first), to choose from."""


# --- access ---------------------------------------------------------------------------


def _require_reader(user: User) -> None:
    if user.role not in DATA_READERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"role '{user.role.value}' may not read the dashboard's battery data",
        )


def _visible(user: User) -> Select[Any]:
    """Ids of the batteries ``user`` may read."""
    query = select(Battery.id)
    return scope_battery(query, user) if user.role != Role.admin else query


def _battery(session: Session, user: User, battery_id: int) -> Battery:
    _require_reader(user)
    query = select(Battery).where(Battery.id == battery_id)
    if user.role != Role.admin:
        query = scope_battery(query, user)
    battery = session.scalar(query)
    if battery is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"battery {battery_id} not found (or not one you may read)",
        )
    return battery


def _cells_of(battery_id: int) -> Select[Any]:
    return (
        select(Cell.id)
        .join(Module, Cell.module_id == Module.id)
        .where(Module.battery_id == battery_id)
    )


# --- fleet ----------------------------------------------------------------------------


def _sow_view(
    state: str, rw: float | None, rh: float | None, ruw: float | None, at: dt.datetime
) -> SowView:
    """D1.2's message and severity for a stored state; a label the table does not know
    (another service's) is shown as undefined."""
    from cloud.estimators.sow import MESSAGES, Severity, SowState, classify_sow

    def factor(v: float | None) -> float:
        return float(v) if v is not None else math.nan

    known = state in SowState.__members__
    cls = classify_sow(factor(rw), factor(rh), factor(ruw))
    # The estimator stores the factors with the label, so they reproduce it; a label
    # stored alone (by another service) keeps its message, and its colour is unknown
    # rather than guessed.
    severity = cls.severity if known and cls.state == state else Severity.undefined
    message = MESSAGES[SowState(state)] if known else state
    return SowView(
        state=state,
        message=message,
        severity=str(severity),
        colour=severity.colour,
        rw=_finite(rw),
        rh=_finite(rh),
        ruw=_finite(ruw),
        estimated_at=at,
    )


def _fleet_rows(
    session: Session, user: User, *, now: dt.datetime, window: dt.timedelta, battery_id: int | None
) -> list[FleetRow]:
    visible = _visible(user)
    if battery_id is not None:
        visible = visible.where(Battery.id == battery_id)
    visible_ids = visible
    show_devices = user.role in DEVICE_READERS

    # Batteries, their devices (aggregated), the newest estimates (correlated subqueries
    # served by ix_sox_battery_time) and the newest SoW row.
    devices = (
        select(
            Device.battery_id.label("battery_id"),
            func.count().label("n"),
            func.min(Device.id).label("first_id"),
            func.max(case((Device.online.is_(True), 1), else_=0)).label("online"),
            func.max(Device.last_seen).label("last_seen"),
            func.min(Device.pillar).label("pillar"),
        )
        .group_by(Device.battery_id)
        .subquery()
    )
    first = aliased(Device)
    s_sow, sow_row = aliased(SoxEstimate), aliased(SoxEstimate)

    def newest_mean(field: str) -> tuple[Any, Any]:
        """(time of the battery's newest estimate of ``field``, its mean over the cells)."""
        at_row, value_row = aliased(SoxEstimate), aliased(SoxEstimate)
        newest = (
            select(func.max(at_row.estimated_at))
            .where(at_row.battery_id == Battery.id, getattr(at_row, field).is_not(None))
            .correlate(Battery)
            .scalar_subquery()
        )
        value = getattr(value_row, field)
        mean = (
            select(func.avg(_fraction(value)))
            .where(
                value_row.battery_id == Battery.id,
                value_row.estimated_at == newest,
                value.is_not(None),
            )
            .correlate(Battery)
            .scalar_subquery()
        )
        return newest, mean

    soh_at, soh = newest_mean("soh")
    soc_at, soc = newest_mean("soc")
    sow_id = (
        select(s_sow.id)
        .where(s_sow.battery_id == Battery.id, s_sow.sow.is_not(None))
        .order_by(s_sow.estimated_at.desc(), s_sow.id.desc())
        .limit(1)
        .correlate(Battery)
        .scalar_subquery()
    )
    main = (
        select(
            Battery.id,
            Battery.battery_name,
            Battery.serial_number,
            Battery.status,
            Battery.chemistry,
            devices.c.n,
            devices.c.first_id,
            first.name,
            devices.c.online,
            devices.c.last_seen,
            devices.c.pillar,
            soh_at.label("soh_at"),
            soh.label("soh"),
            soc_at.label("soc_at"),
            soc.label("soc"),
            sow_row.sow,
            sow_row.rw,
            sow_row.rh,
            sow_row.ruw,
            sow_row.estimated_at,
        )
        .outerjoin(devices, devices.c.battery_id == Battery.id)
        .outerjoin(first, first.id == devices.c.first_id)
        .outerjoin(sow_row, sow_row.id == sow_id)
        .where(Battery.id.in_(visible_ids))
        .order_by(Battery.battery_name, Battery.id)
    )
    batteries = session.execute(main).all()
    if not batteries:
        return []

    # The newest measurement of every cell (an index probe per cell), per battery.
    latest_id = _newest_measurement_id()
    live = {
        row[0]: row[1:]
        for row in session.execute(
            select(
                Module.battery_id,
                func.avg(_fraction(Measurement.soc)),
                func.avg(_fraction(Measurement.soh)),
                func.max(Measurement.measured_at),
            )
            .select_from(Cell)
            .join(Module, Cell.module_id == Module.id)
            .join(Measurement, Measurement.id == latest_id)
            .where(Module.battery_id.in_(visible_ids))
            .group_by(Module.battery_id)
        )
    }

    # Alarms and warnings in the window: counts, and the newest (alarms first).
    since = now - window
    in_window = (
        Event.battery_id.in_(visible_ids),
        Event.occurred_at >= since,
        Event.severity.in_(("alarm", "warning")),
    )
    counts = {
        b: (int(a or 0), int(w or 0))
        for b, a, w in session.execute(
            select(
                Event.battery_id,
                func.sum(case((Event.severity == "alarm", 1), else_=0)),
                func.sum(case((Event.severity == "warning", 1), else_=0)),
            )
            .where(*in_window)
            .group_by(Event.battery_id)
        )
    }
    ranked = (
        select(
            Event.id,
            Event.battery_id,
            Event.severity,
            Event.kind,
            Event.detail,
            Event.occurred_at,
            func.row_number()
            .over(
                partition_by=Event.battery_id,
                order_by=(
                    case((Event.severity == "alarm", 0), else_=1),
                    Event.occurred_at.desc(),
                    Event.id.desc(),
                ),
            )
            .label("rank"),
        )
        .where(*in_window)
        .subquery()
    )
    newest_event = {
        r.battery_id: EventView(
            id=r.id, severity=r.severity, kind=r.kind, detail=r.detail, occurred_at=r.occurred_at
        )
        for r in session.execute(select(ranked).where(ranked.c.rank == 1))
    }

    rows = []
    for b in batteries:
        m_soc, m_soh, m_at = live.get(b.id, (None, None, None))
        # SoC: the edge's newest telemetry when it reports one, else the cloud's estimate.
        soc_v, soc_when = (m_soc, m_at) if m_soc is not None else (b.soc, b.soc_at)
        # SoH: the cloud's estimate (slow-moving, computed from weeks of data), else the edge's.
        soh_v, soh_when = (b.soh, b.soh_at) if b.soh is not None else (m_soh, m_at)
        alarms, warnings = counts.get(b.id, (0, 0))
        has_device = b.n is not None and show_devices
        rows.append(
            FleetRow(
                battery_id=b.id,
                battery_name=b.battery_name,
                serial_number=b.serial_number,
                status=str(b.status.value if hasattr(b.status, "value") else b.status),
                chemistry=b.chemistry,
                device_id=b.first_id if has_device else None,
                device_name=b.name if has_device else None,
                devices=int(b.n or 0) if show_devices else 0,
                pillar=b.pillar if has_device else None,
                online=bool(b.online) if has_device else None,
                last_seen=b.last_seen if has_device else None,
                soc=_finite(soc_v),
                soc_at=soc_when if soc_v is not None else None,
                soh=_finite(soh_v),
                soh_at=soh_when if soh_v is not None else None,
                sow=_sow_view(b.sow, b.rw, b.rh, b.ruw, b.estimated_at) if b.sow else None,
                alarms=alarms,
                warnings=warnings,
                newest_event=newest_event.get(b.id),
            )
        )
    return rows


@router.get("/me/", response_model=Me)
def me(user: CurrentUser) -> Me:
    """The signed-in user, so pages show what the role allows."""
    return Me(username=user.username, role=str(user.role), models_access=str(user.models_access))


WindowHours = Annotated[
    float, Query(gt=0, le=24 * 365, description="alarms and warnings of the last N hours")
]


@router.get("/fleet/", response_model=Fleet)
def fleet(session: SessionDep, user: CurrentUser, window_hours: WindowHours = 24.0) -> Fleet:
    """Every battery the user may read, with its BMS's status, the newest SoC, SoH and
    SoW, and its alarms and warnings of the last ``window_hours`` (events have no
    "closed" state: recent ones count as open)."""
    _require_reader(user)
    now = dt.datetime.now(dt.UTC)
    rows = _fleet_rows(
        session, user, now=now, window=dt.timedelta(hours=window_hours), battery_id=None
    )
    return Fleet(generated_at=now, window_hours=window_hours, rows=rows)


@router.get("/batteries/{battery_id}/", response_model=BatteryView)
def battery(
    battery_id: int, session: SessionDep, user: CurrentUser, window_hours: WindowHours = 24.0
) -> BatteryView:
    """The battery page's header: its fleet row, its devices and its number of cells."""
    found = _battery(session, user, battery_id)
    now = dt.datetime.now(dt.UTC)
    (row,) = _fleet_rows(
        session, user, now=now, window=dt.timedelta(hours=window_hours), battery_id=battery_id
    )
    device_list: list[DeviceView] = []
    if user.role in DEVICE_READERS:
        device_list = [
            DeviceView.model_validate(d, from_attributes=True)
            for d in session.scalars(
                select(Device).where(Device.battery_id == battery_id).order_by(Device.id)
            )
        ]
    cells = session.scalar(select(func.count()).select_from(_cells_of(battery_id).subquery()))
    return BatteryView(
        **row.model_dump(),
        model=found.model,
        cells=int(cells or 0),
        device_list=device_list,
        can_command=user.role in COMMAND_ISSUERS and bool(device_list),
    )


# --- cells and the live stream --------------------------------------------------------


def _newest_measurement_id() -> Any:
    """The id of the newest measurement of ``Cell`` (correlated; one index probe a cell)."""
    newest = aliased(Measurement)
    return (
        select(newest.id)
        .where(newest.cell_id == Cell.id)
        .order_by(newest.measured_at.desc(), newest.id.desc())
        .limit(1)
        .correlate(Cell)
        .scalar_subquery()
    )


def cell_snapshot(session: Session, battery_id: int) -> CellSnapshot:
    """The newest measurement of each of the battery's cells (one index probe per cell)."""
    latest_id = _newest_measurement_id()
    rows = session.execute(
        select(
            Cell.id,
            Cell.position,
            Cell.cell_name,
            Measurement.measured_at,
            Measurement.voltage,
            Measurement.temperature,
            Measurement.current,
            _fraction(Measurement.soc),
        )
        .select_from(Cell)
        .join(Module, Cell.module_id == Module.id)
        .outerjoin(Measurement, Measurement.id == latest_id)
        .where(Module.battery_id == battery_id)
        .order_by(Module.position, Cell.position, Cell.id)
    ).all()
    cells = [
        CellReading(
            cell_id=r[0],
            position=r[1],
            cell_name=r[2],
            measured_at=r[3],
            voltage=_finite(r[4]),
            temperature=_finite(r[5]),
            current=_finite(r[6]),
            soc=_finite(r[7]),
        )
        for r in rows
    ]
    times = [c.measured_at for c in cells if c.measured_at is not None]
    return CellSnapshot(
        battery_id=battery_id, updated_at=max(times) if times else None, cells=cells
    )


@router.get("/batteries/{battery_id}/cells/", response_model=CellSnapshot)
def cells(battery_id: int, session: SessionDep, user: CurrentUser) -> CellSnapshot:
    """Latest voltage, temperature, current and SoC per cell, in position order (heatmap)."""
    _battery(session, user, battery_id)
    return cell_snapshot(session, battery_id)


async def _live_events(
    request: Request, sessions: sessionmaker[Session], battery_id: int
) -> AsyncIterator[str]:
    def read() -> str:
        with sessions() as session:
            return cell_snapshot(session, battery_id).model_dump_json()

    sent: str | None = None
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        data = await anyio.to_thread.run_sync(read)
        if data != sent:
            sent, quiet_since = data, time.monotonic()
            yield f"event: cells\ndata: {data}\n\n"
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        await anyio.sleep(LIVE_POLL_S)


@router.get(
    "/batteries/{battery_id}/live",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def live(
    battery_id: int, request: Request, session: SessionDep, user: CurrentUser
) -> StreamingResponse:
    """Server-sent events: a ``cells`` event (the :class:`CellSnapshot`) at once, then
    another whenever a newer measurement is stored (the database is read every
    ``LIVE_POLL_S``), and a ``: keepalive`` comment after ``KEEPALIVE_S`` of silence.
    The stream ends when the client disconnects."""
    _battery(session, user, battery_id)
    # The stream reads with sessions of its own: hand the request's connection back to
    # the pool now instead of holding it for as long as the page stays open.
    session.commit()
    session.close()
    return StreamingResponse(
        _live_events(request, request.app.state.sessions, battery_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- trends ---------------------------------------------------------------------------


def _series(
    session: Session,
    *,
    time_col: Any,
    values: dict[str, Any],
    where: Sequence[Any],
    limit: int,
) -> tuple[list[TrendPoint], int, bool]:
    """Rows averaged per time stamp, or over equal time buckets when more than ``limit``
    rows match: (points, rows matched, downsampled)."""
    epoch = cast(extract("epoch", time_col), BigInteger)
    total, first, last = session.execute(
        select(func.count(), func.min(epoch), func.max(epoch)).where(*where)
    ).one()
    if not total:
        return [], 0, False
    averages = [func.avg(v).label(k) for k, v in values.items()]
    if total <= limit:
        query = (
            select(time_col.label("at"), *averages, func.count().label("n"))
            .where(*where)
            .group_by(time_col)
            .order_by(time_col)
        )
        downsampled = False
    else:
        width = max(1, math.ceil((int(last) - int(first) + 1) / limit))  # s per bucket
        inner = (
            select(
                time_col.label("at"),
                ((epoch - int(first)) // width).label("bucket"),
                *(v.label(k) for k, v in values.items()),
            )
            .where(*where)
            .subquery()
        )
        query = (
            select(
                func.min(inner.c.at).label("at"),
                *(func.avg(inner.c[k]).label(k) for k in values),
                func.count().label("n"),
            )
            .group_by(inner.c.bucket)
            .order_by(inner.c.bucket)
        )
        downsampled = True
    points = [
        TrendPoint(
            at=r.at,
            soc=_finite(r.soc),
            soh=_finite(r.soh),
            sot=_finite(r.sot),
            sos=_finite(r.sos),
            n=int(r.n),
        )
        for r in session.execute(query)
    ]
    return points, int(total), downsampled


@router.get("/batteries/{battery_id}/trends/", response_model=Trends)
def trends(
    battery_id: int,
    session: SessionDep,
    user: CurrentUser,
    since: Annotated[
        dt.datetime | None,
        Query(description="from this time; default: every estimate, 7 days of telemetry"),
    ] = None,
    limit: Annotated[
        int, Query(ge=10, le=MAX_POINTS, description="points per series")
    ] = MAX_POINTS,
) -> Trends:
    """SoC, SoH, SoT and SoS over time: the cloud's estimates (mean over the cells per
    estimate time) and the edge's telemetry (Pillar 2 BMSs report them per cell), each
    downsampled to at most ``limit`` points; and the SoW states (newest ``limit``)."""
    _battery(session, user, battery_id)
    cells = _cells_of(battery_id)
    est_where: list[Any] = [SoxEstimate.battery_id == battery_id]
    if since is not None:
        est_where.append(SoxEstimate.estimated_at >= since)
    estimates, est_rows, est_down = _series(
        session,
        time_col=SoxEstimate.estimated_at,
        values={
            "soc": _fraction(SoxEstimate.soc),
            "soh": _fraction(SoxEstimate.soh),
            "sot": SoxEstimate.sot,
            "sos": SoxEstimate.sos,
        },
        where=[
            *est_where,
            (SoxEstimate.soc.is_not(None))
            | (SoxEstimate.soh.is_not(None))
            | (SoxEstimate.sot.is_not(None))
            | (SoxEstimate.sos.is_not(None)),
        ],
        limit=limit,
    )
    tel_since = since or dt.datetime.now(dt.UTC) - TELEMETRY_WINDOW
    telemetry, tel_rows, tel_down = _series(
        session,
        time_col=Measurement.measured_at,
        values={
            "soc": _fraction(Measurement.soc),
            "soh": _fraction(Measurement.soh),
            "sot": Measurement.sot,
            "sos": Measurement.sos,
        },
        where=[Measurement.cell_id.in_(cells), Measurement.measured_at >= tel_since],
        limit=limit,
    )
    sow_rows = session.execute(
        select(
            SoxEstimate.estimated_at,
            SoxEstimate.sow,
            SoxEstimate.rw,
            SoxEstimate.rh,
            SoxEstimate.ruw,
        )
        .where(*est_where, SoxEstimate.sow.is_not(None))
        .order_by(SoxEstimate.estimated_at.desc())
        .limit(limit)
    ).all()
    sow = []
    for at, state, rw, rh, ruw in reversed(sow_rows):
        view = _sow_view(str(state), rw, rh, ruw, at)
        sow.append(
            SowPoint(
                at=at,
                state=view.state,
                severity=view.severity,
                colour=view.colour,
                rw=view.rw,
                rh=view.rh,
                ruw=view.ruw,
            )
        )
    return Trends(
        battery_id=battery_id,
        limit=limit,
        estimates=estimates,
        estimates_rows=est_rows,
        telemetry=telemetry,
        telemetry_rows=tel_rows,
        telemetry_since=tel_since,
        downsampled=est_down or tel_down,
        sow=sow,
    )


# --- EIS ------------------------------------------------------------------------------


def _fit_view(ecm: EcmParameterSet, frequency_hz: list[float], linked_by: str) -> EcmFitView:
    from cloud.estimators.ecm_fit import ecm_impedance  # numpy/scipy: only when drawn

    pairs = [
        (r, c)
        for r, c in ((ecm.r1, ecm.c1), (ecm.r2, ecm.c2), (ecm.r3, ecm.c3), (ecm.r4, ecm.c4))
        if r is not None and c is not None
    ]
    z = ecm_impedance(frequency_hz, r0_ohm=ecm.r0, pairs=pairs)
    names = ("r0", "r1", "r2", "r3", "r4", "c1", "c2", "c3", "c4")
    return EcmFitView(
        ecm_id=ecm.id,
        source=ecm.source,
        created_at=ecm.created_at,
        linked_by=linked_by,
        parameters={k: _finite(getattr(ecm, k)) for k in names},
        z_re_ohm=[float(v) for v in z.real],
        z_im_ohm=[float(v) for v in z.imag],
    )


@router.get("/batteries/{battery_id}/eis/", response_model=EisView)
def eis(
    battery_id: int,
    session: SessionDep,
    user: CurrentUser,
    event_id: Annotated[str | None, Query(description="a sweep; default: the newest")] = None,
    cell: Annotated[int | None, Query(description="a cell id; default: every cell")] = None,
    sweeps: Annotated[int, Query(ge=1, le=200, description="sweeps listed in available")] = 20,
) -> EisView:
    """One sweep's measured ``Z(f)`` per cell with the fitted model's ``Z(f)`` at the
    same frequencies, ``R0 + sum Rk / (1 + j w Rk Ck)``.

    The fit of a sweep is the cell's ``ecm_parameters`` row whose ``source`` is
    ``eis-drt:<event_id>`` (how the ``drt_ecm`` estimator links them). A set stored
    without that link (by another service) is matched by time instead: the cell's newest
    set created at or after the sweep (``linked_by`` says which).
    """
    _battery(session, user, battery_id)
    cells = _cells_of(battery_id)
    if cell is not None:
        cells = cells.where(Cell.id == cell)
    available = [
        EisSweepRef(event_id=e, measured_at=at, cells=int(n))
        for e, at, n in session.execute(
            select(
                EisRecord.event_id,
                func.max(EisRecord.measured_at).label("at"),
                func.count(func.distinct(EisRecord.cell_id)),
            )
            .where(EisRecord.cell_id.in_(cells))
            .group_by(EisRecord.event_id)
            .order_by(func.max(EisRecord.measured_at).desc())
            .limit(sweeps)
        )
    ]
    chosen = event_id or (available[0].event_id if available else None)
    if chosen is None:
        return EisView(battery_id=battery_id, event_id=None, sweeps=[], available=[])
    rows = session.execute(
        select(
            EisRecord.cell_id,
            Cell.position,
            Cell.cell_name,
            EisRecord.measured_at,
            EisRecord.frequency,
            EisRecord.z_re,
            EisRecord.z_im,
        )
        .join(Cell, Cell.id == EisRecord.cell_id)
        .where(EisRecord.event_id == chosen, EisRecord.cell_id.in_(cells))
        .order_by(Cell.position, EisRecord.cell_id, EisRecord.frequency.desc())
    ).all()
    if not rows and event_id is not None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no EIS sweep {event_id!r} of battery {battery_id}"
            + (f" for cell {cell}" if cell is not None else ""),
        )
    by_cell: dict[int, list[Any]] = {}
    for r in rows:
        by_cell.setdefault(r.cell_id, []).append(r)
    started = {c: min(_utc(r.measured_at) for r in rs) for c, rs in by_cell.items()}
    linked = DRT_SOURCE_PREFIX + chosen
    sets = session.scalars(
        select(EcmParameterSet)
        .where(
            EcmParameterSet.battery_id == battery_id,
            EcmParameterSet.cell_id.in_(list(by_cell)),
            (EcmParameterSet.source == linked)
            | (EcmParameterSet.created_at >= min(started.values())),
        )
        .order_by(EcmParameterSet.created_at, EcmParameterSet.id)
    ).all()
    fits: dict[int, tuple[EcmParameterSet, str]] = {}
    for ecm in sets:  # oldest first, so the newest match wins
        cell_id = ecm.cell_id
        if cell_id is None:
            continue
        if ecm.source == linked:
            fits[cell_id] = (ecm, "source")
        elif (
            not (ecm.source or "").startswith(DRT_SOURCE_PREFIX)  # another sweep's fit
            and _utc(ecm.created_at) >= started[cell_id]
            and fits.get(cell_id, (ecm, "time"))[1] == "time"
        ):
            fits[cell_id] = (ecm, "time")
    out = []
    for cell_id, rs in by_cell.items():
        freqs = [float(r.frequency) for r in rs]
        fit = fits.get(cell_id)
        out.append(
            EisSweep(
                cell_id=cell_id,
                position=rs[0].position,
                cell_name=rs[0].cell_name,
                event_id=chosen,
                measured_at=started[cell_id],
                frequency_hz=freqs,
                z_re_ohm=[_finite(r.z_re) for r in rs],
                z_im_ohm=[_finite(r.z_im) for r in rs],
                fit=_fit_view(fit[0], freqs, fit[1]) if fit else None,
            )
        )
    return EisView(battery_id=battery_id, event_id=chosen, sweeps=out, available=available)


__all__ = ["cell_snapshot", "router"]
