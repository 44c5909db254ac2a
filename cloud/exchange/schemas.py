"""Pydantic views of the models exchange: the upload form, a stored FMU, the folder tree."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud.models import FmuCategory, FmuKind, FmuLevel, FmuModel

CATEGORY_NAMES = {
    FmuCategory.performance_ageing: "Performance and ageing tests",
    FmuCategory.safety_reliability: "Safety and reliability tests",
}
LEVEL_NAMES = {FmuLevel.cell: "Cell", FmuLevel.module: "Module", FmuLevel.pack: "Pack"}
KIND_NAMES = {
    FmuKind.physics_based: "Physics-based models",
    FmuKind.data_driven: "Data-driven models",
}

_TEST_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
_VERSION_SUFFIX = re.compile(r"_v(\d+)$")
_CHEMISTRY = re.compile(r"[a-z0-9]+(_[a-z0-9]+)*")


def file_name(test_name: str, version: int) -> str:
    """The seed's naming convention, ``TestName_v<version>.fmu``."""
    return f"{test_name}_v{version}.fmu"


def check_test_name(value: str) -> str:
    """``value`` if it is a valid test name (letters, digits, ``-``, ``_``; no version).

    Raises:
        ValueError: What is wrong and what to send instead.
    """
    name = value.strip()
    if not _TEST_NAME.fullmatch(name):
        raise ValueError(
            f"test name {value!r} may hold only letters, digits, '-' and '_' "
            "(1 to 100 characters), e.g. Overcharge or Thermal_runaway"
        )
    suffix = _VERSION_SUFFIX.search(name)
    if suffix:
        raise ValueError(
            f"test name {value!r} ends in a version: send test_name="
            f"{name[: suffix.start()]} and version={suffix.group(1)} (or no version for the next)"
        )
    return name


def normalise_chemistry(value: str) -> str:
    """The chemistry's folder slug: lower case, spaces and ``-`` as ``_`` (``Solid-state``
    -> ``solid_state``).

    Raises:
        ValueError: Characters other than letters, digits, spaces, ``-`` and ``_``.
    """
    slug = re.sub(r"[\s-]+", "_", value.strip().lower())
    if len(slug) > 50 or not _CHEMISTRY.fullmatch(slug):
        raise ValueError(
            f"chemistry {value!r} must be a short name of letters and digits, words joined by "
            "'_' (e.g. nmc, lfp, gen3b, solid_state; at most 50 characters)"
        )
    return slug


class UploadForm(BaseModel):
    """The form fields sent with an FMU (``POST /api/models/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: FmuCategory
    level: FmuLevel
    chemistry: str
    kind: FmuKind
    test_name: str
    version: int | None = Field(default=None, ge=1, le=1_000_000)
    """None: one more than the highest version of this test in this folder."""
    note: str | None = Field(default=None, max_length=2000)

    @field_validator("chemistry")
    @classmethod
    def _chemistry_slug(cls, value: str) -> str:
        return normalise_chemistry(value)

    @field_validator("test_name")
    @classmethod
    def _valid_test_name(cls, value: str) -> str:
        return check_test_name(value)


class FmuModelSummary(BaseModel):
    """One stored FMU version, without its modelDescription (the list's items)."""

    id: int
    category: FmuCategory
    level: FmuLevel
    chemistry: str
    kind: FmuKind
    folder: str = Field(description="category/level/chemistry/kind")
    test_name: str
    version: int
    file_name: str = Field(description="TestName_v<version>.fmu, the download's name")
    fmi_version: str
    model_name: str
    size_bytes: int
    sha256: str
    note: str | None
    uploaded_by_id: int | None
    uploaded_at: dt.datetime
    download_url: str

    @classmethod
    def of(cls, row: FmuModel) -> FmuModelSummary:
        return cls(**_summary_fields(row))


class FmuModelDetail(FmuModelSummary):
    """One stored FMU version with its parsed modelDescription."""

    model_description: dict[str, Any] = Field(
        description="fmi_version, model_name, guid, variables (name, causality, variability, "
        "type, unit, start, ...), platforms, interfaces, default_experiment, ..."
    )

    @classmethod
    def of(cls, row: FmuModel) -> FmuModelDetail:
        return cls(**_summary_fields(row), model_description=row.model_description)


def _summary_fields(row: FmuModel) -> dict[str, Any]:
    return {
        "id": row.id,
        "category": row.category,
        "level": row.level,
        "chemistry": row.chemistry,
        "kind": row.kind,
        "folder": f"{row.category.value}/{row.level.value}/{row.chemistry}/{row.kind.value}",
        "test_name": row.test_name,
        "version": row.version,
        "file_name": file_name(row.test_name, row.version),
        "fmi_version": row.fmi_version,
        "model_name": row.model_name,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "note": row.note,
        "uploaded_by_id": row.uploaded_by_id,
        "uploaded_at": row.uploaded_at,
        "download_url": f"/api/models/{row.id}/download/",
    }


class TestNode(BaseModel):
    """A test's FMUs in one folder: how many versions, and the newest."""

    __test__ = False  # not a pytest class, whatever its name

    test_name: str
    versions: int
    latest_version: int
    latest_id: int
    latest_file_name: str


class KindNode(BaseModel):
    kind: FmuKind
    display_name: str
    count: int = Field(description="stored FMU versions below this folder")
    tests: list[TestNode]


class ChemistryNode(BaseModel):
    chemistry: str
    count: int
    kinds: list[KindNode]


class LevelNode(BaseModel):
    level: FmuLevel
    display_name: str
    count: int
    chemistries: list[ChemistryNode]


class CategoryNode(BaseModel):
    category: FmuCategory
    display_name: str
    count: int
    levels: list[LevelNode]
