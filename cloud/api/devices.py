"""``/api/devices/{id}/mqtt_password/``: give an edge BMS a new MQTT password, shown once."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel
from sqlalchemy import select

from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.resources import scope_battery
from cloud.models import Battery, Device, Role

router = APIRouter(prefix="/api/devices", tags=["Devices"])
_ROTATORS = frozenset({Role.admin, Role.operator})


class MqttPassword(BaseModel):
    """A device's MQTT login; the password is not stored and cannot be shown again."""

    username: str
    password: str


@router.post("/{device_id}/mqtt_password/", response_model=MqttPassword)
def rotate_mqtt_password(
    device_id: int, session: SessionDep, user: CurrentUser, response: Response
) -> MqttPassword:
    """Issue a new MQTT password for the device (the previous one stops working).

    An admin may do it for every device, an operator for the devices of its batteries.
    On Mosquitto the new password works once the broker files are written again
    (``batterytwin cloud broker-files``); the embedded broker sees it at once.
    """
    from cloud.mqtt.credentials import issue_device_password

    if user.role not in _ROTATORS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"role '{user.role.value}' may not issue MQTT passwords",
        )
    query = select(Device).join(Battery, Device.battery_id == Battery.id)
    device = session.scalar(scope_battery(query, user).where(Device.id == device_id))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"devices {device_id} not found")
    password = issue_device_password(session, device)
    response.headers["Cache-Control"] = "no-store"
    return MqttPassword(username=device.name, password=password)
