"""The BMS's MQTT link to the cloud: drains the outbox in order, receives commands.

The link is one aiomqtt client with a persistent session (``clean_session=False`` and a
fixed client id per device), so commands the cloud sends while the BMS is offline reach
it when it returns. It announces itself with a retained ``online`` status and leaves a
last will saying ``offline``. Messages leave the :class:`~virtual_bms.outbox.Outbox` in
order, QoS 1, a window at a time, and are removed only once the broker has acknowledged
them; when the connection drops the link reconnects with back-off and sends again from
the oldest unacknowledged message (the cloud stores a redelivered seq once).

With an :class:`~virtual_bms.http_fallback.HttpFallback` (D2.3's second path), once MQTT
has been down for ``fallback_after_s`` the head of the outbox goes to the cloud as HTTPS
bulk POSTs instead, in order, and only what the cloud took leaves the outbox; MQTT is
retried meanwhile and takes over again when it is back (the seqs make any overlap
harmless). Presence (status) is never posted: it is MQTT's, through the last will.

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
import time
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
from virtual_bms.http_fallback import HttpFallback, HttpFallbackError
from virtual_bms.outbox import Outbox, OutboxItem

__all__ = ["BrokerEndpoint", "CommandHandler", "Uplink", "UplinkCounters"]

_log = logging.getLogger(__name__)

_FALLBACK_POLL_S = 1.0  # how often an idle HTTPS fallback looks at the outbox and MQTT

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
    http_posted: int = 0  # outbox messages the cloud took over the HTTPS fallback
    http_failures: int = 0  # HTTPS posts that failed (the messages stayed queued)


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
        fallback: Post the outbox over HTTPS while MQTT is down; None: MQTT only.
        fallback_after_s: How long MQTT must have been down before the fallback posts.
        fallback_batch: Outbox messages per fallback round (one POST per channel run).
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
        fallback: HttpFallback | None = None,
        fallback_after_s: float = 30.0,
        fallback_batch: int = 100,
    ) -> None:
        if fallback_after_s < 0 or fallback_batch < 1:
            raise ValueError(
                f"fallback_after_s must be >= 0 and fallback_batch >= 1, got "
                f"{fallback_after_s} and {fallback_batch}"
            )
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
        self.fallback = fallback
        self._fallback_after_s = fallback_after_s
        self._fallback_batch = fallback_batch
        self._fallback_wake = asyncio.Event()
        self._sending = asyncio.Lock()  # one path at a time takes the outbox head
        self._down_since: float | None = None  # time.monotonic() when MQTT went down

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
        self._fallback_wake.set()

    def stop(self) -> None:
        """Finish: :meth:`run` returns after the current window (unsent messages stay)."""
        self._stop.set()
        self._wake.set()
        self._fallback_wake.set()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def wait_drained(self, timeout_s: float) -> None:
        """Until the outbox is empty (everything acknowledged by the broker)."""
        async with asyncio.timeout(timeout_s):
            while len(self.outbox) > 0:
                await asyncio.sleep(0.02)

    async def run(self) -> None:
        """Connect, drain and listen until :meth:`stop`, reconnecting as needed (and
        posting over HTTPS meanwhile, with a fallback)."""
        self._down_since = time.monotonic()
        fallback = (
            asyncio.create_task(self._fallback_loop(self.fallback), name=f"{self.device}-https")
            if self.fallback is not None
            else None
        )
        try:
            await self._mqtt_loop()
        finally:
            if fallback is not None:
                if not self._stop.is_set():
                    fallback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fallback  # after stop: its POST in flight finishes first

    async def _mqtt_loop(self) -> None:
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
        client = aiomqtt.Client(
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
        client.pending_calls_threshold = self._window + 10  # a full window is expected
        return client

    async def _session(self) -> None:
        async with self._client() as client:
            self.counters.connects += 1
            listener = asyncio.create_task(self._listen(client))
            try:
                await client.subscribe(self.topics.device(self.device, Channel.commands), qos=1)
                online = StatusMessage(online=True, ts=_now()).model_dump_json()
                await client.publish(self._status_topic, online, qos=1, retain=True)
                self._connected.set()
                self._down_since = None
                await self._drain(client, listener)
                if self._stop.is_set():  # a clean goodbye: say offline, as the will would
                    offline = StatusMessage(online=False, ts=_now()).model_dump_json()
                    await client.publish(self._status_topic, offline, qos=1, retain=True)
            finally:
                self._connected.clear()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await listener

    async def _drain(self, client: aiomqtt.Client, listener: asyncio.Task[None]) -> None:
        while not self._stop.is_set():
            if listener.done():
                listener.result()  # the connection dropped: raise its MqttError
            async with self._sending:  # not while an HTTPS post of the same head is out
                batch = self.outbox.peek(self._window)
                if batch:
                    await self._publish(client, batch)
            if not batch:
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

    async def _publish(self, client: aiomqtt.Client, batch: list[OutboxItem]) -> None:
        topic = {c: self.topics.device(self.device, Channel(c)) for c in {i.channel for i in batch}}
        # in order: paho sends them in this order and the broker keeps it per session
        await asyncio.gather(
            *(client.publish(topic[item.channel], item.payload, qos=1) for item in batch)
        )
        self.outbox.remove(item.id for item in batch)
        self.counters.published += len(batch)

    async def _fallback_loop(self, fallback: HttpFallback) -> None:
        """While MQTT has been down for ``fallback_after_s``, post the outbox head over HTTPS."""
        delay = self._delay_s
        while not self._stop.is_set():
            down_s = None if self._down_since is None else time.monotonic() - self._down_since
            if down_s is None or down_s < self._fallback_after_s or len(self.outbox) == 0:
                wait_s = _FALLBACK_POLL_S
                if down_s is not None and down_s < self._fallback_after_s:
                    wait_s = min(wait_s, self._fallback_after_s - down_s)
                self._fallback_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._fallback_wake.wait(), wait_s)
                continue
            try:
                async with self._sending:
                    if not self.connected:  # MQTT may have come back while this waited
                        await self._post_head(fallback)
                delay = self._delay_s
            except HttpFallbackError as error:
                self.counters.http_failures += 1
                _log.warning(
                    "%s: HTTPS fallback failed (%s); retrying in %.1f s", self.device, error, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(2 * delay, self._delay_max_s)

    async def _post_head(self, fallback: HttpFallback) -> None:
        """One round: the oldest messages over HTTPS; what the cloud took leaves the outbox."""
        batch = self.outbox.peek(self._fallback_batch)
        presence = [item.id for item in batch if item.channel == Channel.status.value]
        taken = await fallback.post(batch)
        if presence:  # stale by the time MQTT is back; the last will speaks for the device
            _log.info("%s: %d status messages not posted over HTTPS", self.device, len(presence))
        self.outbox.remove([*taken, *presence])
        self.counters.http_posted += len(taken)

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
