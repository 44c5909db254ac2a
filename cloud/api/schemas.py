"""Request/response models, derived once from the tables plus per-field limits.

Each resource gets ``Create`` (required fields required), ``Update`` (every field
optional, for PATCH; PUT uses ``Create``) and ``Public`` (what the API returns). Integer
columns are bounded to what the database can hold, so an overflowing number is a 422
that names the field instead of a database error; strings to their column length.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from sqlalchemy import JSON, BigInteger, Boolean, Date, DateTime, Enum, Float, Integer, String
from sqlalchemy.orm import DeclarativeBase

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)


def _python_type(
    column: Any, limits: Mapping[str, tuple[float, float]]
) -> tuple[Any, dict[str, Any]]:
    col_type = column.type
    kw: dict[str, Any] = {}
    if column.name in limits:
        kw["ge"], kw["le"] = limits[column.name]
    if isinstance(col_type, Enum) and col_type.enum_class is not None:
        return col_type.enum_class, kw
    if isinstance(col_type, Boolean):
        return bool, kw
    if isinstance(col_type, BigInteger):
        kw.setdefault("ge", -_INT64)
        kw.setdefault("le", _INT64)
        return int, kw
    if isinstance(col_type, Integer):
        kw.setdefault("ge", -_INT32)
        kw.setdefault("le", _INT32)
        return int, kw
    if isinstance(col_type, Float):
        return FiniteFloat, kw
    if isinstance(col_type, String):
        if col_type.length:
            kw["max_length"] = col_type.length
        return str, kw
    if isinstance(col_type, DateTime):
        return dt.datetime, kw
    if isinstance(col_type, Date):
        return dt.date, kw
    if isinstance(col_type, JSON):
        return list[FiniteFloat], kw
    return str, kw


def build_schemas(
    model: type[DeclarativeBase],
    *,
    name: str,
    read_only: tuple[str, ...] = ("id",),
    required: tuple[str, ...] = (),
    limits: Mapping[str, tuple[float, float]] | None = None,
    relations: dict[str, str] | None = None,
    hidden: tuple[str, ...] = (),
) -> tuple[type[ApiModel], type[ApiModel], type[ApiModel]]:
    """``Create``, ``Update`` and ``Public`` models for ``model``.

    Args:
        name: Prefix of the generated class names (shows in OpenAPI).
        read_only: Columns set by the server (in ``Public`` only).
        required: Columns a POST/PUT must carry (others are optional).
        limits: Allowed ranges of numeric columns.
        relations: Many-to-many relationships exposed as lists of ids (name -> doc).
        hidden: Columns the API neither shows nor takes (secrets such as hashes).
    """
    limits = limits or {}
    create: dict[str, Any] = {}
    update: dict[str, Any] = {}
    public: dict[str, Any] = {}
    for column in model.__table__.columns:
        if column.name in hidden:
            continue
        tp, kw = _python_type(column, limits)
        public[column.name] = (tp | None, None)
        if column.name in read_only:
            continue
        if column.name in required:
            create[column.name] = (tp, Field(**kw))
        else:
            create[column.name] = (tp | None, Field(default=None, **kw))
        update[column.name] = (tp | None, Field(default=None, **kw))
    for rel, doc in (relations or {}).items():
        create[rel] = (list[int], Field(default_factory=list, description=doc))
        update[rel] = (list[int] | None, Field(default=None, description=doc))
        public[rel] = (list[int], Field(default_factory=list))
    create_cls = create_model(f"{name}Create", __base__=ApiModel, **create)
    update_cls = create_model(f"{name}Update", __base__=ApiModel, **update)
    public_cls = create_model(f"{name}Public", __base__=ApiModel, **public)
    return create_cls, update_cls, public_cls


def enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    return [str(e.value) for e in enum_cls]
