"""``POST /api/upload``: the Battery Analytics API (a cell's cycling data in, analytics out).

The seed's Flask API was open; here, as every other endpoint, it needs a bearer token:
any admin, manufacturer, operator or service user may analyse (devices, the edge BMSs'
identities, may not). The body is read as a stream and parsed here, in memory: a file
part stops being read once it passes :data:`cloud.analytics.MAX_FILE_BYTES` (413), and
nothing is written to disk, as Starlette's form parser would for parts over 1 MB.

``?attach_to_battery=ID`` also stores the result (without plots) on that battery: an
admin or service user for any battery, a manufacturer for its own. Stored results are read
back with ``GET /api/analytics/results/?battery=ID`` and ``.../results/{id}/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.resources import ALL_READERS, scope_battery
from cloud.models import AnalyticsResult, Battery, Role, User

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

router = APIRouter(prefix="/api", tags=["Battery Analytics"])
MAX_FILES = 3  # one pickle, or the CSV set of three
_OTHER_FIELDS_BYTES = 64 * 1024  # form fields other than "file" are read and dropped
_ANALYSTS = ALL_READERS  # everyone but devices
_ATTACHERS = frozenset({Role.admin, Role.manufacturer, Role.service})
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one .pkl, or <cell>_cycles.csv with "
                            "<cell>_metadata.csv and <cell>_metrics.csv",
                        }
                    },
                }
            }
        },
    }
}


class _TooLarge(Exception):
    pass


class _BadForm(Exception):
    pass


class _FileParts:
    """python-multipart callbacks that keep the ``file`` parts (name, bytes) in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.files: list[tuple[str, bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._filename: str | None = None
        self._buffer = bytearray()
        self._other = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._filename, self._buffer = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") != b"file":
            return
        filename = params.get(b"filename", b"").decode("utf-8", "replace").strip()
        if not filename:
            raise _BadForm("each file part needs a filename (.pkl or .csv): it names the format")
        if len(self.files) >= MAX_FILES:
            raise _BadForm(f"at most {MAX_FILES} files per upload (one cell)")
        self._filename = filename.replace("\\", "/").rsplit("/", 1)[-1]

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._filename is None:
            self._other += end - start
            if self._other > _OTHER_FIELDS_BYTES:
                raise _BadForm("form fields other than 'file' are not expected")
            return
        if len(self._buffer) + (end - start) > self.limit:
            raise _TooLarge(self._filename)
        self._buffer += data[start:end]

    def _end(self) -> None:
        if self._filename is not None:
            self.files.append((self._filename, bytes(self._buffer)))
        self._filename, self._buffer = None, bytearray()


def _too_large(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=detail)


async def _read_files(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """The ``file`` parts of a multipart body, reading no part beyond ``limit`` bytes."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="send multipart/form-data with the files in the field 'file'",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FILES * (limit + 2**20):
        raise _too_large(
            f"the upload declares {int(declared) // 2**20} MB; at most {MAX_FILES} files "
            f"of {limit // 2**20} MB each are read"
        )
    parts = _FileParts(limit)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)  # callbacks raise as soon as a part passes the limit
        parser.finalize()
    except _TooLarge as error:
        raise _too_large(
            f"{error} is larger than {limit // 2**20} MB, the limit per file"
        ) from None
    except _BadForm as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(error)) from None
    except ValueError as error:  # python-multipart's FormParserError and friends
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail=f"malformed multipart body: {error}"
        ) from None
    if not parts.files:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="no file in the field 'file': send one .pkl, or the CSV set "
            "<cell>_cycles.csv, <cell>_metadata.csv, <cell>_metrics.csv",
        )
    return parts.files


def _attach_target(session: Session, user: User, battery_id: int) -> Battery:
    if user.role not in _ATTACHERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"role '{user.role.value}' may not attach results to a battery's passport "
            "(admin, manufacturer or service may)",
        )
    query = scope_battery(select(Battery).where(Battery.id == battery_id), user)
    battery: Battery | None = session.scalar(query)
    if battery is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"battery {battery_id} not found")
    return battery


@router.post(
    "/upload",
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"description": "wrong, unreadable or incomplete data; the detail says what"},
        413: {"description": "a file over 50 MB"},
    },
)
@router.post("/upload/", include_in_schema=False)
async def upload(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    attach_to_battery: Annotated[
        int | None, Query(description="store the result (no plots) on this battery")
    ] = None,
) -> JSONResponse:
    """Analyse one cell: capacity fade, voltage profiles with dV/dQ and dQ/dV, temperature,
    statistics with an end-of-life projection, health, data quality; plots as base64 PNG.

    The files are analysed in memory and dropped; with ``attach_to_battery`` the result
    (without plots) is also stored on that battery (201, ``Location`` of the stored result).
    """
    from cloud import analytics

    if user.role not in _ANALYSTS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not upload data"
        )
    battery = None
    if attach_to_battery is not None:
        battery = _attach_target(session, user, attach_to_battery)
    files = await _read_files(request, analytics.MAX_FILE_BYTES)
    try:
        result = await run_in_threadpool(analytics.analyse_upload, files)
    except analytics.FileTooLargeError as error:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(error)) from None
    except analytics.AnalyticsInputError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(error)) from None
    if battery is None:
        return JSONResponse(result)
    cell_id = result["metadata"].get("cell_id")
    row = AnalyticsResult(
        battery_id=battery.id,
        produced_by_id=user.id,
        cell_id=str(cell_id)[:255] if cell_id is not None else None,
        source=", ".join(name for name, _ in files)[:500],
        result=analytics.without_plots(result),
    )
    session.add(row)
    session.commit()
    return JSONResponse(
        result,
        status_code=status.HTTP_201_CREATED,
        headers={"Location": f"/api/analytics/results/{row.id}/"},
    )


def _summary(row: AnalyticsResult) -> dict[str, Any]:
    health = row.result.get("battery_health", {})
    return {
        "id": row.id,
        "battery_id": row.battery_id,
        "created_at": row.created_at.isoformat(),
        "produced_by_id": row.produced_by_id,
        "cell_id": row.cell_id,
        "source": row.source,
        "health_score": health.get("health_score"),
        "health_status": health.get("health_status"),
    }


def _readable(user: User) -> None:
    if user.role not in ALL_READERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not read analytics"
        )


@router.get("/analytics/results/")
def list_results(
    session: SessionDep,
    user: CurrentUser,
    battery: Annotated[int, Query(description="battery id")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Results attached to a battery, newest first (without the stored result body)."""
    _readable(user)
    query = (
        select(AnalyticsResult)
        .join(Battery, AnalyticsResult.battery_id == Battery.id)
        .where(AnalyticsResult.battery_id == battery)
        .order_by(AnalyticsResult.created_at.desc(), AnalyticsResult.id.desc())
        .limit(limit)
    )
    return [_summary(row) for row in session.scalars(scope_battery(query, user))]


@router.get("/analytics/results/{result_id}/")
def get_result(result_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """One stored result: the upload's response without plots, and who made it when."""
    _readable(user)
    query = (
        select(AnalyticsResult)
        .join(Battery, AnalyticsResult.battery_id == Battery.id)
        .where(AnalyticsResult.id == result_id)
    )
    row = session.scalar(scope_battery(query, user))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"result {result_id} not found")
    return {**_summary(row), "result": row.result}
