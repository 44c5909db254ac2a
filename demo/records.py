"""What the cloud stored during a demo, read back from its database as plain values.

Times are turned into twin seconds (the BMSs stamp their messages with twin time and
the demo's scheduler runs on it), so they line up with the twins' own logs.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtual_bms.messages import timestamp

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["CloudRecords", "EcmFit", "StoredEvent", "read_records", "stored_counts"]

_ORIGIN = timestamp(0.0)


def _twin_s(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return (value - _ORIGIN).total_seconds()


@dataclass(frozen=True)
class StoredEvent:
    time_s: float
    kind: str
    severity: str
    detail: str
    cells: list[int] | None


@dataclass(frozen=True)
class EcmFit:
    """One ``ecm_parameters`` row the DRT job stored (a cell's fitted sweep)."""

    event_id: str
    position: int
    r0_ohm: float
    rc_resistance_ohm: list[float]
    voltage_v: float | None


@dataclass
class CloudRecords:
    """One battery's rows, by kind."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    soh: list[tuple[float, int, float]] = field(default_factory=list)
    """(twin time, cell position, SoH) of every cloud SoH estimate."""
    sow: list[dict[str, Any]] = field(default_factory=list)
    fits: list[EcmFit] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    """Estimator runs by ``job:status``."""
    stored_messages: int = 0
    measurement_rows: int = 0
    eis_rows: int = 0


def stored_counts(session: Session, device_id: int) -> tuple[int, int]:
    """(distinct sequenced messages, events) the cloud has stored for a device."""
    from sqlalchemy import func, select

    from cloud.models import Event, IngestedMessage

    messages = session.scalar(
        select(func.count())
        .select_from(IngestedMessage)
        .where(IngestedMessage.device_id == device_id)
    )
    events = session.scalar(
        select(func.count()).select_from(Event).where(Event.device_id == device_id)
    )
    return int(messages or 0), int(events or 0)


def read_records(
    session: Session, *, device_id: int, battery_id: int, positions: dict[int, int]
) -> CloudRecords:
    """Everything the demo reports on for one site (``positions``: Cell.id -> position)."""
    from sqlalchemy import func, select

    from cloud.estimators.jobs import DRT_SOURCE_PREFIX
    from cloud.models import (
        Command,
        EcmParameterSet,
        EisRecord,
        EstimatorRun,
        Event,
        Measurement,
        SoxEstimate,
    )

    out = CloudRecords()
    for c in session.scalars(
        select(Command).where(Command.device_id == device_id).order_by(Command.id)
    ):
        out.commands.append(
            {
                "id": c.id,
                "kind": c.kind,
                "status": c.status,
                "created_at_h": _hours(_twin_s(c.created_at)),
                "ack_detail": c.ack_detail,
                "payload": c.payload,
            }
        )
    for e in session.scalars(
        select(Event).where(Event.device_id == device_id).order_by(Event.occurred_at, Event.id)
    ):
        out.events.append(
            StoredEvent(
                time_s=_twin_s(e.occurred_at) or 0.0,
                kind=e.kind,
                severity=e.severity,
                detail=e.detail,
                cells=e.cell_ids,
            )
        )
    for s in session.scalars(
        select(SoxEstimate)
        .where(SoxEstimate.battery_id == battery_id)
        .order_by(SoxEstimate.estimated_at, SoxEstimate.id)
    ):
        at = _twin_s(s.estimated_at) or 0.0
        if s.cell_id is not None and s.soh is not None:
            out.soh.append((at, positions[s.cell_id], float(s.soh)))
        elif s.sow is not None:
            out.sow.append({"time_s": at, "state": s.sow, "rw": s.rw, "rh": s.rh, "ruw": s.ruw})
    for p in session.scalars(
        select(EcmParameterSet)
        .where(EcmParameterSet.battery_id == battery_id)
        .order_by(EcmParameterSet.id)
    ):
        if p.source is None or not p.source.startswith(DRT_SOURCE_PREFIX) or p.cell_id is None:
            continue
        pairs = [(p.r1, p.c1), (p.r2, p.c2), (p.r3, p.c3), (p.r4, p.c4)]
        out.fits.append(
            EcmFit(
                event_id=p.source.removeprefix(DRT_SOURCE_PREFIX),
                position=positions[p.cell_id],
                r0_ohm=float(p.r0),
                rc_resistance_ohm=[float(r) for r, c in pairs if r is not None and c is not None],
                voltage_v=p.voltage,
            )
        )
    runs = session.execute(
        select(EstimatorRun.job, EstimatorRun.status, func.count())
        .where(EstimatorRun.battery_id == battery_id)
        .group_by(EstimatorRun.job, EstimatorRun.status)
    ).all()
    out.runs = dict(sorted(Counter({f"{j}:{s}": int(n) for j, s, n in runs}).items()))
    out.stored_messages, _ = stored_counts(session, device_id)
    cells = list(positions)
    out.measurement_rows = int(
        session.scalar(
            select(func.count()).select_from(Measurement).where(Measurement.cell_id.in_(cells))
        )
        or 0
    )
    out.eis_rows = int(
        session.scalar(
            select(func.count()).select_from(EisRecord).where(EisRecord.cell_id.in_(cells))
        )
        or 0
    )
    return out


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600.0, 3)
