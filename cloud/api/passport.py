"""``GET /api/batteries/{id}/passport``: the battery's digital passport (see cloud.passport)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.resources import ALL_READERS, scope_battery
from cloud.models import Battery, Role
from cloud.passport import battery_passport

router = APIRouter(prefix="/api/batteries", tags=["Batteries"])


@router.get("/{battery_id}/passport")
def passport(battery_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """The passport document: identifiers, status, and health values computed from the
    stored estimates, ECM parameters, measurements and events, each with its last update."""
    if user.role not in ALL_READERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not read passports"
        )
    query = select(Battery).where(Battery.id == battery_id)
    if user.role != Role.admin:
        query = scope_battery(query, user)
    battery = session.scalar(query)
    if battery is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"batteries {battery_id} not found")
    return battery_passport(session, battery)
