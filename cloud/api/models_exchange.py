"""``/api/models/``: the Models Exchange Interface, versioned FMUs shared between partners.

FMUs sit in the seed's folders (test category / level / chemistry / model kind) and are
named ``TestName_v<version>.fmu``; an upload never replaces a stored version. Everyone but
devices browses and downloads; uploading and deleting need write access (admins, or a user
with ``models_access = write``). The upload is read as a stream, in memory, and stops once
the file passes ``settings.fmu_max_bytes`` (413); its modelDescription is parsed before
anything is stored (422 with the reason if it cannot be).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from cloud.api.deps import CurrentUser, SessionDep, SettingsDep
from cloud.api.multipart import FileTooLarge, FormLimits, UploadedForm, read_form, size_text
from cloud.exchange import (
    CategoryNode,
    FmuModelDetail,
    FmuModelSummary,
    Folder,
    UploadForm,
    VersionConflictError,
    add_model,
    delete_model,
    file_name,
    folder_tree,
    get_model,
    list_models,
    read_content,
    read_refusal,
    write_refusal,
)
from cloud.exchange.schemas import normalise_chemistry
from cloud.models import FmuCategory, FmuKind, FmuLevel, User
from twin.errors import FmuError

router = APIRouter(prefix="/api/models", tags=["Models exchange"])
_FIELDS_BYTES = 16 * 1024  # all form fields together; the note is at most 2,000 characters
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "category", "level", "chemistry", "kind", "test_name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the FMU"},
                        "category": {"type": "string", "enum": [c.value for c in FmuCategory]},
                        "level": {"type": "string", "enum": [v.value for v in FmuLevel]},
                        "chemistry": {"type": "string", "example": "nmc"},
                        "kind": {"type": "string", "enum": [k.value for k in FmuKind]},
                        "test_name": {"type": "string", "example": "Overcharge"},
                        "version": {
                            "type": "integer",
                            "description": "leave out for the next version",
                        },
                        "note": {"type": "string"},
                    },
                }
            }
        },
    }
}


def _too_large(what: str, limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        detail=f"{what} is larger than {size_text(limit)}, the largest FMU the exchange accepts "
        "(BATTERYTWIN_FMU_MAX_BYTES)",
    )


async def _read_upload(request: Request, limit: int) -> UploadedForm:
    """The form fields and the FMU of a multipart body, reading no file beyond ``limit``."""
    limits = FormLimits(
        file_bytes=limit,
        body_bytes=limit + _FIELDS_BYTES + 64 * 1024,
        fields_bytes=_FIELDS_BYTES,
        too_many_files="send one FMU per upload (one 'file' part)",
        not_multipart="send multipart/form-data: the FMU in the field 'file', and the fields "
        "category, level, chemistry, kind, test_name (optional version, note)",
        fields_too_large=f"the form fields are larger than {_FIELDS_BYTES // 1024} kB",
    )
    try:
        return await read_form(request, limits)
    except FileTooLarge as error:
        raise _too_large(str(error), limit) from None


def _form(parts: UploadedForm) -> tuple[UploadForm, bytes]:
    """The validated form fields and the FMU; 422 naming each wrong field, as for JSON."""
    errors: list[dict[str, object]] = []
    content = parts.files[0][1] if parts.files else None
    if content is None:
        errors.append({"loc": ["body", "file"], "msg": "the FMU is required", "type": "missing"})
    fields = {k: v for k, v in parts.fields.items() if v != "" or k not in ("version", "note")}
    try:
        form = UploadForm.model_validate(fields)
    except ValidationError as exc:
        errors += [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
    if errors or content is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)
    return form, content


def _may_read(user: User) -> None:
    refusal = read_refusal(user)
    if refusal:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=refusal)


def _may_write(user: User) -> None:
    refusal = write_refusal(user)
    if refusal:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=refusal)


def _not_found(model_id: int) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND, detail=f"FMU {model_id} not found (never stored, or deleted)"
    )


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=FmuModelDetail,
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"description": "not a multipart body, or a malformed one"},
        409: {"description": "that version exists (or existed): versions are never replaced"},
        413: {"description": "a file over the limit (50 MB by default)"},
        422: {"description": "a missing or wrong field, or a file that is not an FMU"},
    },
)
async def upload_fmu(
    request: Request, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> JSONResponse:
    """Store an FMU as a new version of its test (201, ``Location`` of the stored version).

    The modelDescription is parsed and stored with the file's size and SHA-256. Without
    ``version`` the FMU becomes one more than the highest version of that test in that
    folder; a version that exists or existed is a 409.
    """
    _may_write(user)
    # Nothing to keep yet: end the transaction so no database connection waits on the body.
    await run_in_threadpool(session.commit)
    parts = await _read_upload(request, settings.fmu_max_bytes)
    form, content = _form(parts)
    folder = Folder(
        category=form.category, level=form.level, chemistry=form.chemistry, kind=form.kind
    )
    try:
        model = await run_in_threadpool(
            lambda: add_model(
                session,
                folder=folder,
                test_name=form.test_name,
                content=content,
                version=form.version,
                note=form.note,
                uploaded_by_id=user.id,
                source_name=parts.files[0][0],
            )
        )
    except FmuError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(error)) from None
    except VersionConflictError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
    await run_in_threadpool(session.commit)
    return JSONResponse(
        FmuModelDetail.of(model).model_dump(mode="json"),
        status_code=status.HTTP_201_CREATED,
        headers={"Location": f"/api/models/{model.id}/"},
    )


@router.get("/", response_model=list[FmuModelSummary])
def list_fmus(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    category: FmuCategory | None = None,
    level: FmuLevel | None = None,
    chemistry: Annotated[str | None, Query(description="e.g. nmc, gen3b, solid_state")] = None,
    kind: FmuKind | None = None,
    test_name: str | None = None,
    latest_only: Annotated[bool, Query(description="only each test's newest version")] = False,
    limit: Annotated[int, Query(ge=1, description="page size (at most the server's)")] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[FmuModelSummary]:
    """Stored FMUs (without their modelDescription), by folder and test name, newest version
    first; ``Link: <...>; rel="next"`` when there are more."""
    _may_read(user)
    if limit > settings.page_size_max:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["query", "limit"], "msg": f"must be <= {settings.page_size_max}"}],
        )
    if chemistry is not None:
        try:
            chemistry = normalise_chemistry(chemistry)
        except ValueError as error:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[{"loc": ["query", "chemistry"], "msg": str(error)}],
            ) from None
    rows = list_models(
        session,
        category=category,
        level=level,
        chemistry=chemistry,
        kind=kind,
        test_name=test_name,
        latest_only=latest_only,
        limit=limit + 1,
        offset=offset,
    )
    if len(rows) > limit:
        following = request.url.include_query_params(offset=offset + limit, limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return [FmuModelSummary.of(row) for row in rows[:limit]]


@router.get("/tree/", response_model=list[CategoryNode])
def tree(session: SessionDep, user: CurrentUser) -> list[CategoryNode]:
    """The folder hierarchy (category / level / chemistry / kind / test) with the number of
    stored versions at each level and each test's newest version."""
    _may_read(user)
    return folder_tree(session)


