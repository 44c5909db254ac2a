"""The fleet's side of the cloud's REST API: log in, provision BMSs, see what was stored.

- :meth:`CloudClient.provision`: ``POST /api/fleet/devices/`` (admin): N devices with
  batteries, cells and fresh MQTT passwords, one call per pillar.
- :meth:`CloudClient.stored_since`: ``POST /api/fleet/stored/``: the ``(device, seq)``
  pairs stored above per-device marks (the latency probe polls it).
- :meth:`CloudClient.summary`: ``GET /api/fleet/summary/``: per device stored counts and
  seq range, measurement rows and duplicates (loss and duplicate accounting).
- :meth:`CloudClient.measurements_latency_ms`: one measurements query, timed (API load
  while the fleet runs).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from virtual_bms.fleet.runner import DeviceCredentials

__all__ = ["CloudClient", "CloudError", "StoredBatch"]


class CloudError(RuntimeError):
    """The cloud refused or failed a fleet request; the message says which and why."""


class StoredBatch:
    """Newly stored messages: parallel arrays, plus the server's clock."""

    __slots__ = ("device", "now_s", "received_at_s", "seq", "truncated")

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.device: list[str] = list(data.get("device", []))
        self.seq: list[int] = list(data.get("seq", []))
        self.received_at_s: list[float] = list(data.get("received_at_s", []))
        self.now_s = float(data.get("now_s", time.time()))
        self.truncated = bool(data.get("truncated", False))


class CloudClient:
    """An async client of one cloud, logged in as ``username``.

    Example:
        >>> async with CloudClient("http://127.0.0.1:8000", "admin", "secret") as cloud:
        ...     creds = await cloud.provision(prefix="fleet-", count=100, pillar=2)
    """

    def __init__(
        self, base_url: str, username: str, password: str, *, timeout_s: float = 120.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._login = {"username": username, "password": password}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)
        self._token: str | None = None

    async def __aenter__(self) -> Self:
        await self.login()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def login(self) -> None:
        response = await self._request("POST", "/api/token/", json=self._login)
        if response.status_code != 200:
            raise CloudError(
                f"login to {self.base_url} as {self._login['username']!r} failed: "
                f"{response.status_code} {response.text[:200]}"
            )
        self._token = response.json()["access"]
        self._http.headers["Authorization"] = f"Bearer {self._token}"

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a keep-alive connection the server had just closed is retried once,
        and every transport failure becomes a :class:`CloudError`."""
        for attempt in (1, 2):
            try:
                return await self._http.request(method, path, **kwargs)
            except httpx.RemoteProtocolError as exc:
                if attempt == 2:
                    raise CloudError(f"{method} {path}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise CloudError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response.status_code == 401:  # the access token expired during a long run
            await self.login()
            response = await self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise CloudError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    async def provision(
        self, *, prefix: str, count: int, pillar: int, start: int = 0, cells: int = 16
    ) -> list[DeviceCredentials]:
        """Create (or re-key) devices ``{prefix}{start:05d}`` ... with their batteries."""
        body = {"prefix": prefix, "count": count, "start": start, "pillar": pillar, "cells": cells}
        rows = await self._call("POST", "/api/fleet/devices/", json=body)
        return [DeviceCredentials(row["name"], row["password"]) for row in rows]

    async def stored_since(self, marks: Mapping[str, int]) -> StoredBatch:
        """Messages stored above ``marks`` (device name -> highest seq known stored)."""
        data = await self._call("POST", "/api/fleet/stored/", json={"devices": dict(marks)})
        return StoredBatch(data)

    async def summary(self, *, prefix: str, check_duplicates: bool = True) -> dict[str, Any]:
        """Per-device stored counts and seq ranges, measurement rows and duplicates."""
        params = {"prefix": prefix, "check_duplicates": str(check_duplicates).lower()}
        result: dict[str, Any] = await self._call("GET", "/api/fleet/summary/", params=params)
        return result

    async def measurements_latency_ms(self, *, query: Mapping[str, Any]) -> float:
        """One ``GET /api/measurements/`` with ``query``, timed at the client (ms)."""
        started = time.perf_counter()
        await self._call("GET", "/api/measurements/", params=dict(query))
        return (time.perf_counter() - started) * 1000.0
