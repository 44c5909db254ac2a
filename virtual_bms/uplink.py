"""The BMS's MQTT link to the cloud: drains the outbox in order, receives commands.

The link is one aiomqtt client with a persistent session (``clean_session=False`` and a
fixed client id per device), so commands the cloud sends while the BMS is offline reach
it when it returns. It announces itself with a retained ``online`` status and leaves a
last will saying ``offline``. Messages leave the :class:`~virtual_bms.outbox.Outbox` in
order, QoS 1, a window at a time, and are removed only once the broker has acknowledged
them; when the connection drops the link reconnects with back-off and sends again from
the oldest unacknowledged message (the cloud stores a redelivered seq once).

Example::

    link = Uplink(device="bms-7", outbox=outbox, endpoint=BrokerEndpoint(host="broker"),
                  on_command=handle)
    task = asyncio.create_task(link.run())
    ...
    link.wake()  # after putting into the outbox
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cloud.mqtt.contract import (
    AckMessage,
    Channel,
    CommandMessage,
    ContractError,
    StatusMessage,
    Topics,
    parse_command,
)
from cloud.mqtt.tls import MQTTS_PORT, MqttTls, tls_context
from virtual_bms.outbox import Outbox

__all__ = ["BrokerEndpoint", "CommandHandler", "Uplink", "UplinkCounters"]

_log = logging.getLogger(__name__)

CommandHandler = Callable[[CommandMessage], Awaitable[AckMessage]]
"""Carries out a command and says how it went (``ok`` or ``rejected`` with a reason)."""


class BrokerEndpoint(BaseModel):
    """Where the broker is and how the device logs in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTls | None = None

    @classmethod
    def from_url(cls, url: str, *, ca_file: str | None = None) -> BrokerEndpoint:
        """``mqtt://[user:password@]host[:port]`` or ``mqtts://...`` (needs ``ca_file``).

        Raises:
            ValueError: If the URL is not an MQTT URL or mqtts comes without a CA file.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker URL must be mqtt://host[:port] or mqtts://..., got {url!r}")
        secure = parts.scheme == "mqtts"
        if secure and ca_file is None:
            raise ValueError("an mqtts:// broker needs the CA file that signed its certificate")
        return cls(
            host=parts.hostname,
            port=parts.port or (MQTTS_PORT if secure else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password else None,
            tls=MqttTls(ca_file=Path(ca_file)) if secure and ca_file else None,
        )


@dataclass
class UplinkCounters:
    published: int = 0
    connects: int = 0
    disconnects: int = 0
    commands: int = 0
    duplicate_commands: int = 0
    rejected_commands: int = 0


class Uplink:
    """Publishes the outbox and receives commands for one device; see the module docstring.

    Args:
        device: The device name (its topics and, usually, its MQTT user name).
        outbox: Where the BMS queued what is to be sent.
        endpoint: The broker.
        on_command: Called once per command (redeliveries are recognised by id).
        topics: Topic root.
        window: QoS 1 messages in flight at once.
        reconnect_delay_s: First back-off; doubles up to ``reconnect_delay_max_s``.
    """

    def __init__(
        self,
        *,
        device: str,
        outbox: Outbox,
        endpoint: BrokerEndpoint,
        on_command: CommandHandler,
        topics: Topics | None = None,
        window: int = 20,
        reconnect_delay_s: float = 0.5,
        reconnect_delay_max_s: float = 10.0,
        keepalive_s: int = 30,
    ) -> None:
        self.device = device
        self.topics = topics or Topics()
        self.outbox = outbox
        self.endpoint = endpoint
        self.counters = UplinkCounters()
        self._on_command = on_command
        self._window = window
        self._delay_s = reconnect_delay_s
        self._delay_max_s = reconnect_delay_max_s
        self._keepalive_s = keepalive_s
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._status_topic = self.topics.device(device, Channel.status)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def client_id(self) -> str:
        """Fixed per device (the broker keeps its session), at most 23 characters."""
        return "bms-" + hashlib.sha1(self.device.encode()).hexdigest()[:19]

    def wake(self) -> None:
        """Something new is in the outbox."""
        self._wake.set()

    def stop(self) -> None:
        """Finish: :meth:`run` returns after the current window (unsent messages stay)."""
        self._stop.set()
        self._wake.set()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def wait_drained(self, timeout_s: float) -> None:
        """Until the outbox is empty (everything acknowledged by the broker)."""
        async with asyncio.timeout(timeout_s):
            while len(self.outbox) > 0:
                await asyncio.sleep(0.02)

    async def run(self) -> None:
        """Connect, drain and listen until :meth:`stop`, reconnecting as needed."""
        delay = self._delay_s
        while not self._stop.is_set():
            try:
                await self._session()
                delay = self._delay_s
            except aiomqtt.MqttError as error:
                self._connected.clear()
                self.counters.disconnects += 1
                if self._stop.is_set():
                    break
                _log.info(
                    "%s: broker unreachable (%s); retrying in %.1f s", self.device, error, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(2 * delay, self._delay_max_s)
        self._connected.clear()

    def _client(self) -> aiomqtt.Client:
        ep = self.endpoint
        offline = StatusMessage(online=False, ts=_now()).model_dump_json()
        return aiomqtt.Client(
            ep.host,
            ep.port,
            username=ep.username,
            password=ep.password.get_secret_value() if ep.password else None,
            identifier=self.client_id,
            clean_session=False,
            keepalive=self._keepalive_s,
            will=aiomqtt.Will(self._status_topic, offline, qos=1, retain=True),
            tls_context=tls_context(ep.tls) if ep.tls else None,
        )

    async def _session(self) -> None:
        async with self._client() as client:
            self.counters.connects += 1
            listener = asyncio.create_task(self._listen(client))
            try:
                await client.subscribe(self.topics.device(self.device, Channel.commands), qos=1)
                online = StatusMessage(online=True, ts=_now()).model_dump_json()
                await client.publish(self._status_topic, online, qos=1, retain=True)
                self._connected.set()
                await self._drain(client, listener)
                if self._stop.is_set():  # a clean goodbye: say offline, as the will would
                    offline = StatusMessage(online=False, ts=_now()).model_dump_json()
                    await client.publish(self._status_topic, offline, qos=1, retain=True)
            finally:
                self._connected.clear()
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await listener

    async def _drain(self, client: aiomqtt.Client, listener: asyncio.Task[None]) -> None:
        while not self._stop.is_set():
            if listener.done():
                listener.result()  # the connection dropped: raise its MqttError
            batch = self.outbox.peek(self._window)
            if not batch:
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            topic = {
                c: self.topics.device(self.device, Channel(c)) for c in {i.channel for i in batch}
            }
            # in order: paho sends them in this order and the broker keeps it per session
            await asyncio.gather(
                *(client.publish(topic[item.channel], item.payload, qos=1) for item in batch)
            )
            self.outbox.remove(item.id for item in batch)
            self.counters.published += len(batch)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                command = parse_command(payload)
            except ContractError as error:
                self.counters.rejected_commands += 1
                _log.warning(
                    "%s: ignoring a command off the contract: %s", self.device, error.reason
                )
                continue
            if not self.outbox.first_time(command.command_id):
                self.counters.duplicate_commands += 1
                continue
            self.counters.commands += 1
            try:
                ack = await self._on_command(command)
            except Exception as error:  # a failing handler is a rejected command, not a crash
                _log.exception("%s: command %d failed", self.device, command.command_id)
                ack = AckMessage(
                    command_id=command.command_id,
                    status="rejected",
                    detail=f"{type(error).__name__}: {error}"[:2000],
                )
            self.outbox.put(Channel.acks.value, ack.model_dump_json().encode())
            self.wake()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
