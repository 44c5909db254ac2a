"""``/api/fleet/``: provision many devices at once and report what a fleet load test stored.

``batterytwin fleet`` runs thousands of virtual BMSs against the cloud. It provisions them
here (``devices/``, admin), then polls ``stored/`` for a sample of devices to count loss
and duplicates from seq numbers and to measure publish-to-stored latency, and reads
``summary/`` at the end. The database work is in :mod:`cloud.fleet_provision`.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud.api.deps import CurrentUser, SessionDep
from cloud.fleet_provision import (
    FLEET_PREFIX_PATTERN,
    MAX_FLEET_DEVICES,
    MAX_FLEET_START,
    MAX_STORED_ROWS,
    fleet_summary,
    provision_devices,
    stored_messages,
)
from cloud.models import Role, User
from cloud.mqtt.contract import DEVICE_NAME_PATTERN, MAX_CELLS

__all__ = ["router"]

router = APIRouter(prefix="/api/fleet", tags=["Fleet"])
_PROVISIONERS = frozenset({Role.admin})
_READERS = frozenset({Role.admin, Role.service})

DeviceName = Annotated[str, StringConstraints(pattern=DEVICE_NAME_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetDevicesRequest(_Body):
    """Devices ``{prefix}{i:05d}`` for i in ``start..start+count-1``, each with a battery,
    a module and ``cells`` cells (one call per pillar)."""

    prefix: str = Field(pattern=FLEET_PREFIX_PATTERN, examples=["fleet-"])
    count: int = Field(ge=1, le=MAX_FLEET_DEVICES)
    start: int = Field(default=0, ge=0, le=MAX_FLEET_START)
    pillar: int = Field(default=1, ge=1, le=2)
    cells: int = Field(default=16, ge=1, le=MAX_CELLS)


class FleetDeviceCredentials(BaseModel):
    """A provisioned device's MQTT login; the password is not stored and not shown again."""

    name: str
    password: str
    device_id: int


class StoredRequest(_Body):
    """Device name -> the highest seq the caller knows is stored with none missing below
    it (-1: none)."""

    devices: dict[DeviceName, Annotated[int, Field(ge=-1)]] = Field(
        max_length=MAX_FLEET_DEVICES, examples=[{"fleet-00001": 1234, "fleet-00002": -1}]
    )
    limit: int = Field(default=MAX_STORED_ROWS, ge=1, le=MAX_STORED_ROWS)


class StoredResponse(BaseModel):
    """Newly stored ``(device, seq)`` pairs as parallel arrays, with when each was stored
    (epoch s, the ingest's clock) and the server's clock now."""

    device: list[str]
    seq: list[int]
    received_at_s: list[float]
    now_s: float
    truncated: bool


class DeviceStored(BaseModel):
    count: int
    min_seq: int | None
    max_seq: int | None
    by_kind: dict[str, int]


class FleetSummaryResponse(BaseModel):
    devices: dict[str, DeviceStored]
    measurement_rows: int
    duplicate_measurement_rows: int | None
    """None unless ``check_duplicates=true``."""


def _require(user: User, roles: frozenset[Role], what: str) -> None:
    if user.role not in roles:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not {what}"
        )


@router.post("/devices/", response_model=list[FleetDeviceCredentials])
def provision(
    body: FleetDevicesRequest, session: SessionDep, user: CurrentUser, response: Response
) -> list[FleetDeviceCredentials]:
    """Create the devices (or give existing ones a new password) and return their passwords.

    Admin only. Idempotent per name: a device that exists gets a new password and the
    pillar asked for, no second battery. On Mosquitto the passwords work once the broker
    files are written again (``batterytwin cloud broker-files``); the embedded broker
    reads them from the database.
    """
    _require(user, _PROVISIONERS, "provision fleet devices")
    try:
        devices = provision_devices(session, **body.model_dump())
    except ValueError as error:  # the model checks the same; kept for a clear answer
        raise HTTPException(422, detail=str(error)) from None
    response.headers["Cache-Control"] = "no-store"
    return [
        FleetDeviceCredentials(name=d.name, password=d.password, device_id=d.device_id)
        for d in devices
    ]


@router.post("/stored/", response_model=StoredResponse)
def stored(body: StoredRequest, session: SessionDep, user: CurrentUser) -> StoredResponse:
    """The ``(device, seq)`` pairs stored above each device's mark (admin, service).

    At most ``limit`` rows, and ``limit // len(devices)`` per device (lowest seq first);
    ``truncated`` says there are more: ask again with the marks moved up.
    """
    _require(user, _READERS, "read fleet results")
    found = stored_messages(session, marks=body.devices, limit=body.limit)
    return StoredResponse(
        device=found.device,
        seq=found.seq,
        received_at_s=found.received_at_s,
        now_s=time.time(),
        truncated=found.truncated,
    )


@router.get("/summary/", response_model=FleetSummaryResponse)
def summary(
    session: SessionDep,
    user: CurrentUser,
    prefix: Annotated[
        str, Query(pattern=DEVICE_NAME_PATTERN, description="Device names that start with it")
    ],
    check_duplicates: Annotated[
        bool, Query(description="Also count repeated (cell, time) measurement rows (slower)")
    ] = False,
) -> FleetSummaryResponse:
    """Per device of ``prefix``: stored messages by kind, lowest and highest seq; in all:
    the measurement rows of their cells (and repeated ones) (admin, service)."""
    _require(user, _READERS, "read fleet results")
    found = fleet_summary(session, prefix=prefix, check_duplicates=check_duplicates)
    return FleetSummaryResponse(
        devices={
            name: DeviceStored(
                count=d.count, min_seq=d.min_seq, max_seq=d.max_seq, by_kind=d.by_kind
            )
            for name, d in found.devices.items()
        },
        measurement_rows=found.measurement_rows,
        duplicate_measurement_rows=found.duplicate_measurement_rows,
    )
