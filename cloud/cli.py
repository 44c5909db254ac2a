"""``batterytwin cloud serve``, ``user add|models-access``, ``device add|password`` and
``broker-files``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batterytwin.console import clear_errors

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cloud.settings import CloudSettings

app = typer.Typer(help="The cloud BMS service.", no_args_is_help=True)
user_app = typer.Typer(help="Users of the cloud service.", no_args_is_help=True)
app.add_typer(user_app, name="user")
device_app = typer.Typer(help="Edge BMSs and their MQTT passwords.", no_args_is_help=True)
app.add_typer(device_app, name="device")
_DB_HELP = "Database URL (default: SQLite file)."


@app.command()
def serve(
    db: Annotated[str | None, typer.Option(help="Database URL (default: SQLite file).")] = None,
    broker: Annotated[str | None, typer.Option(help="embedded or mqtt://host:port.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (one per core).")] = 1,
    certfile: Annotated[str | None, typer.Option(help="TLS certificate (serves HTTPS).")] = None,
    keyfile: Annotated[str | None, typer.Option(help="TLS private key.")] = None,
    access_log: Annotated[
        bool, typer.Option(help="Log every request to stderr (the activity log has them).")
    ] = False,
) -> None:
    """Run the REST API (migrations apply on start)."""
    import uvicorn

    from cloud.main import create_app
    from cloud.settings import CloudSettings

    with clear_errors(ValueError):
        overrides: dict[str, Any] = {
            k: v for k, v in (("database_url", db), ("broker", broker)) if v is not None
        }
        settings = CloudSettings(**overrides)
        if (certfile is None) != (keyfile is None):
            raise ValueError("give both --certfile and --keyfile for HTTPS")
    tls: dict[str, Any] = {
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "access_log": access_log,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, **tls)
        return
    # Several processes build their apps from the same settings, passed by environment.
    # Each worker runs its own ingest, so MQTT needs an external broker here.
    if settings.broker == "embedded":
        raise typer.BadParameter("--workers > 1 needs --broker mqtt://... or --broker none")
    import os

    for key, value in settings.model_dump().items():
        if value is not None:
            os.environ[f"BATTERYTWIN_{key.upper()}"] = str(value)
    uvicorn.run(
        "cloud.main:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **tls,
    )


@user_app.command("add")
def add(
    username: Annotated[str, typer.Option(help="User name.")],
    password: Annotated[
        str, typer.Option(help="Password (8+ characters).", prompt=True, hide_input=True)
    ],
    role: Annotated[str, typer.Option(help="admin, manufacturer, operator, service or device.")],
    manufacturer_id: Annotated[int | None, typer.Option(help="For a manufacturer user.")] = None,
    models_access: Annotated[
        str, typer.Option(help="FMU models exchange: read, or write (upload, delete).")
    ] = "read",
    db: Annotated[str | None, typer.Option(help="Database URL (default: SQLite file).")] = None,
) -> None:
    """Create a user (the password is stored as an argon2 hash)."""
    from cloud.users import add_user

    with clear_errors(ValueError), _database(db) as (_, session):
        user = add_user(
            session,
            username=username,
            password=password,
            role=role,
            manufacturer_id=manufacturer_id,
            models_access=models_access,
        )
        created = f"created user {user.username!r} ({user.role.value}), id {user.id}"
    typer.echo(created)  # after the commit, and the engine is disposed of


@user_app.command("models-access")
def user_models_access(
    username: Annotated[str, typer.Argument(help="User name.")],
    access: Annotated[
        str, typer.Argument(help="read (browse, download) or write (also upload, delete).")
    ],
    db: Annotated[str | None, typer.Option(help=_DB_HELP)] = None,
) -> None:
    """Set a user's access to the FMU models exchange (admins always write)."""
    from cloud.models import Role
    from cloud.users import set_models_access

    with clear_errors(ValueError), _database(db) as (_, session):
        user = set_models_access(session, username=username, access=access)
        given, is_admin = user.models_access.value, user.role == Role.admin
    note = " (an admin writes whatever this says)" if is_admin else ""
    typer.echo(f"user {username!r} has {given} access to the models exchange{note}")


@contextmanager
def _database(db: str | None) -> Iterator[tuple[CloudSettings, Session]]:
    """Settings and one transaction on the (migrated) database; ``db`` overrides the URL."""
    from cloud.db import make_engine, session_factory
    from cloud.migrate import upgrade
    from cloud.settings import CloudSettings

    given: dict[str, Any] = {"database_url": db} if db else {}
    settings = CloudSettings(**given)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        with session_factory(engine)() as session, session.begin():
            yield settings, session
    finally:
        engine.dispose()


def _show_password(name: str, password: str, what: str) -> None:
    """The password alone on stdout (for scripts), what to do with it on stderr."""
    typer.echo(f"{what}; MQTT user {name!r}, password (shown only this once):", err=True)
    typer.echo(password)


