"""Downlink: publish a stored ``Command`` to its device and mark it sent.

The device answers on its ``acks`` topic; the ingest turns the answer into
``Command.status`` ``acked`` (``ok``) or ``failed`` (``rejected``), with ``acked_at`` and
``ack_detail``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import cast

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import Engine, Table, case, select, update

from cloud.models import Command, Device
from cloud.mqtt.contract import Channel, CommandMessage, ContractError, Topics, command_message
from cloud.mqtt.tls import MqttTls, tls_context

__all__ = ["CommandError", "MqttEndpoint", "publish_command"]

_COMMANDS = cast(Table, Command.__table__)


class CommandError(LookupError):
    """A command that cannot be sent (no such command, or parameters off the contract)."""


class MqttEndpoint(BaseModel):
    """Where the cloud publishes commands: the broker's address, its user and TLS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    port: int = Field(ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTls | None = None
    """Verify the broker against a CA over TLS; None: plain MQTT."""

    def client(self, *, identifier: str) -> aiomqtt.Client:
        """A client for this broker, to be entered with ``async with`` (which connects)."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            identifier=identifier,
            tls_context=tls_context(self.tls) if self.tls else None,
        )


async def publish_command(
    client: aiomqtt.Client,
    *,
    engine: Engine,
    command_id: int,
    topics: Topics | None = None,
) -> CommandMessage:
    """Publish command ``command_id`` to its device's commands topic (QoS 1) and mark it sent.

    ``Command.payload`` holds the command's ``params``. The status moves from ``pending``
    to ``sent`` (an ack that overtook the publish is kept); ``sent_at`` is set each time.
    Devices should keep a persistent session so commands sent while they are offline
    reach them when they reconnect.

    Args:
        client: A connected client whose user may write device commands topics.
        engine: The database holding the command.
        command_id: ``Command.id``.
        topics: Topic root (default ``batterytwin/v1``).

    Returns:
        The message as published.

    Raises:
        CommandError: If there is no such command, or its payload does not fit its kind
            (the command is then marked ``failed`` with the reason in ``ack_detail``).
    """
    topics = topics or Topics()
    device, message = await asyncio.to_thread(_load, engine, command_id)
    await client.publish(
        topics.device(device, Channel.commands), message.model_dump_json().encode(), qos=1
    )
    await asyncio.to_thread(_mark_sent, engine, command_id)
    return message


def _load(engine: Engine, command_id: int) -> tuple[str, CommandMessage]:
    with engine.connect() as conn:
        row = conn.execute(
            select(Command.kind, Command.payload, Device.name)
            .join(Device, Device.id == Command.device_id)
            .where(Command.id == command_id)
        ).first()
    if row is None:
        raise CommandError(f"no command with id {command_id}")
    try:
        return row.name, command_message(command_id=command_id, kind=row.kind, params=row.payload)
    except ContractError as error:
        with engine.begin() as conn:
            conn.execute(
                update(_COMMANDS)
                .where(_COMMANDS.c.id == command_id)
                .values(status="failed", ack_detail=f"not sent: {error.reason}")
            )
        raise CommandError(f"command {command_id} was not sent: {error.reason}") from None


def _mark_sent(engine: Engine, command_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(_COMMANDS)
            .where(_COMMANDS.c.id == command_id)
            .values(
                status=case((_COMMANDS.c.status == "pending", "sent"), else_=_COMMANDS.c.status),
                sent_at=dt.datetime.now(dt.UTC),
            )
        )
