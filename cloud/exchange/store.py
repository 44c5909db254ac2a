"""The models exchange's database logic: store, find, read and delete FMU versions.

Every function takes the caller's session and leaves the transaction to it. Metadata
(``fmu_models``) and bytes (``fmu_files``) are separate tables, so nothing here but
:func:`read_content` loads an FMU's bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from cloud.exchange.schemas import (
    CATEGORY_NAMES,
    KIND_NAMES,
    LEVEL_NAMES,
    CategoryNode,
    ChemistryNode,
    KindNode,
    LevelNode,
    TestNode,
    file_name,
)
from cloud.models import FmuCategory, FmuFile, FmuKind, FmuLevel, FmuModel
from twin.fmu.describe import describe_fmu_bytes


class VersionConflictError(ValueError):
    """The version exists, or existed: versions are never overwritten nor reused."""


@dataclass(frozen=True, slots=True)
class Folder:
    """Where an FMU lives: test category / level / chemistry slug / model kind."""

    category: FmuCategory
    level: FmuLevel
    chemistry: str
    kind: FmuKind

    @property
    def path(self) -> str:
        return f"{self.category.value}/{self.level.value}/{self.chemistry}/{self.kind.value}"


_FOLDER_COLUMNS = (FmuModel.category, FmuModel.level, FmuModel.chemistry, FmuModel.kind)
_ALIVE = FmuModel.deleted_at.is_(None)


def _in_folder(folder: Folder) -> tuple[ColumnElement[bool], ...]:
    return (
        FmuModel.category == folder.category,
        FmuModel.level == folder.level,
        FmuModel.chemistry == folder.chemistry,
        FmuModel.kind == folder.kind,
    )


def _next_version(session: Session, *, folder: Folder, test_name: str) -> int:
    """One more than the highest version ever stored (deleted ones count: never reused).

    Raises:
        VersionConflictError: The folder holds the test under another spelling (downloads
            named ``overcharge_v1.fmu`` and ``Overcharge_v1.fmu`` would collide on many
            file systems).
    """
    query = (
        select(FmuModel.test_name, func.max(FmuModel.version))
        .where(*_in_folder(folder), func.lower(FmuModel.test_name) == test_name.lower())
        .group_by(FmuModel.test_name)
    )
    found: dict[str, int] = {name: highest for name, highest in session.execute(query)}
    others = sorted(name for name in found if name != test_name)
    if others:
        raise VersionConflictError(
            f"{folder.path} has the test {others[0]!r} already, and test names must differ by "
            f"more than letter case: upload it as test_name={others[0]}"
        )
    return found.get(test_name, 0) + 1


def add_model(
    session: Session,
    *,
    folder: Folder,
    test_name: str,
    content: bytes,
    version: int | None = None,
    note: str | None = None,
    uploaded_by_id: int | None = None,
    source_name: str | None = None,
) -> FmuModel:
    """Store ``content`` as a version of ``test_name`` in ``folder``, with its parsed
    modelDescription, size and SHA-256.

    Args:
        session: The caller's transaction (flushed here, not committed).
        folder: Where the FMU goes.
        test_name: A valid test name (see :func:`cloud.exchange.schemas.check_test_name`).
        content: The FMU file.
        version: None for the next version; a number that was never used otherwise.
        note: Free text shown with the version.
        uploaded_by_id: The uploading user.
        source_name: The uploaded file's name, for error messages.

    Raises:
        twin.errors.FmuError: Not an FMU that can be read (not a zip, no or an invalid
            modelDescription.xml, an FMI version other than 2.0/3.0). Nothing is stored.
        VersionConflictError: The version exists or existed (or another upload took it at
            the same moment; the session is then rolled back).
    """
    description = describe_fmu_bytes(content, name=source_name or f"the FMU of {test_name}")
    following = _next_version(session, folder=folder, test_name=test_name)
    if version is None:
        version = following
    else:
        query = select(FmuModel.id, FmuModel.deleted_at).where(
            *_in_folder(folder), FmuModel.test_name == test_name, FmuModel.version == version
        )
        taken = session.execute(query).first()
        if taken is not None:
            name = file_name(test_name, version)
            what = (
                f"exists already (id {taken.id})"
                if taken.deleted_at is None
                else "was deleted, and version numbers are not reused"
            )
            raise VersionConflictError(
                f"{folder.path}/{name} {what}: versions are never overwritten; leave out "
                f"version to store this file as version {following}"
            )
    model = FmuModel(
        category=folder.category,
        level=folder.level,
        chemistry=folder.chemistry,
        kind=folder.kind,
        test_name=test_name,
        version=version,
        note=note,
        fmi_version=description.fmi_version,
        model_name=description.model_name[:255],
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        model_description=description.to_dict(),
        uploaded_by_id=uploaded_by_id,
    )
    session.add(model)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise VersionConflictError(
            f"{folder.path}/{file_name(test_name, version)} was stored by another upload at "
            "the same moment; send the file again (without version for the next one)"
        ) from None
    session.add(FmuFile(model_id=model.id, content=content))
    session.flush()
    return model


def get_model(session: Session, *, model_id: int) -> FmuModel | None:
    """A stored (not deleted) version with its modelDescription, or None."""
    return session.scalar(select(FmuModel).where(FmuModel.id == model_id, _ALIVE))


def read_content(session: Session, *, model_id: int) -> bytes | None:
    """The FMU's bytes, or None for an unknown or deleted version."""
    return session.scalar(select(FmuFile.content).where(FmuFile.model_id == model_id))


