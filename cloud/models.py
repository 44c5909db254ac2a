"""Database tables: battery passport (static), time series (dynamic), devices, commands.

Field names follow the thesis's API (``cell_name``, ``serial_number``, ``cell_id``, ...) so
existing clients keep working; units are in comments where the wire name has none.
Passport fields beyond the thesis's ``Cell`` listing follow the D2.3 passport list and
the DIN DKE SPEC 99100 attribute groups (identity and status, manufacturer, composition,
performance and durability).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloud.db import Base

_BIGINT = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Role(enum.StrEnum):
    admin = "admin"
    manufacturer = "manufacturer"
    operator = "operator"
    service = "service"
    device = "device"


class ModelsAccess(enum.StrEnum):
    """What a user may do in the FMU models exchange (admins always write)."""

    read = "read"  # browse and download
    write = "write"  # also upload new versions and delete


class BatteryStatus(enum.StrEnum):
    """Battery status of the passport (DIN DKE SPEC 99100)."""

    original = "original"
    repurposed = "repurposed"
    reused = "reused"
    remanufactured = "remanufactured"
    waste = "waste"


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=20))
    manufacturer_id: Mapped[int | None] = mapped_column(
        ForeignKey("manufacturers.id", ondelete="SET NULL")
    )
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    models_access: Mapped[ModelsAccess] = mapped_column(
        Enum(ModelsAccess, native_enum=False, length=10),
        default=ModelsAccess.read,
        server_default=ModelsAccess.read.value,
    )


class Manufacturer(Base):
    __tablename__ = "manufacturers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    country: Mapped[str | None] = mapped_column(String(100))
    city: Mapped[str | None] = mapped_column(String(255))
    street: Mapped[str | None] = mapped_column(String(255))
    number: Mapped[int | None] = mapped_column(Integer)
    zipcode: Mapped[str | None] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(255))
    website: Mapped[str | None] = mapped_column(String(255))


class Chemical(Base):
    __tablename__ = "chemicals"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    chemical_type: Mapped[str | None] = mapped_column(String(100))  # cathode, anode, ...
    cas_number: Mapped[str | None] = mapped_column(String(30))
    hazardous: Mapped[bool] = mapped_column(Boolean, default=False)
    hazardous_substances: Mapped[str | None] = mapped_column(Text)
    extinguishing_agent: Mapped[str | None] = mapped_column(String(255))


class Material(Base):
    __tablename__ = "materials"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    weight: Mapped[float | None] = mapped_column(Float)  # kg
    share: Mapped[float | None] = mapped_column(Float)  # % of the battery's mass
    recycled: Mapped[bool] = mapped_column(Boolean, default=False)
    recycled_content: Mapped[float | None] = mapped_column(Float)  # %
    recoverable: Mapped[float | None] = mapped_column(Float)  # % recoverable at end of life
    hazardous: Mapped[bool] = mapped_column(Boolean, default=False)
    hazard_description: Mapped[str | None] = mapped_column(Text)


class SafetyFeature(Base):
    __tablename__ = "safety_features"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    standard: Mapped[str | None] = mapped_column(String(255))


battery_materials = Table(
    "battery_materials",
    Base.metadata,
    Column("battery_id", ForeignKey("batteries.id", ondelete="CASCADE"), primary_key=True),
    Column("material_id", ForeignKey("materials.id", ondelete="CASCADE"), primary_key=True),
)
battery_safety_features = Table(
    "battery_safety_features",
    Base.metadata,
    Column("battery_id", ForeignKey("batteries.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "safety_feature_id", ForeignKey("safety_features.id", ondelete="CASCADE"), primary_key=True
    ),
)
cell_chemicals = Table(
    "cell_chemicals",
    Base.metadata,
    Column("cell_id", ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True),
    Column("chemical_id", ForeignKey("chemicals.id", ondelete="CASCADE"), primary_key=True),
)


class Battery(Base):
    __tablename__ = "batteries"
    id: Mapped[int] = mapped_column(primary_key=True)
    serial_number: Mapped[str] = mapped_column(String(100), unique=True)
    battery_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[BatteryStatus] = mapped_column(
        Enum(BatteryStatus, native_enum=False, length=20), default=BatteryStatus.repurposed
    )
    model: Mapped[str | None] = mapped_column(String(255))
    chemistry: Mapped[str | None] = mapped_column(String(50))
    weight: Mapped[float | None] = mapped_column(Float)  # kg
    capacity: Mapped[int | None] = mapped_column(BigInteger)  # Wh (thesis: integer)
    original_power_capability: Mapped[int | None] = mapped_column(BigInteger)  # W
    rated_energy: Mapped[float | None] = mapped_column(Float)  # kWh
    nominal_voltage: Mapped[float | None] = mapped_column(Float)  # V
    max_voltage: Mapped[float | None] = mapped_column(Float)  # V
    min_voltage: Mapped[float | None] = mapped_column(Float)  # V
    max_current: Mapped[float | None] = mapped_column(Float)  # A
    min_temperature: Mapped[float | None] = mapped_column(Float)  # degC
    max_temperature: Mapped[float | None] = mapped_column(Float)  # degC
    expected_cycle_life: Mapped[int | None] = mapped_column(Integer)
    carbon_footprint: Mapped[float | None] = mapped_column(Float)  # kg CO2e
    recycled_content: Mapped[float | None] = mapped_column(Float)  # %
    expected_endoflife: Mapped[dt.date | None] = mapped_column(Date)
    manufactured_date: Mapped[dt.date | None] = mapped_column(Date)
    height: Mapped[float | None] = mapped_column(Float)  # mm
    width: Mapped[float | None] = mapped_column(Float)  # mm
    length: Mapped[float | None] = mapped_column(Float)  # mm
    manufactured_city: Mapped[str | None] = mapped_column(String(255))
    manufactured_street: Mapped[str | None] = mapped_column(String(255))
    manufactured_number: Mapped[int | None] = mapped_column(Integer)
    manufactured_zipcode: Mapped[str | None] = mapped_column(String(20))
    manufacturer_id: Mapped[int | None] = mapped_column(
        ForeignKey("manufacturers.id", ondelete="SET NULL"), index=True
    )
    operator_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    materials: Mapped[list[Material]] = relationship(secondary=battery_materials)
    safety_features: Mapped[list[SafetyFeature]] = relationship(secondary=battery_safety_features)


class Module(Base):
    __tablename__ = "modules"
    id: Mapped[int] = mapped_column(primary_key=True)
    module_name: Mapped[str] = mapped_column(String(255))
    serial_number: Mapped[str | None] = mapped_column(String(100), unique=True)
    position: Mapped[int | None] = mapped_column(Integer)  # index inside the battery
    status: Mapped[BatteryStatus] = mapped_column(
        Enum(BatteryStatus, native_enum=False, length=20), default=BatteryStatus.repurposed
    )
    nominal_capacity: Mapped[float | None] = mapped_column(Float)  # Ah
    nominal_voltage: Mapped[float | None] = mapped_column(Float)  # V
    nominal_energy: Mapped[float | None] = mapped_column(Float)  # Wh
    state_of_health: Mapped[float | None] = mapped_column(Float)  # % at second-life entry
    weight: Mapped[float | None] = mapped_column(Float)  # kg
    height: Mapped[float | None] = mapped_column(Float)  # mm
    width: Mapped[float | None] = mapped_column(Float)  # mm
    length: Mapped[float | None] = mapped_column(Float)  # mm
    battery_id: Mapped[int | None] = mapped_column(
        ForeignKey("batteries.id", ondelete="CASCADE"), index=True
    )
    manufacturer_id: Mapped[int | None] = mapped_column(
        ForeignKey("manufacturers.id", ondelete="SET NULL")
    )


class Cell(Base):
    """Fields and units of the thesis's Listing 3.2; ``position`` is the cell id inside
    the pack that edge BMSs send as ``cell_ids``."""

    __tablename__ = "cells"
    id: Mapped[int] = mapped_column(primary_key=True)
    cell_name: Mapped[str] = mapped_column(String(255), unique=True)
    position: Mapped[int | None] = mapped_column(Integer)
    nominal_capacity: Mapped[int | None] = mapped_column(Integer)  # Ah
    nominal_energy: Mapped[int | None] = mapped_column(Integer)  # Wh
    nominal_cycles: Mapped[int | None] = mapped_column(Integer)
    gravimetric_energy_density: Mapped[int | None] = mapped_column(Integer)  # Wh/kg
    volumetric_energy_density: Mapped[int | None] = mapped_column(Integer)  # Wh/l
    industry_standard: Mapped[str | None] = mapped_column(String(255))
    nominal_voltage: Mapped[float | None] = mapped_column(Float)  # V
    operating_voltage: Mapped[float | None] = mapped_column(Float)  # V, 0..10
    ac_resistance: Mapped[float | None] = mapped_column(Float)  # mOhm
    max_self_discharge_rate: Mapped[float | None] = mapped_column(Float)  # %/month
    nominal_soc_at_delivery: Mapped[float | None] = mapped_column(Float)  # %
    cell_weight: Mapped[float | None] = mapped_column(Float)  # kg
    cell_charging_temperature: Mapped[float | None] = mapped_column(Float)  # degC, 0..60
    cell_discharging_temperature: Mapped[float | None] = mapped_column(Float)  # degC, -30..60
    height: Mapped[float | None] = mapped_column(Float)  # mm
    width: Mapped[float | None] = mapped_column(Float)  # mm
    length: Mapped[float | None] = mapped_column(Float)  # mm
    module_id: Mapped[int | None] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), index=True
    )
    manufacturer_id: Mapped[int | None] = mapped_column(
        ForeignKey("manufacturers.id", ondelete="SET NULL")
    )
    cell_chemistry: Mapped[list[Chemical]] = relationship(secondary=cell_chemicals)


class Measurement(Base):
    """One row per cell and sample; Pillar 1 and Pillar 2 fields (unused ones are null).

    ``cell_id`` has no foreign key: PostgreSQL checks one row by row, which took more than
    half of a bulk COPY's time. Writers check the cells instead (the ingest against the
    device's cell map, the REST API against ``cells``), and a trigger on ``cells`` deletes
    a deleted cell's measurements, as the cascade did (migration 3c1e5a7b9d20).
    """

    __tablename__ = "measurements"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    cell_id: Mapped[int] = mapped_column(Integer)
    measured_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    added_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=_now, server_default=func.now()
    )
    voltage: Mapped[float | None] = mapped_column(Float)  # V
    temperature: Mapped[float | None] = mapped_column(Float)  # degC
    current: Mapped[float | None] = mapped_column(Float)  # A, + discharge
    sot: Mapped[float | None] = mapped_column(Float)
    phase: Mapped[float | None] = mapped_column(Float)  # deg
    soc: Mapped[float | None] = mapped_column(Float)
    sos: Mapped[float | None] = mapped_column(Float)
    soh: Mapped[float | None] = mapped_column(Float)
    equivalent_cycles: Mapped[float | None] = mapped_column(Float)
    device_id: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (Index("ix_measurements_cell_time", "cell_id", "measured_at"),)


class EisRecord(Base):
    """One row per cell and frequency point of an EIS sweep."""

    __tablename__ = "eis"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))
    event_id: Mapped[str] = mapped_column(String(100), index=True)
    frequency: Mapped[float] = mapped_column(Float)  # Hz
    amplitude: Mapped[float | None] = mapped_column(Float)  # A (excitation)
    phase: Mapped[float | None] = mapped_column(Float)  # deg
    current_offset: Mapped[float | None] = mapped_column(Float)  # A
    v_start: Mapped[float | None] = mapped_column(Float)  # V
    v_end: Mapped[float | None] = mapped_column(Float)  # V
    temperature: Mapped[float | None] = mapped_column(Float)  # degC
    z_re: Mapped[float | None] = mapped_column(Float)  # Ohm
    z_im: Mapped[float | None] = mapped_column(Float)  # Ohm
    z_mod: Mapped[float | None] = mapped_column(Float)  # Ohm
    z_phz: Mapped[float | None] = mapped_column(Float)  # deg
    voltage: Mapped[float | None] = mapped_column(Float)  # V
    measured_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    __table_args__ = (Index("ix_eis_cell_time", "cell_id", "measured_at"),)


class DiagnosticParameters(Base):
    """D2.3 Table 1: the diagnostic-sizing tool's output for one battery, timestamped."""

    __tablename__ = "diagnostic_parameters"
    id: Mapped[int] = mapped_column(primary_key=True)
    battery_id: Mapped[int] = mapped_column(ForeignKey("batteries.id", ondelete="CASCADE"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    soc_max: Mapped[float | None] = mapped_column(Float)
    soc_min: Mapped[float | None] = mapped_column(Float)
    fecs_per_day: Mapped[float | None] = mapped_column(Float)
    days_per_year: Mapped[float | None] = mapped_column(Float)
    soh_at_eol: Mapped[float | None] = mapped_column(Float)
    enom: Mapped[float | None] = mapped_column(Float)
    icha_max: Mapped[float | None] = mapped_column(Float)
    icha_std: Mapped[float | None] = mapped_column(Float)
    idch_max: Mapped[float | None] = mapped_column(Float)
    idch_mean: Mapped[float | None] = mapped_column(Float)
    lifespan_years: Mapped[float | None] = mapped_column(Float)
    lifespan_fecs: Mapped[float | None] = mapped_column(Float)
    number_of_packs: Mapped[float | None] = mapped_column(Float)
    number_of_modules: Mapped[float | None] = mapped_column(Float)
    number_of_cells: Mapped[float | None] = mapped_column(Float)
    id_oem: Mapped[float | None] = mapped_column(Float)
    id_project: Mapped[float | None] = mapped_column(Float)
    id_system: Mapped[float | None] = mapped_column(Float)
    t_max: Mapped[float | None] = mapped_column(Float)
    t_avr: Mapped[float | None] = mapped_column(Float)
    t_min: Mapped[float | None] = mapped_column(Float)
    xh0_time: Mapped[list[float] | None] = mapped_column(JSON)  # 5 values
    xh0_fec: Mapped[list[float] | None] = mapped_column(JSON)  # 5 values
    soh_evolution: Mapped[list[float] | None] = mapped_column(JSON)  # 40 values
    fecs_evolution: Mapped[list[float] | None] = mapped_column(JSON)  # 40 values
    time_evolution: Mapped[list[float] | None] = mapped_column(JSON)  # 40 values
    __table_args__ = (Index("ix_diag_battery_time", "battery_id", "recorded_at"),)


class SoxEstimate(Base):
    """State estimates with their provenance (who, which algorithm and version)."""

    __tablename__ = "sox_estimates"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    battery_id: Mapped[int] = mapped_column(ForeignKey("batteries.id", ondelete="CASCADE"))
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))
    estimated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    soc: Mapped[float | None] = mapped_column(Float)
    soh: Mapped[float | None] = mapped_column(Float)
    sot: Mapped[float | None] = mapped_column(Float)
    sos: Mapped[float | None] = mapped_column(Float)
    sow: Mapped[str | None] = mapped_column(String(100))
    rw: Mapped[float | None] = mapped_column(Float)  # remaining warranty
    rh: Mapped[float | None] = mapped_column(Float)  # remaining health
    ruw: Mapped[float | None] = mapped_column(Float)  # remaining useful warranty
    produced_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    algorithm: Mapped[str] = mapped_column(String(100))
    algorithm_version: Mapped[str] = mapped_column(String(50))
    __table_args__ = (Index("ix_sox_battery_time", "battery_id", "estimated_at"),)