@router.get("/{model_id}/", response_model=FmuModelDetail)
def get_fmu(model_id: int, session: SessionDep, user: CurrentUser) -> FmuModelDetail:
    """One stored version with its parsed modelDescription (variables, units, platforms)."""
    _may_read(user)
    model = get_model(session, model_id=model_id)
    if model is None:
        raise _not_found(model_id)
    return FmuModelDetail.of(model)


@router.get(
    "/{model_id}/download/",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the FMU"}},
)
def download_fmu(model_id: int, session: SessionDep, user: CurrentUser) -> Response:
    """The FMU file, named ``TestName_v<version>.fmu``."""
    _may_read(user)
    model = get_model(session, model_id=model_id)
    content = None if model is None else read_content(session, model_id=model_id)
    if model is None or content is None:
        raise _not_found(model_id)
    name = file_name(model.test_name, model.version)  # letters, digits, '-', '_': no quoting
    return Response(
        content,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename={name}",
            "ETag": f'"{model.sha256}"',
        },
    )


@router.delete("/{model_id}/", status_code=status.HTTP_204_NO_CONTENT)
def delete_fmu(model_id: int, session: SessionDep, user: CurrentUser) -> Response:
    """Delete one version and its bytes; the other versions stay, and its number is not
    given to a later upload."""
    _may_write(user)
    if delete_model(session, model_id=model_id, deleted_by_id=user.id) is None:
        raise _not_found(model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
