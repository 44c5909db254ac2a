"""The BMS's uplink payloads, built from its estimates (the cloud's wire contract).

SoC, SoH, SoS and SoT-derived values go out as fractions (SoC 0..1) and degrees Celsius;
a quantity the BMS has no estimate for yet is left out, never sent as NaN. Voltages and
temperatures are the latest readings; ``current`` is the mean since the previous report,
so charge counted from the reports is the charge that flowed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np

from cloud.mqtt.contract import EisMessage, EisPoint, EventMessage, TelemetryMessage
from twin.eis import EisRecord
from twin.models.base import FloatArray

__all__ = ["eis_message", "event_message", "telemetry_message", "timestamp"]

_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def timestamp(time_s: float, *, origin: dt.datetime = _EPOCH) -> dt.datetime:
    """The wall-clock time of a twin time (seconds after ``origin``)."""
    return origin + dt.timedelta(seconds=float(time_s))


def _values(array: FloatArray | None) -> list[float] | None:
    if array is None or not np.all(np.isfinite(array)):
        return None
    return [float(x) for x in array]


def telemetry_message(
    *,
    seq: int,
    ts: dt.datetime,
    pillar: int,
    quantities: Mapping[str, FloatArray | None],
    cell_ids: Sequence[int] | None = None,
) -> TelemetryMessage:
    """One sample of every group; quantities with a missing value anywhere are left out."""
    present = {name: _values(values) for name, values in quantities.items()}
    n = next(len(v) for v in present.values() if v is not None)
    return TelemetryMessage(
        seq=seq,
        ts=ts,
        pillar=pillar,  # type: ignore[arg-type]
        cell_ids=list(cell_ids) if cell_ids is not None else list(range(n)),
        **{name: values for name, values in present.items() if values is not None},
    )


def eis_message(*, seq: int, ts: dt.datetime, records: Sequence[EisRecord]) -> EisMessage:
    """One sweep's points (the twin's records carry exactly the wire keys)."""
    return EisMessage(
        seq=seq, ts=ts, records=[EisPoint.model_validate(r.to_dict()) for r in records]
    )


def event_message(
    *,
    ts: dt.datetime,
    kind: str,
    severity: str,
    detail: str,
    cell_ids: Sequence[int] | None = None,
) -> EventMessage:
    return EventMessage(
        ts=ts,
        kind=kind,
        severity=severity,  # type: ignore[arg-type]
        detail=detail[:2000],
        cell_ids=list(cell_ids) if cell_ids else None,
    )