class EcmParameterSet(Base):
    """Equivalent-circuit parameters (R0, R1..R4, C1..C4) with history."""

    __tablename__ = "ecm_parameters"
    id: Mapped[int] = mapped_column(primary_key=True)
    battery_id: Mapped[int] = mapped_column(ForeignKey("batteries.id", ondelete="CASCADE"))
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    voltage: Mapped[float | None] = mapped_column(Float)  # V, where the set applies
    r0: Mapped[float] = mapped_column(Float)  # Ohm
    r1: Mapped[float | None] = mapped_column(Float)
    r2: Mapped[float | None] = mapped_column(Float)
    r3: Mapped[float | None] = mapped_column(Float)
    r4: Mapped[float | None] = mapped_column(Float)
    c1: Mapped[float | None] = mapped_column(Float)  # F
    c2: Mapped[float | None] = mapped_column(Float)
    c3: Mapped[float | None] = mapped_column(Float)
    c4: Mapped[float | None] = mapped_column(Float)
    produced_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    source: Mapped[str | None] = mapped_column(String(100))


class Device(Base):
    """A registered edge BMS: its battery, its MQTT identity and whether it is online."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    battery_id: Mapped[int] = mapped_column(ForeignKey("batteries.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    pillar: Mapped[int] = mapped_column(Integer, default=1)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reporting_interval_s: Mapped[float] = mapped_column(Float, default=1.0)
    mqtt_password_hash: Mapped[str | None] = mapped_column(String(200))
    """Mosquitto ``$7$`` (PBKDF2-SHA512) hash of the device's MQTT password; None: no login."""


