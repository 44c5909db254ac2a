"""The thesis's REST resources, their schemas and who may do what.

Roles: ``admin`` everything; ``manufacturer`` writes the passport of its own batteries
(and the shared lookup tables); ``operator`` reads its own sites' batteries and their
data; ``service`` (a third-party algorithm) reads everything it analyses; ``device`` (an
edge BMS) writes only its own battery's telemetry. Ownership follows cell -> module ->
battery, so the checks are per object, not only per role.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cloud.api.crud import Resource
from cloud.api.schemas import build_schemas
from cloud.models import (
    Battery,
    Cell,
    Chemical,
    Device,
    DiagnosticParameters,
    EcmParameterSet,
    EisRecord,
    EstimatorRun,
    Event,
    Manufacturer,
    Material,
    Measurement,
    Module,
    Role,
    SafetyFeature,
    SoxEstimate,
    User,
)

ALL_READERS = frozenset({Role.admin, Role.manufacturer, Role.operator, Role.service})
ANALYTICS_WRITERS = frozenset({Role.admin, Role.service})
PASSPORT_WRITERS = frozenset({Role.admin, Role.manufacturer})
DATA_READERS = frozenset({Role.admin, Role.manufacturer, Role.operator, Role.service})
DATA_WRITERS = frozenset({Role.admin, Role.device})


def device_battery(user: User) -> Any:
    """The battery id of a device user's edge BMS, as a scalar subquery."""
    return select(Device.battery_id).where(Device.user_id == user.id).scalar_subquery()


def device_battery_id(session: Session, user: User) -> int | None:
    return session.scalar(select(Device.battery_id).where(Device.user_id == user.id))


def _owned_batteries(query: Select[Any], user: User) -> Select[Any]:
    if user.role == Role.manufacturer:
        return query.where(Battery.manufacturer_id == user.manufacturer_id)
    if user.role == Role.operator:
        return query.where(Battery.operator_id == user.id)
    if user.role == Role.device:
        return query.where(Battery.id == device_battery(user))
    return query


def scope_battery(query: Select[Any], user: User) -> Select[Any]:
    return _owned_batteries(query, user)


def scope_module(query: Select[Any], user: User) -> Select[Any]:
    if user.role == Role.service:
        return query
    return _owned_batteries(query.join(Battery, Module.battery_id == Battery.id), user)


def scope_cell(query: Select[Any], user: User) -> Select[Any]:
    if user.role == Role.service:
        return query
    joined = query.join(Module, Cell.module_id == Module.id).join(
        Battery, Module.battery_id == Battery.id
    )
    return _owned_batteries(joined, user)


def _scope_by_cell(column: Any) -> Any:
    def scope(query: Select[Any], user: User) -> Select[Any]:
        if user.role == Role.service:
            return query
        joined = (
            query.join(Cell, column == Cell.id)
            .join(Module, Cell.module_id == Module.id)
            .join(Battery, Module.battery_id == Battery.id)
        )
        return _owned_batteries(joined, user)

    return scope


def _battery_owned(session: Session, user: User, battery_id: int | None) -> bool:
    if battery_id is None:
        return False
    battery = session.get(Battery, battery_id)
    if battery is None:
        return True  # let the foreign key report the unknown id
    if user.role == Role.manufacturer:
        return battery.manufacturer_id == user.manufacturer_id
    if user.role == Role.device:
        return device_battery_id(session, user) == battery_id
    return False


def _cell_battery(session: Session, cell_id: int | None) -> int | None:
    if cell_id is None:
        return None
    cell = session.get(Cell, cell_id)
    if cell is None or cell.module_id is None:
        return None
    module = session.get(Module, cell.module_id)
    return module.battery_id if module else None


def check_battery(session: Session, user: User, values: dict[str, Any], obj: Any) -> str | None:
    if user.role != Role.manufacturer:
        return None
    target = values.get("manufacturer_id", obj.manufacturer_id if obj else None)
    if obj is not None and obj.manufacturer_id != user.manufacturer_id:
        return "a manufacturer may only change its own batteries"
    if target != user.manufacturer_id:
        return (
            f"a manufacturer may only write batteries with manufacturer_id {user.manufacturer_id}"
        )
    return None


