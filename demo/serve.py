"""The cloud of the demo: the whole service on embedded defaults, over real HTTP.

SQLite file, embedded MQTT broker with the devices' own passwords, the ingest and the
estimator scheduler, all inside a uvicorn server on a background thread. The scheduler
runs on the *twin's* clock (the BMSs stamp their messages with twin time), with the SoH
job due every ``soh_interval_s`` instead of weekly.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from virtual_bms.messages import timestamp

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from sqlalchemy.orm import Session, sessionmaker

    from cloud.mqtt.commands import MqttEndpoint
    from demo.sites import DemoTwinSource

__all__ = ["DEFAULT_PORT", "DemoCloud", "DemoError", "TwinClock"]

DEFAULT_PORT = 8000
_START_TIMEOUT_S = 60.0


class DemoError(RuntimeError):
    """The demo cannot run as asked: the message says why and what to do."""


class TwinClock:
    """Now, for the cloud's scheduler: the twin time the slowest site has reached."""

    def __init__(self) -> None:
        self._sources: tuple[DemoTwinSource, ...] = ()

    def watch(self, sources: Sequence[DemoTwinSource]) -> None:
        self._sources = tuple(sources)

    @property
    def time_s(self) -> float:
        return min((s.time_s for s in self._sources), default=0.0)

    def __call__(self) -> dt.datetime:
        return timestamp(self.time_s)


def bind_port(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` (0: any free port) for uvicorn to listen on.

    Raises:
        DemoError: If the port is taken.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as error:
        sock.close()
        raise DemoError(
            f"port {port} on 127.0.0.1 is taken ({error.strerror}): stop what listens there "
            "or choose another with --port"
        ) from None
    return sock


class DemoCloud:
    """The cloud service on a background thread; a context manager.

    Args:
        database: The SQLite file (created, migrated).
        port: HTTP port; 0 picks a free one.
        clock: The scheduler's clock (the twin's).
        soh_interval_s: Least twin time between two SoH runs of a battery.
        estimator_tick_wall_s: How often the scheduler looks for due work.
    """

    def __init__(
        self,
        *,
        database: Path,
        port: int,
        clock: Callable[[], dt.datetime],
        soh_interval_s: float,
        estimator_tick_wall_s: float,
    ) -> None:
        from cloud.estimators.jobs import DrtEcmJob, SohJob, SowJob
        from cloud.estimators.scheduler import Scheduler
        from cloud.main import create_app
        from cloud.settings import CloudSettings

        self._socket = bind_port(port)
        self.port = int(self._socket.getsockname()[1])
        settings = CloudSettings(
            database_url=f"sqlite:///{database}",
            jwt_secret=secrets.token_urlsafe(32),
            broker="embedded",
            embedded_broker_port=0,
            estimator_interval_s=estimator_tick_wall_s,
        )
        self.app: FastAPI = create_app(settings)
        soh = SohJob()
        soh.interval_s = soh_interval_s
        jobs: list[Any] = [DrtEcmJob(), soh, SowJob()]
        # the lifespan starts the scheduler loop with whatever scheduler the app holds then
        self.app.state.scheduler = Scheduler(self.app.state.engine, jobs, clock=clock)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sessions(self) -> sessionmaker[Session]:
        factory: sessionmaker[Session] = self.app.state.sessions
        return factory

    @property
    def mqtt(self) -> MqttEndpoint:
        endpoint: MqttEndpoint | None = self.app.state.mqtt
        if endpoint is None:
            raise DemoError("the cloud started without its MQTT broker")
        return endpoint

    def __enter__(self) -> Self:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws="none",
            lifespan="on",
        )
        self._server = server = uvicorn.Server(config)
        self._thread = thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="demo-cloud", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise DemoError("the cloud service did not start (see the log above)")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise DemoError(f"the cloud service did not start within {_START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        return self

    def wait_until_interrupted(self) -> None:
        """Keep serving until Ctrl-C."""
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self._socket.close()
