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

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.multipart import FileTooLarge, FormLimits, read_form
from cloud.api.resources import ALL_READERS, scope_battery
from cloud.models import AnalyticsResult, Battery, Role, User

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


async def _read_files(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """The ``file`` parts of a multipart body, reading no part beyond ``limit`` bytes."""
    limits = FormLimits(
        file_bytes=limit,
        body_bytes=MAX_FILES * (limit + 2**20),
        fields_bytes=_OTHER_FIELDS_BYTES,
        max_files=MAX_FILES,
        too_many_files=f"at most {MAX_FILES} files per upload (one cell)",
        file_needs_name="each file part needs a filename (.pkl or .csv): it names the format",
        not_multipart="send multipart/form-data with the files in the field 'file'",
        fields_too_large="form fields other than 'file' are not expected",
    )
    try:
        form = await read_form(request, limits)
    except FileTooLarge as error:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{error} is larger than {limit // 2**20} MB, the limit per file",
        ) from None
    if not form.files:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="no file in the field 'file': send one .pkl, or the CSV set "
            "<cell>_cycles.csv, <cell>_metadata.csv, <cell>_metrics.csv",
        )
    return form.files


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