def check_module(session: Session, user: User, values: dict[str, Any], obj: Any) -> str | None:
    battery_id = values.get("battery_id", obj.battery_id if obj else None)
    if obj is not None and not _battery_owned(session, user, obj.battery_id):
        return "this module belongs to another manufacturer's battery"
    if not _battery_owned(session, user, battery_id):
        return "modules may only be added to your own batteries"
    return None


def check_cell(session: Session, user: User, values: dict[str, Any], obj: Any) -> str | None:
    def owned(module_id: int | None) -> bool:
        module = session.get(Module, module_id) if module_id is not None else None
        return module is not None and _battery_owned(session, user, module.battery_id)

    module_id = values.get("module_id", obj.module_id if obj else None)
    if obj is not None and not owned(obj.module_id):
        return "this cell belongs to another manufacturer's battery"
    if not owned(module_id):
        return "cells may only be added to modules of your own batteries"
    return None


def _scope_by_battery(column: Any) -> Any:
    def scope(query: Select[Any], user: User) -> Select[Any]:
        if user.role == Role.service:
            return query
        return _owned_batteries(query.join(Battery, column == Battery.id), user)

    return scope


def check_estimate(session: Session, user: User, values: dict[str, Any], obj: Any) -> str | None:
    """Services write estimates; the cell, if given, must belong to the battery."""
    cell_id = values.get("cell_id", obj.cell_id if obj else None)
    battery_id = values.get("battery_id", obj.battery_id if obj else None)
    if cell_id is not None and _cell_battery(session, cell_id) != battery_id:
        return f"cell {cell_id} is not part of battery {battery_id}"
    return None


def check_manufacturer(
    session: Session, user: User, values: dict[str, Any], obj: Any
) -> str | None:
    if obj is None:
        return "only an admin registers manufacturers"
    if obj.id != user.manufacturer_id:
        return "a manufacturer may only change its own record"
    return None


def check_cell_data(session: Session, user: User, values: dict[str, Any], obj: Any) -> str | None:
    cell_id = values.get("cell_id", obj.cell_id if obj else None)
    battery = _cell_battery(session, cell_id)
    own = device_battery_id(session, user)
    if obj is not None and _cell_battery(session, obj.cell_id) != own:
        return "a device may only change its own battery's data"
    if battery != own:
        return f"a device may only write data of its own battery's cells (cell {cell_id})"
    return None


_BATTERY_LIMITS = {
    "weight": (0, 1e6),
    "rated_energy": (0, 1e6),
    "nominal_voltage": (0, 2000),
    "max_voltage": (0, 2000),
    "min_voltage": (0, 2000),
    "max_current": (0, 1e5),
    "min_temperature": (-60, 100),
    "max_temperature": (-60, 100),
    "recycled_content": (0, 100),
    "height": (0, 1e5),
    "width": (0, 1e5),
    "length": (0, 1e5),
    "capacity": (0, 1e12),
    "original_power_capability": (0, 1e12),
    "expected_cycle_life": (0, 1e7),
    "carbon_footprint": (0, 1e9),
}
_CELL_LIMITS = {
    "operating_voltage": (0.0, 10.0),
    "cell_charging_temperature": (0.0, 60.0),
    "cell_discharging_temperature": (-30.0, 60.0),
    "nominal_soc_at_delivery": (0.0, 100.0),
    "nominal_voltage": (0.0, 10.0),
    "ac_resistance": (0.0, 1e6),
    "nominal_capacity": (0, 1e6),
    "nominal_energy": (0, 1e7),
    "nominal_cycles": (0, 1e7),
    "cell_weight": (0, 1e4),
    "height": (0, 1e4),
    "width": (0, 1e4),
    "length": (0, 1e4),
    "position": (0, 1e6),
}
_MEASUREMENT_LIMITS = {
    "voltage": (-10.0, 10.0),
    "temperature": (-60.0, 150.0),
    "current": (-1e5, 1e5),
    "soc": (-0.5, 100.0),
    "soh": (0.0, 100.0),
    "equivalent_cycles": (0.0, 1e7),
}
_EIS_LIMITS = {"frequency": (0.0, 1e7), "temperature": (-60.0, 150.0)}


