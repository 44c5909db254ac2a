"""The FastAPI application: assembles the routers, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy import text

from cloud.activity import ActivityMiddleware, ActivityRecorder
from cloud.api import analytics as analytics_api
from cloud.api import (
    auth,
    commands,
    dashboard,
    devices,
    estimators,
    models_exchange,
    passport,
    uplink_http,
)
from cloud.api import fleet as fleet_api
from cloud.api import testbench as testbench_api
from cloud.api.crud import crud_router
from cloud.api.measurements import measurement_router
from cloud.api.resources import resources
from cloud.db import make_engine, session_factory
from cloud.estimators.jobs import default_jobs
from cloud.estimators.scheduler import Scheduler
from cloud.metrics import render_metrics
from cloud.migrate import upgrade
from cloud.settings import CloudSettings
from cloud.testbench.service import BenchConfig, BenchService
from cloud.web import router as web_router

if TYPE_CHECKING:
    from cloud.mqtt.broker import AccountSource

log = logging.getLogger("batterytwin.cloud")


def _embedded_accounts(app: FastAPI) -> tuple[str, SecretStr, AccountSource]:
    """The embedded broker's accounts: each device's own password from the database, and
    the ingest's user with a password made for this run (the command publisher uses it
    too); devices without a password cannot connect."""
    from cloud.mqtt.broker import INGEST_USER, hash_mosquitto_password
    from cloud.mqtt.credentials import database_account_source
    from cloud.testbench.topics import bench_acl

    password = secrets.token_urlsafe(24)
    accounts = database_account_source(
        app.state.sessions,
        ingest_user=INGEST_USER,
        ingest_password_hash=hash_mosquitto_password(password),
        extra_acl={INGEST_USER: bench_acl()},  # the service also runs the test bench
    )
    return INGEST_USER, SecretStr(password), accounts


def create_app(settings: CloudSettings) -> FastAPI:
    """The service for ``settings``; migrations apply when it starts."""
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade(engine)
        app.state.activity.start()
        async with contextlib.AsyncExitStack() as stack:
            app.state.ingest = None
            app.state.mqtt = None
            if settings.broker != "none":
                from cloud.mqtt import EmbeddedBroker, IngestConfig, IngestService
                from cloud.mqtt.commands import MqttEndpoint

                username = settings.mqtt_username
                password = SecretStr(settings.mqtt_password) if settings.mqtt_password else None
                address = settings.broker_address()
                if address is None:
                    username, password, accounts = _embedded_accounts(app)
                    broker = await stack.enter_async_context(
                        EmbeddedBroker(port=settings.embedded_broker_port, accounts=accounts)
                    )
                    address = ("127.0.0.1", broker.port)
                endpoint = MqttEndpoint(
                    host=address[0],
                    port=address[1],
                    username=username,
                    password=password,
                    tls=settings.mqtt_tls(),
                )
                app.state.mqtt = endpoint  # the command publisher connects with it
                if settings.ingest_in_api:  # else `batterytwin cloud ingest` runs beside
                    config = IngestConfig(
                        host=endpoint.host,
                        port=endpoint.port,
                        username=endpoint.username,
                        password=endpoint.password,
                        tls=endpoint.tls,
                    )
                    app.state.ingest = await stack.enter_async_context(
                        IngestService(engine=engine, config=config)
                    )
            app.state.bench = await stack.enter_async_context(
                BenchService(
                    engine=engine,
                    endpoint=app.state.mqtt,
                    config=BenchConfig(
                        shared_group="batterytwin-bench" if settings.api_workers > 1 else None
                    ),
                )
            )
            loop_task = None
            if settings.estimator_interval_s > 0:
                from cloud.estimators.service import scheduler_loop

                loop_task = asyncio.create_task(
                    scheduler_loop(
                        app.state.scheduler,
                        engine=engine,
                        endpoint=app.state.mqtt,
                        interval_s=settings.estimator_interval_s,
                    ),
                    name="estimator-scheduler",
                )
            try:
                yield
            finally:
                if loop_task is not None:
                    loop_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop_task
        app.state.activity.stop()
        engine.dispose()

    app = FastAPI(
        title="batterytwin cloud BMS",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/api/schema/swagger-ui/",
        openapi_url="/api/schema/",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.token_limiter = auth.RateLimiter(settings.token_rate_per_minute)
    app.state.activity = ActivityRecorder(app.state.sessions)
    app.state.ingest = None  # set by the lifespan when MQTT is on
    app.state.mqtt = None
    app.state.bench = None  # the test bench, set by the lifespan
    app.state.scheduler = Scheduler(engine, default_jobs())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    app.add_middleware(ActivityMiddleware, recorder=app.state.activity)

    app.include_router(analytics_api.router)
    app.include_router(auth.router)
    app.include_router(commands.router)
    app.include_router(dashboard.router)
    app.include_router(devices.router)
    app.include_router(fleet_api.router)
    app.include_router(estimators.router)
    app.include_router(passport.router)
    app.include_router(uplink_http.router)
    app.include_router(models_exchange.router)
    app.include_router(testbench_api.router)
    app.include_router(web_router)
    for res in resources():
        if res.path == "measurements":
            app.include_router(measurement_router(res))
        app.include_router(crud_router(res, skip_create=res.path == "measurements"))

    @app.get("/health", tags=["Monitoring"])
    def health() -> JSONResponse:
        """200 when the database (and, with MQTT on, the broker) is reachable."""
        status: dict[str, str] = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            status["database"] = "ok"
        except Exception as exc:
            status["database"] = f"unreachable: {type(exc).__name__}"
        ingest = app.state.ingest
        if ingest is not None:
            status["broker"] = "ok" if ingest.subscribed else "unreachable"
        healthy = all(v == "ok" for v in status.values())
        return JSONResponse(status_code=200 if healthy else 503, content=status)

    @app.get("/metrics", tags=["Monitoring"])
    def metrics() -> Response:
        """Prometheus text format: ingest counters and devices online."""
        return Response(render_metrics(app), media_type="text/plain; version=0.0.4")

    @app.get("/docs", include_in_schema=False)
    def docs_redirect() -> Response:
        return Response(status_code=307, headers={"Location": "/api/schema/swagger-ui/"})

    return app


def app_from_environment() -> FastAPI:
    """Factory for multi-worker serving: settings from ``BATTERYTWIN_*`` variables."""
    return create_app(CloudSettings())
