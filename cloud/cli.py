"""``batterytwin cloud serve``, ``ingest``, ``user add|models-access``,
``device add|add-many|password`` and ``broker-files``."""

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
    ingest: Annotated[
        bool | None,
        typer.Option(
            "--ingest/--no-ingest",
            help="Run the MQTT ingest in the API process (default: BATTERYTWIN_INGEST_IN_API, "
            "on); --no-ingest when 'batterytwin cloud ingest' runs it.",
        ),
    ] = None,
) -> None:
    """Run the REST API (migrations apply on start)."""
    import uvicorn

    from cloud.main import create_app
    from cloud.settings import CloudSettings

    with clear_errors(ValueError):
        overrides: dict[str, Any] = {
            k: v
            for k, v in (("database_url", db), ("broker", broker), ("ingest_in_api", ingest))
            if v is not None
        }
        settings = CloudSettings(**overrides)
        if (certfile is None) != (keyfile is None):
            raise ValueError("give both --certfile and --keyfile for HTTPS")
        if workers > 1 and settings.broker != "none" and settings.ingest_in_api:
            # N ingests under one client id would take the session from each other in turn,
            # and uvicorn's workers have no fixed index to give each its own for good
            raise ValueError(
                f"--workers {workers} would start {workers} in-process MQTT ingests under the "
                "same client id, which keep taking the broker session from each other: serve "
                f"with 'cloud serve --workers {workers} --no-ingest' and run the ingest beside "
                "it with 'batterytwin cloud ingest --workers N' (docs/cloud.md, Scaling out)"
            )
    tls: dict[str, Any] = {
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "access_log": access_log,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, **tls)
        return
    # Several processes build their apps from the same settings, passed by environment.
    # Each worker runs its own command publisher, so MQTT needs an external broker here.
    if settings.broker == "embedded":
        raise typer.BadParameter("--workers > 1 needs --broker mqtt://... or --broker none")
    import os

    settings = settings.model_copy(update={"api_workers": workers})
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


@app.command("ingest")
def ingest_command(
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Ingest worker processes sharing the stream.")
    ] = 1,
    group: Annotated[
        str | None,
        typer.Option(
            help="MQTT shared subscription group; every worker, on any machine, that joins it "
            "gets a share of the messages (default with --workers > 1: batterytwin-ingest)."
        ),
    ] = None,
    first_index: Annotated[
        int,
        typer.Option(
            min=0,
            help="Index of this machine's first worker: client ids are batterytwin-ingest-K, "
            "so another machine in the same group starts where this one ends.",
        ),
    ] = 0,
    db: Annotated[str | None, typer.Option(help=_DB_HELP)] = None,
    broker: Annotated[str | None, typer.Option(help="mqtt://host:port or mqtts://...")] = None,
    summary_every_s: Annotated[
        float, typer.Option(min=0.1, help="Seconds between each worker's summary line.")
    ] = 10.0,
    retire: Annotated[
        str | None,
        typer.Option(
            metavar="CLIENT_ID",
            help="Instead of running: take this client id (a worker no longer run) out of the "
            "group, store what the broker still holds for it, end its session, and exit.",
        ),
    ] = None,
    guard: Annotated[
        bool,
        typer.Option(
            help="With a shared group, also run a guard: a plain subscription the broker "
            "restores after a restart, storing what devices send before the workers are "
            "subscribed again (Mosquitto 2.0 does not restore shared subscriptions)."
        ),
    ] = True,
    worker_index: Annotated[int | None, typer.Option(hidden=True)] = None,
    guard_window_s: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the MQTT ingest outside the API: worker processes under a supervisor.

    Settings (database, broker, MQTT login and TLS) come from BATTERYTWIN_* as for
    'cloud serve'. A worker that dies is restarted under the same client id; SIGINT or
    SIGTERM stops them all, each storing the batch in hand first.
    """
    import logging

    from cloud.mqtt.ingest import IngestError
    from cloud.mqtt.ingest_workers import DEFAULT_GROUP, ingest_config, worker_client_id
    from cloud.settings import CloudSettings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration plugin
    with clear_errors(ValueError, IngestError):
        overrides: dict[str, Any] = {
            k: v for k, v in (("database_url", db), ("broker", broker)) if v is not None
        }
        settings = CloudSettings(**overrides)
        if worker_index is not None:  # one worker, started by the supervisor below
            import os

            from cloud.mqtt.ingest_workers import run_worker

            if guard_window_s is not None:
                from cloud.mqtt.ingest_workers import guard_client_id

                config = ingest_config(
                    settings,
                    client_id=guard_client_id(worker_index),
                    shared_group=None,
                    guard_window_s=guard_window_s,
                )
            else:
                config = ingest_config(
                    settings,
                    client_id=worker_client_id(worker_index, shared=group is not None),
                    shared_group=group,
                )
            run_worker(
                database_url=settings.database_url,
                config=config,
                summary_every_s=summary_every_s,
                supervisor_pid=os.getppid(),
            )
            return
        if retire is not None:
            _retire(settings, client_id=retire, group=group or DEFAULT_GROUP)
            return
        shared = workers > 1 or group is not None or first_index > 0
        indices = range(first_index, first_index + workers)
        worker_client_id(indices[-1], shared=shared)  # a clear error for too high an index
        ingest_config(settings, client_id="check", shared_group=group)  # and a broker
        _supervise(
            settings,
            indices=indices,
            group=(group or DEFAULT_GROUP) if shared else None,
            summary_every_s=summary_every_s,
            guard=guard and shared,
        )


def _settings_environment(settings: CloudSettings) -> dict[str, str]:
    """This process's environment with ``settings`` as ``BATTERYTWIN_*`` variables."""
    import os

    env = dict(os.environ)
    for key, value in settings.model_dump().items():
        if value is not None:
            env[f"BATTERYTWIN_{key.upper()}"] = str(value)
    return env


