"""The BMS's HTTPS fallback to the cloud: outbox messages as bulk POSTs when MQTT is down.

D2.3 names HTTPS bulk POST as the second uplink path. :class:`HttpFallback` posts the
same wire-contract payloads the BMS would publish (``/api/uplink/{channel}/``, a JSON
array per run of same-channel messages, oldest first) and says which outbox items the
cloud has taken: stored, a duplicate of what it already had (by ``seq``), or
dead-lettered as invalid (resending cannot help, so those leave the queue too, with a
warning). Network errors, refused logins and a cloud that is down raise
:class:`HttpFallbackError`: the caller keeps the items and tries again later.

Example::

    async with HttpFallback("https://cloud:8000", "bms-7", password, ca_file="ca.pem") as http:
        items = outbox.peek(100)
        outbox.remove(await http.post(items))
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from virtual_bms.outbox import OutboxItem

__all__ = ["HttpFallback", "HttpFallbackError"]

_log = logging.getLogger(__name__)

_CHANNELS = frozenset({"telemetry", "eis", "events", "acks"})
"""What the cloud takes over HTTPS; presence (status) is MQTT's last will."""


class HttpFallbackError(RuntimeError):
    """The cloud did not take a POST (unreachable, login refused, down); keep the items."""


class HttpFallback:
    """Posts outbox items to the cloud's ``/api/uplink/{channel}/`` over HTTPS.

    Logs in at ``/api/token/`` on first use, refreshes the access token when the cloud
    says it expired (and logs in again when the refresh token has expired too). Use it as
    an async context manager, or call :meth:`aclose` when done.

    Args:
        base_url: The cloud API, e.g. ``https://cloud.example:8000``.
        username: The device's API user (role ``device``, linked to the device).
        password: Its password.
        ca_file: CA that signed the cloud's certificate; None: the system's CAs.
        timeout_s: Per request (connect, read, write).
        device: Post for this device (``?device=``): for an admin user, or a user of
            several devices; None: the user's own device.
        max_messages: Most messages in one POST (the cloud takes at most 1000).
        max_bytes: Most payload bytes in one POST (the cloud takes at most 16 MiB).
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        ca_file: str | Path | None = None,
        timeout_s: float = 30.0,
        device: str | None = None,
        max_messages: int = 500,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the cloud API URL must be https://host[:port], got {base_url!r}")
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._device = device
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        )
        self._client = httpx.AsyncClient(base_url=self.base_url, verify=verify, timeout=timeout_s)
        self._access: str | None = None
        self._refresh: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, items: Sequence[OutboxItem]) -> list[int]:
        """Post ``items`` in order; the ids of those the cloud has taken.

        Items go in runs of one channel (a POST each), in order; at the first run the
        cloud does not take, posting stops there and what was taken before is returned.
        Items of a channel the cloud does not take over HTTPS (status) are not posted
        and not returned.

        Raises:
            HttpFallbackError: If not even the first run was taken (nothing to remove).
        """
        taken: list[int] = []
        for channel, run, raw in self._runs(items):
            try:
                taken += await self._post_run(channel, run, raw=raw)
            except HttpFallbackError:
                if not taken:
                    raise
                _log.warning("HTTPS fallback: stopped after %d messages", len(taken), exc_info=True)
                break
        return taken

    def _runs(self, items: Sequence[OutboxItem]) -> Iterator[tuple[str, list[OutboxItem], bool]]:
        """Consecutive items of one channel, bounded in count and bytes, as ``(channel,
        items, raw)``; an item that is not JSON goes alone as its raw body (``raw``), and
        the cloud dead-letters it with the reason."""
        run: list[OutboxItem] = []
        size = 0
        for item in items:
            if item.channel not in _CHANNELS:
                continue
            if not _is_json(item.payload):
                if run:
                    yield run[0].channel, run, False
                    run, size = [], 0
                yield item.channel, [item], True
                continue
            if run and (
                item.channel != run[0].channel
                or len(run) >= self._max_messages
                or size + len(item.payload) > self._max_bytes
            ):
                yield run[0].channel, run, False
                run, size = [], 0
            run.append(item)
            size += len(item.payload) + 1
        if run:
            yield run[0].channel, run, False

    async def _post_run(self, channel: str, run: list[OutboxItem], *, raw: bool) -> list[int]:
        body = run[0].payload if raw else b"[" + b",".join(item.payload for item in run) + b"]"
        response = await self._request(f"/api/uplink/{channel}/", content=body)
        if response.status_code == 413 and len(run) == 1:
            _log.error(
                "HTTPS fallback: the cloud refuses %s message %d as too large (%d bytes); dropped",
                channel,
                run[0].id,
                len(run[0].payload),
            )
            return [run[0].id]
        answer = _json(response) if response.status_code in (200, 422) else None
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(run):
            raise HttpFallbackError(
                f"POST {channel}: HTTP {response.status_code}: {_detail(response)}"
            )
        for result in results:
            if isinstance(result, dict) and result.get("outcome") == "dead_lettered":
                _log.warning(
                    "HTTPS fallback: the cloud dead-lettered %s message %d: %s",
                    channel,
                    run[int(result.get("index", 0))].id,
                    result.get("reason"),
                )
        return [item.id for item in run]

    async def _request(self, path: str, *, content: bytes) -> httpx.Response:
        """POST with the access token; on 401 refresh (or log in) once and try again."""
        params = {"device": self._device} if self._device else None
        headers = {"Content-Type": "application/json"}
        for attempt in range(2):
            if self._access is None or attempt:
                await self._authenticate(refresh=attempt == 1)
            try:
                response = await self._client.post(
                    path,
                    content=content,
                    params=params,
                    headers=headers | {"Authorization": f"Bearer {self._access}"},
                )
            except httpx.HTTPError as error:
                raise HttpFallbackError(f"POST {path}: {type(error).__name__}: {error}") from error
            if response.status_code != 401:
                return response
        raise HttpFallbackError(f"POST {path}: HTTP 401 after a new login: {_detail(response)}")

    async def _authenticate(self, *, refresh: bool) -> None:
        """A new access token: from the refresh token if there is one, else by logging in."""
        try:
            if refresh and self._refresh is not None:
                response = await self._client.post(
                    "/api/token/refresh/", json={"refresh": self._refresh}
                )
                if response.status_code == 200:
                    self._access = str(response.json()["access"])
                    return
            response = await self._client.post(
                "/api/token/", json={"username": self.username, "password": self._password}
            )
        except httpx.HTTPError as error:
            raise HttpFallbackError(f"login: {type(error).__name__}: {error}") from error
        if response.status_code != 200:
            self._access = self._refresh = None
            raise HttpFallbackError(
                f"login as {self.username!r} refused: HTTP {response.status_code}: "
                f"{_detail(response)} (check --api-user and --api-password)"
            )
        tokens = response.json()
        self._access, self._refresh = str(tokens["access"]), str(tokens["refresh"])


def _is_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except ValueError:
        return False
    return True


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _detail(response: httpx.Response) -> str:
    answer = _json(response)
    if isinstance(answer, dict) and "detail" in answer:
        return str(answer["detail"])[:500]
    return response.text[:500]
