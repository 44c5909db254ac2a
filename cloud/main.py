"""The FastAPI application: assembles the routers, nothing else."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text

from cloud.activity import ActivityRecorder
from cloud.api import auth
from cloud.api.crud import crud_router
from cloud.api.measurements import measurement_router
from cloud.api.resources import resources
from cloud.db import make_engine, session_factory
from cloud.migrate import upgrade
from cloud.settings import CloudSettings

log = logging.getLogger("batterytwin.cloud")


def create_app(settings: CloudSettings) -> FastAPI:
    """The service for ``settings``; migrations apply when it starts."""
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade(engine)
        app.state.activity.start()
        yield
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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.middleware("http")
    async def _activity(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path.startswith("/api/") and not request.url.path.startswith("/api/schema"):
            user_id, username = getattr(request.state, "user_ref", (None, None))
            app.state.activity.record(
                at=dt.datetime.now(dt.UTC),
                user_id=user_id,
                username=username,
                client=request.client.host if request.client else None,
                method=request.method,
                path=request.url.path[:500],
                status_code=response.status_code,
            )
        return response

    app.include_router(auth.router)
    for res in resources():
        if res.path == "measurements":
            app.include_router(measurement_router(res))
        app.include_router(crud_router(res, skip_create=res.path == "measurements"))

    @app.get("/health", tags=["Monitoring"])
    def health() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse(
                status_code=503, content={"database": f"unreachable: {type(exc).__name__}"}
            )
        return JSONResponse(content={"database": "ok"})

    @app.get("/docs", include_in_schema=False)
    def docs_redirect() -> Response:
        return Response(status_code=307, headers={"Location": "/api/schema/swagger-ui/"})

    return app


def app_from_environment() -> FastAPI:
    """Factory for multi-worker serving: settings from ``BATTERYTWIN_*`` variables."""
    return create_app(CloudSettings())