class Event(Base):
    """Something an edge BMS reported on its events topic (a limit hit, a contactor opened)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    battery_id: Mapped[int] = mapped_column(ForeignKey("batteries.id", ondelete="CASCADE"))
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # device clock
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    kind: Mapped[str] = mapped_column(String(50))
    severity: Mapped[str] = mapped_column(String(10))  # info, warning, alarm
    detail: Mapped[str] = mapped_column(String(2000), default="")
    cell_ids: Mapped[list[int] | None] = mapped_column(JSON)  # cell positions, as sent
    __table_args__ = (Index("ix_events_battery_time", "battery_id", "occurred_at"),)


class Command(Base):
    """A command to an edge BMS and its acknowledgement."""

    __tablename__ = "commands"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(50))  # ecm_update, eis_request, reporting_interval
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending/sent/acked/failed
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    acked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    ack_detail: Mapped[str | None] = mapped_column(Text)


class IngestedMessage(Base):
    """(device, sequence number) of every stored MQTT message: a redelivery stores nothing."""

    __tablename__ = "ingested_messages"
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class DeadLetter(Base):
    """An MQTT message that could not be stored, with the reason."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    topic: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # truncated


class ActivityLog(Base):
    """Who did what, when (requests and changes; never secrets)."""

    __tablename__ = "activity_log"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(150))
    client: Mapped[str | None] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    status_code: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class EstimatorRun(Base):
    """One run of a cloud estimator (D2.3's time scheduler): inputs, version, outcome."""

    __tablename__ = "estimator_runs"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(50))
    battery_id: Mapped[int | None] = mapped_column(
        ForeignKey("batteries.id", ondelete="CASCADE"), index=True
    )
    trigger: Mapped[str] = mapped_column(String(20))  # schedule | request
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20), default="running")  # ok|skipped|failed
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(2000))
    __table_args__ = (Index("ix_estimator_runs_job_time", "job", "started_at"),)


