"""One router per resource, built from a :class:`Resource` description.

List endpoints are bounded: ``limit`` (default 100, at most ``settings.page_size_max``)
and ``offset``; the body stays a JSON array (as the thesis's clients expect) and a
``Link: <...>; rel="next"`` header points to the next page when there is one.
"""

# No `from __future__ import annotations`: route handlers are built in closures and
# FastAPI must see their body types as objects, not strings.
import datetime as dt
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FunctionType, GenericAlias
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session

from cloud.api.deps import CurrentUser, SessionDep, SettingsDep
from cloud.api.schemas import ApiModel
from cloud.models import Role, User

Scope = Callable[[Select[Any], User], Select[Any]]
"""Restrict a query to the rows a user may read."""
WriteCheck = Callable[[Session, User, dict[str, Any], Any], str | None]
"""Return why ``user`` may not write these values (to this existing row), or None."""


@dataclass
class Resource:
    path: str
    model: type[DeclarativeBase]
    create: type[ApiModel]
    update: type[ApiModel]
    public: type[ApiModel]
    tag: str
    read_roles: frozenset[Role]
    write_roles: frozenset[Role]
    scope: Scope | None = None
    can_write: WriteCheck | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    """Query parameter -> column (equality filter)."""
    time_column: Any = None
    relations: dict[str, type[DeclarativeBase]] = field(default_factory=dict)
    unique_fields: tuple[str, ...] = ()
    stamp_user: str | None = None
    """Column set to the creating user's id (provenance), never from the body."""
    references: dict[str, type[DeclarativeBase]] = field(default_factory=dict)
    """Field -> model it must name a row of, checked for every role (columns with no
    foreign key, such as ``measurements.cell_id``)."""


def _forbidden(detail: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=detail)


def _require(user: User, roles: frozenset[Role], action: str, path: str) -> None:
    if user.role not in roles:
        raise _forbidden(f"role '{user.role.value}' may not {action} {path}")


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _shown_columns(res: Resource) -> tuple[Any, ...]:
    """The columns of ``res.public``: hidden ones (secrets) never leave the server."""
    return tuple(c for c in res.model.__table__.columns if c.name in res.public.model_fields)


def _public(res: Resource, obj: Any) -> dict[str, Any]:
    """The row as JSON data. Values come typed from the database, so no second
    validation is needed (the ``Public`` model documents the shape in OpenAPI)."""
    data = {c.name: _json_value(getattr(obj, c.name)) for c in _shown_columns(res)}
    for rel in res.relations:
        data[rel] = [r.id for r in getattr(obj, rel)]
    return data


def _apply(res: Resource, session: Session, obj: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key in res.relations:
            target: Any = res.relations[key]
            rows = session.scalars(select(target).where(target.id.in_(value))).all()
            missing = sorted(set(value) - {r.id for r in rows})
            if missing:
                raise HTTPException(
                    422, detail=[{"loc": ["body", key], "msg": f"unknown ids {missing}"}]
                )
            setattr(obj, key, list(rows))
        else:
            setattr(obj, key, value)


def _flush(res: Resource, session: Session) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        text = str(exc.orig).lower()
        field_name = next((f for f in res.unique_fields if f in text), None)
        if field_name or "unique" in text or "duplicate" in text:
            loc = ["body", field_name] if field_name else ["body"]
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail=[
                    {"loc": loc, "msg": "a record with this value already exists (unique field)"}
                ],
            ) from None
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=[{"loc": ["body"], "msg": "a referenced record does not exist"}],
        ) from None


