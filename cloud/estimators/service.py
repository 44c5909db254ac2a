"""The scheduler inside the service: a background loop, and sending what the jobs queued."""

from __future__ import annotations

import asyncio
import logging

import aiomqtt
from sqlalchemy import Engine, select

from cloud.estimators.scheduler import Scheduler
from cloud.models import Command
from cloud.mqtt.commands import CommandError, MqttEndpoint, publish_command

__all__ = ["publish_pending", "scheduler_loop"]

_log = logging.getLogger(__name__)


async def publish_pending(engine: Engine, endpoint: MqttEndpoint | None) -> int:
    """Publish the commands the estimators queued (``pending``, no human author)."""
    if endpoint is None:
        return 0

    def pending() -> list[int]:
        with engine.connect() as conn:
            return list(
                conn.scalars(
                    select(Command.id).where(
                        Command.status == "pending", Command.created_by_id.is_(None)
                    )
                )
            )

    ids = await asyncio.to_thread(pending)
    if not ids:
        return 0
    sent = 0
    try:
        async with endpoint.client(identifier="batterytwin-scheduler") as client:
            for command_id in ids:
                try:
                    await publish_command(client, engine=engine, command_id=command_id)
                    sent += 1
                except CommandError as error:
                    _log.warning("estimator command %d not sent: %s", command_id, error)
    except aiomqtt.MqttError as error:
        _log.warning("broker unreachable; %d estimator commands wait: %s", len(ids) - sent, error)
    return sent


async def scheduler_loop(
    scheduler: Scheduler, *, engine: Engine, endpoint: MqttEndpoint | None, interval_s: float
) -> None:
    """Every ``interval_s`` run what is due, then send the commands it queued; forever.

    The first tick comes one interval after start, so the service's start-up (and a
    restart under load) does not also scan the measurements.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            runs = await asyncio.to_thread(scheduler.run_due)
            if runs:
                _log.info("estimators: %d runs", len(runs))
            await publish_pending(engine, endpoint)
        except Exception:  # the loop must outlive a bad tick
            _log.exception("estimator tick failed")
