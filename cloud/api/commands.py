"""``/api/commands/``: send a command to an edge BMS and follow its acknowledgement."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import aiomqtt
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.api.deps import CurrentUser, SessionDep
from cloud.models import Battery, Command, Device, Role, User

router = APIRouter(prefix="/api/commands", tags=["Commands"])
_ISSUERS = frozenset({Role.admin, Role.operator, Role.service})


class CommandCreate(BaseModel):
    device_id: int
    kind: Literal["ecm_update", "eis_request", "reporting_interval"]
    params: dict[str, Any] = Field(default_factory=dict)


def _public(cmd: Command) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": cmd.id,
        "device_id": cmd.device_id,
        "kind": cmd.kind,
        "params": cmd.payload,
        "status": cmd.status,
        "created_at": iso(cmd.created_at),
        "sent_at": iso(cmd.sent_at),
        "acked_at": iso(cmd.acked_at),
        "ack_detail": cmd.ack_detail,
    }


def _device_for(session: Session, user: User, device_id: int) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"device {device_id} not found")
    if user.role == Role.operator:
        battery = session.get(Battery, device.battery_id)
        if battery is None or battery.operator_id != user.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"device {device_id} not found")
    return device


@router.post("/", status_code=status.HTTP_201_CREATED)
async def send(
    body: CommandCreate, request: Request, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Store the command, publish it on the device's downlink topic (QoS 1), mark it sent."""
    from cloud.mqtt.commands import MqttEndpoint, publish_command
    from cloud.mqtt.contract import ContractError, command_message

    if user.role not in _ISSUERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not send commands"
        )
    _device_for(session, user, body.device_id)
    try:
        command_message(command_id=1, kind=body.kind, params=body.params)  # id checked later
    except ContractError as error:
        raise HTTPException(
            422, detail=[{"loc": ["body", "params"], "msg": error.reason}]
        ) from None
    endpoint: MqttEndpoint | None = request.app.state.mqtt
    if endpoint is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="MQTT is off (broker = none)"
        )
    cmd = Command(
        device_id=body.device_id, kind=body.kind, payload=body.params, created_by_id=user.id
    )
    session.add(cmd)
    session.commit()  # the publisher reads it from its own connection
    try:
        async with endpoint.client(identifier=f"batterytwin-api-{cmd.id}") as client:
            await publish_command(client, engine=request.app.state.engine, command_id=cmd.id)
    except aiomqtt.MqttError as error:
        # The caller is told 503 and may send it again: this one must not go out later.
        cmd.status = "failed"
        cmd.ack_detail = f"not sent: broker unreachable ({error})"
        session.commit()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"broker unreachable: {error}; command {cmd.id} was not sent (failed)",
        ) from None
    session.refresh(cmd)
    return _public(cmd)


@router.get("/{command_id}/")
def get(command_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    cmd = session.get(Command, command_id)
    if cmd is None or user.role not in _ISSUERS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"command {command_id} not found")
    _device_for(session, user, cmd.device_id)
    return _public(cmd)


@router.get("/")
def list_commands(
    session: SessionDep, user: CurrentUser, device: int, limit: int = 100
) -> list[dict[str, Any]]:
    if user.role not in _ISSUERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not read commands"
        )
    _device_for(session, user, device)
    rows = session.scalars(
        select(Command)
        .where(Command.device_id == device)
        .order_by(Command.id.desc())
        .limit(min(limit, 1000))
    ).all()
    return [_public(c) for c in rows]