def crud_router(res: Resource, *, skip_create: bool = False) -> APIRouter:
    router = APIRouter(prefix=f"/api/{res.path}", tags=[res.tag])
    model: Any = res.model
    id_col = model.id
    create_body: Any = res.create
    update_body: Any = res.update

    columns = _shown_columns(res)
    names = tuple(c.name for c in columns)

    def visible(user: User, *, as_rows: bool = False) -> Select[Any]:
        query = select(*columns) if as_rows else select(model)
        return res.scope(query, user) if res.scope and user.role != Role.admin else query

    def load(session: Session, user: User, item_id: int) -> Any:
        obj = session.scalar(visible(user).where(id_col == item_id))
        if obj is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{res.path} {item_id} not found")
        return obj

    def check_write(session: Session, user: User, values: dict[str, Any], obj: Any) -> None:
        _require(user, res.write_roles, "write", f"/api/{res.path}/")
        for name, target in res.references.items():
            value = values.get(name)
            if value is not None and session.get(target, value) is None:
                raise HTTPException(
                    422, detail=[{"loc": ["body", name], "msg": f"unknown {name} {value}"}]
                )
        if res.can_write and user.role != Role.admin:
            reason = res.can_write(session, user, values, obj)
            if reason:
                raise _forbidden(reason)

    public_list = GenericAlias(list, (res.public,))

    @router.get("/", response_model=public_list)
    def list_items(
        request: Request,
        response: Response,
        session: SessionDep,
        user: CurrentUser,
        settings: SettingsDep,
        limit: Annotated[
            int, Query(ge=1, description="page size (at most the server's maximum)")
        ] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        ordering: Annotated[
            str | None, Query(description="a field, '-' prefix for descending")
        ] = None,
        since: Annotated[
            dt.datetime | None, Query(description="from this time (time series)")
        ] = None,
        until: Annotated[
            dt.datetime | None, Query(description="before this time (time series)")
        ] = None,
    ) -> JSONResponse:
        _require(user, res.read_roles, "read", f"/api/{res.path}/")
        if limit > settings.page_size_max:
            raise HTTPException(
                422,
                detail=[{"loc": ["query", "limit"], "msg": f"must be <= {settings.page_size_max}"}],
            )
        # plain rows unless relations must be listed: ORM objects cost ~3x more per row
        as_rows = not res.relations
        query = visible(user, as_rows=as_rows)
        for param, column in res.filters.items():
            value = request.query_params.get(param)
            if value is not None:
                try:
                    number = int(value)
                except ValueError:
                    raise HTTPException(
                        422, detail=[{"loc": ["query", param], "msg": "must be an integer id"}]
                    ) from None
                query = query.where(
                    column(number) if isinstance(column, FunctionType) else column == number
                )
        if res.time_column is not None:
            if since is not None:
                query = query.where(res.time_column >= since)
            if until is not None:
                query = query.where(res.time_column < until)
        if ordering:
            name = ordering.lstrip("-")
            column = getattr(model, name, None)
            if column is None or name not in res.public.model_fields:
                raise HTTPException(
                    422, detail=[{"loc": ["query", "ordering"], "msg": f"unknown field {name!r}"}]
                )
            query = query.order_by(column.desc() if ordering.startswith("-") else column)
        if res.time_column is not None:
            query = query.order_by(res.time_column)  # served by the (cell, time) index
        query = query.order_by(id_col)
        page = query.limit(limit + 1).offset(offset)
        rows: Sequence[Any] = (
            session.execute(page).all() if as_rows else session.scalars(page).all()
        )
        headers = {}
        if len(rows) > limit:
            nxt = request.url.include_query_params(offset=offset + limit, limit=limit)
            headers["Link"] = f'<{nxt}>; rel="next"'
        # A Response skips FastAPI's re-validation of the (already typed) rows.
        items = (
            [{n: _json_value(v) for n, v in zip(names, r, strict=True)} for r in rows[:limit]]
            if as_rows
            else [_public(res, r) for r in rows[:limit]]
        )
        return JSONResponse(items, headers=headers)

    if not skip_create:

        @router.post("/", status_code=status.HTTP_201_CREATED, response_model=res.public)
        def create_item(
            body: create_body, session: SessionDep, user: CurrentUser
        ) -> dict[str, Any]:
            values = body.model_dump()
            check_write(session, user, values, None)
            obj = model()
            _apply(res, session, obj, values)
            if res.stamp_user:
                setattr(obj, res.stamp_user, user.id)
            session.add(obj)
            _flush(res, session)
            return _public(res, obj)

    @router.get("/{item_id}/", response_model=res.public)
    def get_item(item_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
        _require(user, res.read_roles, "read", f"/api/{res.path}/")
        return _public(res, load(session, user, item_id))

    def _change(
        item_id: int, values: dict[str, Any], session: Session, user: User
    ) -> dict[str, Any]:
        _require(user, res.read_roles | res.write_roles, "read", f"/api/{res.path}/")
        obj = load(session, user, item_id)
        check_write(session, user, values, obj)
        _apply(res, session, obj, values)
        _flush(res, session)
        return _public(res, obj)

    @router.put("/{item_id}/", response_model=res.public)
    def put_item(
        item_id: int, body: create_body, session: SessionDep, user: CurrentUser
    ) -> dict[str, Any]:
        # As in the thesis: optional fields left out of a PUT keep their values.
        return _change(item_id, body.model_dump(exclude_unset=True), session, user)

    @router.patch("/{item_id}/", response_model=res.public)
    def patch_item(
        item_id: int, body: update_body, session: SessionDep, user: CurrentUser
    ) -> dict[str, Any]:
        return _change(item_id, body.model_dump(exclude_unset=True), session, user)

    @router.delete("/{item_id}/", status_code=status.HTTP_204_NO_CONTENT)
    def delete_item(item_id: int, session: SessionDep, user: CurrentUser) -> Response:
        obj = load(session, user, item_id)
        check_write(session, user, {}, obj)
        session.delete(obj)
        _flush(res, session)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
