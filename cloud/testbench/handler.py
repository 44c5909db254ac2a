"""The bench's MQTT side: the request handler and the collector's subscription, one client.

One aiomqtt client with a persistent session (``clean_session=False``, a fixed client
id) subscribes with QoS 1 to the request topic and to every results topic, so requests
published while the service is down are delivered when it is back. Each message is
handed to a callback and acknowledged to the broker only after the callback returns (a
crash in between means the broker delivers it again; both callbacks are idempotent). The
bench publishes its results through the same connection, waiting for it if it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from cloud.mqtt.commands import MqttEndpoint
from cloud.mqtt.tls import tls_context
from cloud.testbench.topics import BenchTopics

__all__ = ["BenchLinkError", "MqttLink"]

_log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]


class BenchLinkError(RuntimeError):
    """The bench cannot use the broker (unreachable, or its subscriptions refused)."""


class MqttLink:
    """Subscribes to the bench topics, hands messages over, and publishes.

    Args:
        endpoint: The broker and the service's user there.
        topics: The bench's topic names.
        client_id: Fixed, so the broker keeps the session (queued requests) across restarts.
        shared_group: With several API processes: subscribe as ``$share/{group}/...`` with
            a clean session per process, so each request and result reaches one of them.
        on_message: Called with ``(topic, payload)`` for each message, one at a time.
        connect_timeout_s: How long :meth:`start` waits for the subscription.
        reconnect_delay_s: First wait before reconnecting (doubles up to
            ``reconnect_delay_max_s``).
    """

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        topics: BenchTopics,
        client_id: str,
        on_message: Handler,
        connect_timeout_s: float = 10.0,
        reconnect_delay_s: float = 0.5,
        reconnect_delay_max_s: float = 30.0,
        shared_group: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._topics = topics
        # Several API processes: each its own short-lived session in a shared group
        # (a fixed client id would be taken from one process by the next).
        self._shared_group = shared_group
        self._client_id = (
            client_id if shared_group is None else f"{client_id[:14]}-{os.getpid()}"[:23]
        )
        self._on_message = on_message
        self._connect_timeout_s = connect_timeout_s
        self._delay_s = reconnect_delay_s
        self._delay_max_s = reconnect_delay_max_s
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        """Connect and subscribe.

        Raises:
            BenchLinkError: If there is no subscription within ``connect_timeout_s``.
        """
        self._task = asyncio.create_task(self._run(), name="testbench-mqtt")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait(
            {self._task, ready}, timeout=self._connect_timeout_s, return_when="FIRST_COMPLETED"
        )
        ready.cancel()
        if not self._ready.is_set():
            await self.stop()
            e = self._endpoint
            raise BenchLinkError(
                f"the test bench has no MQTT session with {e.host}:{e.port} within "
                f"{self._connect_timeout_s} s: is the broker running, and may the service's "
                f"user read and write {self._topics.root}/#? ({self._fatal or 'no answer'})"
            )

    async def stop(self) -> None:
        """Disconnect; a message being handled is finished first."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready.clear()

    async def publish(self, topic: str, payload: bytes, *, wait_s: float | None = None) -> bool:
        """Publish with QoS 1, waiting for the connection when it is down.

        Args:
            topic: Where.
            payload: What.
            wait_s: Give up after this long (None: until stopped).

        Returns:
            Whether the broker took the message.
        """
        loop = asyncio.get_running_loop()
        deadline = None if wait_s is None else loop.time() + wait_s
        while not self._stopping.is_set() or wait_s is not None:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            if not self._ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), left)
                continue
            client = self._client
            if client is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await client.publish(topic, payload, qos=1)
                return True
            except aiomqtt.MqttError as error:
                _log.warning("bench publish on %s failed (%s); retrying", topic, error)
                await asyncio.sleep(self._delay_s)
        return False

    def _make_client(self) -> aiomqtt.Client:
        e = self._endpoint
        client = aiomqtt.Client(
            e.host,
            e.port,
            username=e.username,
            password=e.password.get_secret_value() if e.password else None,
            identifier=self._client_id,
            clean_session=self._shared_group is not None,
            timeout=self._connect_timeout_s,
            tls_context=tls_context(e.tls) if e.tls else None,
        )
        _paho(client).manual_ack_set(True)  # acknowledge once the message is handled
        return client

    async def _run(self) -> None:
        delay = self._delay_s
        while not self._stopping.is_set():
            try:
                async with self._make_client() as client:
                    await self._subscribe(client)
                    self._client = client
                    self._ready.set()
                    delay = self._delay_s
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload).encode()
                        try:
                            await self._on_message(message.topic.value, data)
                        except Exception:  # one bad message must not stop the bench
                            _log.exception("bench message on %s failed", message.topic.value)
                        if message.qos > 0:
                            _paho(client).ack(message.mid, message.qos)
            except aiomqtt.MqttError as error:
                self._fatal = error
                _log.warning("bench MQTT: %s; reconnecting in %.1f s", error, delay)
            except BenchLinkError as error:
                self._fatal = error
                _log.error("%s", error)
            finally:
                self._ready.clear()
                self._client = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(2 * delay, self._delay_max_s)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        t = self._topics
        wanted = [t.requests, t.results_filter]
        if self._shared_group is not None:
            wanted = [f"$share/{self._shared_group}/{topic}" for topic in wanted]
        granted: Any = await client.subscribe([(topic, 1) for topic in wanted])
        refused = [topic for topic, code in zip(wanted, granted, strict=True) if _refused(code)]
        if refused:
            raise BenchLinkError(
                f"the broker refused the bench's subscriptions {refused}: give the service's "
                "user the rules of cloud.testbench.topics.bench_acl"
            )
        _log.info("test bench subscribed to %s", ", ".join(wanted))


def _refused(code: int | ReasonCode) -> bool:
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80


def _paho(client: aiomqtt.Client) -> paho.Client:
    """The paho client under aiomqtt (aiomqtt 2 has no manual-acknowledgement API)."""
    return client._client