def _res(
    path: str,
    model: Any,
    tag: str,
    *,
    read: frozenset[Role],
    write: frozenset[Role],
    required: tuple[str, ...],
    read_only: tuple[str, ...] = ("id",),
    limits: Mapping[str, tuple[float, float]] | None = None,
    relations: dict[str, tuple[Any, str]] | None = None,
    hidden: tuple[str, ...] = (),
    **kwargs: Any,
) -> Resource:
    rel_docs = {k: doc for k, (_, doc) in (relations or {}).items()}
    create, update, public = build_schemas(
        model,
        name=tag.replace(" ", ""),
        required=required,
        read_only=read_only,
        limits=limits,
        relations=rel_docs,
        hidden=hidden,
    )
    return Resource(
        path=path,
        model=model,
        create=create,
        update=update,
        public=public,
        tag=tag,
        read_roles=read,
        write_roles=write,
        relations={k: m for k, (m, _) in (relations or {}).items()},
        **kwargs,
    )


def resources() -> list[Resource]:
    """Every CRUD resource, in the order of the thesis's endpoint table."""
    return [
        _res(
            "eis",
            EisRecord,
            "EIS",
            read=DATA_READERS,
            write=DATA_WRITERS,
            required=("cell_id", "status", "event_id", "frequency"),
            read_only=("id", "added_at"),
            limits=_EIS_LIMITS,
            scope=_scope_by_cell(EisRecord.cell_id),
            can_write=check_cell_data,
            filters={
                "cell": EisRecord.cell_id,
                "cell_id": EisRecord.cell_id,
                "module": lambda v: EisRecord.cell_id.in_(
                    select(Cell.id).where(Cell.module_id == v)
                ),
                "battery": lambda v: EisRecord.cell_id.in_(
                    select(Cell.id)
                    .join(Module, Cell.module_id == Module.id)
                    .where(Module.battery_id == v)
                ),
            },
            time_column=EisRecord.measured_at,
        ),
        _res(
            "measurements",
            Measurement,
            "Measurements",
            read=DATA_READERS,
            write=DATA_WRITERS,
            required=("cell_id",),
            read_only=("id", "added_at", "device_id"),
            limits=_MEASUREMENT_LIMITS,
            references={"cell_id": Cell},
            scope=_scope_by_cell(Measurement.cell_id),
            can_write=check_cell_data,
            filters={
                "cell": Measurement.cell_id,
                "cell_id": Measurement.cell_id,
                "module": lambda v: Measurement.cell_id.in_(
                    select(Cell.id).where(Cell.module_id == v)
                ),
                "battery": lambda v: Measurement.cell_id.in_(
                    select(Cell.id)
                    .join(Module, Cell.module_id == Module.id)
                    .where(Module.battery_id == v)
                ),
            },
            time_column=Measurement.measured_at,
        ),
        _res(
            "batteries",
            Battery,
            "Battery Management",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("serial_number", "battery_name"),
            limits=_BATTERY_LIMITS,
            relations={
                "materials": (Material, "ids of /api/material/"),
                "safety_features": (SafetyFeature, "ids of /api/safety_feature/"),
            },
            scope=scope_battery,
            can_write=check_battery,
            filters={"manufacturer": Battery.manufacturer_id, "operator": Battery.operator_id},
            unique_fields=("serial_number",),
        ),
        _res(
            "cells",
            Cell,
            "Cell Management",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("cell_name",),
            limits=_CELL_LIMITS,
            relations={"cell_chemistry": (Chemical, "ids of /api/chemical/")},
            scope=scope_cell,
            can_write=check_cell,
            filters={
                "module": Cell.module_id,
                "battery": lambda v: Cell.module_id.in_(
                    select(Module.id).where(Module.battery_id == v)
                ),
            },
            unique_fields=("cell_name",),
        ),
        _res(
            "chemical",
            Chemical,
            "Chemical",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("name",),
        ),
        _res(
            "manufacturers",
            Manufacturer,
            "Manufacturer",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("name",),
            can_write=check_manufacturer,
            unique_fields=("name",),
        ),
        _res(
            "material",
            Material,
            "Material",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("name",),
            limits={
                "share": (0, 100),
                "recycled_content": (0, 100),
                "recoverable": (0, 100),
                "weight": (0, 1e6),
            },
        ),
        _res(
            "modules",
            Module,
            "Module",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("module_name", "battery_id"),
            limits={"state_of_health": (0, 100), "position": (0, 1e6)},
            scope=scope_module,
            can_write=check_module,
            filters={"battery": Module.battery_id},
            unique_fields=("serial_number",),
        ),
        _res(
            "diagnostics",
            DiagnosticParameters,
            "Diagnostic sizing",
            read=DATA_READERS,
            write=ANALYTICS_WRITERS,
            required=("battery_id",),
            scope=_scope_by_battery(DiagnosticParameters.battery_id),
            filters={"battery": DiagnosticParameters.battery_id},
            time_column=DiagnosticParameters.recorded_at,
        ),
        _res(
            "estimates",
            SoxEstimate,
            "State estimates",
            read=DATA_READERS,
            write=ANALYTICS_WRITERS,
            required=("battery_id", "algorithm", "algorithm_version"),
            read_only=("id", "produced_by_id"),
            limits={"soc": (0, 100), "soh": (0, 150)},
            scope=_scope_by_battery(SoxEstimate.battery_id),
            can_write=check_estimate,
            filters={"battery": SoxEstimate.battery_id, "cell": SoxEstimate.cell_id},
            stamp_user="produced_by_id",
            time_column=SoxEstimate.estimated_at,
        ),
        _res(
            "ecm_parameters",
            EcmParameterSet,
            "ECM parameters",
            read=DATA_READERS,
            write=ANALYTICS_WRITERS,
            required=("battery_id", "r0"),
            read_only=("id", "produced_by_id"),
            limits={k: (0.0, 1e6) for k in ("r0", "r1", "r2", "r3", "r4", "c1", "c2", "c3", "c4")},
            scope=_scope_by_battery(EcmParameterSet.battery_id),
            can_write=check_estimate,
            filters={"battery": EcmParameterSet.battery_id, "cell": EcmParameterSet.cell_id},
            stamp_user="produced_by_id",
            time_column=EcmParameterSet.created_at,
        ),
        _res(
            "devices",
            Device,
            "Devices",
            read=frozenset({Role.admin, Role.operator, Role.service}),
            write=frozenset({Role.admin}),
            required=("name", "battery_id"),
            read_only=("id", "online", "last_seen"),
            hidden=("mqtt_password_hash",),  # set only by issuing a password
            limits={"reporting_interval_s": (0.01, 86_400.0), "pillar": (1, 2)},
            scope=_scope_by_battery(Device.battery_id),
            filters={"battery": Device.battery_id},
            unique_fields=("name",),
        ),
        _res(
            "estimator_runs",
            EstimatorRun,
            "Estimators",
            read=DATA_READERS,
            write=frozenset({Role.admin}),  # the scheduler writes them
            required=("job", "version", "trigger"),
            read_only=("id", "inputs", "outcome", "error", "started_at", "finished_at"),
            scope=_scope_by_battery(EstimatorRun.battery_id),
            filters={"battery": EstimatorRun.battery_id},
            time_column=EstimatorRun.started_at,
        ),
        _res(
            "events",
            Event,
            "Events",
            read=DATA_READERS,
            write=frozenset({Role.admin}),  # devices report events over MQTT only
            required=("device_id", "battery_id", "occurred_at", "kind", "severity"),
            read_only=("id", "received_at"),
            scope=_scope_by_battery(Event.battery_id),
            filters={"battery": Event.battery_id, "device": Event.device_id},
            time_column=Event.occurred_at,
        ),
        _res(
            "safety_feature",
            SafetyFeature,
            "Safety Features",
            read=ALL_READERS,
            write=PASSPORT_WRITERS,
            required=("name",),
        ),
    ]
