"""``POST /api/measurements/`` in the seed's array form: ``cell_ids`` plus parallel arrays."""

# No `from __future__ import annotations`: route handlers are built in closures and
# FastAPI must see their body types as objects, not strings.
import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import Field, model_validator
from sqlalchemy import insert, select

from cloud.api.crud import Resource
from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.resources import check_cell_data
from cloud.api.schemas import ApiModel, FiniteFloat
from cloud.models import Cell, Measurement, Role
from cloud.mqtt.contract import TELEMETRY_QUANTITIES, check_parallel_arrays

ARRAYS = TELEMETRY_QUANTITIES  # the same per-cell quantities as MQTT telemetry


class MeasurementBatch(ApiModel):
    """One sample of several cells: ``cell_ids[i]`` goes with ``voltage[i]``, ..."""

    cell_ids: list[int] = Field(min_length=1, max_length=10_000)
    measured_at: dt.datetime | None = None
    voltage: list[FiniteFloat] | None = None
    temperature: list[FiniteFloat] | None = None
    current: list[FiniteFloat] | None = None
    sot: list[FiniteFloat] | None = None
    phase: list[FiniteFloat] | None = None
    soc: list[FiniteFloat] | None = None
    sos: list[FiniteFloat] | None = None
    soh: list[FiniteFloat] | None = None
    equivalent_cycles: list[FiniteFloat] | None = None

    @model_validator(mode="after")
    def _parallel(self) -> "MeasurementBatch":
        check_parallel_arrays(self.cell_ids, {name: getattr(self, name) for name in ARRAYS})
        return self


def measurement_router(res: Resource) -> APIRouter:
    router = APIRouter(prefix="/api/measurements", tags=[res.tag])
    single: Any = res.create

    @router.post("/", status_code=status.HTTP_201_CREATED)
    def create(
        body: MeasurementBatch | single, session: SessionDep, user: CurrentUser
    ) -> dict[str, Any]:
        if user.role not in res.write_roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role '{user.role.value}' may not write measurements",
            )
        if not isinstance(body, MeasurementBatch):
            batch = MeasurementBatch(
                cell_ids=[body.cell_id],
                measured_at=body.measured_at,
                **{k: [getattr(body, k)] for k in ARRAYS if getattr(body, k) is not None},
            )
        else:
            batch = body
        known = set(session.scalars(select(Cell.id).where(Cell.id.in_(batch.cell_ids))))
        unknown = sorted(set(batch.cell_ids) - known)
        if unknown:
            raise HTTPException(
                422, detail=[{"loc": ["body", "cell_ids"], "msg": f"unknown cell ids {unknown}"}]
            )
        if user.role != Role.admin:
            for cell_id in set(batch.cell_ids):
                reason = check_cell_data(session, user, {"cell_id": cell_id}, None)
                if reason:
                    raise HTTPException(status.HTTP_403_FORBIDDEN, detail=reason)
        when = batch.measured_at or dt.datetime.now(dt.UTC)
        rows = [
            {
                "cell_id": cell_id,
                "measured_at": when,
                "added_at": dt.datetime.now(dt.UTC),
                **{k: getattr(batch, k)[i] for k in ARRAYS if getattr(batch, k) is not None},
            }
            for i, cell_id in enumerate(batch.cell_ids)
        ]
        ids = list(session.scalars(insert(Measurement).returning(Measurement.id), rows))
        return {**batch.model_dump(mode="json", exclude_none=True), "ids": ids}

    return router