@device_app.command("add")
def device_add(
    name: Annotated[str, typer.Option(help="Device name: its MQTT user and topic level.")],
    battery_id: Annotated[int, typer.Option(help="Id of the battery the device manages.")],
    pillar: Annotated[int, typer.Option(min=1, max=2, help="1: ECM/EIS, 2: cloud SoH.")] = 1,
    db: Annotated[str | None, typer.Option(help=_DB_HELP)] = None,
) -> None:
    """Register an edge BMS and print its MQTT password (only now)."""
    from sqlalchemy import select

    from cloud.models import Battery, Device
    from cloud.mqtt.broker import INGEST_USER
    from cloud.mqtt.contract import Channel, Topics
    from cloud.mqtt.credentials import issue_device_password

    with clear_errors(ValueError), _database(db) as (_, session):
        Topics().device(name, Channel.telemetry)  # a clear error for a name MQTT cannot carry
        if name == INGEST_USER:
            raise ValueError(f"{name!r} is the ingest's MQTT user: choose another device name")
        if session.get(Battery, battery_id) is None:
            raise ValueError(f"no battery with id {battery_id} (see GET /api/batteries/)")
        if session.scalar(select(Device.id).where(Device.name == name)) is not None:
            raise ValueError(
                f"device {name!r} exists already; 'batterytwin cloud device password {name}' "
                "gives it a new password"
            )
        device = Device(name=name, battery_id=battery_id, pillar=pillar)
        session.add(device)
        session.flush()
        password = issue_device_password(session, device)
        what = f"created device {name!r} (id {device.id}) on battery {battery_id}"
    _show_password(name, password, what)  # after the commit: the password works now


@device_app.command("password")
def device_password(
    name: Annotated[str, typer.Argument(help="Device name.")],
    db: Annotated[str | None, typer.Option(help=_DB_HELP)] = None,
) -> None:
    """Give a device a new MQTT password (the old one stops working) and print it."""
    from sqlalchemy import select

    from cloud.models import Device
    from cloud.mqtt.credentials import issue_device_password

    with clear_errors(ValueError), _database(db) as (_, session):
        device = session.scalar(select(Device).where(Device.name == name))
        if device is None:
            raise ValueError(
                f"no device named {name!r} ('batterytwin cloud device add' registers one)"
            )
        password = issue_device_password(session, device)
    _show_password(name, password, f"new password for device {name!r}")


@app.command("broker-files")
def broker_files(
    out: Annotated[Path, typer.Option(help="Directory for passwd, acl and mosquitto.conf.")],
    db: Annotated[str | None, typer.Option(help=_DB_HELP)] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Mosquitto's port.")] = 1883,
    bind: Annotated[str, typer.Option(help="Address Mosquitto listens on.")] = "127.0.0.1",
    tls_certfile: Annotated[
        Path | None, typer.Option(help="Broker certificate: adds a TLS listener.")
    ] = None,
    tls_keyfile: Annotated[Path | None, typer.Option(help="Key of --tls-certfile.")] = None,
    tls_port: Annotated[int, typer.Option(min=1, max=65535, help="TLS listener port.")] = 8883,
) -> None:
    """Write Mosquitto's password file, ACL and config from the registered devices.

    The ingest's user is BATTERYTWIN_MQTT_USERNAME / BATTERYTWIN_MQTT_PASSWORD. Run it
    again after adding a device or a new password, then reload Mosquitto (kill -HUP).
    """
    from sqlalchemy import func, select

    from cloud.models import Device
    from cloud.mqtt.credentials import MosquittoTlsListener, write_broker_files
    from cloud.testbench.topics import bench_acl

    with clear_errors(ValueError), _database(db) as (settings, session):
        if (tls_certfile is None) != (tls_keyfile is None):
            raise ValueError("give both --tls-certfile and --tls-keyfile for a TLS listener")
        tls = (
            MosquittoTlsListener(certfile=tls_certfile, keyfile=tls_keyfile, port=tls_port)
            if tls_certfile is not None and tls_keyfile is not None
            else None
        )
        if not settings.mqtt_username or not settings.mqtt_password:
            raise ValueError(
                "set BATTERYTWIN_MQTT_USERNAME and BATTERYTWIN_MQTT_PASSWORD: the ingest logs "
                "in to Mosquitto with them, and the password file must hold that user"
            )
        conf = write_broker_files(
            session,
            out,
            ingest_user=settings.mqtt_username,
            ingest_password=settings.mqtt_password,
            port=port,
            bind=bind,
            tls=tls,
            # The service runs the virtual test bench too: its topics for the same user.
            extra_acl={settings.mqtt_username: bench_acl()},
        )
        missing = session.scalars(
            select(Device.name).where(Device.mqtt_password_hash.is_(None)).order_by(Device.name)
        ).all()
        total = session.scalar(select(func.count()).select_from(Device)) or 0
    typer.echo(f"wrote {conf.parent / 'passwd'}, {conf.parent / 'acl'} and {conf}")
    typer.echo(f"{total - len(missing)} of {total} devices can log in")
    if missing:
        names = ", ".join(missing)
        typer.echo(
            f"without a password (cannot connect): {names}; "
            "'batterytwin cloud device password NAME' issues one",
            err=True,
        )
