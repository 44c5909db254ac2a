"""``POST /api/uplink/{channel}/``: the HTTPS bulk POST an edge BMS falls back to (D2.3).

When a BMS cannot reach the MQTT broker it posts the same wire-contract payloads it would
have published (``docs/wire_contract.md``), one JSON object or a JSON array of them, to
the channel's URL. They take the ingest's own storage path: the contract checks, the
``(device, seq)`` claim and the dead letters are those of MQTT, so a message that arrives
over both paths is stored once.

Answers, per message in the order sent: ``stored``, ``duplicate`` (the seq was stored
before, by either path; nothing written) or ``dead_lettered`` with the contract's reason.
Invalid messages are dead-lettered as the ingest does (they are kept for inspection, and
resending them cannot help), and the answer is then 422 with the reasons; the valid
messages of the same POST are stored all the same. Everything else is 200.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from cloud.api.deps import CurrentUser, SessionDep
from cloud.models import Device, Role
from cloud.mqtt.contract import Channel

if TYPE_CHECKING:
    from cloud.mqtt.ingest import IngestService

__all__ = ["HTTP_CHANNELS", "MAX_BULK_BYTES", "MAX_BULK_MESSAGES", "router"]

router = APIRouter(prefix="/api/uplink", tags=["Uplink"])

HTTP_CHANNELS: tuple[Channel, ...] = (Channel.telemetry, Channel.eis, Channel.events, Channel.acks)
"""Presence (``status``) stays MQTT's: it is the broker's last will, not something to post."""
MAX_BULK_MESSAGES = 1000  # messages in one POST
MAX_BULK_BYTES = 16 * 1024 * 1024  # bytes of one POST body; each message also <= 1 MiB
_JSON_SEPARATORS = (",", ":")
_TOO_LARGE, _UNPROCESSABLE = 413, 422  # Starlette renamed both (and warns on the old names)


class MessageOutcome(BaseModel):
    """What became of one message of the POST (``index`` counts from 0 in the array)."""

    index: int
    outcome: Literal["stored", "duplicate", "dead_lettered"]
    reason: str | None = None


class UplinkResult(BaseModel):
    """The answer to a POST: counts and one outcome per message, in the order sent."""

    device: str
    channel: Channel
    stored: int
    duplicates: int
    dead_lettered: int
    results: list[MessageOutcome]
    detail: str | None = None
    """With 422: the reasons of the first dead letters, one line."""


def _sender(
    session: SessionDep,
    user: CurrentUser,
    device: Annotated[
        str | None,
        Query(
            max_length=100,
            description="The sending device's name: for an admin, or a user of several devices",
        ),
    ] = None,
) -> str:
    """The name of the device the caller posts for.

    A ``device`` user posts for its own device (``Device.user_id``); an admin for any
    device it names; nobody else posts.
    """
    if user.role == Role.admin:
        if device is None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail="an admin posts for a device: add ?device=NAME",
            )
        if session.scalar(select(Device.id).where(Device.name == device)) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no device named {device!r}")
        return device
    if user.role != Role.device:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"role '{user.role.value}' may not post uplink messages; "
            "log in as the device's user",
        )
    names = list(session.scalars(select(Device.name).where(Device.user_id == user.id)))
    if not names:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"user {user.username!r} is not the user of any device (Device.user_id)",
        )
    if device is None:
        if len(names) > 1:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail=f"user {user.username!r} is the user of {len(names)} devices: "
                "add ?device=NAME",
            )
        return names[0]
    if device not in names:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"user {user.username!r} may not post for device {device!r}",
        )
    return device


Sender = Annotated[str, Depends(_sender)]


def _ingest(request: Request) -> IngestService:
    """The app's ingest, or, without MQTT (``broker="none"``), a storage-only one."""
    state = request.app.state
    service: IngestService | None = state.ingest or getattr(state, "uplink_ingest", None)
    if service is None:
        from cloud.mqtt.ingest import IngestConfig, IngestService

        service = IngestService(engine=state.engine, config=IngestConfig())
        state.uplink_ingest = service  # its device cache lives as long as the app
    return service


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 beyond :data:`MAX_BULK_BYTES` (before it is all read)."""
    too_large = HTTPException(
        _TOO_LARGE,
        detail=f"body over {MAX_BULK_BYTES} bytes: post fewer messages at a time",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BULK_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BULK_BYTES:
            raise too_large
    return bytes(body)


def _payloads(body: bytes) -> list[bytes]:
    """One payload, or each element of a JSON array as a payload of its own.

    A body that is not a well-formed array is one payload, dead-lettered with the
    contract's reason as an MQTT payload would be.
    """
    if not body.lstrip().startswith(b"["):
        return [body]
    try:
        elements = json.loads(body)
    except ValueError:
        return [body]
    if len(elements) > MAX_BULK_MESSAGES:
        raise HTTPException(
            _TOO_LARGE,
            detail=f"{len(elements)} messages in one POST; at most {MAX_BULK_MESSAGES}",
        )
    return [
        json.dumps(element, ensure_ascii=False, separators=_JSON_SEPARATORS).encode()
        for element in elements
    ]


@router.post(
    "/{channel}/",
    response_model=UplinkResult,
    responses={
        413: {"description": "Too many messages or bytes in one POST"},
        422: {"model": UplinkResult, "description": "Some messages were dead-lettered"},
        503: {"description": "The database is unavailable: nothing stored, post again"},
    },
)
async def post_uplink(channel: str, request: Request, device: Sender) -> JSONResponse:
    """Store wire-contract messages of ``channel`` (telemetry, eis, events or acks).

    The body is one payload as on MQTT, or a JSON array of up to 1000 of them (16 MiB).
    Stored exactly once by ``(device, seq)``, whichever path a message came by.
    """
    wanted = next((c for c in HTTP_CHANNELS if c.value == channel), None)
    if wanted is None:
        names = ", ".join(c.value for c in HTTP_CHANNELS)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no uplink channel {channel!r}; post to one of {names}",
        )
    payloads = _payloads(await _read_body(request))
    service = _ingest(request)
    topic = service.config.topics.device(device, wanted)
    try:
        verdicts = await service.store_payloads(topic, payloads) if payloads else []
    except DBAPIError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the database is unavailable; nothing was stored, post again later",
            headers={"Retry-After": "5"},
        ) from None
    results = [
        MessageOutcome.model_validate({"index": i, "outcome": verdict, "reason": reason or None})
        for i, (verdict, reason) in enumerate(verdicts)
    ]
    dead = [r for r in results if r.outcome == "dead_lettered"]
    detail = None
    if dead:
        shown = "; ".join(f"message {r.index}: {r.reason}" for r in dead[:5])
        detail = shown + (f" (+{len(dead) - 5} more)" if len(dead) > 5 else "")
    result = UplinkResult(
        device=device,
        channel=wanted,
        stored=sum(r.outcome == "stored" for r in results),
        duplicates=sum(r.outcome == "duplicate" for r in results),
        dead_lettered=len(dead),
        results=results,
        detail=detail,
    )
    code = _UNPROCESSABLE if dead else status.HTTP_200_OK
    return JSONResponse(status_code=code, content=result.model_dump(mode="json"))