def _supervise(
    settings: CloudSettings,
    *,
    indices: range,
    group: str | None,
    summary_every_s: float,
    guard: bool,
) -> None:
    """Migrate the database once, then run one worker process per index (and the guard)
    until a signal."""
    import sys

    from cloud.mqtt.ingest_workers import GUARD_INDEX, GUARD_WINDOW_S, IngestSupervisor

    _migrate(settings)

    def command(index: int) -> list[str]:
        line = [sys.executable, "-m", "batterytwin", "cloud", "ingest"]
        line += ["--summary-every-s", str(summary_every_s)]
        if index == GUARD_INDEX:
            window = str(GUARD_WINDOW_S)
            return [*line, "--worker-index", str(indices[0]), "--guard-window-s", window]
        line += ["--worker-index", str(index)]
        return line + (["--group", group] if group is not None else [])

    run = [*indices, GUARD_INDEX] if guard else list(indices)
    IngestSupervisor(command=command, indices=run, env=_settings_environment(settings)).run()


def _migrate(settings: CloudSettings) -> None:
    """Bring the database's schema up to date (once, before any ingest writes)."""
    from cloud.db import make_engine
    from cloud.migrate import upgrade

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _retire(settings: CloudSettings, *, client_id: str, group: str) -> None:
    """``cloud ingest --retire``: drain and end one client id's session."""
    from cloud.mqtt.ingest_workers import format_summary, ingest_config, retire_client

    config = ingest_config(settings, client_id=client_id, shared_group=group)
    _migrate(settings)
    counters = retire_client(database_url=settings.database_url, config=config, idle_s=2.0)
    typer.echo(format_summary(counters, label=f"retired {client_id}"))


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


@device_app.command("add-many")
def device_add_many(
    prefix: Annotated[str, typer.Option(help="Name prefix: devices are {prefix}{i:05d}.")],
    count: Annotated[int, typer.Option(help="How many devices (1..20,000).")],
    start: Annotated[int, typer.Option(help="Index of the first device.")] = 0,
    pillar: Annotated[int, typer.Option(help="1: ECM/EIS, 2: cloud SoH.")] = 1,
    cells: Annotated[int, typer.Option(help="Cells per battery, positions 0..cells-1.")] = 16,
    out: Annotated[
        Path | None, typer.Option(help="CSV file for name,password,device_id (else stdout).")
    ] = None,
    db: Annotated[str | None, typer.Option(help=_DB_HELP)] = None,
) -> None:
    """Register many devices for a fleet load test, each with a battery, a module, cells
    and an MQTT password (an existing name gets a new password), and print them as CSV."""
    import csv
    import io
    import os

    from cloud.fleet_provision import provision_devices

    with clear_errors(ValueError), _database(db) as (_, session):
        devices = provision_devices(
            session, prefix=prefix, count=count, start=start, pillar=pillar, cells=cells
        )
    text = io.StringIO()  # after the commit: the passwords work now
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["name", "password", "device_id"])
    writer.writerows((d.name, d.password, d.device_id) for d in devices)
    if out is None:
        typer.echo(text.getvalue(), nl=False)
    else:  # passwords: readable by the owner only
        with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(text.getvalue())
    where = f" to {out}" if out else ""
    typer.echo(f"{len(devices)} devices {prefix}... with their MQTT passwords{where}", err=True)


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
