"""``batterytwin cloud serve`` and ``batterytwin cloud user add``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from batterytwin.console import clear_errors

app = typer.Typer(help="The cloud BMS service.", no_args_is_help=True)
user_app = typer.Typer(help="Users of the cloud service.", no_args_is_help=True)
app.add_typer(user_app, name="user")


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
    db: Annotated[str | None, typer.Option(help="Database URL (default: SQLite file).")] = None,
) -> None:
    """Create a user (the password is stored as an argon2 hash)."""
    from cloud.db import make_engine, session_factory
    from cloud.migrate import upgrade
    from cloud.settings import CloudSettings
    from cloud.users import add_user

    with clear_errors(ValueError):
        given: dict[str, Any] = {"database_url": db} if db else {}
        settings = CloudSettings(**given)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        with session_factory(engine)() as session, session.begin():
            user = add_user(
                session,
                username=username,
                password=password,
                role=role,
                manufacturer_id=manufacturer_id,
            )
            typer.echo(f"created user {user.username!r} ({user.role.value}), id {user.id}")