class AnalyticsResult(Base):
    """A Battery Analytics upload's result attached to a battery's passport
    (``POST /api/upload?attach_to_battery=``): the response without its plots."""

    __tablename__ = "analytics_results"
    id: Mapped[int] = mapped_column(primary_key=True)
    battery_id: Mapped[int] = mapped_column(ForeignKey("batteries.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    produced_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    cell_id: Mapped[str | None] = mapped_column(String(255))  # as in the uploaded file
    source: Mapped[str] = mapped_column(String(500))  # the uploaded file names
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (Index("ix_analytics_results_battery_time", "battery_id", "created_at"),)


class FmuCategory(enum.StrEnum):
    """Top folder of the models exchange: which kind of tests the FMUs simulate."""

    performance_ageing = "performance_ageing"  # WP3: Performance and ageing tests
    safety_reliability = "safety_reliability"  # WP4: Safety and reliability tests


class FmuLevel(enum.StrEnum):
    cell = "cell"
    module = "module"
    pack = "pack"


class FmuKind(enum.StrEnum):
    physics_based = "physics_based"
    data_driven = "data_driven"


class FmuModel(Base):
    """One version of an FMU in the models exchange: its folder, name, checksum and parsed
    modelDescription. The bytes are in :class:`FmuFile`, so listing never loads them;
    ``deleted_at`` set means the version was deleted (and its :class:`FmuFile` with it)."""

    __tablename__ = "fmu_models"
    id: Mapped[int] = mapped_column(primary_key=True)
    category: Mapped[FmuCategory] = mapped_column(Enum(FmuCategory, native_enum=False, length=30))
    level: Mapped[FmuLevel] = mapped_column(Enum(FmuLevel, native_enum=False, length=10))
    chemistry: Mapped[str] = mapped_column(String(50))  # slug: nmc, lfp, gen3b, solid_state
    kind: Mapped[FmuKind] = mapped_column(Enum(FmuKind, native_enum=False, length=20))
    test_name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ...: file TestName_v<version>.fmu
    note: Mapped[str | None] = mapped_column(String(2000))
    fmi_version: Mapped[str] = mapped_column(String(10))
    model_name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # hex
    model_description: Mapped[dict[str, Any]] = mapped_column(JSON)  # FmuDescription.to_dict()
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    uploaded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # A deleted version keeps this row (its bytes go), so its number is never given again.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    __table_args__ = (
        UniqueConstraint(
            "category",
            "level",
            "chemistry",
            "kind",
            "test_name",
            "version",
            name="uq_fmu_models_folder_test_version",
        ),
    )


class FmuFile(Base):
    """The bytes of one :class:`FmuModel` (deleted with it)."""

    __tablename__ = "fmu_files"
    model_id: Mapped[int] = mapped_column(
        ForeignKey("fmu_models.id", ondelete="CASCADE"), primary_key=True
    )
    content: Mapped[bytes] = mapped_column(LargeBinary)


__all__ = [
    "ActivityLog",
    "AnalyticsResult",
    "Battery",
    "BatteryStatus",
    "Cell",
    "Chemical",
    "Command",
    "DeadLetter",
    "Device",
    "DiagnosticParameters",
    "EcmParameterSet",
    "EisRecord",
    "EstimatorRun",
    "Event",
    "FmuCategory",
    "FmuFile",
    "FmuKind",
    "FmuLevel",
    "FmuModel",
    "IngestedMessage",
    "Manufacturer",
    "Material",
    "Measurement",
    "ModelsAccess",
    "Module",
    "Role",
    "SafetyFeature",
    "SoxEstimate",
    "User",
]


class BenchTest(Base):
    """One test of the test bench (virtual or physical): the request, status and outcome
    (``cloud.testbench``; status ``started`` -> ``in_progress`` -> ``completed``,
    ``failed`` or ``stopped_by_safety``)."""

    __tablename__ = "bench_tests"
    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    test_type: Mapped[str] = mapped_column(String(30), index=True)
    level: Mapped[str] = mapped_column(String(10))  # cell | module | pack
    unit_under_test: Mapped[str] = mapped_column(String(100), index=True)
    bench: Mapped[str] = mapped_column(String(10))  # virtual | physical
    status: Mapped[str] = mapped_column(String(20), index=True)
    scheduled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # name, unit, type
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class BenchTestChunk(Base):
    """One ``seq``-numbered chunk of a bench test's samples (stored once per seq)."""

    __tablename__ = "bench_test_chunks"
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    test_id: Mapped[int] = mapped_column(ForeignKey("bench_tests.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    t_start_s: Mapped[float] = mapped_column(Float)
    t_end_s: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, list[Any]]] = mapped_column(JSON)  # variable -> values
    __table_args__ = (Index("ix_bench_test_chunks_test_seq", "test_id", "seq", unique=True),)


__all__ += ["BenchTest", "BenchTestChunk"]