def list_models(
    session: Session,
    *,
    category: FmuCategory | None = None,
    level: FmuLevel | None = None,
    chemistry: str | None = None,
    kind: FmuKind | None = None,
    test_name: str | None = None,
    latest_only: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[FmuModel]:
    """Stored versions by folder and test name, newest version first; the modelDescription
    is not loaded (reading it raises)."""
    query = select(FmuModel).options(defer(FmuModel.model_description, raiseload=True))
    query = query.where(_ALIVE)
    for column, value in (
        (FmuModel.category, category),
        (FmuModel.level, level),
        (FmuModel.chemistry, chemistry),
        (FmuModel.kind, kind),
        (FmuModel.test_name, test_name),
    ):
        if value is not None:
            query = query.where(column == value)
    if latest_only:
        latest = _latest_versions()
        query = query.join(latest, _same_test(latest.c) & (FmuModel.version == latest.c.latest))
    query = query.order_by(*_FOLDER_COLUMNS, FmuModel.test_name, FmuModel.version.desc())
    return session.scalars(query.limit(limit).offset(offset)).all()


def _latest_versions() -> Any:
    """Per folder and test: how many versions are stored and the highest."""
    return (
        select(
            *_FOLDER_COLUMNS,
            FmuModel.test_name,
            func.count().label("versions"),
            func.max(FmuModel.version).label("latest"),
        )
        .where(_ALIVE)
        .group_by(*_FOLDER_COLUMNS, FmuModel.test_name)
        .subquery()
    )


def _same_test(columns: Any) -> Any:
    return and_(
        FmuModel.category == columns.category,
        FmuModel.level == columns.level,
        FmuModel.chemistry == columns.chemistry,
        FmuModel.kind == columns.kind,
        FmuModel.test_name == columns.test_name,
    )


def delete_model(session: Session, *, model_id: int, deleted_by_id: int | None) -> FmuModel | None:
    """Delete one version's bytes and mark it deleted (its number stays taken); None for an
    unknown or already deleted version."""
    model = get_model(session, model_id=model_id)
    if model is None:
        return None
    model.deleted_at = dt.datetime.now(dt.UTC)
    model.deleted_by_id = deleted_by_id
    session.execute(delete(FmuFile).where(FmuFile.model_id == model_id))
    session.flush()
    return model


def folder_tree(session: Session) -> list[CategoryNode]:
    """The folder hierarchy with counts and each test's newest version.

    Both categories, the three levels and both model kinds always appear (the seed's fixed
    folders); chemistries appear once they hold an FMU.
    """
    latest = _latest_versions()
    rows = session.execute(
        select(latest, FmuModel.id).join(
            FmuModel, _same_test(latest.c) & (FmuModel.version == latest.c.latest)
        )
    ).all()
    tests: dict[tuple[Any, ...], list[TestNode]] = {}
    for row in sorted(rows, key=lambda r: r.test_name):
        key = (row.category, row.level, row.chemistry, row.kind)
        tests.setdefault(key, []).append(
            TestNode(
                test_name=row.test_name,
                versions=row.versions,
                latest_version=row.latest,
                latest_id=row.id,
                latest_file_name=file_name(row.test_name, row.latest),
            )
        )
    chemistries = sorted({key[2] for key in tests})
    categories = []
    for category in FmuCategory:
        levels = []
        for level in FmuLevel:
            chem_nodes = []
            for chemistry in chemistries:
                kinds = []
                for kind in FmuKind:
                    found = tests.get((category, level, chemistry, kind), [])
                    kinds.append(
                        KindNode(
                            kind=kind,
                            display_name=KIND_NAMES[kind],
                            count=sum(t.versions for t in found),
                            tests=found,
                        )
                    )
                count = sum(k.count for k in kinds)
                if count:
                    chem_nodes.append(ChemistryNode(chemistry=chemistry, count=count, kinds=kinds))
            levels.append(
                LevelNode(
                    level=level,
                    display_name=LEVEL_NAMES[level],
                    count=sum(c.count for c in chem_nodes),
                    chemistries=chem_nodes,
                )
            )
        categories.append(
            CategoryNode(
                category=category,
                display_name=CATEGORY_NAMES[category],
                count=sum(level.count for level in levels),
                levels=levels,
            )
        )
    return categories
